"""CPython 3.11's own executor tests (test_concurrent_futures), run against `bc.Executor`.

The suite is Debian's `libpython3.11-testsuite` (/usr/lib/python3.11/test; set
BATCHCREW_CPYTHON_TESTS to another copy of CPython 3.11's Lib/test). The adapter maps only the
constructor (tests/peers/shim/batchcrew_futures.py) and the name the tests' scripts import
(tests/peers/shim/sitecustomize.py, on PYTHONPATH for every process they start). Tests that
read a pool's internals, or test `ProcessPoolExecutor` by name, are skipped with that reason;
the differences batchcrew keeps on purpose are expected failures, each with its reason, as
docs/index.md lists them ("Where it differs from ProcessPoolExecutor").
"""

from __future__ import annotations

import importlib
import os
import sys
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SHIM = Path(__file__).parent / "peers" / "shim"
SUITE = Path(os.environ.get("BATCHCREW_CPYTHON_TESTS", "/usr/lib/python3.11/test"))

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

INTERNALS = "reads ProcessPoolExecutor's internals ({})"
BY_NAME = "tests concurrent.futures.ProcessPoolExecutor by name, not the executor under test"

SKIPPED = {
    "test_processes_terminate": INTERNALS.format("_processes"),
    "test_context_manager_shutdown": BY_NAME,
    "test_del_shutdown": BY_NAME,  # (tests/test_executor.py has it for bc.Executor)
    "test_shutdown_no_wait": BY_NAME,  # (likewise)
    "test_killed_child": INTERNALS.format("_processes"),
    "test_saturation": INTERNALS.format("_processes, _max_workers"),
    "test_idle_process_reuse_one": INTERNALS.format("_processes, _max_workers"),
    "test_idle_process_reuse_multiple": INTERNALS.format("_processes, _max_workers"),
    "test_max_tasks_per_child": INTERNALS.format("_processes"),
    "test_max_tasks_per_child_defaults_to_spawn_context": INTERNALS.format("_mp_context"),
    "test_shutdown_deadlock_pickle": INTERNALS.format("_executor_manager_thread"),
    "test_max_workers_too_large": "a Windows limit",
}

# Differences kept on purpose (docs/index.md says why): each must fail, or it is a failure.
DIFFERENT = {
    "test_exit_at_task_unpickle": (
        "a task whose unpickling raises SystemExit on the worker fails alone with that "
        "SystemExit; the worker and the Executor carry on (no BrokenProcessPool)"
    ),
    "test_error_at_task_unpickle": (
        "a task whose unpickling raises fails alone with that error; the worker and the "
        "Executor carry on (no BrokenProcessPool)"
    ),
    "test_error_during_result_unpickle_in_result_handler": (
        "a result that cannot be unpickled in the caller fails that task alone (TaskError, "
        "saying why); the Executor carries on (no BrokenProcessPool)"
    ),
    "test_exit_during_result_unpickle_in_result_handler": (
        "a result whose unpickling raises SystemExit fails that task alone (TaskError, saying "
        "why); the Executor carries on (no BrokenProcessPool)"
    ),
    "test_cancel_futures": (
        "shutdown(cancel_futures=True) cancels every call no worker holds yet; right after "
        "the submits none does (workers are still starting), so every call is cancelled, where "
        "ProcessPoolExecutor has already moved max_workers + 1 of them to its call queue"
    ),
    "FailingInitializer.test_initializer": (
        "the initializer's traceback is logged by the worker (in its log) and quoted in the "
        "LaunchError, not logged on this process's concurrent.futures logger"
    ),
}


def _load() -> tuple[Any, type]:
    """test.test_concurrent_futures, found where the shim says (as the workers find it), and
    the adapted executor."""
    sys.path.insert(0, str(SHIM))
    try:
        # The shim's sitecustomize: it extends the `test` package as in the workers.
        shim = importlib.import_module("sitecustomize")
        shim._extend_test_package()
        adapter = importlib.import_module("batchcrew_futures")
        return importlib.import_module("test.test_concurrent_futures"), adapter.BatchcrewExecutor
    finally:
        sys.path.remove(str(SHIM))


