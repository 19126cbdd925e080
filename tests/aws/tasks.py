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
