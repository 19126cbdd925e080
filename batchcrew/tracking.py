"""What a run looks like from inside: a record per worker, the timeline of resolved tasks, and
the counters that metrics and the dashboard read.

Kept as running state, updated by the events the dispatcher and controller already handle (a
few dictionary updates each), so that reading it never costs the dispatch anything and never
needs a pass over the tasks. Tables are built only when someone asks for one.
"""

from __future__ import annotations

import array
import bisect
import datetime
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from batchcrew import protocol
from batchcrew.output import last_line

WORKERS_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "worker": pl.String,
    "launch": pl.String,
    "level": pl.Int64,
    "state": pl.String,
    "host": pl.String,
    "pid": pl.Int64,
    "job_id": pl.String,
    "launched": pl.Datetime("us", "UTC"),
    "connected": pl.Datetime("us", "UTC"),
    "ended": pl.Datetime("us", "UTC"),
    "tasks": pl.Int64,
    "seconds": pl.Float64,
    "errors": pl.Int64,
    "crashes": pl.Int64,
    "reason": pl.String,
    "rss": pl.Int64,
    "cpu": pl.Float64,
    "output_tail": pl.String,
}

TIMELINE_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "name": pl.String,
    "worker": pl.String,
    "status": pl.String,
    "pushed": pl.Datetime("us", "UTC"),
    "started": pl.Datetime("us", "UTC"),
    "ended": pl.Datetime("us", "UTC"),
    "queue_seconds": pl.Float64,
    "run_seconds": pl.Float64,
}

#: Upper bounds (seconds) of the task-duration histogram's buckets (Prometheus's `le`).
SECONDS_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)


@dataclass(slots=True)
class WorkerRecord:
    """One worker's life so far. Times are seconds since the epoch; None where not yet."""

    worker: str
    launch: str
    level: int
    launched: float
    connected: float | None = None
    ended: float | None = None
    host: str | None = None
    pid: int | None = None
    job_id: str | None = None
    tasks: int = 0
    seconds: float = 0.0
    errors: int = 0
    crashes: int = 0
    reason: str | None = None
    rss: int | None = None
    cpu: float | None = None
    output_tail: str | None = None  # the last line its running task wrote

    def row(self, state: str) -> dict[str, Any]:
        """The record as a row of the workers table (`WORKERS_SCHEMA`'s columns, in order),
        its times still seconds since the epoch."""
        return {
            "worker": self.worker,
            "launch": self.launch,
            "level": self.level,
            "state": state,
            "host": self.host,
            "pid": self.pid,
            "job_id": self.job_id,
            "launched": self.launched,
            "connected": self.connected,
            "ended": self.ended,
            "tasks": self.tasks,
            "seconds": self.seconds,
            "errors": self.errors,
            "crashes": self.crashes,
            "reason": self.reason,
            "rss": self.rss,
            "cpu": self.cpu,
            "output_tail": self.output_tail,
        }


