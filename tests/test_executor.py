"""The concurrent.futures bridge, used from plain synchronous code: `ProcessPoolExecutor`'s
contract (CPython's own tests of it run in tests/test_peer_cpython.py), and each bug that
contract once caught here."""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any

import psutil
import pytest

import batchcrew as bc
from tests.conftest import children

ROOT = Path(__file__).parent.parent


def add(x: int, y: int) -> int:
    return x + y


def fail() -> None:
    raise ValueError("nope")


class Refused(Exception):
    """An exception class of the caller's own: it comes back as itself."""


def refuse(why: str) -> None:
    raise Refused(why)


def eventually(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll `condition` until it holds or `seconds` pass (synchronous code, no event loop)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def executor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("batchcrew-executor")]


def test_submit_and_map_from_synchronous_code() -> None:
    with bc.Executor(name="sync", workers=2, seconds_heartbeat=5.0) as executor:
        futures = [executor.submit(add, i, i) for i in range(10)]
        assert [future.result(timeout=30) for future in futures] == [2 * i for i in range(10)]
        assert list(executor.map(add, range(5), range(5), timeout=30)) == [0, 2, 4, 6, 8]
        assert list(executor.map(add, range(7), range(7), chunksize=3)) == [2 * i for i in range(7)]
        assert executor.controller.summary()["tasks"][0] == 18  # 10 + 5 + 3 chunks
    assert not children()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(add, 1, 2)
    executor.shutdown()  # idempotent


def test_a_task_raises_its_own_exception_with_the_workers_traceback_as_its_cause() -> None:
    with bc.Executor(workers=1, seconds_heartbeat=5.0) as executor:
        with pytest.raises(ValueError, match="nope") as raised:
            executor.submit(fail).result(timeout=30)
        cause = raised.value.__cause__
        assert isinstance(cause, _RemoteTraceback)
        assert 'in fail\n    raise ValueError("nope")' in str(cause)
        with pytest.raises(Refused, match="not today"):
            list(executor.map(refuse, ["not today"], timeout=30))


def test_what_cannot_travel_or_crashed_raises_a_batchcrew_error_that_says_why() -> None:
    with bc.Executor(workers=1, crashes_max=0, seconds_heartbeat=5.0) as executor:
        with pytest.raises(bc.SerializationError, match="cannot pickle") as unpicklable:
            executor.submit(add, threading.Lock(), 1).result(timeout=30)
        assert isinstance(unpicklable.value, pickle.PicklingError)  # as the stdlib raises
        with pytest.raises(bc.CrashError, match="status crash") as crashed:
            executor.submit(os._exit, 3).result(timeout=30)
        assert isinstance(crashed.value, BrokenProcessPool)
        assert crashed.value.result.status == "crash"
        assert executor.submit(add, 1, 2).result(timeout=30) == 3  # it carries on


class ExitAtUnpickle:
    """A value whose unpickling, in the caller, raises SystemExit."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (sys.exit, ())


def exit_at_unpickle() -> ExitAtUnpickle:
    return ExitAtUnpickle()


def test_a_result_whose_unpickling_raises_system_exit_fails_alone() -> None:
    """It used to kill the Executor's loop thread: every later submit hung."""
    with bc.Executor(workers=1, seconds_heartbeat=5.0) as executor:
        with pytest.raises(bc.TaskError, match="cannot be unpickled here: SystemExit"):
            executor.submit(exit_at_unpickle).result(timeout=30)
        assert executor.submit(add, 2, 3).result(timeout=30) == 5


