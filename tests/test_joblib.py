"""The joblib backend: scikit-learn and joblib.Parallel on real batchcrew workers (local
processes and LocalBatch jobs), errors as joblib reports them, and aborting that interrupts.
Every wait is on an event (a file a task writes, a count) under a deadline, never on a sleep."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import batchcrew as bc
import batchcrew.joblib
from batchcrew import aws
from batchcrew.testing import LocalBatch
from batchcrew.testing.pytest_plugin import MakeController
from tests.conftest import RecordingLauncher
from tests.joblib_tasks import (
    announce_then_run_long,
    announce_then_wait_for_go,
    crash_the_worker,
    initialized_here,
    mark_initialized,
    nested,
    pid,
    raise_it,
    third_fails,
    wait_for_files,
)

pytestmark = pytest.mark.timeout(120)

GRID = {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}
EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "sklearn_search.py"


def search() -> GridSearchCV:
    """A small scikit-learn search: 6 candidates x 3 folds = 18 fits, with n_jobs=-1."""
    features, labels = load_iris(return_X_y=True)
    fitted = GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1)
    fitted.fit(features, labels)
    return fitted


@pytest.fixture(scope="module")
def reference() -> GridSearchCV:
    """The same search on joblib's default backend."""
    return search()


def assert_same_search(got: GridSearchCV, expected: GridSearchCV) -> None:
    assert got.best_params_ == expected.best_params_
    assert got.best_score_ == expected.best_score_
    for key, value in expected.cv_results_.items():
        if key.endswith("_time"):
            continue  # run times differ; every score and rank must not
        assert np.array_equal(np.asarray(got.cv_results_[key]), np.asarray(value)), key


@pytest.fixture
def executor() -> Iterator[bc.Executor]:
    """A controller of three workers on its own loop thread, for `controller=`."""
    with bc.Executor(name="joblib-test", workers=3, seconds_heartbeat=5.0) as running:
        yield running


# -- scikit-learn ------------------------------------------------------------------------------


def test_grid_search_on_local_workers_equals_the_default_backend(
    reference: GridSearchCV,
) -> None:
    launcher = RecordingLauncher()
    with joblib.parallel_config(
        backend="batchcrew", workers=2, launcher=launcher, seconds_heartbeat=5.0
    ):
        first = search()
        second = search()  # a second Parallel call: a new controller, the same launcher
    assert_same_search(first, reference)
    assert_same_search(second, reference)
    assert launcher.requests  # the fits ran on the launcher's workers
    assert {request.controller for request in launcher.requests} == {"joblib"}


async def test_grid_search_on_aws_batch_workers_equals_the_default_backend(
    reference: GridSearchCV, local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    options = aws.BatchOptions(
        job_definition=local_batch.job_definition, job_queue=local_batch.job_queue
    )
    launcher = aws.BatchLauncher(options)

    def run() -> GridSearchCV:
        with joblib.parallel_config(
            backend="batchcrew",
            workers=3,
            launcher=launcher,
            host="127.0.0.1",
            seconds_heartbeat=5.0,
        ):
            return search()

    # The emulator serves on this test's loop: the search, which blocks, runs in a thread.
    with anyio.fail_after(100):
        fitted = await anyio.to_thread.run_sync(run)
    assert_same_search(fitted, reference)
    submitted = local_batch.requests_for("SubmitJob")
    assert submitted
    assert all(request["jobName"].startswith("joblib-") for request in submitted)
    with anyio.fail_after(20):  # the controller closed with the search, ending its jobs
        while local_batch.process_ids():
            await anyio.sleep(0.05)


async def test_the_documented_example_runs_offline_against_the_emulator() -> None:
    # What the docs say to run: the emulator with a queue and a definition named "search",
    # its environment exported, then the script.
    async with LocalBatch(queues=["search"], job_definition="search") as batch:
        with anyio.fail_after(100):
            done = await anyio.run_process(
                [sys.executable, str(EXAMPLE)], env={**os.environ, **batch.environment()}
            )
        assert batch.requests_for("SubmitJob")
    features, labels = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "kernel": ["linear", "rbf"]}
    expected = GridSearchCV(SVC(), grid, cv=5).fit(features, labels)
    assert done.stdout.decode().splitlines() == [
        f"best parameters: {expected.best_params_}",
        f"best score: {expected.best_score_:.4f}",
    ]