class Tracker:
    """Records of the workers a dispatcher launched: live ones, and the last `kept` gone ones;
    how many launches there were and how many failed; the launcher's recent errors."""

    def __init__(self, kept: int = 1000, errors_kept: int = 100) -> None:
        self._live: dict[bytes, WorkerRecord] = {}
        self._gone: deque[WorkerRecord] = deque(maxlen=kept)
        self.launches = 0
        self.launch_failures = 0
        self.errors: deque[tuple[float, str, str]] = deque(maxlen=errors_kept)
        """Recent launcher errors: (time, what, why), the newest last."""

    def launched(self, launch: str, level: int, identities: Sequence[bytes]) -> None:
        now = time.time()
        self.launches += 1
        for identity in identities:
            self._live[identity] = WorkerRecord(identity.decode(), launch, level, now)

    def name(self, identity: bytes) -> str:
        """A worker's name. A live worker's is its record's, so that the results it sends share
        one string rather than each decoding its own."""
        record = self._live.get(identity)
        return record.worker if record is not None else identity.decode(errors="replace")

    def hello(self, identity: bytes, hello: protocol.Hello) -> None:
        record = self._live.get(identity)
        if record is not None:
            record.connected = time.time()
            record.host, record.pid = hello.host, hello.pid
            record.job_id = hello.job or None

    def outcome(self, identity: bytes, outcome: protocol.Outcome) -> str:
        """Count a worker's outcome; return the worker's name (see `name`)."""
        record = self._live.get(identity)
        if record is None:
            return self.name(identity)
        record.tasks += 1
        record.seconds += outcome.seconds
        if outcome.status == "error":
            record.errors += 1
        if outcome.rss:
            record.rss, record.cpu = outcome.rss, outcome.cpu
        record.output_tail = None  # its task is over
        return record.worker

    def busy(self, identity: bytes, busy: protocol.Busy) -> None:
        record = self._live.get(identity)
        if record is not None:
            if busy.rss:
                record.rss, record.cpu = busy.rss, busy.cpu
            if busy.tail:
                record.output_tail = busy.tail

    def output(self, identity: bytes, output: protocol.Output) -> None:
        """A running task's output, relayed: its last line is the worker's `output_tail`."""
        record = self._live.get(identity)
        line = last_line(bytes(output.data[-1024:]))
        if record is not None and line:
            record.output_tail = line

    def gone(self, identity: bytes, reason: str, *, crashed: bool) -> None:
        record = self._live.pop(identity, None)
        if record is not None:
            record.ended = time.time()
            record.reason = reason
            record.crashes += crashed
            self._gone.append(record)

    def explain(self, identity: bytes, reason: str) -> None:
        """The launcher learned why a worker already gone ended (its job's status reason, say
        a reclaimed host): the workers table says that from now on."""
        for record in reversed(self._gone):
            if record.worker.encode() == identity:
                record.reason = reason
                return

    def launch_failed(self, launch: str, reason: str) -> None:
        self.launch_failures += 1
        self.error(f"launch {launch}", reason)

    def error(self, what: str, why: str) -> None:
        self.errors.append((time.time(), what, why))

    def records(self) -> Iterable[WorkerRecord]:
        """Every record kept: the gone ones, oldest first, then the live ones."""
        yield from self._gone
        yield from self._live.values()

    def frame(self, state_of: Callable[[bytes], str]) -> pl.DataFrame:
        """The workers table: one row per worker, `state` from `state_of` for live ones."""
        rows = []
        for record in self.records():
            state = "gone" if record.ended is not None else state_of(record.worker.encode())
            row = record.row(state)
            for moment in ("launched", "connected", "ended"):
                row[moment] = _utc(row[moment])
            rows.append(row)
        return pl.DataFrame(rows, schema=WORKERS_SCHEMA)


class Timeline:
    """The last `size` resolved tasks: who ran each, when it was pushed, started and ended;
    and a histogram of task run times. Kept in preallocated columns, written in turn: a task
    costs a few stores, and no object lives on for it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._added = 0
        # A generated name is kept as its task id, and made only for a table.
        self._names: list[str | int] = [0] * size
        self._workers: list[str | None] = [None] * size
        self._statuses: list[str] = [""] * size
        self._times = array.array("d", bytes(24 * size))  # pushed, run seconds (NaN), ended
        self.buckets = [0] * (len(SECONDS_BUCKETS) + 1)  # the last: above every bound
        self.seconds_sum = 0.0

    def add(
        self,
        name: str | int,
        worker: str | None,
        status: str,
        pushed: float,
        seconds: float | None,
    ) -> None:
        """A task resolved now. `name`: its name, or its id if its name is generated."""
        if seconds is not None:
            self.buckets[bisect.bisect_left(SECONDS_BUCKETS, seconds)] += 1
            self.seconds_sum += seconds
        size = self._size
        if not size:
            return
        row = self._added % size
        self._added += 1
        self._names[row] = name
        self._workers[row] = worker
        self._statuses[row] = status
        times, at = self._times, 3 * row
        times[at] = pushed
        times[at + 1] = math.nan if seconds is None else seconds
        times[at + 2] = time.time()

    def frame(self) -> pl.DataFrame:
        size, added = self._size, self._added
        first = added - min(added, size)
        rows: list[dict[str, Any]] = []
        for position in range(first, added):
            row = position % size
            name = self._names[row]
            pushed, seconds, ended = self._times[3 * row : 3 * row + 3]
            # Started when its code began, by its run time (never before it was pushed).
            started = None if math.isnan(seconds) else max(pushed, ended - seconds)
            rows.append(
                {
                    "name": f"task-{name}" if isinstance(name, int) else name,
                    "worker": self._workers[row],
                    "status": self._statuses[row],
                    "pushed": _utc(pushed),
                    "started": _utc(started),
                    "ended": _utc(ended),
                    "queue_seconds": None if started is None else started - pushed,
                    "run_seconds": None if started is None else ended - started,
                }
            )
        return pl.DataFrame(rows, schema=TIMELINE_SCHEMA)


def _utc(moment: float | None) -> datetime.datetime | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment, datetime.UTC)