def wait_for(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def test_cancel_running_and_shutdown_cancel_futures_follow_the_standard_library(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    executor = bc.Executor(workers=1, seconds_heartbeat=5.0)
    try:
        running = executor.submit(wait_for, str(release))
        queued = [executor.submit(add, i, 0) for i in range(6)]
        assert eventually(running.running)
        assert not running.cancel()  # a worker holds it: it runs on
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        assert not queued[-1].running()
        done, _ = concurrent.futures.wait([queued[-1]], timeout=5)
        assert done == {queued[-1]}  # `wait` sees a cancelled future at once
        executor.shutdown(wait=False, cancel_futures=True)
        release.touch()
    finally:
        executor.shutdown(wait=True)
    assert running.result(timeout=0) == "released"  # a held call finishes
    assert all(future.cancelled() for future in queued[3:])
    for future in queued:  # the rest ran (those a worker held before the shutdown)
        assert future.cancelled() or future.result(timeout=0) == queued.index(future)
    assert not children()
    assert not executor_threads()


def started_then_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def test_interrupt_stops_a_running_task_and_its_worker_goes_on(tmp_path: Path) -> None:
    started = tmp_path / "started"
    with bc.Executor(workers=1, seconds_heartbeat=5.0) as executor:
        future = executor.submit(started_then_sleep, str(started))
        assert eventually(started.exists)
        assert not future.cancel()
        assert executor.interrupt(future)
        assert future.cancelled()
        assert executor.submit(os.getpid).result(timeout=30) == int(started.read_text())
        assert executor.controller.counts()["cancel"] == 1
        assert not executor.interrupt(future)
        with pytest.raises(ValueError, match="not a future of this Executor"):
            executor.interrupt(concurrent.futures.Future())


def labelled(value: int, *, name: str, seed: int) -> str:
    return f"{name}:{value}:{seed}"


def test_submit_passes_every_keyword_to_the_function() -> None:
    with bc.Executor(workers=1, seconds_heartbeat=5.0) as executor:
        future = executor.submit(labelled, 1, name="mine", seed=7)
        assert future.result(timeout=30) == "mine:1:7"


def raise_on_load() -> None:
    raise RuntimeError("the model file is missing")


def test_after_a_launch_error_submit_refuses_and_shutdown_still_closes() -> None:
    executor = bc.Executor(workers=1, initializer=raise_on_load, launch_failures_max=2)
    future = executor.submit(add, 1, 2)
    with pytest.raises(bc.LaunchError, match="the model file is missing") as raised:
        future.result(timeout=50)
    assert isinstance(raised.value, concurrent.futures.BrokenExecutor)
    with pytest.raises(bc.LaunchError):
        executor.submit(add, 1, 2)
    executor.shutdown()  # raises nothing, and closes
    assert not executor.controller.running
    assert not executor_threads()
    assert not children()


def test_a_bad_option_raises_before_any_thread_starts() -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="workers must be"):
        bc.Executor(workers=0)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        bc.Executor(max_workers=0)
    with pytest.raises(TypeError, match="not both"):
        bc.Executor(max_workers=2, workers=2)
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        bc.Executor(max_tasks_per_child=0)
    assert threading.active_count() == before
    assert not executor_threads()


def test_the_standard_librarys_constructor_names_work() -> None:
    with bc.Executor(2, max_tasks_per_child=1, seconds_heartbeat=5.0) as executor:
        assert executor.controller.max_workers == 2
        pids = {executor.submit(os.getpid).result(timeout=30) for _ in range(3)}
    assert len(pids) == 3  # one task per worker


def test_a_collected_executor_finishes_its_work_and_shuts_down() -> None:
    executor = bc.Executor(workers=1, seconds_heartbeat=5.0)
    future = executor.submit(add, 4, 5)
    alive = weakref.ref(executor)
    del executor
    gc.collect()
    assert alive() is None
    assert future.result(timeout=30) == 9
    assert eventually(lambda: not executor_threads())
    assert eventually(lambda: not children())


def remember(event: Any) -> None:
    global EVENT
    EVENT = event


def store(shared: Any, key: str, value: int) -> bool:
    shared[key] = value
    EVENT.set()
    return True


def test_a_multiprocessing_manager_proxy_works_in_a_task_and_an_initializer() -> None:
    """Local workers get the caller's authkey, as multiprocessing's children do."""
    with multiprocessing.Manager() as manager:
        event = manager.Event()
        with bc.Executor(workers=1, initializer=remember, initargs=(event,)) as executor:
            shared = manager.dict()
            assert executor.submit(store, shared, "answer", 42).result(timeout=30)
            assert shared["answer"] == 42
            assert event.is_set()


def run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


WORK = """
    import os, sys, time
    import batchcrew as bc

    def work(path, i):
        time.sleep(0.2)
        with open(path, "a") as log:
            log.write(f"{i} {os.getpid()}\\n")

    executor = bc.Executor(workers=2)
    for i in range(6):
        executor.submit(work, sys.argv[0] + ".log", i)
"""


@pytest.mark.parametrize(
    "ending", ["", "executor.shutdown(wait=False)", "del executor"], ids=["exit", "nowait", "del"]
)
def test_work_submitted_before_exit_completes_and_no_worker_outlives_the_script(
    tmp_path: Path, ending: str
) -> None:
    ran = run_script(WORK + f"    {ending}\n", tmp_path)
    assert ran.returncode == 0, ran.stderr
    lines = (tmp_path / "script.py.log").read_text().split()
    assert sorted(map(int, lines[::2])) == list(range(6))
    pids = {int(pid) for pid in lines[1::2]}
    assert eventually(lambda: not any(psutil.pid_exists(pid) for pid in pids), 10)


def test_submit_after_the_interpreter_began_to_exit_raises_runtime_error(tmp_path: Path) -> None:
    ran = run_script(
        """
        import atexit
        import batchcrew as bc

        executor = bc.Executor(workers=1)

        def late():
            try:
                executor.submit(abs, -1)
            except RuntimeError as error:
                print("refused:", error)

        atexit.register(late)
        """,
        tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert "refused: cannot schedule new futures after interpreter shutdown" in ran.stdout
