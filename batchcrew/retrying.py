"""Retries of tasks that raise: which errors retry, how long to wait, and the waiting tasks.

A task's `retry_on` is checked and pickled at push and travels with the task; the worker applies
it to the exception itself (`matches`) and says in the outcome whether it matched. The
controller counts attempts and, between them, waits out an exponential backoff with jitter
(`Backoff`) on its own event loop (`Attempts`), holding no worker. Dead workers are not this
module's business: the scheduler retries those (`crashes_max`), within one attempt.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from batchcrew import protocol
from batchcrew.errors import SerializationError, TaskInterrupted

RetryOn: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""What `retry_on=` takes: an exception type, a tuple of them, or a predicate of the exception."""

Jitter = Literal["full", "none"]

_EXPONENT_MAX = 64  # doublings past this are over any cap already; 2.0**1024 would overflow


def check_retries(value: object) -> int:
    """`retries=` as given, if it is a whole number >= 0. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"retries must be a whole number >= 0 (how many more attempts after the first), "
            f"not {value!r}"
        )
    return value


def dump_retry_on(retry_on: object) -> bytes:
    """Check `retry_on=` and pickle it for the workers (cloudpickle, so that a lambda or a
    class of `__main__` travels too). Raises TypeError or ValueError for what is not an
    exception type, a tuple of them or a callable, and `SerializationError` for one that
    cannot be pickled."""
    if isinstance(retry_on, tuple):
        if not retry_on:
            raise ValueError(
                "retry_on=() matches no exception: give an exception type, a tuple of them, "
                "or a predicate"
            )
        for item in retry_on:
            _check_type(item, f"retry_on={retry_on!r:.80} holds {item!r:.60}")
    elif isinstance(retry_on, type):
        _check_type(retry_on, f"retry_on={retry_on!r:.80}")
    elif not callable(retry_on):
        raise TypeError(
            f"retry_on must be an exception type, a tuple of them, or a predicate "
            f"(a function of the exception that returns True to retry), not "
            f"{type(retry_on).__name__}: {retry_on!r:.80}"
        )
    try:
        return protocol.dump_function(retry_on)  # type: ignore[arg-type]
    except Exception as error:
        raise SerializationError(
            f"cannot pickle retry_on={retry_on!r:.80} for the workers, where it is applied to "
            f"the exception: {type(error).__name__}: {error}; use an exception type or a "
            "function that pickles (one defined at module level, or a lambda that refers to "
            "nothing unpicklable)"
        ) from error


def _check_type(value: object, what: str) -> None:
    if not (isinstance(value, type) and issubclass(value, BaseException)):
        raise TypeError(
            f"{what}, which is not an exception type: give exception types (ConnectionError, "
            "or a tuple of them) or a predicate"
        )


def matches(retry_on: Any, error: BaseException) -> bool:
    """Whether `error`, which a task raised, is one to retry under `retry_on` (unpickled).

    An interruption (`TaskInterrupted`: the task was cancelled or timed out) never is, whatever
    `retry_on` says. A predicate's answer counts by its truth; what it raises, the caller
    handles.
    """
    if isinstance(error, TaskInterrupted):
        return False
    if isinstance(retry_on, type | tuple):
        return isinstance(error, retry_on)
    return bool(retry_on(error))


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a task that raised waits before its next attempt: exponential, capped, with
    full jitter by default.

    Before retry `n` (1 for the second attempt), the ceiling is `seconds * 2 ** (n - 1)`, at
    most `seconds_max`. With `jitter="full"` the wait is drawn uniformly between 0 and that
    ceiling (AWS's "full jitter": tasks that failed together, on a throttled service, come
    back spread out rather than together); with `jitter="none"` it is the ceiling itself.
    """

    seconds: float = 1.0
    seconds_max: float = 60.0
    jitter: Jitter = "full"

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry `retry` (1, 2, ...)."""
        exponent = min(max(retry - 1, 0), _EXPONENT_MAX)
        return min(self.seconds_max, self.seconds * 2.0**exponent)

    def delay(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """The wait before retry `retry`; `draw` gives a number in [0, 1) (the jitter)."""
        ceiling = self.ceiling(retry)
        return ceiling * draw() if self.jitter == "full" else ceiling


def check_backoff(seconds_retry: object, seconds_retry_max: object, jitter: object) -> Backoff:
    """The controller's backoff settings as a `Backoff`. Raises ValueError."""
    for what, value in (("seconds_retry", seconds_retry), ("seconds_retry_max", seconds_retry_max)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf
        ):
            raise ValueError(f"{what} must be a positive, finite number of seconds, not {value!r}")
    assert isinstance(seconds_retry, int | float)
    assert isinstance(seconds_retry_max, int | float)
    if seconds_retry > seconds_retry_max:
        raise ValueError(
            f"seconds_retry={seconds_retry!r} (the first wait) is over seconds_retry_max="
            f"{seconds_retry_max!r} (the cap on every wait)"
        )
    if jitter not in ("full", "none"):
        raise ValueError(f'retry_jitter must be "full" or "none", not {jitter!r}')
    return Backoff(float(seconds_retry), float(seconds_retry_max), jitter)


