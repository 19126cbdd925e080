"""What a task resolves to: `Result`, and results as a polars DataFrame.

Values only: no I/O, no controller state. The controller builds a `Result` for every task it
resolves, and `map` and `collect` turn lists of them into tables with `results_frame`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from batchcrew.errors import TaskError

Status = Literal["success", "error", "crash", "cancel"]
ErrorMode = Literal["raise", "warn", "ignore"]

RESULT_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "name": pl.String,
    "result": pl.Object,
    "status": pl.String,
    "error": pl.String,
    "trace": pl.String,
    "warnings": pl.List(pl.String),
    "seconds": pl.Float64,
    "worker": pl.String,
    "launcher": pl.String,
    "controller": pl.String,
    "memory": pl.Int64,
    "attempts": pl.Int64,
    "interruptions": pl.Int64,
    "output": pl.String,
}


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one task.

    status is "success", "error" (the task raised, or its result could not be pickled),
    "crash" (its worker died under it more than `crashes_max` times) or "cancel". `error` and
    `trace` say why it failed; `warnings` lists the warnings it issued; `seconds` is its run
    time on the worker (its last attempt's); `worker` names the worker that ran it last;
    `memory` is the peak resident bytes of that worker's process while the task ran (None where
    not known). `attempts` counts its attempts: 1, plus one for each retry after it raised an
    error its `retry_on` matched (`push(..., retries=)`); reruns after a dead worker are not
    attempts. `interruptions` counts the workers the infrastructure took from under it (a
    reclaimed host, a job stopped from outside), each followed by a rerun. `output` is what
    the task wrote to its stdout and stderr, in the order written, its subprocesses' too: cut
    in the middle, with a note of how much, past the controller's `output_max` (its last
    attempt's; "" for a task whose worker died under it, or that never ran). `exception`: for
    a task that raised, the exception itself, rebuilt here, with its worker's traceback as its
    `__cause__` (`raise result.exception` raises what the task raised); None when it could not
    travel (it did not pickle, or its class cannot be imported here), and for every other
    status. It is not a column of the results table.
    """

    name: str
    result: Any
    status: Status
    error: str | None
    trace: str | None
    warnings: tuple[str, ...]
    seconds: float | None
    worker: str | None
    launcher: str
    controller: str
    memory: int | None = None
    attempts: int = 1
    interruptions: int = 0
    output: str = ""
    exception: BaseException | None = None

    def to_dict(self, *, jsonable: bool = False) -> dict[str, Any]:
        """The fields as a plain dict. With `jsonable=True`, ready for `json.dumps` (a web
        response): a result JSON cannot hold becomes a list if it has `tolist()` (NumPy,
        polars), else its `repr`."""
        return {
            "name": self.name,
            "result": _jsonable(self.result) if jsonable else self.result,
            "status": self.status,
            "error": self.error,
            "trace": self.trace,
            "warnings": list(self.warnings),
            "seconds": self.seconds,
            "worker": self.worker,
            "launcher": self.launcher,
            "controller": self.controller,
            "memory": self.memory,
            "attempts": self.attempts,
            "interruptions": self.interruptions,
            "output": self.output,
        }


def results_frame(results: Iterable[Result]) -> pl.DataFrame:
    """Results as a DataFrame with the columns of `Result`; `result` keeps a plain dtype when
    polars can infer one (numbers, strings), else holds the Python objects."""
    rows = list(results)
    columns: dict[str, pl.Series] = {}
    for column, dtype in RESULT_SCHEMA.items():
        values = [
            list(getattr(row, column)) if column == "warnings" else getattr(row, column)
            for row in rows
        ]
        if column == "result":
            columns[column] = _result_series(values)
        else:
            columns[column] = pl.Series(column, values, dtype=dtype)
    return pl.DataFrame(columns)


def _result_series(values: list[Any]) -> pl.Series:
    plain = (bool, int, float, str, type(None))
    if values and all(isinstance(value, plain) for value in values):
        try:
            return pl.Series("result", values, strict=True)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            pass
    return pl.Series("result", values, dtype=pl.Object)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            converted = tolist()
            json.dumps(converted, allow_nan=False)
            return converted
        except (TypeError, ValueError):
            pass
    return repr(value)


def handle_failures(results: Iterable[Result], error: ErrorMode) -> None:
    if error == "ignore":
        return
    failed = [result for result in results if result.status != "success"]
    if not failed:
        return
    first = failed[0]
    message = f"{len(failed)} task(s) failed; the first, {first.name!r}, with status {first.status}"
    if first.error:
        message += f": {first.error}"
    if error == "raise":
        raise TaskError(message, first)
    warnings.warn(message, stacklevel=3)
