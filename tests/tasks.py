"""Task functions the controller tests send to workers. A worker imports a function's module
to run it: these live apart from the test modules, which import numpy, polars and pytest (about
a second of CPU for each worker that imports one), so that starting workers stays cheap."""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from pathlib import Path


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
