"""Pictures of a run: the timeline of its tasks on its workers.

    pip install "batchcrew[plot]"

    import batchcrew.plot
    batchcrew.plot.timeline(controller, "run.png")   # or in a notebook: just the figure

One lane per worker; behind each, the worker's life (launched to connected, then connected to
ended), so time a worker was billed for and sat idle shows; on it, a bar per task from when its
code started to when it ended, coloured by status.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from batchcrew.controller import Controller
    from batchcrew.group import ControllerGroup

COLOURS = {"success": "#2e7d32", "error": "#c62828", "crash": "#6a1b9a", "cancel": "#9e9e9e"}
_STARTING = "#ffe0b2"  # launched, not connected yet
_ALIVE = "#e3f2fd"  # connected: billed, running tasks or idle


def timeline(
    source: Controller | ControllerGroup,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Draw `source`'s timeline (a controller's, or every controller's of a group) and its
    workers' lives; save it to `path` if given (the format from its suffix, such as .png or
    .svg). Returns the matplotlib Figure, which a notebook shows. Raises ImportError without
    matplotlib (`pip install "batchcrew[plot]"`)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")  # a file, not a window: no display needed
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tasks, workers = source.timeline(), source.workers()
    lanes = _lanes(tasks, workers)
    figure = Figure(figsize=(11, 1.6 + 0.32 * max(len(lanes), 1)), layout="constrained")
    axes = figure.subplots()
    origin = _origin(tasks, workers)
    for lane, worker in enumerate(lanes):
        life = workers.filter(pl.col("worker") == worker)
        if life.height:
            row = life.row(0, named=True)
            end = row["ended"] or _now()
            if row["connected"] is not None:
                axes.broken_barh(
                    [(_at(row["launched"], origin), _seconds(row["launched"], row["connected"]))],
                    (lane - 0.4, 0.8),
                    color=_STARTING,
                )
                axes.broken_barh(
                    [(_at(row["connected"], origin), _seconds(row["connected"], end))],
                    (lane - 0.4, 0.8),
                    color=_ALIVE,
                )
        ran = tasks.filter((pl.col("worker") == worker) & pl.col("started").is_not_null())
        for status, group in ran.group_by("status"):
            axes.broken_barh(
                [
                    (_at(started, origin), max(_seconds(started, ended), 1e-4))
                    for started, ended in group.select("started", "ended").iter_rows()
                ],
                (lane - 0.3, 0.6),
                color=COLOURS.get(str(status[0]), "#000000"),
                edgecolor="white",
                linewidth=0.3,
            )
    axes.set_yticks(range(len(lanes)), [_short(worker) for worker in lanes], fontsize=7)
    axes.set_ylim(-0.7, max(len(lanes), 1) - 0.3)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first launch or push")
    axes.set_title(title or f"{tasks.height} tasks on {len(lanes)} workers")
    handles = [Patch(color=colour, label=status) for status, colour in COLOURS.items()]
    handles += [Patch(color=_STARTING, label="starting"), Patch(color=_ALIVE, label="idle")]
    axes.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 / max(len(lanes), 1) - 0.15),
        fontsize=7,
        ncols=len(handles),
        frameon=False,
    )
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def _lanes(tasks: pl.DataFrame, workers: pl.DataFrame) -> list[str]:
    named = set(tasks["worker"].drop_nulls()) | set(workers["worker"])
    launched = dict(zip(workers["worker"], workers["launched"], strict=True))
    return sorted(
        named, key=lambda worker: (launched.get(worker) is None, str(launched.get(worker)), worker)
    )


def _origin(tasks: pl.DataFrame, workers: pl.DataFrame) -> datetime.datetime:
    moments = [*workers["launched"].drop_nulls(), *tasks["pushed"].drop_nulls()]
    return min(moments) if moments else _now()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _at(moment: Any, origin: datetime.datetime) -> float:
    return _seconds(origin, moment)


def _seconds(start: Any, end: Any) -> float:
    return float((end - start).total_seconds())


def _short(worker: str) -> str:
    launch, _, index = worker.rpartition(":")
    return f"{launch[-6:]}:{index}"
