"""`batchcrew demo`: a Monte Carlo estimate of pi, split into tasks on auto-scaled workers.

Workers import this module to run `sample`: so it imports nothing heavy at the top, and a
worker's first task costs what batchcrew costs, not polars' import.
"""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from batchcrew.controller import Controller


def sample(seed: int, draws: int) -> int:
    """Throw `draws` random darts at the unit square; count those inside the quarter circle."""
    generator = random.Random(seed)
    inside = 0
    for _ in range(draws):
        x, y = generator.random(), generator.random()
        inside += x * x + y * y <= 1.0
    return inside


async def run_demo(
    controller: Controller,
    tasks: int,
    draws: int,
    console: Console,
    *,
    dashboard: bool = False,
    dashboard_seconds: float = 5.0,
    timeline: str | None = None,
) -> pl.DataFrame:
    """Run the estimate on `controller` (already started); print it and the summary.

    `dashboard`: serve the live dashboard while it runs, print its URL, and keep it up
    `dashboard_seconds` longer once the estimate is done, for a person to look at.
    `timeline`: a file to draw the run's timeline to (`batchcrew.plot.timeline`).
    """
    if dashboard:
        url = await controller.serve_dashboard()
        console.print(f"dashboard at {url}", highlight=False, soft_wrap=True)
    started = time.perf_counter()
    frame = await controller.map(sample, range(tasks), [draws] * tasks, progress=True)
    seconds = time.perf_counter() - started
    estimate = 4 * sum(frame["result"].to_list()) / (tasks * draws)
    console.print(
        f"pi ~ [bold]{estimate:.6f}[/bold] (error {abs(estimate - math.pi):.1e}) from "
        f"{tasks * draws:,} darts in {tasks} tasks, {seconds:.1f} s"
    )
    summary = controller.summary()
    console.print(_table(summary, title=f"controller {controller.name!r} summary"))
    if timeline is not None:
        from batchcrew import plot

        plot.timeline(controller, timeline, title=f"batchcrew demo: {tasks} tasks")
        console.print(f"timeline drawn to {timeline}", highlight=False, soft_wrap=True)
    if dashboard and dashboard_seconds > 0:
        import anyio

        console.print(f"the dashboard stays up {dashboard_seconds:g} s more (Ctrl-C to stop)")
        await anyio.sleep(dashboard_seconds)
    return summary


def _table(frame: pl.DataFrame, title: str) -> Table:
    """A one-row frame as a two-column table (it fits a terminal); more rows as they are."""
    from rich.table import Table

    if frame.height == 1:
        table = Table("", "", title=title, show_header=False)
        for column, value in frame.row(0, named=True).items():
            table.add_row(column, _cell(value))
        return table
    table = Table(*frame.columns, title=title)
    for row in frame.iter_rows():
        table.add_row(*(_cell(value) for value in row))
    return table


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