# -- errors and aborting -----------------------------------------------------------------------


def test_a_failing_third_call_raises_in_the_caller_and_cancels_the_rest(
    executor: bc.Executor, tmp_path: Path
) -> None:
    folder = str(tmp_path)
    with (
        joblib.parallel_config(backend="batchcrew", controller=executor.controller),
        pytest.raises(ValueError, match="call 2 fails") as raised,
    ):
        Parallel(n_jobs=3, batch_size=1)(delayed(third_fails)(folder, i) for i in range(50))
    # As joblib reports a worker's error: the original exception, the worker's traceback as
    # its cause.
    cause = raised.value.__cause__
    assert type(cause).__name__ == "_RemoteTraceback"
    assert "in third_fails" in str(cause)
    assert 'raise ValueError("call 2 fails")' in str(cause)

    counts = executor.controller.counts()
    # Six batches went out (pre_dispatch, 2 x n_jobs); the failing one came back, and the
    # other five were cancelled, the two running ones included.
    assert counts["tasks"] == 6
    assert counts["cancel"] == 5
    assert counts["unresolved"] == 0
    assert counts["error"] == counts["crash"] == 0
    # The running calls were interrupted on their workers, which stayed up and take new work.
    wait_for_files([tmp_path / "interrupted-0", tmp_path / "interrupted-1"])
    workers = {int((tmp_path / f"started-{index}").read_text()) for index in (0, 1, 2)}
    with joblib.parallel_config(backend="batchcrew", controller=executor.controller):
        after = Parallel(n_jobs=3)(delayed(pid)(i) for i in range(6))
    assert set(after) <= workers