@dataclass(slots=True)
class _Record:
    attempt: int  # attempts begun (the one running, or the last one, once it raised)
    crashes: int = 0  # workers that died under its attempts before the current one
    interruptions: int = 0  # workers the infrastructure took from under them
    waiting: asyncio.TimerHandle | None = None  # its backoff, until the next attempt is due


class Attempts:
    """The tasks of one controller past their first attempt, some waiting out their backoff.

    A task that has not raised has no entry here, so tasks without retries cost nothing. The
    waits are timers on the controller's loop: a waiting task holds no worker, and is in no
    queue until its timer calls `run`, which begins its next attempt (`begin`).
    """

    __slots__ = ("_random", "backoff", "records")

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.records: dict[int, _Record] = {}
        self._random = random.Random()  # its own: a task seeding `random` here changes nothing

    def attempt(self, task: int) -> int:
        """The attempt `task` is on: 1 until it is retried."""
        record = self.records.get(task)
        return 1 if record is None else record.attempt

    def wait(
        self,
        task: int,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[int], None],
        crashes: int = 0,
        interruptions: int = 0,
    ) -> float:
        """`task` raised on its current attempt (after `crashes` and `interruptions` of its
        workers): call `run(task)` once its backoff has passed. Returns the wait in seconds."""
        record = self.records.get(task)
        if record is None:
            record = self.records[task] = _Record(1)
        record.crashes += crashes
        record.interruptions += interruptions
        delay = self.backoff.delay(record.attempt, self._random.random)
        record.waiting = loop.call_later(delay, self._due, task, run)
        return delay

    def _due(self, task: int, run: Callable[[int], None]) -> None:
        record = self.records.get(task)
        if record is not None and record.waiting is not None:
            record.waiting = None
            run(task)

    def begin(self, task: int) -> int:
        """`task`'s next attempt goes to the queue now; returns its number."""
        record = self.records[task]
        record.attempt += 1
        return record.attempt

    def waiting(self, task: int) -> bool:
        """Whether `task` waits out its backoff now."""
        record = self.records.get(task)
        return record is not None and record.waiting is not None

    def stop(self, task: int) -> bool:
        """Stop `task`'s wait (it is being cancelled): no further attempt begins. Returns
        whether it was waiting."""
        record = self.records.get(task)
        if record is None or record.waiting is None:
            return False
        record.waiting.cancel()
        record.waiting = None
        return True

    def stop_all(self) -> list[int]:
        """Stop every wait (the controller is closing); returns the tasks that were waiting."""
        stopped = [task for task, record in self.records.items() if record.waiting is not None]
        for task in stopped:
            self.stop(task)
        return stopped

    def take(self, task: int) -> tuple[int, int, int] | None:
        """`task` resolves: forget it. Returns its attempts, and the crashes and interruptions
        of the attempts before the last; None if it was never retried."""
        record = self.records.pop(task, None)
        if record is None:
            return None
        if record.waiting is not None:
            record.waiting.cancel()
        return record.attempt, record.crashes, record.interruptions

    def carry(self, task: int, to: Attempts, copy: int, crashes: int, interruptions: int) -> None:
        """`task` moves to another controller (its backup) as `copy`: it keeps its attempt
        number there, and what its workers went through here."""
        record = self.records.pop(task, None) or _Record(1)
        record.crashes += crashes
        record.interruptions += interruptions
        if record.waiting is not None:
            record.waiting.cancel()
            record.waiting = None
        to.records[copy] = record
