"""batchcrew at scale: scheduler cost per event, memory per queued task, drain rate, a swarm.

    python benchmarks/scale.py [--only scheduler,memory,swarm] [--queued 1000000]

Three parts, each compared against a baseline measured in the same run:

- scheduler: `scheduling.Scheduler` driven by plain calls with fake workers, microseconds per
  result event for 10 to 10,000 workers, 1 and 3 resource levels, short (pipelined) and long
  tasks; the ratio is against the same case with 10 workers.
- memory: bytes of controller memory per queued no-op task (tracemalloc) with --queued tasks
  queued and no worker; the time to push them; then the drain rate on 2 local workers with
  --queued tasks queued against the rate with 10,000 queued (as many tasks in rounds of 10,000,
  half before the large drain and half after), every task checked resolved once.
- swarm: real workers over real ZeroMQ and CURVE, many per process (batchcrew.testing.Swarm),
  controller results per second and event-loop lag p99 (a 5 ms sleep, how late it wakes) with
  10, 100 and 1,000 connected, over --swarm-tasks tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import time
import tracemalloc
from collections import deque
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

import batchcrew as bc
from batchcrew.scheduling import Assign, Decision, Launch, Scheduler, Settings

console = Console(width=120)


def noop(_: object = None) -> None:
    return None


# -- the scheduler -----------------------------------------------------------------------------


def scheduler_event_cost(workers: int, levels: int, short: bool, events: int) -> float:
    """Microseconds per result event, with every worker busy and tasks always queued."""
    scheduler = Scheduler(
        Settings(workers=workers, levels=levels, pipeline=4, seconds_launch=1e9, crashes_max=5)
    )
    held: dict[bytes, deque[int]] = {}
    launched: list[bytes] = []

    def apply(decisions: Sequence[Decision] | None) -> None:
        for decision in decisions or ():
            if isinstance(decision, Assign):
                held[decision.worker].append(decision.task)
            elif isinstance(decision, Launch):
                launched.extend(decision.identities)

    def connect_all() -> None:
        while launched:
            identity = launched.pop()
            held[identity] = deque()
            scheduler.greeted(identity)
            apply(scheduler.connected_worker(identity, 0.0))

    apply(scheduler.push_many(range(1, events + workers * 8 + 1), 0.0))
    connect_all()
    for _ in range(levels - 1):
        # Workers of every level: two thirds die mid-task, their tasks escalate, and bigger
        # workers are launched for them.
        victims = [identity for identity, tasks in held.items() if tasks]
        for identity in victims[: 2 * len(held) // 3]:
            del held[identity]
            apply(scheduler.lost(identity, 0.0, clean=False, reason="benchmark"))
        connect_all()
    seconds = 0.001 if short else 1.0
    rotation = itertools.cycle(list(held))
    done = 0
    start = time.perf_counter()
    while done < events:
        identity = next(rotation)
        tasks = held.get(identity)
        if not tasks:
            continue
        apply(scheduler.result(identity, tasks.popleft(), seconds, 0.0))
        done += 1
    return (time.perf_counter() - start) / events * 1e6


def scheduler_part(events: int) -> None:
    table = Table(title=f"Scheduler: microseconds per result event ({events:,} events)")
    for column in ("workers", "levels", "tasks", "us per event", "vs 10 workers"):
        table.add_column(column, justify="right")
    base: dict[tuple[int, bool], float] = {}
    for workers in (10, 100, 1_000, 10_000):
        for levels in (1, 3):
            for short in (True, False):
                cost = statistics.median(
                    scheduler_event_cost(workers, levels, short, events) for _ in range(3)
                )
                base.setdefault((levels, short), cost)
                table.add_row(
                    f"{workers:,}",
                    str(levels),
                    "short" if short else "long",
                    f"{cost:.2f}",
                    f"{cost / base[(levels, short)]:.2f}x",
                )
    console.print(table)
    console.print("target: at 10,000 workers every case within 2x of the same case at 10")


# -- memory, push and drain --------------------------------------------------------------------


class Idle(bc.Launcher):
    """Launches nothing: tasks stay queued."""

    name = "idle"

    async def launch(self, request: bc.LaunchRequest) -> None:
        return None

    async def terminate(self, launch: str, indexes: object = None) -> None:
        return None


async def bytes_per_queued_task(queued: int) -> float:
    async with bc.Controller(workers=1, launcher=Idle(), seconds_launch=1e6) as controller:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tasks = await controller.walk(noop, range(queued))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del tasks
    return (after - before) / queued


async def push_seconds(queued: int) -> float:
    async with bc.Controller(workers=1, launcher=Idle(), seconds_launch=1e6) as controller:
        start = time.perf_counter()
        await controller.walk(noop, range(queued))
        return time.perf_counter() - start


async def drain_seconds(queued: int, rounds: int = 1) -> float:
    """Seconds to resolve `rounds` times `queued` tasks on 2 local workers, each round walked
    and drained before the next (from the walk's call, whose slices go out while the first
    tasks run; collecting untimed); checks that every task resolved exactly once."""
    seconds = 0.0
    async with bc.Controller(workers=2) as controller:
        await controller.map(noop, range(400))  # workers up, pipelining learned
        controller.collect()
        for done in range(1, rounds + 1):
            # From the walk's call: its slices go out while the first tasks already run.
            start = time.perf_counter()
            tasks = await controller.walk(noop, range(queued))
            await controller.wait("all")
            seconds += time.perf_counter() - start
            assert controller.counts()["success"] == 400 + done * queued, controller.counts()
            assert all(task.done() for task in tasks)
            assert len({task.name for task in tasks}) == queued
            assert controller.collect().height == queued  # each resolved once, none lost
    return seconds


def memory_part(queued: int) -> None:
    table = Table(title=f"Queued tasks: memory, push time and drain rate ({queued:,} queued)")
    for column in ("measure", "value", "target"):
        table.add_column(column, justify="right")
    per_task = asyncio.run(bytes_per_queued_task(queued))
    table.add_row("controller bytes per queued task", f"{per_task:,.0f}", "<= 300")
    pushed = asyncio.run(push_seconds(queued))
    table.add_row(
        f"push {queued:,} (walk)", f"{pushed:.2f} s ({pushed / queued * 1e6:.1f} us/task)", ""
    )
    # The small side resolves as many tasks as the large one, 10,000 at a time: half its rounds
    # before the large drain and half after, so that both last about as long and the machine's
    # drift over the run weighs on both alike.
    rounds = max(2, queued // 10_000)
    before = asyncio.run(drain_seconds(10_000, rounds // 2))
    large = queued / asyncio.run(drain_seconds(queued))
    after = asyncio.run(drain_seconds(10_000, rounds - rounds // 2))
    small = rounds * 10_000 / (before + after)
    halves = (rounds // 2 * 10_000 / before, (rounds - rounds // 2) * 10_000 / after)
    table.add_row(
        f"drain rate, 10,000 queued ({rounds} rounds)",
        f"{small:,.0f} tasks/s (before {halves[0]:,.0f}, after {halves[1]:,.0f})",
        "",
    )
    table.add_row(f"drain rate, {queued:,} queued", f"{large:,.0f} tasks/s", "")
    table.add_row("ratio", f"{large / small:.2f}x", ">= 0.9x")
    console.print(table)


# -- the swarm -------------------------------------------------------------------------------


async def swarm_rate(workers: int, tasks: int) -> tuple[float, float, int, float]:
    """Results per second of a controller with `workers` swarm workers connected, its event
    loop's lag p99 (seconds) meanwhile and how many lag samples it is of, and its longest
    garbage collection."""
    from batchcrew.testing import SwarmLauncher

    launcher = SwarmLauncher(workers_per_process=min(workers, 250))
    controller = bc.Controller(
        workers=workers, launcher=launcher, seconds_launch=300, seconds_heartbeat=60
    )
    async with controller:
        deadline = time.monotonic() + 300
        while controller.counts()["workers"] < workers:  # all connected, pipelining learned
            assert time.monotonic() < deadline, "the swarm did not connect in time"
            await controller.map(noop, range(workers * 4))
        lags: list[float] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - start - 0.005)

        pauses: list[float] = []
        started: list[float] = []

        def collected(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses.append(time.perf_counter() - started.pop())

        gc.callbacks.append(collected)
        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        controller.walk(noop, range(tasks))  # wait() waits for the walk's slices too
        await controller.wait("all")
        rate = tasks / (time.perf_counter() - start)
        done.set()
        await sampler
        gc.callbacks.remove(collected)
        controller.collect()
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
    return rate, p99, len(lags), max(pauses, default=0.0)


def swarm_part(tasks: int) -> None:
    table = Table(title=f"Swarm: {tasks:,} no-op tasks on real CURVE connections")
    for column in (
        "workers connected",
        "results/s",
        "vs 10",
        "loop lag p99",
        "lag samples",
        "longest GC",
    ):
        table.add_column(column, justify="right")
    base = None
    for workers in (10, 100, 1_000):
        rate, lag, samples, pause = asyncio.run(swarm_rate(workers, tasks))
        base = base or rate
        table.add_row(
            f"{workers:,}",
            f"{rate:,.0f}",
            f"{rate / base:.2f}x",
            f"{lag * 1e3:.1f} ms",
            f"{samples:,}",
            f"{pause * 1e3:.1f} ms",
        )
    console.print(table)
    console.print("targets: 1,000 connected at least 0.7x the rate with 10; lag p99 under 20 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="scheduler,memory,swarm")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--queued", type=int, default=1_000_000)
    # Enough for a p99 of the loop's lag to mean something: with 1,000 workers, 200,000 tasks
    # give about 500 samples (50,000 gave about 130, making the p99 the second-worst stall).
    parser.add_argument("--swarm-tasks", type=int, default=200_000)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if "scheduler" in parts:
        scheduler_part(args.events)
    if "memory" in parts:
        memory_part(args.queued)
    if "swarm" in parts:
        swarm_part(args.swarm_tasks)


if __name__ == "__main__":
    main()
