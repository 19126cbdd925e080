"""Reading a journal from outside its controller: what ran, what failed, what is left.

`Journal(path)` opens the SQLite file that a controller's `journal=` writes, read-only, even
while that controller runs, and answers with polars tables. Only `result(name)` unpickles.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import polars as pl

from batchcrew import journal
from batchcrew.errors import JournalError
from batchcrew.results import Result, Status

_UTC = pl.Datetime("us", "UTC")
_STATUSES: tuple[Status, ...] = ("success", "error", "crash", "cancel")

SUMMARY_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "controller": pl.String,
    "tasks": pl.Int64,
    "resolved": pl.Int64,
    "unresolved": pl.Int64,
    **{status: pl.Int64 for status in _STATUSES},
    "first_resolved": _UTC,
    "last_resolved": _UTC,
}
RESULTS_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "name": pl.String,
    "status": pl.String,
    "error": pl.String,
    "seconds": pl.Float64,
    "worker": pl.String,
    "attempts": pl.Int64,
    "interruptions": pl.Int64,
    "memory": pl.Int64,
    "resolved": _UTC,
    "output": pl.String,
}
UNRESOLVED_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "id": pl.Int64,
    "name": pl.String,
    "pushed": _UTC,
    "worker": pl.String,
}

# An unnamed task has no name in the journal: its name is made from its id, as the
# controller makes it.
_NAME = "coalesce(name, 'task-' || id)"
_GENERATED = re.compile(r"task-(\d+)")

_SUMMARY = f"""
SELECT
    (SELECT value FROM meta WHERE key = 'name'),
    (SELECT count(*) FROM (SELECT id FROM tasks UNION SELECT id FROM results)),
    count(*),
    (SELECT count(*) FROM tasks WHERE id NOT IN (SELECT id FROM results)),
    {", ".join(f"count(CASE WHEN status = '{status}' THEN 1 END)" for status in _STATUSES)},
    min(resolved),
    max(resolved)
