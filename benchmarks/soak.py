"""Soak: a steady mixed load for N minutes while workers are killed and frozen at random.

    python benchmarks/soak.py --minutes 30 [--workers 6] [--heartbeat 2] [--chaos 1.5]

The load keeps about two tasks per worker in flight: short tasks, long ones, tasks that raise,
tasks that return megabytes, and long tasks cancelled while they run. Every --chaos seconds
(on average) a random worker process is either killed (SIGKILL) or frozen (SIGSTOP) and thawed
(SIGCONT) after a third of a heartbeat to two heartbeats, so that some freezes outlast the
heartbeat and get their worker written off. It prints tasks resolved, kills and freezes,
duplicate resolutions and lost tasks (both must be 0), results that are not what their task
returns (must be 0), and the controller's resident memory and open file descriptors sampled
over the run (they must stay flat: each sample is compared with the first after a minute of
warm-up, the baseline measured in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import psutil
from rich.console import Console
from rich.table import Table

import batchcrew as bc
from batchcrew.dispatcher import Resolution

Kind = Literal["short", "long", "error", "large", "cancel"]
KINDS: tuple[Kind, ...] = ("short", "long", "error", "large", "cancel")
WEIGHTS = (80, 8, 6, 4, 2)  # percent of tasks pushed
EXPECTED: dict[Kind, set[str]] = {  # a task killed crashes_max + 1 times resolves "crash"
    "short": {"success", "crash"},
    "long": {"success", "crash"},
    "error": {"error", "crash"},
    "large": {"success", "crash"},
    "cancel": {"cancel"},
}


def short(x: int) -> int:
    time.sleep(random.uniform(0.0, 0.02))
    return x


def long(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def fail(x: int) -> None:
    raise ValueError(f"task {x} fails on purpose")


def large(megabytes: int) -> bytes:
    return b"x" * (megabytes << 20)


@dataclass
class Tally:
    pushed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    # Task ids pushed and not yet resolved where the dispatcher resolves them (the controller
    # would absorb a second resolution silently); kept to what is in flight, so that this
    # bookkeeping does not grow the process it measures.
    unresolved: set[int] = field(default_factory=set)
    duplicates: int = 0
    kills: int = 0
    freezes: int = 0
    freezes_past_heartbeat: int = 0
    late: int = 0  # frames from workers written off earlier
    refused: int = 0  # handshakes refused (a thawed worker whose launch's key was retired)
    dropped: int = 0  # frames from unknown peers
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    # (seconds, resolved, rss bytes, open fds, workers connected)

    @property
    def resolved(self) -> int:
        return sum(self.statuses.values())


def check(result: bc.Result, kind: Kind, value: int) -> str | None:
    """Why `result` is not what a task of `kind` pushed with `value` resolves as, if it is not."""
    if result.status not in EXPECTED[kind]:
        return f"{result.name}: {kind} task resolved {result.status} ({result.error})"
    if result.status != "success":
        return None
    expected: object = value
    if kind == "large":
        expected = value << 20
        got = len(result.result)
    else:
        got = result.result
    return None if got == expected else f"{result.name}: {kind} returned {got!r}"


async def consume(crew: bc.Controller, task: bc.Task, kind: Kind, value: int, tally: Tally) -> None:
    if kind == "cancel":
        await anyio.sleep(random.uniform(0.05, 1.0))
        task.cancel()
    result = await task
    tally.statuses[result.status] += 1
    problem = check(result, kind, value)
    if problem is not None:
        tally.wrong.append(problem)


async def produce(
    crew: bc.Controller, target: int, consumers: anyio.abc.TaskGroup, tally: Tally
) -> None:
    while True:
        while crew.counts()["unresolved"] < target:
            tally.pushed += 1
            number = tally.pushed
            kind = random.choices(KINDS, WEIGHTS)[0]
            value = number
            name = f"{kind}-{number}"
            if kind == "short":
                task = crew.push(short, number, name=name)
            elif kind == "long":
                task = crew.push(long, number, random.uniform(0.5, 3.0), name=name)
            elif kind == "error":
                task = crew.push(fail, number, name=name)
            elif kind == "large":
                value = random.randint(1, 4)
                task = crew.push(large, value, name=name)
            else:
                task = crew.push(long, number, 60.0, name=name)
            tally.unresolved.add(task.id)
            consumers.start_soon(consume, crew, task, kind, value, tally)
        await anyio.sleep(0.005)


def worker_processes() -> list[psutil.Process]:
    """This process's live worker processes (the local launcher's children)."""
    found = []
    for child in psutil.Process().children():
        try:
            if "batchcrew.worker" in " ".join(child.cmdline()) and child.status() not in (
                psutil.STATUS_ZOMBIE,
                psutil.STATUS_STOPPED,
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def chaos(interval: float, heartbeat: float, frozen: set[int], tally: Tally) -> None:
    async def thaw(pid: int, after: float) -> None:
        await anyio.sleep(after)
        frozen.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    async with anyio.create_task_group() as thaws:
        while True:
            await anyio.sleep(random.expovariate(1.0 / interval))
            workers = worker_processes()
            if not workers:
                continue
            victim = random.choice(workers).pid
            try:
                if random.random() < 0.5:
                    os.kill(victim, signal.SIGKILL)
                    tally.kills += 1
                else:
                    os.kill(victim, signal.SIGSTOP)
                    frozen.add(victim)
                    after = random.uniform(heartbeat / 3, heartbeat * 2)
                    tally.freezes += 1
                    tally.freezes_past_heartbeat += after > heartbeat
                    thaws.start_soon(thaw, victim, after)
            except ProcessLookupError:
                continue


def take_sample(crew: bc.Controller, started: float, tally: Tally) -> None:
    me = psutil.Process()
    tally.samples.append(
        (
            time.monotonic() - started,
            tally.resolved,
            me.memory_info().rss,
            me.num_fds(),
            crew.counts()["workers"],
        )
    )


async def sample(crew: bc.Controller, every: float, started: float, tally: Tally) -> None:
    while True:
        take_sample(crew, started, tally)
        await anyio.sleep(every)


async def soak(args: argparse.Namespace) -> Tally:
    tally = Tally()
    frozen: set[int] = set()
    seconds = args.minutes * 60
    every = max(5.0, seconds / 20)
    crew = bc.Controller(
        name="soak",
        workers=args.workers,
        launcher=bc.LocalLauncher(log_dir=args.log_dir),
        seconds_heartbeat=args.heartbeat,
        seconds_idle=30,
        crashes_max=10,
        seconds_interrupt=2,
    )
    async with crew:
        dispatcher = crew._dispatcher  # count resolutions where a double would show
        assert dispatcher is not None
        resolve = dispatcher._resolve

        def spy(resolution: Resolution) -> None:
            if resolution.task in tally.unresolved:
                tally.unresolved.discard(resolution.task)
            else:
                tally.duplicates += 1  # resolved before
            resolve(resolution)

        dispatcher._resolve = spy
        started = time.monotonic()
        try:
            async with anyio.create_task_group() as consumers:
                async with anyio.create_task_group() as load:
                    load.start_soon(produce, crew, 2 * args.workers, consumers, tally)
                    load.start_soon(chaos, args.chaos, args.heartbeat, frozen, tally)
                    load.start_soon(sample, crew, every, started, tally)
                    await anyio.sleep(seconds)
                    load.cancel_scope.cancel()
                for pid in list(frozen):  # thaw what is still frozen; stop the chaos
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                # Every task pushed must resolve (what has not within two minutes is lost):
                # the slowest is a long task retried after its worker froze.
                await crew.wait("all", timeout=120)
                consumers.cancel_scope.cancel()
        finally:
            take_sample(crew, started, tally)
        tally.late, tally.dropped = dispatcher.late, dispatcher.dropped
        tally.refused = dispatcher._zap.refused if dispatcher._zap is not None else 0
    return tally


def report(args: argparse.Namespace, tally: Tally, console: Console) -> bool:
    # Not resolved by the dispatcher, or resolved and never handed to the awaiting consumer.
    lost = max(len(tally.unresolved), tally.pushed - tally.resolved)
    table = Table(title=f"soak: {args.minutes:g} minutes, {args.workers} workers")
    table.add_column("")
    table.add_column("count", justify="right")
    statuses = ", ".join(f"{status} {n:,}" for status, n in sorted(tally.statuses.items()))
    rows = [
        ("tasks pushed", f"{tally.pushed:,}"),
        ("tasks resolved", f"{tally.resolved:,} ({statuses})"),
        ("workers killed (SIGKILL)", f"{tally.kills:,}"),
        (
            "workers frozen (SIGSTOP)",
            f"{tally.freezes:,} ({tally.freezes_past_heartbeat:,} past the heartbeat)",
        ),
        ("duplicate resolutions (must be 0)", f"{tally.duplicates:,}"),
        ("lost tasks (must be 0)", f"{lost:,}"),
        ("wrong results (must be 0)", f"{len(tally.wrong):,}"),
        ("late frames of written-off workers", f"{tally.late:,}"),
        ("handshakes refused (retired keys)", f"{tally.refused:,}"),
        ("frames from unknown peers", f"{tally.dropped:,}"),
    ]
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    for problem in tally.wrong[:10]:
        console.print(f"  wrong: {problem}")

    warm = [s for s in tally.samples if s[0] >= min(60.0, args.minutes * 60 / 4)]
    base = warm[0] if warm else tally.samples[0]
    series = Table(title="controller process over time (baseline: the first sample after warm-up)")
    for column in ("time", "resolved", "RSS MB", "vs baseline", "open fds", "vs baseline"):
        series.add_column(column, justify="right")
    series.add_column("workers", justify="right")
    for seconds, resolved, rss, fds, workers in tally.samples:
        series.add_row(
            f"{int(seconds // 60)}:{int(seconds % 60):02d}",
            f"{resolved:,}",
            f"{rss / 2**20:.1f}",
            f"{rss / base[2]:.2f}x",
            f"{fds}",
            f"{fds / base[3]:.2f}x",
            f"{workers}",
        )
    console.print(series)
    memory = [s[2] for s in warm] or [base[2]]
    descriptors = [s[3] for s in warm] or [base[3]]
    half = len(memory) // 2
    early = statistics.median(memory[: max(1, half)])
    late = statistics.median(memory[half:])
    growth = late / early - 1
    console.print(
        f"after warm-up: RSS median {early / 2**20:.1f} MB (first half) -> "
        f"{late / 2**20:.1f} MB (second half), {growth:+.1%}; max {max(memory) / 2**20:.1f} MB; "
        f"open fds {min(descriptors)}..{max(descriptors)}"
    )
    flat = growth < 0.10 and max(descriptors) - min(descriptors) <= 4 * args.workers
    console.print(f"flat (RSS growth under 10%, open fds within 4 per worker): {flat}")
    return tally.duplicates == 0 and lost == 0 and not tally.wrong and flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds_heartbeat")
    parser.add_argument("--chaos", type=float, default=1.5, help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "batchcrew-soak",
        help="where the controller's log (soak.log) and each worker's output go",
    )
    args = parser.parse_args()
    if args.seed is not None:
        random.seed(args.seed)
    if not math.isfinite(args.minutes) or args.minutes <= 0:
        parser.error("--minutes must be a positive number")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.log_dir / "soak.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("batchcrew").addHandler(handler)
    logging.getLogger("batchcrew").setLevel(logging.INFO)
    logging.getLogger("batchcrew").propagate = False
    tally = asyncio.run(soak(args))
    console = Console(width=130)
    ok = report(args, tally, console)
    console.print(f"logs: {args.log_dir}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
