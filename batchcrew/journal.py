"""The journal: an SQLite file that lets a controller's run outlive its process.

A controller given `journal=PATH` writes there every task it is pushed (name, pickled function
and arguments, options), every resolution (the `Result`'s fields), every launch (its workers'
CURVE public keys, and what its launcher needs to end them), which worker holds which task, and
its own identity (name, CURVE server keys, address). A controller opened on the same file under
the same name resumes the run: see `Controller`'s `journal`.

Writes go through a queue to one writer thread, which commits them in batches (SQLite in WAL
mode: a commit costs no fsync, and a process killed mid-write leaves the last committed batch).
The dispatcher only appends to the queue. A lock file beside the journal (`PATH.lock`, an
`flock` the kernel releases when its process dies, however it dies) keeps a second live
controller out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchcrew.errors import JournalError

FORMAT = 1
"""The journal's layout. A journal of another layout is migrated when a migration is known,
else refused with a message naming both."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS functions (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    name TEXT,          -- NULL: unnamed, its name generated from its id ("task-<id>")
    function INTEGER NOT NULL REFERENCES functions (id),
    arguments BLOB NOT NULL,
    buffers BLOB,       -- its arguments' out-of-band buffers, pickled together, if any
    timeout REAL,
    seed INTEGER,
    retries INTEGER NOT NULL DEFAULT 0,
    retry_on BLOB,
    pushed REAL NOT NULL,
    worker TEXT         -- the worker that holds it now (NULL: queued, or resolved)
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,   -- the task's id
    name TEXT,
    status TEXT NOT NULL,
    value BLOB,               -- pickled; NULL for None
    error TEXT,
    trace TEXT,
    warnings TEXT NOT NULL,   -- a JSON list
    seconds REAL,
    worker TEXT,
    launcher TEXT NOT NULL,
    controller TEXT NOT NULL,
    memory INTEGER,
    attempts INTEGER NOT NULL,
    interruptions INTEGER NOT NULL,
    output TEXT NOT NULL,
    exception BLOB,           -- the task's exception, pickled by its worker
    resolved REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_name ON results (name);
