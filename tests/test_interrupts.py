"""Hold over running tasks: cancel interrupts, per-task timeouts, and a map that stops early,
with real worker processes. Every wait is on an event under a timeout, never on a sleep."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import anyio
import psutil
import pytest

import batchcrew as bc
from tests.conftest import MakeController


def announce_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


async def announce_and_sleep_async(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    await asyncio.sleep(600)


def announce_and_ignore_interrupts(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    while True:
        try:
            time.sleep(600)
        except KeyboardInterrupt:
            continue


def pid(_: object = None) -> int:
    return os.getpid()


def step(index: int) -> int:
    if index == 3:
        raise ValueError("task 3 fails")
    time.sleep(0.2 if index < 3 else 600)
    return index


async def wait_for_pid(path: Path, within: float = 30.0) -> int:
    with anyio.fail_after(within):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.01)
    return int(path.read_text())


async def gone(process_id: int, within: float = 30.0) -> None:
    with anyio.fail_after(within):
        while psutil.pid_exists(process_id):
            try:
                if psutil.Process(process_id).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            await anyio.sleep(0.02)


@pytest.mark.parametrize("function", [announce_and_sleep, announce_and_sleep_async])
async def test_cancelling_a_running_task_interrupts_it_and_frees_the_same_worker(
    controller: MakeController, tmp_path: Path, function: object
) -> None:
    crew = await controller(workers=1)
    started = tmp_path / "started"
    long = crew.push(function, str(started), name="long")
    worker_pid = await wait_for_pid(started)
    assert long.cancel()
    cancelled = await long  # resolved at once, by the controller
    assert cancelled.status == "cancel"
    assert not long.cancel()  # already resolved
    with anyio.fail_after(10):  # far below the task's 600 s: it was interrupted
        after = await crew.push(pid)
    assert after.result == worker_pid  # the same process, no relaunch
    assert after.worker == cancelled.worker
    assert crew.counts()["cancel"] == 1
    assert crew.counts()["success"] == 1


async def test_a_task_that_ignores_the_interrupt_has_its_worker_ended(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_interrupt=0.5)
    started = tmp_path / "started"
    stubborn = crew.push(announce_and_ignore_interrupts, str(started))
    worker_pid = await wait_for_pid(started)
    assert crew.cancel([stubborn.name]) == 1
    assert (await stubborn).status == "cancel"
    await gone(worker_pid)
    after = await crew.push(pid)
    assert after.status == "success"
    assert after.result != worker_pid  # a replacement took the next task
    counts = crew.counts()
    assert (counts["cancel"], counts["success"], counts["crash"], counts["unresolved"]) == (
        1,
        1,
        0,
        0,
    )


async def test_a_task_past_its_timeout_resolves_as_a_timeout_error_and_frees_its_worker(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1)
    started = tmp_path / "started"
    result = await crew.push(announce_and_sleep, str(started), seconds_timeout=1)
    worker_pid = int(started.read_text())
    assert result.status == "error"
    assert result.error is not None
    assert result.error.startswith("TimeoutError")
    assert "seconds_timeout=1" in result.error
    assert result.seconds is not None
    assert 1.0 <= result.seconds < 600
    after = await crew.push(pid)
    assert after.result == worker_pid
    assert crew.counts()["crash"] == 0


async def test_the_controller_default_timeout_and_its_overrides(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_timeout=0.5)
    timed = await crew.push(announce_and_sleep, str(tmp_path / "a"))
    assert timed.error is not None
    assert "seconds_timeout=0.5" in timed.error
    frame = await crew.map(pid, [], error="ignore")
    assert frame.height == 0
    frame = await crew.map(
        announce_and_sleep, [str(tmp_path / "b")], seconds_timeout=0.3, error="ignore"
    )
    assert "seconds_timeout=0.3" in frame["error"][0]
    unlimited = crew.push(time.sleep, 0.8, seconds_timeout=float("inf"))
    assert (await unlimited).status == "success"  # past the default, and not interrupted


@pytest.mark.parametrize("bad", [0, -1, "1", True])
async def test_a_bad_timeout_is_refused_at_push(controller: MakeController, bad: object) -> None:
    crew = await controller(workers=1)
    with pytest.raises(ValueError, match="seconds_timeout must be a positive number"):
        crew.push(pid, seconds_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds_timeout must be a positive number"):
        bc.Controller(seconds_timeout=bad)  # type: ignore[arg-type]
    assert crew.counts()["tasks"] == 0


async def test_map_raises_at_the_first_failure_and_cancels_the_rest(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2)
    with anyio.fail_after(30), pytest.raises(bc.TaskError, match="task 3 fails") as raised:
        await crew.map(step, range(200))  # every task but 0, 1, 2 and 3 would sleep 600 s
    assert raised.value.result.error == "ValueError: task 3 fails"
    assert "unresolved task(s) were cancelled" in str(raised.value)
    counts = crew.counts()
    assert counts["unresolved"] == 0
    assert counts["error"] == 1
    assert counts["success"] + counts["cancel"] == 199
    assert counts["success"] <= 3
    assert crew.collect().height == 0  # the map took its own results
    # The workers were interrupted, not left sleeping: both answer at once.
    with anyio.fail_after(10):
        frame = await crew.map(pid, range(4))
    assert frame["status"].to_list() == ["success"] * 4


async def test_cancelling_the_coroutine_awaiting_map_cancels_its_tasks(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=2)
    paths = [str(tmp_path / f"task-{index}") for index in range(10)]
    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(crew.map, announce_and_sleep, paths)
            await wait_for_pid(Path(paths[0]))
            group.cancel_scope.cancel()
    assert not scope.cancelled_caught
    counts = crew.counts()
    assert counts["cancel"] == 10
    assert counts["unresolved"] == 0
    with anyio.fail_after(10):
        assert (await crew.push(pid)).status == "success"


async def test_cancelling_a_coroutine_awaiting_a_task_leaves_the_task_running(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1)
    started = tmp_path / "started"
    task = crew.push(announce_and_sleep, str(started))
    with anyio.move_on_after(30):
        async with anyio.create_task_group() as group:

            async def wait_for_it() -> None:
                await task

            group.start_soon(wait_for_it)
            await wait_for_pid(started)
            group.cancel_scope.cancel()
    assert not task.done()  # it belongs to the controller, not to who awaited it
    assert task.cancel()
    assert (await task).status == "cancel"


class SlowToLoad:
    """An argument that takes 3 s to unpickle on the worker, as a heavy import would."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_load_slowly, ())


def _load_slowly() -> SlowToLoad:
    time.sleep(3)
    return SlowToLoad()


def quick(_: object) -> str:
    return "done"


async def test_loading_time_does_not_count_against_a_tasks_timeout(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1, seconds_interrupt=0.5)
    assert (await crew.push(pid)).status == "success"  # the worker is up
    result = await crew.push(quick, SlowToLoad(), seconds_timeout=1)
    assert (result.status, result.result, result.error) == ("success", "done", None)
    assert crew.counts()["error"] == 0
