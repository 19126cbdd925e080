"""Task functions the controller tests send to workers. A worker imports a function's module
to run it: these live apart from the test modules, which import numpy, polars and pytest (about
a second of CPU for each worker that imports one), so that starting workers stays cheap."""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from pathlib import Path

import batchcrew as bc


def add(x: int, y: int) -> int:
    return x + y


async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


def fail(message: str) -> None:
    raise ValueError(message)


def warn_and_return(value: int) -> int:
    warnings.warn(f"careful with {value}", UserWarning, stacklevel=1)
    return value


def pid() -> int:
    return os.getpid()


def silence_warnings(how: str) -> None:
    """Change the worker's warning machinery, as a careless task might."""
    if how == "ignore":
        warnings.simplefilter("ignore")
    elif how == "reset":
        warnings.resetwarnings()
    else:
        warnings.showwarning = lambda *args, **kwargs: None


def crash_once(marker: str, started: str) -> str:
    """Crash-prone task: the first run announces itself and hangs (the test kills it)."""
    if Path(marker).exists():
        return f"ran on {os.getpid()}"
    Path(marker).touch()
    Path(started).write_text(str(os.getpid()))
    time.sleep(60)
    return "unreachable"


def hang(started: str) -> None:
    Path(started).write_text(str(os.getpid()))
    time.sleep(60)


def hang_briefly() -> None:
    time.sleep(0.05)


def exit_now(code: int) -> None:
    os._exit(code)


# -- retries (tests/test_retrying.py) --------------------------------------------------------


def _record_attempt(record: str) -> list[tuple[int, float, int | None]]:
    """Append this attempt's number, time and seed to the file `record`; return every line
    so far, this one's included."""
    with Path(record).open("a") as file:
        file.write(f"{bc.task_attempt()} {time.time()!r} {bc.task_seed()}\n")
    lines = [line.split() for line in Path(record).read_text().splitlines()]
    return [(int(a), float(t), None if s == "None" else int(s)) for a, t, s in lines]


def flaky(
    record: str, failures: int, error: str = "ConnectionError"
) -> list[tuple[int, float, int | None]]:
    """Raise the builtin exception called `error` on its first `failures` attempts; then
    return what each attempt recorded (see `_record_attempt`)."""
    import builtins

    attempts = _record_attempt(record)
    if bc.task_attempt() <= failures:
        raise getattr(builtins, error)(f"attempt {bc.task_attempt()}")
    return attempts


class HTTPError(Exception):
    """An error that says more than its text: a status code, as an HTTP client's does."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def answer_with(record: str, statuses: list[int]) -> int:
    """Raise `HTTPError(statuses[n - 1])` on attempt n while statuses last; then return the
    number of the attempt that got through."""
    _record_attempt(record)
    attempt = bc.task_attempt()
    if attempt <= len(statuses):
        raise HTTPError(statuses[attempt - 1])
    return attempt


def server_error(error: BaseException) -> bool:
    """A `retry_on` predicate: retry 5xx answers only."""
    return isinstance(error, HTTPError) and error.status >= 500


def refuse_to_judge(error: BaseException) -> bool:
    raise RuntimeError("this predicate cannot make up its mind")


def crash_then_raise(record: str) -> list[tuple[int, float, int | None]]:
    """Attempt 1 ends its worker on its first run and raises on its rerun; attempt 2 returns
    what each run recorded."""
    attempts = _record_attempt(record)
    if len(attempts) == 1:
        os._exit(1)
    if bc.task_attempt() == 1:
        raise ConnectionError("after a crash")
    return attempts


def record_and_hang(record: str) -> None:
    _record_attempt(record)
    time.sleep(60)


def raise_then_hang(record: str) -> None:
    """Raise on attempt 1; hang on the next."""
    _record_attempt(record)
    if bc.task_attempt() == 1:
        raise ConnectionError("attempt 1")
    time.sleep(60)


def raise_crash_then_return(record: str) -> list[tuple[int, float, int | None]]:
    """Raise on its first run, end its worker on its second; return what each run recorded
    on its third."""
    attempts = _record_attempt(record)
    if len(attempts) == 1:
        raise ConnectionError("first run")
    if len(attempts) == 2:
        os._exit(1)
    return attempts


# -- walks (tests/test_walking.py) -----------------------------------------------------------


def wait_for(gate: str) -> str:
    """Run until the file `gate` exists (the test opens it), at most a minute."""
    deadline = time.monotonic() + 60
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return "through"
