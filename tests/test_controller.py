"""The controller end to end: real worker processes over real ZeroMQ sockets."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import numpy as np
import polars as pl
import pytest

import batchcrew as bc
from tests.conftest import MakeController, RecordingLauncher, children
from tests.tasks import (
    add,
    async_add,
    crash_once,
    exit_now,
    fail,
    hang,
    hang_briefly,
    pid,
    silence_warnings,
    warn_and_return,
)


async def wait_for_file(path: Path, within: float = 20.0) -> str:
    with anyio.fail_after(within):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.01)
    return path.read_text()


# -- the basics ------------------------------------------------------------------------------


async def test_push_returns_a_task_whose_await_gives_the_result(
    controller: MakeController,
) -> None:
    crew = await controller(name="demo", workers=2)
    task = crew.push(add, 1, 2, name="add")
    assert isinstance(task, bc.Task)
    assert task.name == "add"
    result = await task
    assert result.result == 3
    assert result.status == "success"
    assert result.error is None
    assert result.trace is None
    assert result.warnings == ()
    assert result.seconds is not None
    assert result.seconds >= 0
    assert result.worker
    assert result.launcher == "local"
    assert result.controller == "demo"


async def test_keyword_arguments_coroutines_lambdas_and_closures(
    controller: MakeController,
) -> None:
    crew = await controller()
    offset = 100
    assert (await crew.push(add, 1, y=2)).result == 3
    assert (await crew.push(async_add, 2, 3)).result == 5
    assert (await crew.push(lambda: offset + 1)).result == 101

    def closure(x: int) -> int:
        return x * offset

    assert (await crew.push(closure, 2)).result == 200


async def test_awaiting_a_task_takes_its_result(controller: MakeController) -> None:
    crew = await controller()
    task = crew.push(add, 1, 1)
    await task
    assert crew.pop() is None
    assert crew.collect().height == 0
    assert (await task).result == 2  # awaiting again still answers


async def test_a_held_result_is_made_when_asked_for_and_is_the_same_each_time(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    tasks = await crew.walk(add, range(3), range(3))
    await crew.wait("all")
    gc.collect()
    # Held as a tuple of plain values, out of the garbage collector's sight, until asked for.
    assert not any(gc.is_tracked(task._result) for task in tasks)
    first = tasks[0].peek()
    assert first is not None
    assert (first.name, first.result, first.status, first.controller) == (
        tasks[0].name,
        0,
        "success",
        crew.name,
    )
    assert tasks[0].peek() is first
    assert await tasks[0] is first
    assert crew.collect()["result"].to_list() == [2, 4]


async def test_generated_names_are_unique_and_given_names_must_be(
    controller: MakeController,
) -> None:
    crew = await controller()
    tasks = await crew.walk(add, range(5), range(5))
    assert len({task.name for task in tasks}) == 5
    crew.push(hang_briefly, name="same")
    with pytest.raises(ValueError, match=r"already held \(unresolved\)"):
        crew.push(add, 1, 2, name="same")
    assert await crew.wait("all", timeout=20)
    # Resolved but not taken: a second "same" would hide the first one's result.
    with pytest.raises(ValueError, match=r"its result is not taken yet.*take its result first"):
        crew.push(add, 1, 2, name="same")
    assert crew.task("same") is not None
    crew.collect()
    crew.push(add, 1, 2, name="same")  # taken: the name is free again
    assert await crew.wait("all", timeout=20)


async def test_map_returns_a_frame_in_input_order(controller: MakeController) -> None:
    crew = await controller(workers=2)
    frame = await crew.map(add, range(20), range(20, 40), names=[f"n{i}" for i in range(20)])
    assert frame.columns == [
        "name",
        "result",
        "status",
        "error",
        "trace",
        "warnings",
        "seconds",
        "worker",
        "launcher",
        "controller",
        "memory",
        "attempts",
        "interruptions",
        "output",
    ]
    assert frame["name"].to_list() == [f"n{i}" for i in range(20)]
    assert frame["result"].to_list() == [i + i + 20 for i in range(20)]
    assert frame["result"].dtype == pl.Int64
    assert frame["warnings"].dtype == pl.List(pl.String)
    assert frame["seconds"].dtype == pl.Float64
    assert set(frame["status"]) == {"success"}


async def test_map_error_modes(controller: MakeController) -> None:
    crew = await controller()
    with pytest.raises(bc.TaskError, match="'task-") as raised:
        await crew.map(fail, ["a", "b"])
    assert raised.value.result.status == "error"
    assert raised.value.result.error in ("ValueError: a", "ValueError: b")  # the first to fail
    with pytest.warns(UserWarning, match="2 task"):
        frame = await crew.map(fail, ["a", "b"], error="warn")
    assert frame["status"].to_list() == ["error", "error"]
    frame = await crew.map(fail, ["x"], error="ignore")
    assert frame["error"].to_list() == ["ValueError: x"]
    assert "Traceback" in frame["trace"][0]
    assert "fail" in frame["trace"][0]
    with pytest.raises(ValueError, match='"raise", "warn" or "ignore"'):
        await crew.map(add, [1], [2], error="loud")  # type: ignore[arg-type]


async def test_objects_that_polars_cannot_type_stay_python_objects(
    controller: MakeController,
) -> None:
    crew = await controller()
    frame = await crew.map(lambda x: {"x": x} if x else [x], [0, 1])
    assert frame["result"].dtype == pl.Object
    assert frame["result"].to_list() == [[0], {"x": 1}]


async def test_wait_pop_collect_and_results(controller: MakeController) -> None:
    crew = await controller()
    assert await crew.wait("all", timeout=1)
    assert not await crew.wait("one", timeout=1)  # nothing would ever come
    crew.walk(add, range(6), range(6))
    assert await crew.wait("one", timeout=20)
    first = crew.pop()
    assert first is not None
    assert first.status == "success"
    assert await crew.wait("all", timeout=20)
    rest = crew.collect()
    assert rest.height == 5
    assert crew.collect().height == 0
    assert crew.pop() is None
    crew.walk(add, range(4), range(4))
    seen = [result.result async for result in crew.results()]
    assert sorted(seen) == [0, 2, 4, 6]


async def test_wait_times_out_with_false(controller: MakeController, tmp_path: Path) -> None:
    crew = await controller()
    crew.push(hang, str(tmp_path / "started"))
    assert not await crew.wait("all", timeout=0.2)
    assert crew.cancel(all=True) == 1


async def test_summary_counts_outcomes(controller: MakeController) -> None:
    crew = await controller(name="counted")
    await crew.map(add, [1, 2], [3, 4])
    await crew.map(fail, ["x"], error="ignore")
    await crew.map(warn_and_return, [1])
    summary = crew.summary()
    assert summary.columns[:9] == [
        "controller",
        "elapsed",
        "task_seconds",
        "tasks",
        "success",
        "error",
        "crash",
        "cancel",
        "warning",
    ]
    row = summary.row(0, named=True)
    assert row["controller"] == "counted"
    assert row["tasks"] == 4
    assert row["success"] == 3
    assert row["error"] == 1
    assert row["warning"] == 1
    assert row["unresolved"] == 0
    assert row["task_seconds"] > 0
    assert row["elapsed"] > 0


async def test_functions_in_turn_on_one_worker_each_run_as_themselves(
    controller: MakeController,
) -> None:
    # The worker keeps the last function it unpickled at hand: a different one must not be
    # taken for it.
    crew = await controller(workers=1)
    calls = [(add, (1, 2)), (add, (3, 4)), (fail, ("no",)), (add, (5, 6)), (pid, ())]
    results = [await crew.push(function, *args) for function, args in calls]
    assert [result.result for result in results[:2]] == [3, 7]
    assert (results[2].status, results[2].error) == ("error", "ValueError: no")
    assert results[3].result == 11
    assert isinstance(results[4].result, int)
    assert len({result.worker for result in results}) == 1


async def test_warnings_are_captured(controller: MakeController) -> None:
    crew = await controller()
    result = await crew.push(warn_and_return, 5)
    assert result.warnings == ("UserWarning: careful with 5",)
    assert result.result == 5


async def test_a_task_that_changes_the_warning_filters_does_not_hide_the_next_ones(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    for how in ("ignore", "reset", "showwarning"):
        # The same warning twice in a row is recorded twice: each task sees all of its own.
        for _ in range(2):
            assert (await crew.push(warn_and_return, 1)).warnings == (
                "UserWarning: careful with 1",
            )
        changed = await crew.push(silence_warnings, how)
        assert changed.status == "success"
        after = await crew.push(warn_and_return, 2)
        assert after.warnings == ("UserWarning: careful with 2",), how
        assert after.worker == changed.worker


async def test_large_arguments_and_results_cross_intact(controller: MakeController) -> None:
    crew = await controller()
    array = np.random.default_rng(1).random(4_000_000)  # 32 MB
    with pytest.warns(UserWarning, match=r"is 30\.5 MB pickled, its arguments 30\.5 MB"):
        task = crew.push(lambda a: a * 2, array)
    np.testing.assert_array_equal((await task).result, array * 2)


async def test_a_function_capturing_large_data_is_warned_about_once(
    controller: MakeController,
) -> None:
    """A lambda naming a large array sends it with every task: said once, with the fix."""
    crew = await controller()
    array = np.ones(2_000_000)  # 16 MB

    def first(i: int) -> float:
        return float(array[i])

    with pytest.warns(UserWarning, match=r"its function 15\.3 MB.*everywhere") as warned:
        tasks = await crew.map(first, range(3))
    assert len([w for w in warned if "MB pickled" in str(w.message)]) == 1  # once
    assert warned[0].filename == __file__  # the user's own line
    assert tasks["result"].to_list() == [1.0, 1.0, 1.0]


# -- bad input -------------------------------------------------------------------------------


async def test_pushing_a_non_callable_is_a_type_error(controller: MakeController) -> None:
    crew = await controller()
    with pytest.raises(TypeError, match="must be callable, not int"):
        crew.push(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be callable"):
        crew.walk("add", [1])  # type: ignore[arg-type]


async def test_an_unpicklable_argument_is_named_and_the_controller_keeps_working(
    controller: MakeController,
) -> None:
    crew = await controller()
    lock = threading.Lock()
    with pytest.raises(bc.SerializationError, match=r"argument 1: lock") as raised:
        crew.push(add, 1, lock)
    assert isinstance(raised.value, TypeError)
    with pytest.raises(bc.SerializationError, match="argument y=: lock"):
        crew.push(add, 1, y=lock)
    assert crew.summary()["tasks"][0] == 0
    assert (await crew.push(add, 1, 2)).result == 3


async def test_an_unpicklable_result_resolves_as_an_error(controller: MakeController) -> None:
    crew = await controller()
    result = await crew.push(threading.Lock)
    assert result.status == "error"
    assert result.error is not None
    assert "cannot be pickled" in result.error
    assert (await crew.push(add, 2, 2)).result == 4  # the worker is still fine


async def test_a_task_that_raises_leaves_its_worker_up(controller: MakeController) -> None:
    crew = await controller(workers=1)
    before = await crew.push(pid)
    failed = await crew.push(fail, "boom")
    assert failed.status == "error"
    assert failed.error == "ValueError: boom"
    assert failed.trace is not None
    assert "raise ValueError(message)" in failed.trace
    after = await crew.push(pid)
    assert after.result == before.result


async def test_a_task_calling_sys_exit_is_an_error_not_a_dead_worker(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    result = await crew.push(sys.exit, 3)
    assert result.status == "error"
    assert result.error == "SystemExit: 3"


async def test_push_before_start_and_after_close() -> None:
    crew = bc.Controller(name="unstarted")
    with pytest.raises(bc.ControllerClosedError, match="not started"):
        crew.push(add, 1, 2)
    await crew.start()
    await crew.aclose()
    with pytest.raises(bc.ControllerClosedError, match="is closed"):
        crew.push(add, 1, 2)
    with pytest.raises(bc.ControllerClosedError, match="already started"):
        await crew.start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "workers must be a whole number >= 1"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"seconds_idle": -1}, "seconds_idle must be a positive number"),
        ({"tasks_max": 0}, "tasks_max must be a whole number >= 1"),
        ({"crashes_max": -1}, "crashes_max must be a whole number >= 0"),
        ({"port": 70000}, "port must be between 0 and 65535"),
        ({"security": "tls"}, 'security must be "curve" or "none"'),
    ],
)
def test_bad_options_are_rejected_at_construction(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bc.Controller(**options)


def test_a_launcher_must_be_a_launcher() -> None:
    with pytest.raises(TypeError, match="must be a batchcrew Launcher"):
        bc.Controller(launcher="local")  # type: ignore[arg-type]


async def test_a_task_over_max_message_size_is_refused_at_push(
    controller: MakeController,
) -> None:
    crew = await controller(max_message_size=10_000)
    with pytest.raises(bc.TaskTooLargeError, match="over max_message_size=10000"):
        crew.push(len, b"x" * 20_000)
    assert (await crew.push(len, b"x" * 100)).result == 100


# -- crashes ---------------------------------------------------------------------------------


async def test_a_killed_worker_has_its_task_retried_on_another(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, crashes_max=2)
    started = tmp_path / "started"
    task = crew.push(crash_once, str(tmp_path / "marker"), str(started))
    victim = int(await wait_for_file(started))
    os.kill(victim, signal.SIGKILL)
    result = await task
    assert result.status == "success"
    assert result.result != f"ran on {victim}"
    assert crew.summary()["crash"][0] == 0


async def test_a_task_crashing_more_than_crashes_max_resolves_as_crash(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, crashes_max=0)
    started = tmp_path / "started"
    task = crew.push(hang, str(started))
    os.kill(int(await wait_for_file(started)), signal.SIGKILL)
    result = await task
    assert result.status == "crash"
    assert result.error is not None
    assert "died 1 time(s)" in result.error
    assert "was killed by SIGKILL, signal 9" in result.error  # not just "its connection closed"
    assert "crashes_max=0" in result.error
    assert (await crew.push(add, 1, 1)).result == 2  # a new worker takes over
    workers = crew.workers()
    assert workers.filter(pl.col("state") == "gone")["worker"].to_list() == [result.worker]


async def test_a_crash_reason_says_how_the_worker_process_ended(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1, crashes_max=1)
    result = await crew.push(exit_now, 1)
    assert result.status == "crash"
    assert result.error is not None
    assert result.error.startswith("the worker running this task died 2 time(s), the last time ")
    assert result.error.endswith(" exited with code 1; crashes_max=1")


# -- life cycle ------------------------------------------------------------------------------


async def test_start_and_aclose_without_async_with_leave_no_process() -> None:
    crew = bc.Controller(name="manual", workers=2)
    await crew.start()
    assert crew.running
    assert crew.address.startswith("tcp://127.0.0.1:")
    await crew.map(add, range(4), range(4))
    assert children()
    await crew.aclose()
    await crew.aclose()  # idempotent
    assert not crew.running
    assert not children()


async def test_closing_resolves_unresolved_tasks_as_cancel(tmp_path: Path) -> None:
    async with bc.Controller(workers=1) as crew:
        running = crew.push(hang, str(tmp_path / "started"))
        queued = crew.push(add, 1, 2)
        await wait_for_file(tmp_path / "started")
    assert (await running).status == "cancel"
    result = await queued
    assert result.status == "cancel"
    assert result.error == "the controller closed"
    assert not children()


async def test_an_exception_in_the_block_still_closes_every_worker(tmp_path: Path) -> None:
    async def fail_inside() -> None:
        async with bc.Controller(workers=2) as crew:
            crew.push(hang, str(tmp_path / "started"))
            await wait_for_file(tmp_path / "started")
            raise RuntimeError("user code failed")

    with pytest.raises(RuntimeError, match="user code failed"):
        await fail_inside()
    assert not children()


async def test_cancelling_the_block_still_closes_every_worker(tmp_path: Path) -> None:
    with anyio.move_on_after(60) as scope:
        async with bc.Controller(workers=2) as crew:
            crew.push(hang, str(tmp_path / "started"))
            await wait_for_file(tmp_path / "started")
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert not children()


async def test_cancel_by_name_and_all(controller: MakeController, tmp_path: Path) -> None:
    crew = await controller(workers=1)
    running = crew.push(hang, str(tmp_path / "started"), name="running")
    queued = [crew.push(add, i, i, name=f"q{i}") for i in range(3)]
    await wait_for_file(tmp_path / "started")
    assert crew.cancel(names=["q0", "missing"]) == 1
    assert (await queued[0]).status == "cancel"
    assert crew.cancel(all=True) == 3
    assert (await running).status == "cancel"
    assert [(await task).status for task in queued[1:]] == ["cancel", "cancel"]
    assert crew.task("q1") is None


async def test_workers_scale_to_demand_and_leave_when_idle(controller: MakeController) -> None:
    crew = await controller(workers=3, seconds_idle=0.5)
    await crew.map(hang_briefly, *[[]])  # nothing: no worker
    assert crew.summary()["workers"][0] == 0
    frame = await crew.map(lambda _: os.getpid(), range(12))
    assert 1 <= frame["result"].n_unique() <= 3
    with anyio.fail_after(20):
        while crew.summary()["workers"][0] > 0:
            await anyio.sleep(0.05)
    assert (await crew.push(add, 1, 1)).result == 2  # and come back on demand


async def test_tasks_pushed_together_launch_their_workers_together(
    controller: MakeController,
) -> None:
    launcher = RecordingLauncher()
    crew = await controller(workers=3, launcher=launcher)
    frame = await crew.map(lambda _: (os.getpid(), os.environ["BATCHCREW_WORKER_INDEX"]), range(9))
    assert [request.count for request in launcher.requests] == [3]
    request = launcher.requests[0]
    assert request.command == ("python", "-m", "batchcrew.worker")
    assert request.environment["BATCHCREW_LAUNCH"] == request.launch
    assert "BATCHCREW_SECRET_KEY" in request.environment
    indexes = {index for _, index in frame["result"].to_list()}
    assert indexes <= {"0", "1", "2"}
    assert len({worker for worker in frame["worker"]}) == len(indexes)


async def test_tasks_max_replaces_workers(controller: MakeController) -> None:
    crew = await controller(workers=1, tasks_max=2)
    frame = await crew.map(lambda _: os.getpid(), range(6))
    pids = frame["result"].to_list()
    assert len(set(pids)) == 3
    assert pids[0] == pids[1]


async def test_task_lookup_by_name(controller: MakeController) -> None:
    crew = await controller()
    task = crew.push(add, 1, 2, name="find-me")
    assert crew.task("find-me") is task or task.done()
    await task
    assert crew.task("find-me") is None


async def test_a_launcher_that_cannot_start_workers_raises_launch_error(
    controller: MakeController, tmp_path: Path
) -> None:
    launcher = bc.LocalLauncher(python=str(tmp_path / "no-such-python"))
    crew = await controller(workers=2, launcher=launcher, launch_failures_max=3)
    first = crew.push(add, 1, 2)
    second = crew.push(add, 3, 4)
    with pytest.raises(bc.LaunchError, match="3 launches in a row failed") as raised:
        await first
    assert "no-such-python" in str(raised.value)
    with pytest.raises(bc.LaunchError):
        await second
    with pytest.raises(bc.LaunchError):
        await crew.wait("all", timeout=5)
    with pytest.raises(bc.LaunchError):
        crew.push(add, 5, 6)


async def test_a_worker_that_exits_at_once_counts_as_a_failed_launch(
    controller: MakeController, tmp_path: Path
) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\nexit 7\n")
    broken.chmod(0o755)
    crew = await controller(
        workers=1, launcher=bc.LocalLauncher(python=str(broken)), launch_failures_max=2
    )
    with pytest.raises(bc.LaunchError, match="exited with code 7"):
        await crew.push(add, 1, 2)


def test_the_controller_runs_on_uvloop(tmp_path: Path) -> None:
    """FastAPI under uvicorn runs on uvloop when it is installed: the whole path works there."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop is in the test extra")
    started = tmp_path / "started"

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with bc.Controller(workers=2, seconds_heartbeat=5.0) as crew:
            frame = await crew.map(add, range(50), range(50))
            assert frame["result"].to_list() == [2 * i for i in range(50)]
            long = crew.push(hang, str(started))
            await wait_for_file(started)
            assert long.cancel()
            assert (await crew.push(pid)).status == "success"

    uvloop.run(asyncio.wait_for(main(), 60))
    assert not children()


