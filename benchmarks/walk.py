"""A walk of a million no-op tasks over a generator: the event loop's worst stall, and the
controller's memory with and without `memory_max`, each against a walk of a list measured in
the same run.

    python benchmarks/walk.py [--tasks 1000000] [--memory-max 16777216]

Each case runs on 2 local workers in a fresh interpreter of its own (the peak resident size,
VmHWM in /proc/self/status, is the whole process's), after 400 warm-up tasks:

- "list, kept": `await controller.walk(noop, inputs)` over a list, then `wait()`, no bound:
  the way a walk was used before it was lazy (every task queued at once and kept);
- "generator, kept": the same over a generator, `memory_max` set: every task kept, only
  `memory_max` of them unresolved at a time;
- "generator, streamed, no bound": `async for task in controller.walk(noop, generator,
  keep=False): await task`, no `memory_max`: the walk outruns the workers;
- "generator, streamed": the same with `memory_max`, at --tasks and at a tenth of it (bounded
  means the same peak for ten times the tasks).

A probe task sleeps 5 ms at a time and records how late it wakes (the loop's stalls), and a
`gc.callbacks` hook the longest garbage collection; "worst, no full GC" is the worst stall
with no full collection in it (what the walk and the dispatch hold the loop for, without
Python's collections over every object the process holds). The first part measures, with
tracemalloc and no worker, what a queued task costs the controller besides its pickled
arguments: `batchcrew.walking.TASK_BYTES`, what `memory_max` counts for it, must cover it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from rich.console import Console
from rich.table import Table
from scale import Idle  # the script's own directory is on the path

import batchcrew as bc
from batchcrew.walking import TASK_BYTES

console = Console(width=150)
WARM_UP = 400


def noop(_: object = None) -> None:
    return None


def numbers(count: int) -> Any:
    yield from range(count)


def resident(field: str) -> int:
    """A resident-size field of /proc/self/status (VmRSS now, VmHWM the peak), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# -- what a queued task costs ------------------------------------------------------------------


async def bookkeeping(count: int) -> tuple[float, float]:
    """Controller bytes per queued task (tracemalloc) with `count` queued over a generator and
    kept by the walk, and the mean length of their pickled arguments."""
    async with bc.Controller(workers=1, launcher=Idle(), seconds_launch=1e6) as controller:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        walk = controller.walk(noop, numbers(count))
        await walk
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        held = walk._tasks
        arguments = statistics.fmean(len(task._payload) for task in held)  # type: ignore[arg-type]
    return (after - before) / count, arguments


# -- one case, in a process of its own ---------------------------------------------------------


