"""`Controller.everywhere`: set-up that runs on every worker connected now, and on every worker
that connects later, before its first task (mirai's `everywhere()`).

The calls are kept for the controller's life, so that a worker launched an hour later is set
up the same way; the dispatcher sends them to a worker as soon as it is ready, ahead of any
task. The answers of the workers connected at the call make its table, a row per worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from batchcrew import protocol

logger = logging.getLogger("batchcrew")

_SCHEMA = {
    "worker": pl.String,
    "status": pl.String,
    "error": pl.String,
    "trace": pl.String,
    "seconds": pl.Float64,
}


@dataclass
class Call:
    """One `everywhere` call: its message, and the workers of the moment still to answer."""

    number: int
    label: str  # the function, for messages
    frames: list[protocol.Buffer]
    waiting: dict[bytes, str]  # worker -> its name, asked when the call was made
    rows: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def frame(self) -> pl.DataFrame:
        """A row per worker asked at the call: "success", "error" (its exception and
        traceback) or "lost" (it left or died first: the reason)."""
        return pl.DataFrame(self.rows, schema=_SCHEMA)

    def _answer(self, identity: bytes, status: str, **row: Any) -> None:
        name = self.waiting.pop(identity, None)
        if name is None:
            return
        self.rows.append({"worker": name, "status": status, **row})
        if not self.waiting:
            self.done.set()


class Calls:
    """Every `everywhere` call of one controller, and who still owes an answer."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._later: list[protocol.Buffer] = []  # every call's frames, for workers to come

    def add(
        self,
        label: str,
        function: bytes,
        arguments: bytes,
        workers: list[bytes],
        name: Callable[[bytes], str],
    ) -> Call:
        """Record a call, to be sent now to `workers` (the caller sends it) and later to every
        worker that becomes ready."""
        number = len(self._calls) + 1
        frames = protocol.encode(protocol.Everywhere(number, function, arguments))
        call = Call(number, label, frames, {worker: name(worker) for worker in workers})
        self._calls.append(call)
        self._later.extend(frames)
        if not call.waiting:
            call.done.set()
        return call

    def for_new_worker(self) -> list[protocol.Buffer]:
        """The frames of every call so far, in order: a worker just ready runs them first."""
        return self._later

    def ran(self, identity: bytes, name: str, ran: protocol.Ran) -> None:
        """A worker answered call `ran.call`."""
        if not 1 <= ran.call <= len(self._calls):
            logger.warning("dropped an answer from worker %s to an unknown call", name)
            return
        call = self._calls[ran.call - 1]
        status = "success" if ran.error is None else "error"
        if identity in call.waiting:
            call._answer(identity, status, error=ran.error, trace=ran.trace, seconds=ran.seconds)
        elif ran.error is not None:
            # A worker that connected after the call: nobody awaits its row, so it is said
            # here. It goes on taking tasks, which may fail for want of that set-up.
            logger.warning(
                "worker %s: everywhere(%s) raised %s (its tasks may fail for want of it)\n%s",
                name,
                call.label,
                ran.error,
                ran.trace or "",
            )

    def gone(self, identity: bytes, reason: str) -> None:
        """A worker is gone: it answers no call it still owed."""
        for call in self._calls:
            if identity in call.waiting:
                call._answer(identity, "lost", error=reason, trace=None, seconds=None)

    def close(self, reason: str) -> None:
        """The controller is closing: every call still waiting ends."""
        for call in self._calls:
            for identity in list(call.waiting):
                call._answer(identity, "lost", error=reason, trace=None, seconds=None)
