"""Task functions the AWS Batch tests send to workers. They live apart from the test modules
because a worker imports a function's module to run it: importing a test module (polars,
aiobotocore, the emulator) costs each worker about a second of CPU, which twenty workers
starting at once on two cores pay as seconds of a test's time."""

from __future__ import annotations

import os
import time
from pathlib import Path


def double(x: int) -> int:
    return 2 * x


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def hog(megabytes: int) -> int:
    """Hold `megabytes` of memory long enough for the emulator's memory watch to see it."""
    block = bytearray(megabytes * 2**20)
    time.sleep(1.0)
    return len(block) // 2**20


def double_or_die_once(x: int, markers: str) -> int:
    """Double `x`; but the first time it is asked for a multiple of 500, end the worker."""
    marker = Path(markers, str(x))
    if x % 500 == 0 and not marker.exists():
        marker.touch()
        os._exit(1)
    return 2 * x


def announce_then_wait(folder: str, go: str) -> list[int]:
    """Say on which process it runs (a file per run, named by pid), then wait for `go`;
    return the pids of every run so far."""
    Path(folder, str(os.getpid())).touch()
    wait_for(go)
    return sorted(int(path.name) for path in Path(folder).iterdir())


def frozen_then_wait(folder: str, go: str) -> list[int]:
    """As `announce_then_wait`, but the first run stops its own process (SIGSTOP), as a host
    that froze: the SIGTERM of a stop stays pending, so its worker cannot say goodbye and dies
    only by the SIGKILL that follows."""
    import signal

    if not any(Path(folder).iterdir()):
        Path(folder, str(os.getpid())).touch()
        os.kill(os.getpid(), signal.SIGSTOP)
    return announce_then_wait(folder, go)


def multiprocessing_authkey() -> bytes:
    import multiprocessing

    return bytes(multiprocessing.current_process().authkey)