async def case(kind: str, tasks: int, memory_max: int | None) -> dict[str, float]:
    async with bc.Controller(workers=2, memory_max=memory_max) as controller:
        await controller.map(noop, range(WARM_UP))
        gc.collect()
        inputs = list(range(tasks)) if kind == "list, kept" else numbers(tasks)
        before = resident("VmRSS")
        lateness: list[float] = []
        outside: list[float] = []  # the stalls with no full collection in them
        pauses: list[float] = []
        started: list[float] = []
        full = [0]  # full collections so far

        def collected(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses.append(time.perf_counter() - started.pop())
                full[0] += info["generation"] == 2

        async def probe() -> None:
            while True:
                start, collections = time.perf_counter(), full[0]
                await asyncio.sleep(0.005)
                lateness.append(time.perf_counter() - start - 0.005)
                if full[0] == collections:
                    outside.append(lateness[-1])

        gc.callbacks.append(collected)
        prober = asyncio.create_task(probe())
        start = time.perf_counter()
        if kind.endswith("kept"):
            # Not `for task in await walk: await task`: awaiting a resolved task does not
            # yield to the loop, so that loop would be the stall measured.
            walk = controller.walk(noop, inputs)
            await walk
            await controller.wait("all")
        else:
            async for task in controller.walk(noop, inputs, keep=False):
                await task
        seconds = time.perf_counter() - start
        prober.cancel()
        gc.callbacks.remove(collected)
        counts = controller.counts()
        assert counts["success"] == WARM_UP + tasks, counts  # every task resolved, once
        assert counts["tasks"] == WARM_UP + tasks, counts
        peak = resident("VmHWM")
        if kind.endswith("kept"):
            assert len(await walk) == tasks
            assert controller.collect().height == tasks
    lateness.sort()
    return {
        "seconds": seconds,
        "stall": lateness[-1],
        "p99": lateness[int(len(lateness) * 0.99)],
        "outside": max(outside, default=0.0),
        "samples": len(lateness),
        "gc": max(pauses, default=0.0),
        "before": before,
        "peak": peak,
    }


def run_case(kind: str, tasks: int, memory_max: int | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--case", kind, "--tasks", str(tasks)]
    command += ["--memory-max", str(memory_max or 0)]
    output = subprocess.run(command, check=True, capture_output=True, text=True)
    figures: dict[str, float] = json.loads(output.stdout.splitlines()[-1])
    return figures


# -- the table ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--memory-max", type=int, default=16 << 20, help="bytes")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        figures = asyncio.run(case(args.case, args.tasks, args.memory_max or None))
        print(json.dumps(figures))
        return
    n, budget = args.tasks, args.memory_max

    per_task, arguments = asyncio.run(bookkeeping(min(n, 1_000_000)))
    besides = per_task - arguments
    console.print(
        f"a queued task: {per_task:,.0f} controller bytes, of which {arguments:.0f} its pickled "
        f"arguments: {besides:,.0f} bytes besides them (TASK_BYTES = {TASK_BYTES}: "
        f"{'covers it' if besides <= TASK_BYTES else 'MISSED'})"
    )
    cases = [
        ("list, kept", n, None),
        ("generator, kept", n, budget),
        ("generator, streamed, no bound", n, None),
        ("generator, streamed", n, budget),
        ("generator, streamed", n // 10, budget),
    ]
    rows = [(kind, count, bound, run_case(kind, count, bound)) for kind, count, bound in cases]
    mib = 1 << 20
    table = Table(
        title=f"A walk of no-op tasks on 2 local workers; memory_max = {budget / mib:g} MiB"
    )
    columns = ("case", "tasks", "memory_max", "tasks/s", "worst stall", "stall p99",
               "longest GC", "worst, no full GC", "RSS before", "peak RSS", "growth")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "case" else "right")
    for kind, count, bound, figures in rows:
        table.add_row(
            kind,
            f"{count:,}",
            "none" if bound is None else f"{bound / mib:g} MiB",
            f"{count / figures['seconds']:,.0f}",
            f"{figures['stall'] * 1e3:.1f} ms",
            f"{figures['p99'] * 1e3:.1f} ms",
            f"{figures['gc'] * 1e3:.1f} ms",
            f"{figures['outside'] * 1e3:.1f} ms",
            f"{figures['before'] / mib:,.0f} MiB",
            f"{figures['peak'] / mib:,.0f} MiB",
            f"{(figures['peak'] - figures['before']) / mib:,.0f} MiB",
        )
    console.print(table)
    growth = {
        (kind, count): figures["peak"] - figures["before"] for kind, count, _, figures in rows
    }
    listed = growth[("list, kept", n)]
    streamed = growth[("generator, streamed", n)]
    tenth = growth[("generator, streamed", n // 10)]
    stall = rows[3][3]["stall"]
    checks = [
        ("worst stall, generator streamed with memory_max", f"{stall * 1e3:.1f} ms", "< 100 ms",
         stall < 0.1),
        ("RSS growth, streamed with memory_max over the list's", f"{streamed / listed:.2f}x",
         "<= 0.25x", streamed <= listed / 4),
        (f"RSS growth, streamed with memory_max, {n:,} over {n // 10:,} tasks",
         f"{streamed / max(tenth, 1):.2f}x", "<= 1.5x", streamed <= 1.5 * max(tenth, 1)),
    ]  # fmt: skip
    for label, value, target, met in checks:
        console.print(f"{label}: {value} (target {target}) {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