FROM results
"""  # one statement: one snapshot of a journal its controller is writing
_RESULTS = (
    f"SELECT {_NAME}, status, error, seconds, worker, attempts, interruptions, memory, resolved,"
    " output FROM results"
)
_UNRESOLVED = (
    f"SELECT id, {_NAME}, pushed, worker FROM tasks"
    " WHERE id NOT IN (SELECT id FROM results) ORDER BY id"
)
_RESULT = (
    "SELECT status, value, error, trace, warnings, seconds, worker, launcher, controller,"
    " memory, attempts, interruptions, output, exception FROM results"
    " WHERE name = ? OR (name IS NULL AND id = ?) ORDER BY id DESC LIMIT 1"
)


class Journal:
    """A controller's journal, open read-only: its results and unresolved tasks as polars
    DataFrames, and one result whole with `result(name)`.

    It may be read while its controller runs and writes it: each table is what the journal
    held when it was asked. Use it as a context manager, or `close()` it.

    Raises `JournalError` if `path` does not exist, is not a batchcrew journal, or was
    written in a layout this batchcrew cannot read.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise JournalError(
                f"{path} is a directory: give the path of a journal file, the one its "
                "controller was given as journal="
            )
        connection = journal.connect(self.path, read_only=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            if "results" not in tables:
                if tables:
                    journal.check_format(connection, self.path)  # says what it holds instead
                raise JournalError(
                    f"{path} is empty, not a batchcrew journal (yet): check the path; a "
                    "controller given journal= writes its journal when it starts"
                )
            # A journal whose controller has not started yet (or never did) has its tables
            # but no meta rows, not even its format: it is read as a journal with nothing in.
            if connection.execute("SELECT count(*) FROM meta").fetchone()[0]:
                journal.check_format(connection, self.path)
        except BaseException:
            connection.close()
            raise
        self._connection: sqlite3.Connection | None = connection
        row = connection.execute("SELECT value FROM meta WHERE key = 'name'").fetchone()
        self.controller: str | None = None if row is None else row[0]
        """The name of the controller that wrote the journal (None before it started)."""

    # -- tables ----------------------------------------------------------------------------

    def summary(self) -> pl.DataFrame:
        """One row: controller (its name), tasks (pushed), resolved, unresolved, success,
        error, crash, cancel (resolved tasks by status), and first_resolved, last_resolved
        (UTC times; null before any task resolved)."""
        row = self._query(_SUMMARY)[0]
        return _frame([row], SUMMARY_SCHEMA)

    def results(self, status: str | None = None) -> pl.DataFrame:
        """The resolved tasks, one row each in the order they were pushed: name, status,
        error, seconds (run time), worker, attempts, interruptions, memory (peak resident
        bytes, null where not known), resolved (UTC time) and output. Only those of `status`
        ("success", "error", "crash" or "cancel") if given. Without the tasks' values, whose
        unpickling could run any code: see `result(name)`.

        Raises ValueError for another `status`.
        """
        if status is None:
            rows = self._query(f"{_RESULTS} ORDER BY id")
        elif status in _STATUSES:
            rows = self._query(f"{_RESULTS} WHERE status = ? ORDER BY id", (status,))
        else:
            raise ValueError(
                f"status={status!r} is not a status of a result: give one of "
                f"{', '.join(map(repr, _STATUSES))}, or None for every result"
            )
        return _frame(rows, RESULTS_SCHEMA)

    def failed(self) -> pl.DataFrame:
        """The results that are not a success (error, crash, cancel): `results()`'s columns."""
        rows = self._query(f"{_RESULTS} WHERE status != 'success' ORDER BY id")
        return _frame(rows, RESULTS_SCHEMA)

    def unresolved(self) -> pl.DataFrame:
        """The tasks pushed and not resolved, in the order they were pushed: id, name, pushed
        (UTC time) and worker (the worker that holds it, null while queued). A controller
        resumed on the journal runs them."""
        return _frame(self._query(_UNRESOLVED), UNRESOLVED_SCHEMA)

    def result(self, name: str) -> Result | None:
        """The `Result` of the task called `name` (its newest, if pushed more than once), as
        the controller returned it; None if no task of that name has resolved.

        Its value and exception are unpickled here, which runs code the journal names: read
        only journals you trust (a journal is readable by its owner only). A value that does
        not unpickle here (its class cannot be imported, say) makes an "error" result that
        says why, as it does for a controller resumed on the journal.
        """
        generated = _GENERATED.fullmatch(name)
        rows = self._query(_RESULT, (name, int(generated[1]) if generated else None))
        if not rows:
            return None
        (status, pickled, error, trace, warned, seconds, worker, launcher, controller, memory,
         attempts, interruptions, output, pickled_exception) = rows[0]  # fmt: skip
        value = None
        if pickled is not None:
            try:
                value = pickle.loads(pickled)
            except BaseException as failure:  # its unpickling may raise anything
                status = "error"
                error = (
                    f"the stored result cannot be unpickled here: {type(failure).__name__}: "
                    f"{failure}"
                )
            if _placeholder(value):
                status = "error"
                error = f"the result could not be journaled: {getattr(value, 'why', '')}"
                value = None
        exception = None
        if pickled_exception is not None:
            exception = _rebuilt(pickled_exception, trace)
        return Result(
            name, value, cast(Status, status), error, trace, tuple(json.loads(warned)), seconds,
            worker, launcher, controller, memory, attempts, interruptions, output, exception,
        )  # fmt: skip

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the journal's connection (the journal itself is left as it is). Closing twice
        is harmless."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        closed = ", closed" if self._connection is None else ""
        return f"Journal({os.fspath(self.path)!r}, controller={self.controller!r}{closed})"

    def _query(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        connection = self._connection
        if connection is None:
            raise JournalError(f"journal {self.path} is closed: open it again with Journal(path)")
        rows: list[tuple[Any, ...]] = connection.execute(statement, parameters).fetchall()
        return rows


def _frame(
    rows: Sequence[tuple[Any, ...]], schema: Mapping[str, pl.DataType | type[pl.DataType]]
) -> pl.DataFrame:
    """The rows as a frame of `schema`, whose datetime columns come as seconds since the
    epoch (how the journal keeps times)."""
    times = [name for name, dtype in schema.items() if isinstance(dtype, pl.Datetime)]
    raw = {name: pl.Float64 if name in times else dtype for name, dtype in schema.items()}
    frame = pl.DataFrame(rows, schema=raw, orient="row")
    return frame.with_columns(
        (pl.col(name) * 1_000_000).round().cast(pl.Int64).cast(_UTC) for name in times
    )


def _placeholder(value: object) -> bool:
    """Whether `value` is what the controller journals for a result it could not pickle (its
    `_Unpicklable`, named rather than imported: the controller is not needed to read)."""
    kind = type(value)
    return kind.__module__ == "batchcrew.controller" and kind.__qualname__ == "_Unpicklable"


def _rebuilt(data: bytes, trace: str | None) -> BaseException | None:
    """A task's exception, as its worker pickled it, with the worker's traceback as its
    `__cause__` (as the controller rebuilds it); None if it does not unpickle here."""
    from concurrent.futures.process import _RemoteTraceback

    from batchcrew.protocol import load_exception

    error = load_exception(data)
    if error is not None and trace:
        error.__cause__ = _RemoteTraceback(trace)  # type: ignore[arg-type]  # (it takes the text)
    return error
