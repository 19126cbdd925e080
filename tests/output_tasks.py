"""Task functions that write output, for tests/test_output.py. A worker imports a function's
module to run it: these live apart from the test module, which imports pytest and polars."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def write_every_way(word: str) -> str:
    """Write to stdout and stderr at every level: Python, the descriptor, a subprocess."""
    print(f"print {word}")
    sys.stderr.write(f"stderr {word}\n")
    os.write(1, f"fd {word}\n".encode())
    subprocess.run(["echo", f"echo {word}"], check=True)
    print("no newline", end="")
    return word


def write(text: str) -> None:
    sys.stdout.write(text)


def write_bytes(size: int) -> int:
    """Write `size` bytes to descriptor 1, a line of 99 x's and a newline at a time."""
    line = b"x" * 99 + b"\n"
    chunk = line * 10_000
    left = size
    while left > 0:
        left -= os.write(1, chunk[:left])
    return size


def lines_until(path: str, within: float = 30.0) -> str:
    """Print a numbered line every 50 ms until `path` exists (within `within` seconds)."""
    deadline = time.monotonic() + within
    count = 0
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        print(f"line {count}")
        count += 1
        time.sleep(0.05)  # a long task, told to end by a file
    return f"{count} lines"


def write_then_sleep(text: str, seconds: float) -> None:
    print(text)
    time.sleep(seconds)


def pid() -> int:
    return os.getpid()


def print_later(path: str, text: str) -> None:
    """Leave a thread behind that prints `text` once `path` exists, after the task returned."""
    import threading

    def later() -> None:
        while not Path(path).exists():
            time.sleep(0.01)  # a thread a careless task left running
        print(text, flush=True)

    threading.Thread(target=later, daemon=True).start()