CREATE TABLE IF NOT EXISTS launches (
    id TEXT PRIMARY KEY,
    level INTEGER NOT NULL,
    count INTEGER NOT NULL,
    public_key TEXT,          -- the CURVE public key its workers hold (NULL without CURVE)
    record TEXT,              -- JSON: what the launcher needs to end its workers (job ids, pids)
    launched REAL NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS workers (
    identity TEXT PRIMARY KEY,
    launch TEXT NOT NULL,
    state TEXT NOT NULL       -- "connected" or "gone"
);
"""

_BATCH_MAX = 20_000  # records committed together at most
_SECONDS_BATCH = 0.005  # a batch waits this long for company once the writer is awake


@dataclass(slots=True)
class StoredTask:
    """An unresolved task, as the journal holds it."""

    id: int
    name: str | None
    function: bytes
    arguments: bytes
    buffers: bytes | None
    timeout: float | None
    seed: int | None
    retries: int
    retry_on: bytes | None
    pushed: float
    worker: str | None


@dataclass(slots=True)
class StoredLaunch:
    id: str
    level: int
    count: int
    public_key: str | None
    record: dict[str, Any]
    connected: list[int]  # indexes of its workers connected when the last run stopped
    gone: list[int]  # indexes of its workers known gone


@dataclass(slots=True)
class Stored:
    """What a journal holds when a controller opens it."""

    meta: dict[str, Any] = field(default_factory=dict)
    tasks: list[StoredTask] = field(default_factory=list)
    results: list[tuple[Any, ...]] = field(default_factory=list)  # rows of `results`
    launches: list[StoredLaunch] = field(default_factory=list)
    last_id: int = 0
    last_function: int = 0  # the highest id in `functions`: a new run's ids start above it


def connect(path: str | os.PathLike[str], *, read_only: bool = False) -> sqlite3.Connection:
    """An SQLite connection to the journal at `path` (read-only: it must exist)."""
    if read_only:
        resolved = Path(path).resolve()
        if not resolved.exists():
            raise JournalError(f"no journal at {path}: check the path")
        connection = sqlite3.connect(f"{resolved.as_uri()}?mode=ro", uri=True)
    else:
        connection = sqlite3.connect(os.fspath(path), check_same_thread=False)
    _check_journal(connection, path)
    return connection


def _check_journal(connection: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        connection.close()
        raise JournalError(
            f"{path} is not a batchcrew journal ({error}): give journal= a new path, or the "
            "path of a journal a controller wrote"
        ) from None


def check_format(connection: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Refuse (by name) a journal of a layout this batchcrew cannot read."""
    from batchcrew import __version__

    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    if "meta" not in tables:
        if tables:
            raise JournalError(
                f"{path} is an SQLite database but not a batchcrew journal (it has tables "
                f"{', '.join(sorted(tables))}): give journal= another path"
            )
        return
    row = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    written = row[0] if row else None
    if row is None and connection.execute("SELECT count(*) FROM meta").fetchone()[0] == 0:
        return  # made by a controller whose start failed before it wrote anything
    if written != FORMAT:
        by = connection.execute("SELECT value FROM meta WHERE key = 'batchcrew'").fetchone()
        raise JournalError(
            f"journal {path} has layout {written!r}, written by batchcrew "
            f"{by[0] if by else 'unknown'}; this batchcrew ({__version__}) reads layout "
            f"{FORMAT} and knows no migration from it: open it with the batchcrew that wrote "
            "it, or start a new journal"
        )


class _Lock:
    """An exclusive `flock` on `PATH.lock`, holding the pid of its process."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 64).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise JournalError(
                f"journal {path} is in use by another live controller (process {holder}, "
                f"which holds {self.path}): a journal serves one controller at a time. Close "
                "that controller (or end that process) first, or give this one another journal"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing it releases the flock
            self._descriptor = None


class JournalWriter:
    """The journal of one running controller: it loads what an earlier run left, then
    records this run through a writer thread. Every `record_*` method only enqueues."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise JournalError(f"journal={path} is a directory: give the path of a file")
        if not self.path.parent.is_dir():
            raise JournalError(
                f"journal={path}: its directory {self.path.parent} does not exist; create it first"
            )
        self._lock = _Lock(self.path)
        try:
            existed = self.path.exists() and self.path.stat().st_size > 0
            if not existed:
                # The file holds the controller's CURVE secret key: readable by its owner only.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            self._connection = connect(self.path)
            check_format(self._connection, self.path)
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
            self._connection.executescript(_SCHEMA)
        except BaseException:
            self._lock.release()
            raise
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._flushed = threading.Condition()
        self._reader: sqlite3.Connection | None = None
        self._sent = 0  # records enqueued
        self._written = 0  # records committed

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> Stored:
        """What the journal holds (nothing, for a new one)."""
        connection = self._connection
        stored = Stored()
        stored.meta = {key: value for key, value in connection.execute("SELECT * FROM meta")}
        functions = dict(connection.execute("SELECT id, data FROM functions"))
        stored.results = connection.execute(
            "SELECT id, name, status, value, error, trace, warnings, seconds, worker, launcher,"
            " controller, memory, attempts, interruptions, output, exception FROM results"
            " ORDER BY id"
        ).fetchall()
        for row in connection.execute(
            "SELECT id, name, function, arguments, buffers, timeout, seed, retries, retry_on,"
            " pushed, worker FROM tasks WHERE id NOT IN (SELECT id FROM results) ORDER BY id"
        ):
            stored.tasks.append(StoredTask(row[0], row[1], functions[row[2]], *row[3:]))
        workers: dict[str, tuple[list[int], list[int]]] = {}
        for identity, launch, state in connection.execute("SELECT * FROM workers"):
            index = int(identity.rpartition(":")[2])
            connected, gone = workers.setdefault(launch, ([], []))
            (connected if state == "connected" else gone).append(index)
        for row in connection.execute(
            "SELECT id, level, count, public_key, record FROM launches WHERE retired = 0"
        ):
            connected, gone = workers.get(row[0], ([], []))
            stored.launches.append(
                StoredLaunch(
                    row[0], row[1], row[2], row[3], json.loads(row[4] or "{}"), connected, gone
                )
            )
        last = connection.execute(
            "SELECT max(id) FROM"
            " (SELECT max(id) AS id FROM tasks UNION SELECT max(id) FROM results)"
        ).fetchone()
        stored.last_id = last[0] or 0
        stored.last_function = max(functions, default=0)
        return stored

    def stored_result(self, name: str) -> tuple[Any, ...] | None:
        """The row of the newest successful result of a task called `name`, if any (what
        this run has recorded is committed first)."""
        self.flush()
        if self._reader is None:  # the writer thread has the other connection
            self._reader = connect(self.path)
        row: tuple[Any, ...] | None = self._reader.execute(
            "SELECT id, name, status, value, error, trace, warnings, seconds, worker, launcher,"
            " controller, memory, attempts, interruptions, output, exception FROM results"
            " WHERE name = ? AND status = 'success' ORDER BY id DESC LIMIT 1",
            (name,),
        ).fetchone()
        return row

    # -- writing ----------------------------------------------------------------------------

    def start(self, meta: dict[str, Any]) -> None:
        """Write this run's identity and start the writer thread."""
        from batchcrew import __version__

        rows = {"format": FORMAT, "batchcrew": __version__, "opened": time.time(), **meta}
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", list(rows.items())
            )
            # Workers of earlier runs that never came back are not to be waited for again.
        self._thread = threading.Thread(target=self._write, name="batchcrew-journal", daemon=True)
        self._thread.start()

    def record(self, kind: str, row: Any) -> None:
        """Enqueue a record (see `_STATEMENTS` for the kinds and their rows)."""
        self._sent += 1
        self._queue.put((kind, row))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record enqueued so far is committed."""
        if self._thread is None:
            return
        target = self._sent
        with self._flushed:
            self._flushed.wait_for(
                lambda: self._written >= target or self._error is not None, timeout
            )
        self._raise_if_failed()

    def close(self) -> None:
        """Commit what is enqueued, stop the writer, and release the lock."""
        try:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            self._connection.close()
            if self._reader is not None:
                self._reader.close()
        finally:
            self._lock.release()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise JournalError(
                f"journal {self.path} could not be written ({type(error).__name__}: {error}): "
                "what this run did since is not all recorded"
            ) from error

    def _write(self) -> None:
        connection, records = self._connection, self._queue
        stopping = False
        while not stopping:
            first = records.get()
            batch: list[tuple[str, Any]] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
                time.sleep(_SECONDS_BATCH)  # company: fewer, larger commits
                while len(batch) < _BATCH_MAX:
                    try:
                        item = records.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
            if batch and self._error is None:
                try:
                    with connection:
                        for kind, rows in _grouped(batch):
                            if kind == "closed":
                                for statement in _CLOSED:
                                    connection.execute(statement)
                            else:
                                connection.executemany(_STATEMENTS[kind], rows)
                except BaseException as error:  # a full disk, say: said at the next flush
                    self._error = error
            with self._flushed:
                self._written += len(batch)
                self._flushed.notify_all()


_STATEMENTS = {
    "function": "INSERT OR IGNORE INTO functions VALUES (?, ?)",
    "task": "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
    "held": "UPDATE tasks SET worker = ? WHERE id = ?",
    "result": "INSERT OR REPLACE INTO results VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    # Forgetting a success: its task goes too, or a resumed run would queue it again.
    "unpush": "DELETE FROM tasks WHERE id IN"
    " (SELECT id FROM results WHERE name = ? AND status = 'success')",
    "forget": "DELETE FROM results WHERE name = ? AND status = 'success'",
    # A failure of an earlier run whose name is pushed again: the new push replaces it.
    "drop": "DELETE FROM tasks WHERE id = ?",
    "drop_result": "DELETE FROM results WHERE id = ?",
    "launch": "INSERT OR REPLACE INTO launches VALUES (?, ?, ?, ?, ?, ?, 0)",
    "record": "UPDATE launches SET record = ? WHERE id = ?",
    "retire": "UPDATE launches SET retired = 1 WHERE id = ?",
    "worker": "INSERT OR REPLACE INTO workers VALUES (?, ?, ?)",
    "meta": "INSERT OR REPLACE INTO meta VALUES (?, ?)",
}
# A clean close: no worker of this run is left to come back.
_CLOSED = (
    "UPDATE launches SET retired = 1",
    "UPDATE workers SET state = 'gone'",
    "UPDATE tasks SET worker = NULL",
)
# The order in which a batch's kinds are written: what a record refers to goes first.
_ORDER = {kind: position for position, kind in enumerate([*_STATEMENTS, "closed"])}


def _grouped(batch: list[tuple[str, Any]]) -> Iterator[tuple[str, Iterable[Any]]]:
    """The batch's records by kind, in `_ORDER`; within a kind, in the order they came (a
    task held by one worker and then another keeps the last)."""
    kinds: dict[str, list[Any]] = {}
    for kind, row in batch:
        kinds.setdefault(kind, []).append(row)
    for kind in sorted(kinds, key=_ORDER.__getitem__):
        yield kind, kinds[kind]


@contextlib.contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a journal (a live controller may be writing it)."""
    connection = connect(path, read_only=True)
    try:
        check_format(connection, path)
        yield connection
    finally:
        connection.close()
