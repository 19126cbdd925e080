"""A live progress bar for a controller's work, drawn with rich, only on a terminal.

The bar reads the controller's counters when rich redraws it (ten times a second, on rich's
own refresh thread), so showing progress adds nothing to the dispatch of each task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from batchcrew.controller import Controller

_DONE = ("success", "error", "crash", "cancel")
_FAILED = ("error", "crash", "cancel")


class _ControllerProgress(Progress):
    def __init__(self, controller: Controller, total: int | None, console: Console) -> None:
        self._controller = controller
        self._start = controller.counts()
        self._row: TaskID | None = None
        super().__init__(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[workers]}"),
            TextColumn("{task.fields[failed]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._row = self.add_task(controller.name, total=total, workers=_workers(0), failed="")

    def get_renderables(self) -> Iterable[RenderableType]:
        if self._row is None:  # rich may draw while the bar is being made
            return super().get_renderables()
        counts = self._controller.counts()
        done = sum(counts[key] - self._start[key] for key in _DONE)
        failed = sum(counts[key] - self._start[key] for key in _FAILED)
        self.update(
            self._row,
            completed=done,
            workers=_workers(counts["workers"]),
            failed=f"[red]{failed} failed" if failed else "",
        )
        return super().get_renderables()


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


@contextmanager
def progress_bar(
    controller: Controller, total: int | None, *, console: Console | None = None
) -> Iterator[None]:
    """Show tasks resolved out of `total` (counted from entry; None: not known), workers
    connected and failures while the block runs. Prints nothing unless `console` (default:
    stderr) is a terminal."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with _ControllerProgress(controller, total, console):
        yield