def test_ctrl_c_in_the_caller_cancels_and_interrupts_what_runs(
    executor: bc.Executor, tmp_path: Path
) -> None:
    folder = str(tmp_path)
    started = [tmp_path / "started-0", tmp_path / "started-1", tmp_path / "started-2"]
    failed: list[BaseException] = []

    def press_ctrl_c() -> None:
        try:
            wait_for_files(started)
        except BaseException as error:
            failed.append(error)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: KeyboardInterrupt in main

    # Python turns SIGINT into KeyboardInterrupt unless the process was started ignoring it
    # (a background job of a shell without job control is): be sure it does here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with (
            joblib.parallel_config(backend="batchcrew", controller=executor.controller),
            pytest.raises(KeyboardInterrupt),
        ):
            Parallel(n_jobs=3, batch_size=1)(
                delayed(announce_then_run_long)(folder, i) for i in range(20)
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    presser.join(timeout=10)
    assert not failed
    counts = executor.controller.counts()
    assert counts["tasks"] == 6
    assert counts["cancel"] == 6
    assert counts["unresolved"] == 0
    wait_for_files([tmp_path / f"interrupted-{index}" for index in range(3)])


def test_an_argument_that_cannot_be_pickled_fails_the_call(executor: bc.Executor) -> None:
    with (
        joblib.parallel_config(backend="batchcrew", controller=executor.controller),
        pytest.raises(bc.SerializationError, match=r"cannot pickle joblib batch .* of pid"),
    ):
        Parallel(n_jobs=2)(delayed(pid)(threading.Lock()) for _ in range(4))
    assert executor.controller.counts()["unresolved"] == 0


SCRIPT = """
import joblib
import batchcrew.joblib

def square(x):  # defined in the script's __main__: it travels by value
    return x * x

if __name__ == "__main__":
    with joblib.parallel_config(backend="batchcrew", workers=2, seconds_heartbeat=5.0):
        print(joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(6)))
"""


def test_functions_of_a_script_run_on_workers(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16, 25]"


def test_a_crashed_batch_raises_a_task_error() -> None:
    with bc.Executor(workers=2, crashes_max=0, seconds_heartbeat=5.0) as fragile:
        with (
            joblib.parallel_config(backend="batchcrew", controller=fragile.controller),
            pytest.raises(bc.TaskError, match="status crash") as raised,
        ):
            Parallel(n_jobs=2)(delayed(crash_the_worker)() for _ in range(2))
        assert raised.value.result.status == "crash"


def test_seconds_timeout_limits_each_batch_and_the_call_raises_a_task_error() -> None:
    with (
        joblib.parallel_config(
            backend="batchcrew", workers=2, seconds_timeout=1, seconds_heartbeat=5.0
        ),
        pytest.raises(bc.TaskError, match="TimeoutError") as raised,
    ):
        Parallel(n_jobs=2, batch_size=1)(delayed(time.sleep)(600) for _ in range(4))
    assert raised.value.result.status == "error"
    assert "seconds_timeout=1" in (raised.value.result.error or "")
    # The call's own controller closed with it, its workers too (the autouse guard checks).


# -- how it is used ----------------------------------------------------------------------------


def test_the_older_parallel_backend_api() -> None:
    with joblib.parallel_backend("batchcrew", workers=2, seconds_heartbeat=5.0):  # n_jobs=-1
        pids = Parallel()(delayed(pid)(i) for i in range(8))
    assert os.getpid() not in pids
    assert len(pids) == 8


def test_an_existing_controller_serves_several_calls_and_stays_up(executor: bc.Executor) -> None:
    with joblib.parallel_config(backend="batchcrew", controller=executor.controller):
        first = set(Parallel(n_jobs=-1)(delayed(pid)(i) for i in range(6)))
        second = set(Parallel(n_jobs=-1)(delayed(pid)(i) for i in range(6)))
    assert os.getpid() not in first | second
    assert len(first | second) <= 3  # its own workers, at most `workers` of them
    assert executor.controller.running  # the controller is the caller's: still up
    counts = executor.controller.counts()
    assert counts["unresolved"] == 0
    assert counts["tasks"] == counts["success"]


def test_n_jobs_caps_the_batches_on_a_controller_of_more_workers(
    executor: bc.Executor, tmp_path: Path
) -> None:
    folder = str(tmp_path)
    results: list[list[int]] = []

    def run() -> None:
        with joblib.parallel_config(backend="batchcrew", controller=executor.controller):
            results.append(
                Parallel(n_jobs=2, batch_size=1)(
                    delayed(announce_then_wait_for_go)(folder, i) for i in range(6)
                )
            )

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    wait_for_files([tmp_path / "started-0", tmp_path / "started-1"])
    # Two batches run and joblib holds four more (pre_dispatch): none of those reached the
    # controller, whose third worker stays free.
    assert executor.controller.counts()["tasks"] == 2
    (tmp_path / "go").write_text("go")
    caller.join(timeout=60)
    assert results == [list(range(6))]
    assert executor.controller.counts()["tasks"] == 6


def test_nested_parallel_calls_run_in_threads_on_the_worker(executor: bc.Executor) -> None:
    with joblib.parallel_config(backend="batchcrew", controller=executor.controller):
        results = Parallel(n_jobs=-1, batch_size=1)(delayed(nested)(i) for i in range(3))
    for index, (backend, level, inner, worker) in enumerate(results):
        assert (backend, level) == ("ThreadingBackend", 1)
        assert inner == [index * k for k in range(4)]
        assert worker != os.getpid()
    assert executor.controller.counts()["tasks"] == 3  # nested calls stayed on their workers


async def test_from_a_running_event_loop_as_in_jupyter(controller: MakeController) -> None:
    # This coroutine blocks its own loop while joblib waits, as a notebook cell does: with
    # options, the backend's controller runs on a loop of its own.
    with joblib.parallel_config(backend="batchcrew", workers=2, seconds_heartbeat=5.0):
        pids = Parallel(n_jobs=-1)(delayed(pid)(i) for i in range(4))
    assert os.getpid() not in pids

    # A controller on this very loop cannot serve a call that blocks the loop: a clear error.
    crew = await controller(workers=2)
    with (
        joblib.parallel_config(backend="batchcrew", controller=crew),
        pytest.raises(RuntimeError, match="this thread's event loop"),
    ):
        Parallel(n_jobs=2)(delayed(pid)(i) for i in range(4))

    # From another thread, the same controller serves joblib while this loop runs on.
    def run() -> list[int]:
        with joblib.parallel_config(backend="batchcrew", controller=crew):
            return list(Parallel(n_jobs=2)(delayed(pid)(i) for i in range(4)))

    with anyio.fail_after(60):
        pids = await anyio.to_thread.run_sync(run)
    assert os.getpid() not in pids
    assert crew.counts()["unresolved"] == 0


# -- n_jobs and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "n_jobs", "expected"),
    [
        ({"workers": 4}, -1, 4),
        ({"workers": 4}, -2, 3),
        ({"workers": 4}, -9, 1),
        ({"workers": 4}, 2, 2),
        ({"workers": 4}, 8, 4),
        ({"workers": 4}, None, 4),  # Parallel() without n_jobs: all the workers
        ({}, 3, 3),  # without workers=, n_jobs workers
        ({}, -1, 1),  # ... and n_jobs=-1 means the controller's default, one
    ],
)
def test_effective_n_jobs(options: dict[str, Any], n_jobs: int | None, expected: int) -> None:
    with joblib.parallel_config(backend="batchcrew", **options):
        assert joblib.effective_n_jobs(n_jobs) == expected