if not (SUITE / "test_concurrent_futures.py").exists():
    if os.environ.get("BATCHCREW_REQUIRE_PEERS"):  # (.ci/run: the suite must run there)
        raise FileNotFoundError(f"CPython's test_concurrent_futures.py is not at {SUITE}")
    pytest.skip(
        f"CPython 3.11's test_concurrent_futures.py is not at {SUITE}: install Debian's "
        "libpython3.11-testsuite (.ci/run does) or set BATCHCREW_CPYTHON_TESTS",
        allow_module_level=True,
    )

suite, BatchcrewExecutor = _load()


@pytest.fixture(autouse=True)
def shim_on_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process a test starts (workers, the scripts of the exit tests) finds the shim."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(SHIM) if not path else f"{SHIM}{os.pathsep}{path}")


def _not_isolated(run: Callable[..., Any]) -> Callable[..., Any]:
    # assert_python_ok starts `python -I` (no PYTHONPATH) unless given environment variables:
    # give it the one that makes its script find `BatchcrewExecutor`.
    def wrapped(*args: Any, **env: Any) -> Any:
        return run(*args, PYTHONPATH=os.environ["PYTHONPATH"], **env)

    return wrapped


suite.assert_python_ok = _not_isolated(suite.assert_python_ok)


class BatchcrewMixin(suite.ExecutorMixin):  # type: ignore[misc, name-defined]
    executor_type = BatchcrewExecutor

    # No `ctx`, so that setUp passes no mp_context; the tests that make their own Manager or
    # Event from `get_context()` get the start method batchcrew's workers are closest to.
    def get_context(self) -> Any:
        return suite.mp.get_context("spawn")

    def tearDown(self) -> None:
        # An expected failure leaves the executor it made unclosed (its traceback holds it).
        BatchcrewExecutor.shut_down_all()
        super().tearDown()


def _adapted(mixin: type, name: str) -> type:
    namespace: dict[str, Any] = {}
    for attribute in dir(mixin):
        if not attribute.startswith("test_"):
            continue
        method = getattr(mixin, attribute)
        reason = SKIPPED.get(attribute)
        different = DIFFERENT.get(attribute) or DIFFERENT.get(f"{name}.{attribute}")
        if reason is not None:
            namespace[attribute] = unittest.skip(reason)(method)
        elif different is not None:
            namespace[attribute] = unittest.expectedFailure(method)
    return type(f"Batchcrew{name}Test", (mixin, BatchcrewMixin, suite.BaseTestCase), namespace)


# The mixins CPython runs on ProcessPoolExecutor (its create_executor_tests calls).
BatchcrewInitializerTest = _adapted(suite.InitializerMixin, "Initializer")
BatchcrewFailingInitializerTest = _adapted(suite.FailingInitializerMixin, "FailingInitializer")
BatchcrewShutdownTest = _adapted(suite.ProcessPoolShutdownTest, "Shutdown")
BatchcrewWaitTest = _adapted(suite.WaitTests, "Wait")
BatchcrewAsCompletedTest = _adapted(suite.AsCompletedTests, "AsCompleted")
BatchcrewExecutorTest = _adapted(suite.ProcessPoolExecutorTest, "Executor")
BatchcrewDeadlockTest = _adapted(suite.ExecutorDeadlockTest, "Deadlock")


@pytest.fixture(scope="module", autouse=True)
def resource_tracker() -> Iterator[None]:
    """multiprocessing's resource tracker, which a Manager the tests make starts and keeps for
    the process's life: started here, before the guard against leftover processes looks, and
    stopped after the module, as CPython's own run does."""
    import multiprocessing.resource_tracker
    import multiprocessing.util

    multiprocessing.resource_tracker.ensure_running()
    yield
    multiprocessing.util._cleanup_tests()  # type: ignore[attr-defined]