def run_script(folder: Path, source: str) -> str:
    """Run `source` as a script of its own (its functions are `__main__`'s); its output."""
    script = folder / "script.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_functions_of_a_script_travel_as_arguments_too(tmp_path: Path) -> None:
    """A script's own function, passed as an argument, is copied by value like the task's
    function: plain pickle would name `__main__`, which is another module on the worker."""
    output = run_script(
        tmp_path,
        "import asyncio\n"
        "import batchcrew as bc\n"
        "def plus_one(x):\n"
        "    return x + 1\n"
        "def apply(function, value):\n"
        "    return function(value)\n"
        "async def main():\n"
        "    async with bc.Controller(workers=1, seconds_heartbeat=5.0) as crew:\n"
        "        print((await crew.push(apply, plus_one, 41)).result)\n"
        "asyncio.run(main())\n",
    )
    assert output == "42"


def test_a_script_function_pushed_again_sees_what_changed_since(tmp_path: Path) -> None:
    """A script's (or notebook's) function travels by value; pushed again, it must carry the
    globals and defaults it has now, whether its pickle is reused or made again."""
    output = run_script(
        tmp_path,
        "import asyncio, math\n"
        "import batchcrew as bc\n"
        "THRESHOLD = 1\n"
        "DATA = [10]\n"
        "def above(x):\n"
        "    return math.floor(x) > THRESHOLD\n"
        "def first():\n"
        "    return DATA[0]\n"
        "def scaled(x, factor=2):\n"
        "    return x * factor\n"
        "async def main():\n"
        "    global THRESHOLD, above\n"
        "    async with bc.Controller(workers=1, seconds_heartbeat=5.0) as crew:\n"
        "        seen = [(await crew.push(above, 3)).result, (await crew.push(above, 3)).result]\n"
        "        THRESHOLD = 5\n"
        "        seen.append((await crew.push(above, 3)).result)\n"
        "        seen.append((await crew.push(first)).result)\n"
        "        DATA[0] = 20\n"
        "        seen.append((await crew.push(first)).result)\n"
        "        seen.append((await crew.push(scaled, 3)).result)\n"
        "        scaled.__defaults__ = (10,)\n"
        "        seen.append((await crew.push(scaled, 3)).result)\n"
        "        def above(x):\n"
        "            return x < THRESHOLD\n"
        "        seen.append((await crew.push(above, 3)).result)\n"
        "        print(seen)\n"
        "asyncio.run(main())\n",
    )
    assert output == "[True, True, False, 10, 20, 6, 30, True]"


class BrokenLauncher(bc.LocalLauncher):
    async def open(self) -> None:
        raise PermissionError("no right to start workers here")


async def test_a_launcher_that_cannot_open_fails_start_with_its_own_error() -> None:
    controller = bc.Controller(launcher=BrokenLauncher())
    with pytest.raises(PermissionError, match="no right to start workers here"):
        await controller.start()
    assert not controller.running