def test_one_worker_runs_the_calls_here_and_says_why() -> None:
    with (
        joblib.parallel_config(backend="batchcrew", workers=1),
        pytest.warns(UserWarning, match="runs the calls in this process"),
    ):
        pids = Parallel(n_jobs=-1)(delayed(pid)(i) for i in range(3))
    assert pids == [os.getpid()] * 3


def test_parallel_without_n_jobs_uses_every_worker_or_says_why_not() -> None:
    with joblib.parallel_config(backend="batchcrew", workers=2, seconds_heartbeat=5.0):
        pids = Parallel()(delayed(pid)(i) for i in range(6))
    assert os.getpid() not in pids
    with (
        joblib.parallel_config(backend="batchcrew"),
        pytest.warns(UserWarning, match=r"as Parallel\(\) without n_jobs\) comes to one"),
    ):
        assert Parallel()(delayed(pid)(i) for i in range(2)) == [os.getpid()] * 2


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_a_base_exception_a_call_raises_comes_back_with_its_type(
    executor: bc.Executor, raised: type[BaseException]
) -> None:
    """It came back as TaskError; docs/joblib.md promises the call's own type."""
    with (
        joblib.parallel_config(backend="batchcrew", controller=executor.controller),
        pytest.raises(raised),
    ):
        Parallel(n_jobs=2)(delayed(raise_it)(raised, i) for i in range(4))
    assert executor.submit(pid, 0).result(timeout=30) != os.getpid()  # the workers carry on


def test_parallels_initializer_and_a_manager_proxy_reach_every_worker() -> None:
    with multiprocessing.Manager() as manager:
        status = manager.dict()
        seen = Parallel(
            backend="batchcrew", n_jobs=2, initializer=mark_initialized, initargs=(status,)
        )(delayed(initialized_here)(status) for _ in range(8))
    assert all(seen)
    with (
        joblib.parallel_config(backend="batchcrew", controller=bc.Controller(name="idle")),
        pytest.raises(ValueError, match=r"Parallel\(initargs, initializer=...\) would not apply"),
    ):
        Parallel(n_jobs=2, initializer=mark_initialized, initargs=({},))(
            delayed(pid)(i) for i in range(2)
        )


def test_bad_input_gets_a_clear_error(executor: bc.Executor) -> None:
    with pytest.raises(TypeError, match=r"unknown option 'worker'.*did you mean 'workers'"):
        joblib.parallel_config(backend="batchcrew", worker=4)
    with pytest.raises(ValueError, match="workers must be a whole number >= 1, not 0"):
        joblib.parallel_config(backend="batchcrew", workers=0)
    with pytest.raises(ValueError, match="either controller= or a controller's options"):
        joblib.parallel_config(backend="batchcrew", controller=executor.controller, workers=2)
    with pytest.raises(TypeError, match=r"pass executor.controller"):
        joblib.parallel_config(backend="batchcrew", controller=executor)
    with (
        joblib.parallel_config(backend="batchcrew", workers=2),
        pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"),
    ):
        Parallel(n_jobs=0)(delayed(pid)(i) for i in range(2))
    with (
        joblib.parallel_config(backend="batchcrew", controller=bc.Controller(name="idle")),
        pytest.raises(RuntimeError, match="'idle' is not running"),
    ):
        Parallel(n_jobs=2)(delayed(pid)(i) for i in range(2))


def test_the_module_registers_the_backend() -> None:
    assert isinstance(batchcrew.joblib.BatchcrewBackend(), joblib.parallel.ParallelBackendBase)
    assert joblib.parallel.BACKENDS["batchcrew"] is batchcrew.joblib.BatchcrewBackend
