"""The exceptions batchcrew raises, under one root, `BatchcrewError`.

Every message says what went wrong, with the offending value, and what to do about it.
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchcrew.results import Result


class BatchcrewError(Exception):
    """The root of every error batchcrew raises on purpose."""


class TaskError(BatchcrewError):
    """A task resolved with status "error", "crash" or "cancel" and the caller asked to raise.

    `result` is the first failed `Result`, with its message and traceback.
    """

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


class CrashError(TaskError, BrokenProcessPool):
    """A task resolved with status "crash": the workers that ran it died under it (killed,
    out of memory, or ended by its own doing) `crashes_max` times.

    Raised by `bc.Executor`'s futures; also a `concurrent.futures.process.BrokenProcessPool`,
    what `ProcessPoolExecutor` raises when a worker dies under a call (unlike that pool, the
    Executor carries on: the next tasks run on new workers).
    """


class LaunchError(BatchcrewError, BrokenExecutor):
    """Workers cannot be launched: the launcher failed too many times in a row, or every
    worker failed to start (an initializer that raises, say).

    Raised by the calls that wait for results (`await task`, `map`, `wait`) instead of hanging.
    Also a `concurrent.futures.BrokenExecutor`: a `bc.Executor` raises it, as a broken pool
    does, from its futures and from `submit`.
    """


class ControllerClosedError(BatchcrewError):
    """The controller is not running: start it (`async with` or `await start()`) first."""


class SerializationError(BatchcrewError, TypeError, pickle.PicklingError):
    """A task's function or arguments cannot be pickled, so it was not pushed. Also a
    `pickle.PicklingError`, as the standard library's pools raise."""


class TaskTooLargeError(BatchcrewError, ValueError):
    """A task's pickled size is over the controller's `max_message_size`."""


class TaskInterrupted(KeyboardInterrupt):
    """Raised inside a running task, on its worker, when it is cancelled or runs past its
    `seconds_timeout`.

    A `KeyboardInterrupt` (so `except Exception` in a task does not swallow it, and cleanup
    written for Ctrl-C runs). A task may catch it to clean up, and should then re-raise or
    return: one that carries on past the controller's `seconds_interrupt` has its worker ended.
    """


class JournalError(BatchcrewError):
    """A journal cannot be used: another live controller holds it, it belongs to another
    controller, it is not a journal, or it was written in a layout this batchcrew cannot read."""


class ProtocolError(BatchcrewError):
    """A frame on the wire does not parse as a batchcrew message of this version."""


class BatchError(BatchcrewError):
    """An AWS call failed. `code` is AWS's error code ("ClientException",
    "TooManyRequestsException", ...) or batchcrew's ("NoCredentials", "NoRegion"), and
    `message` AWS's own message. Exported as `batchcrew.aws.BatchError`."""

    def __init__(self, text: str, *, code: str, message: str) -> None:
        super().__init__(text)
        self.code = code
        self.message = message
