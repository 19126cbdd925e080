"""joblib's own test_parallel.py (it ships in joblib's wheel), run with the "batchcrew" backend.

Every test of it parametrized by a backend runs here with "batchcrew" in that backend's place
(the other parameters as joblib has them); the tests that take no backend test joblib itself
and are not collected. The failures batchcrew keeps are expected failures, each with its
reason (docs/joblib.md, "Where it differs from loky", lists them):

- registration only: a script or a child process that names the "batchcrew" backend without
  having imported `batchcrew.joblib`, as happens to every third-party backend;
- the differences listed in DIFFERENT.
"""

from __future__ import annotations

import copy
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import batchcrew.joblib  # noqa: F401  (registers the backend before joblib's tests list them)

suite = pytest.importorskip("joblib.test.test_parallel")

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

BACKEND = "batchcrew"
# The parameters that name the backend a test runs on (the outer one, for nested calls).
BACKEND_PARAMETERS = {"backend", "parent_backend", "outer_backend"}

REGISTRATION = (
    "registration only: {} names the 'batchcrew' backend without importing batchcrew.joblib "
    "(as for every third-party backend)"
)

EXPECTED: dict[str, str] = {
    "test_parallel_with_interactively_defined_functions": REGISTRATION.format("its script"),
    "test_parallel_with_unpicklable_functions_in_args": REGISTRATION.format("its script"),
    "test_auto_memmap_on_arrays_from_generator": (
        "arguments travel pickled, large arrays as out-of-band buffers, never memory-mapped: "
        "a call gets an ndarray, not a np.memmap"
    ),
    "test_memmapping_leaks": (
        "arguments travel pickled, never memory-mapped: there is no memmap to leak, nor one "
        "to check for"
    ),
    "test_error_capture": (
        "after a call raises in a managed `with Parallel(...)` block, batchcrew cancels that "
        "call's tasks and keeps the controller and its workers for the next call, where loky "
        "restarts its pool (the test checks the pool is a new one)"
    ),
}

# Where joblib lists each backend with what it expects of it, batchcrew's own rows.
ROWS = {
    # Each Parallel call on "batchcrew" starts a controller of its own (as "threading" gives
    # each its own pool): a second call beside a collected generator runs, unlike loky's
    # shared executor.
    "test_multiple_generator_call_separated_gc": [(BACKEND, False)],
    # A batchcrew worker is a process of its own, neither a daemon nor a thread: a call nested
    # in a task may start a pool of its own, with no warning (joblib warns when it nests below
    # a daemon process or a thread, and sets n_jobs=1).
    "test_nested_parallel_warnings": [
        (BACKEND, "multiprocessing", False),
        (BACKEND, "loky", False),
    ],
}


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """This module's guard (tests/conftest.py's, narrowed): no batchcrew worker outlives a
    test. loky's reusable executor, its resource tracker and multiprocessing's Manager servers
    that joblib's tests start are left alone, as joblib's own runs leave them."""
    yield
    assert eventually(lambda: not _workers_left(), 10), f"workers left: {_workers_left()}"


def _workers_left() -> list[str]:
    return [
        " ".join(child.cmdline())
        for child in psutil.Process().children(recursive=True)
        if _is_worker(child)
    ]


def _is_worker(process: psutil.Process) -> bool:
    try:
        return "batchcrew.worker" in process.cmdline() and process.status() != "zombie"
    except psutil.Error:
        return False


def eventually(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # a synchronous teardown
    return True


def _names(mark: Any) -> list[str]:
    names = mark.args[0]
    return [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)


def _names_backend(mark: Any) -> bool:
    return mark.name == "parametrize" and bool(BACKEND_PARAMETERS.intersection(_names(mark)))


def _batchcrew_only(mark: Any) -> Any:
    """A parametrize mark, with "batchcrew" for the values of its backend parameter."""
    if not _names_backend(mark):
        return mark
    names = mark.args[0]
    listed = _names(mark)
    chosen = BACKEND_PARAMETERS.intersection(listed)
    if len(listed) == 1:
        values: list[Any] = [BACKEND]
    else:
        at = listed.index(chosen.pop())
        seen: list[Any] = []
        for row in mark.args[1]:
            values_of = getattr(row, "values", row)  # a pytest.param, or a tuple
            if values_of[at] is None or isinstance(values_of[at], str):
                replaced = tuple(BACKEND if i == at else v for i, v in enumerate(values_of))
                if replaced not in seen:
                    seen.append(replaced)
        values = seen
    return pytest.mark.parametrize(names, values, **mark.kwargs).mark


def _adapted(test: Callable[..., Any]) -> Callable[..., Any] | None:
    marks = list(getattr(test, "pytestmark", []))
    if not any(_names_backend(mark) for mark in marks):
        return None
    function = types.FunctionType(
        test.__code__, test.__globals__, test.__name__, test.__defaults__, test.__closure__
    )
    function.__dict__.update(copy.copy(test.__dict__))
    function.__kwdefaults__ = test.__kwdefaults__
    function.__wrapped__ = test  # type: ignore[attr-defined]
    adapted = [_batchcrew_only(mark) for mark in marks if mark.name != "thread_unsafe"]
    rows = ROWS.get(test.__name__)
    if rows is not None:
        adapted = [
            pytest.mark.parametrize(mark.args[0], rows).mark if _names_backend(mark) else mark
            for mark in adapted
        ]
    reason = EXPECTED.get(test.__name__)
    if reason is not None:
        adapted.append(pytest.mark.xfail(reason=reason, strict=True).mark)
    function.pytestmark = adapted  # type: ignore[attr-defined]
    return function


for _name in dir(suite):
    if _name.startswith("test_"):
        _test = _adapted(getattr(suite, _name))
        if _test is not None:
            globals()[_name] = _test
