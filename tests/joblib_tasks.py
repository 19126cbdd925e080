"""Functions the joblib tests run on workers. They live apart from tests/test_joblib.py because
a worker imports a function's module to run it, and that test module imports scikit-learn:
about two seconds of CPU for each worker that imports it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import joblib
from joblib import Parallel, delayed


def wait_for_files(paths: list[Path], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not all(path.exists() and path.read_text() for path in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all of {[path.name for path in paths]} appeared")
        time.sleep(0.01)  # synchronous code waiting on files, under a deadline


def announce_then_run_long(folder: str, index: int) -> int:
    """Say it started (with its worker's pid), then run until interrupted, saying so."""
    Path(folder, f"started-{index}").write_text(str(os.getpid()))
    try:
        time.sleep(600)
    except KeyboardInterrupt:  # bc.TaskInterrupted, raised by the cancel
        Path(folder, f"interrupted-{index}").write_text(str(os.getpid()))
        raise
    return index


def third_fails(folder: str, index: int) -> int:
    if index != 2:
        return announce_then_run_long(folder, index)
    Path(folder, "started-2").write_text(str(os.getpid()))
    wait_for_files([Path(folder, "started-0"), Path(folder, "started-1")])
    raise ValueError("call 2 fails")


def pid(_: object = None) -> int:
    return os.getpid()


def crash_the_worker() -> None:
    os._exit(3)


def announce_then_wait_for_go(folder: str, index: int) -> int:
    Path(folder, f"started-{index}").write_text(str(os.getpid()))
    wait_for_files([Path(folder, "go")])
    return index


def nested(index: int) -> tuple[str, int, list[int], int]:
    """On a worker: which backend joblib uses there, and a nested Parallel's results."""
    backend, _ = joblib.parallel.get_active_backend()
    inner = Parallel(n_jobs=2)(delayed(abs)(-index * k) for k in range(4))
    return type(backend).__name__, backend.nesting_level, inner, os.getpid()


def raise_it(kind: type[BaseException], i: int) -> int:
    if i == 1:
        raise kind()
    return i


def mark_initialized(status: Any) -> None:
    status[os.getpid()] = "initialized"


def initialized_here(status: Any) -> bool:
    return bool(status.get(os.getpid()) == "initialized")
