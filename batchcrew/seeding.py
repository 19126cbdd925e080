"""The running task's context on its worker: its random seed (and the generators seeded from
it), and its attempt.

A controller with `seed=` gives every task its own seed, derived from the controller's seed and
the task's name, so a task draws the same numbers whichever worker runs it, in whatever order,
after however many retries. The worker seeds `random` (and NumPy's legacy global generator)
before the task runs; `task_seed()` hands the seed to a task that builds its own generator, and
`task_attempt()` says which attempt runs (`retries=`). This module stays free of the worker's
imports: the worker runs as `__main__`, and a task's `import batchcrew` must see the state the
worker set here.
"""

from __future__ import annotations

import hashlib
import random
from types import ModuleType
from typing import Any

from batchcrew.errors import BatchcrewError

_NOT_IN_TASK = object()
_current: Any = _NOT_IN_TASK  # the running task's seed (an int or None), or _NOT_IN_TASK
_attempt = 1  # the running task's attempt
_numpy: ModuleType | bool | None = False  # False: not looked for yet; None: not installed


def derive(seed: int, name: str) -> int:
    """The seed of task `name` under a controller seeded with `seed`: 128 bits.

    A cryptographic hash of both, as NumPy's `SeedSequence` mixes its entropy with a child's
    spawn key: the streams of two tasks are independent, however alike their names, and no
    task's stream depends on any other task or on the order they run in.
    """
    digest = hashlib.blake2b(
        f"{seed}\x00{name}".encode(), digest_size=16, person=b"batchcrew-seed"
    ).digest()
    return int.from_bytes(digest, "big")


def begin(seed: int | None, attempt: int = 1) -> None:
    """A task starts on this worker, on its `attempt`: seed the generators with its seed, if
    it has one."""
    global _current, _numpy, _attempt
    _current = seed
    _attempt = attempt
    if seed is None:
        return
    random.seed(seed)
    if _numpy is False:
        try:
            import numpy
        except Exception:  # not installed, or broken: its generator is not ours to seed
            _numpy = None
        else:
            _numpy = numpy
    if isinstance(_numpy, ModuleType):
        # The legacy global generator takes 32-bit words: all 128 bits, four at a time.
        _numpy.random.seed([(seed >> shift) & 0xFFFFFFFF for shift in range(0, 128, 32)])


def end() -> None:
    """The task has ended."""
    global _current
    _current = _NOT_IN_TASK


def task_seed() -> int | None:
    """The running task's random seed, to build a generator of its own:
    `numpy.random.default_rng(bc.task_seed())`.

    Derived from the controller's `seed` and the task's name (or given by `push(..., seed=)`),
    so it is the same on every run, worker and retry. None if the controller has no seed.
    Raises `BatchcrewError` when called outside a task running on a worker.
    """
    if _current is _NOT_IN_TASK:
        raise BatchcrewError(
            "bc.task_seed() works only inside a task running on a batchcrew worker; on the "
            "controller, the task's seed comes from Controller(seed=...) and its name"
        )
    seed: int | None = _current
    return seed


def task_attempt() -> int:
    """Which attempt of the running task this is: 1 for its first run, 2 for its first retry
    after it raised an error its `retry_on` matches (`push(..., retries=)`), and so on.

    A rerun after its worker died (a crash, retried under `crashes_max`) or was taken away (a
    reclaimed host) is the same attempt again, not a new one. Raises `BatchcrewError` when
    called outside a task running on a worker.
    """
    if _current is _NOT_IN_TASK:
        raise BatchcrewError(
            "bc.task_attempt() works only inside a task running on a batchcrew worker; on the "
            "controller, Result.attempts says how many attempts a task took"
        )
    return _attempt
