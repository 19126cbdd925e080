"""Throughput and round-trip latency of batchcrew against its baselines, measured in one run.

    python benchmarks/core.py [--tasks 10000] [--latency 2000] [--repeats 5] [--loop both]

The batchcrew rows are measured with the dashboard closed, then open (a process reading its
state every second, as the page does), and read ten times a second (which shows whether
reading costs dispatch anything, beyond the machine's noise).
Baselines: concurrent.futures.ProcessPoolExecutor(2), and a plain asyncio pyzmq ROUTER/DEALER
loop with cloudpickle (no scheduling, no security, no retries: the floor a design like this is
measured against), run with one task in flight per worker and with as many in flight as
batchcrew pipelines for short tasks. Each figure is the median of --repeats runs, taken in
rounds whose order rotates; ratios compare medians measured in this same run, so a noisy shared
machine moves both sides alike.
With --loop both (the default when uvloop is installed), the table is measured once on
asyncio's default loop and once on uvloop, the baselines included.

To compare versions, --against takes other checkouts of batchcrew (git worktrees, say):
batchcrew with CURVE from each, and from this checkout, is then also measured in a fresh
interpreter of its own (importing batchcrew from there) in the same rotating rounds, this
checkout also with the dashboard open; the last lines give this checkout over each.

    git worktree add /tmp/before <commit>
    python benchmarks/core.py --loop asyncio --against /tmp/before

--awake keeps every core busy with an idle-priority spinner (Linux's SCHED_IDLE: it runs only
when nothing else wants the core) while measuring. On a virtual machine a vCPU with nothing to
run halts, and waking it takes tens of microseconds: a single round trip, which hands off
between processes and threads several times, then measures those wake-ups as much as the code,
and they move with incidental timing (two versions of the same code can differ by 1.4x).
Throughput, which keeps the cores busy, is hardly affected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import zmq
import zmq.asyncio
from rich.console import Console
from rich.table import Table

import batchcrew as bc
from batchcrew.scheduling import Settings

WORKERS = 2
PIPELINE = Settings().pipeline


def noop(_: object = None) -> None:
    return None


@dataclass
class Figures:
    throughput: float  # tasks per second
    median: float  # round trip, seconds
    p99: float


def _latency(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


# -- batchcrew ---------------------------------------------------------------------------------


# A browser with the dashboard open, as far as the controller can tell: the page once, then
# its state `reads` times a second (the page reads it once). It says "ready" once it has
# started, so that its start-up does not land in the measurement (a browser already open
# would not).
PAGE_READER = r"""
import sys, time, urllib.request
urllib.request.urlopen(sys.argv[1]).read()
print("ready", flush=True)
while True:
    urllib.request.urlopen(sys.argv[1] + "state.json").read()
    time.sleep(1 / float(sys.argv[2]))
"""


async def batchcrew_run(
    tasks: int, latency: int, security: str, reads: float = 0, journal: bool = False
) -> Figures:
    """`reads`: with the dashboard open, read this many times a second (0: closed).
    `journal`: with a journal (a new one in a temporary directory)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "bench.journal") if journal else None
        return await _batchcrew_run(tasks, latency, security, reads, path)


async def _batchcrew_run(
    tasks: int, latency: int, security: str, reads: float, journal: Path | None
) -> Figures:
    options: dict[str, Any] = {} if journal is None else {"journal": journal}
    async with bc.Controller(
        name="bench", workers=WORKERS, security=security, **options
    ) as controller:  # type: ignore[arg-type]
        if not reads:
            return await _batchcrew_figures(controller, tasks, latency)
        url = await controller.serve_dashboard()
        reader = subprocess.Popen(
            [sys.executable, "-c", PAGE_READER, url, str(reads)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert reader.stdout is not None
            assert await anyio.to_thread.run_sync(reader.stdout.readline) == "ready\n"
            return await _batchcrew_figures(controller, tasks, latency)
        finally:
            reader.kill()
            reader.wait()


async def _batchcrew_figures(controller: bc.Controller, tasks: int, latency: int) -> Figures:
    await controller.map(noop, range(400))  # workers up, pipelining learned
    start = time.perf_counter()
    walk = controller.walk(noop, range(tasks))
    # A list before walks were lazy (an older checkout, --against); a Walk, awaited, since.
    for task in walk if isinstance(walk, list) else await walk:
        await task
    throughput = tasks / (time.perf_counter() - start)
    samples = []
    for _ in range(latency):
        start = time.perf_counter()
        await controller.push(noop)
        samples.append(time.perf_counter() - start)
    return Figures(throughput, *_latency(samples))


def checkout_run(checkout: Path, tasks: int, latency: int, loop: str, reads: float) -> Figures:
    """batchcrew with CURVE, imported from `checkout`, in an interpreter of its own."""
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, __file__, "--tasks", str(tasks), "--latency", str(latency)]
    command += ["--loop", loop, "--one", str(reads)]
    # Run there, so that its workers (`python -m batchcrew.worker`) import batchcrew from there.
    output = subprocess.run(
        command, env=environment, cwd=checkout, check=True, capture_output=True, text=True
    )
    return Figures(*json.loads(output.stdout.splitlines()[-1]))


def _revision(checkout: Path) -> str:
    found = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return found.stdout.strip() or checkout.name


# -- ProcessPoolExecutor -----------------------------------------------------------------------


def pool_run(tasks: int, latency: int) -> Figures:
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(noop, range(400)))
        start = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(tasks)]
        for future in futures:
            future.result()
        throughput = tasks / (time.perf_counter() - start)
        samples = []
        for _ in range(latency):
            start = time.perf_counter()
            pool.submit(noop).result()
            samples.append(time.perf_counter() - start)
    return Figures(throughput, *_latency(samples))


# -- the plain pyzmq loop ----------------------------------------------------------------------

PLAIN_WORKER = r"""
import pickle, sys
import cloudpickle, zmq
context = zmq.Context()
sock = context.socket(zmq.DEALER)
sock.setsockopt(zmq.IDENTITY, sys.argv[2].encode())
sock.connect(sys.argv[1])
sock.send(b"ready")
while True:
    task_id, payload = sock.recv_multipart()
    if task_id == b"stop":
        break
    function, args = cloudpickle.loads(payload)
    sock.send_multipart([task_id, pickle.dumps(function(*args), protocol=5)])
"""


async def plain_run(tasks: int, latency: int, window: int) -> Figures:
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PLAIN_WORKER, f"tcp://127.0.0.1:{port}", f"w{index}"]
        )
        for index in range(WORKERS)
    ]
    try:
        identities = [(await router.recv_multipart())[0] for _ in range(WORKERS)]

        async def send(identity: bytes, task_id: int) -> None:
            payload = cloudpickle.dumps((noop, ()), protocol=5)
            await router.send_multipart([identity, str(task_id).encode(), payload])

        sent = done = 0
        start = time.perf_counter()
        for identity in identities:
            for _ in range(window):
                await send(identity, sent)
                sent += 1
        while done < tasks:
            identity, _, result = await router.recv_multipart()
            cloudpickle.loads(result)
            done += 1
            if sent < tasks:
                await send(identity, sent)
                sent += 1
        while done < sent:  # the last window's extra tasks
            await router.recv_multipart()
            done += 1
        throughput = tasks / (time.perf_counter() - start)
        samples = []
        for _ in range(latency):
            start = time.perf_counter()
            await send(identities[0], 0)
            cloudpickle.loads((await router.recv_multipart())[2])
            samples.append(time.perf_counter() - start)
        for identity in identities:
            await router.send_multipart([identity, b"stop", b""])
        for process in processes:
            process.wait(timeout=30)
    finally:
        for process in processes:
            process.kill()
        router.close(0)
        context.term()
    return Figures(throughput, *_latency(samples))


# -- keeping the cores awake ------------------------------------------------------------------

SPINNER = r"""
import os
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
"""


@contextlib.contextmanager
def awake() -> Iterator[None]:
    """An idle-priority spinner per core for the duration: no core halts between messages."""
    if not hasattr(os, "SCHED_IDLE"):
        raise SystemExit("--awake needs Linux's SCHED_IDLE scheduling policy")
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


# -- the table ---------------------------------------------------------------------------------


def once(run: Callable[[], Figures | Awaitable[Figures]]) -> Figures:
    outcome = run()
    return RUN(outcome) if asyncio.iscoroutine(outcome) else outcome  # type: ignore[return-value]


def measure(n: int, m: int, r: int, loop: str, against: list[Path]) -> dict[str, Figures]:
    """Run every system `r` times, in rounds whose order rotates (so a machine that drifts
    moves them all alike), and keep the median of each figure."""
    global RUN
    RUN = asyncio.run if loop == "asyncio" else _uvloop_run()
    systems: dict[str, Callable[[], Figures | Awaitable[Figures]]] = {
        "plain zmq loop, 1 in flight": lambda: plain_run(n, m, 1),
        f"plain zmq loop, {PIPELINE} in flight": lambda: plain_run(n, m, PIPELINE),
        "ProcessPoolExecutor(2)": lambda: pool_run(n, m),
        'batchcrew, security="none"': lambda: batchcrew_run(n, m, "none"),
        'batchcrew, security="curve"': lambda: batchcrew_run(n, m, "curve"),
        "batchcrew, curve, dashboard open": lambda: batchcrew_run(n, m, "curve", 1),
        "batchcrew, curve, dashboard read 10/s": lambda: batchcrew_run(n, m, "curve", 10),
        "batchcrew, curve, journal": lambda: batchcrew_run(n, m, "curve", journal=True),
    }
    if against:
        here = Path(__file__).resolve().parent.parent
        for checkout, reads in [(here, 0), (here, 1)] + [(path, 0) for path in against]:
            label = f"batchcrew {_revision(checkout)}, curve, own process"
            if checkout == here:
                label += ", dashboard open" if reads else ", this checkout"
            systems[label] = lambda c=checkout, d=reads: checkout_run(c, n, m, loop, d)
    runs: dict[str, list[Figures]] = {label: [] for label in systems}
    labels = list(systems)
    for round_ in range(r):
        for label in labels[round_ % len(labels) :] + labels[: round_ % len(labels)]:
            runs[label].append(once(systems[label]))
    return {
        label: Figures(
            statistics.median(f.throughput for f in figures),
            statistics.median(f.median for f in figures),
            statistics.median(f.p99 for f in figures),
        )
        for label, figures in runs.items()
    }


def _uvloop_run() -> Callable[[Any], Any]:
    import uvloop

    return uvloop.run  # type: ignore[no-any-return]


def report(rows: dict[str, Figures], n: int, m: int, r: int, loop: str) -> None:
    floor = rows[f"plain zmq loop, {PIPELINE} in flight"]
    single = rows["plain zmq loop, 1 in flight"]
    pool = rows["ProcessPoolExecutor(2)"]
    plain_off = rows['batchcrew, security="none"']
    table = Table(
        title=f"{loop}: {n:,} no-op tasks on {WORKERS} workers; latency over {m:,} sequential "
        f"tasks; medians of {r} runs"
    )
    columns = ("", "tasks/s", f"vs plain {PIPELINE}", "vs pool", "RTT median", "RTT p99")
    for column in (*columns, "RTT vs plain 1"):
        table.add_column(column, justify="left" if not column else "right")
    for label, figures in rows.items():
        table.add_row(
            label,
            f"{figures.throughput:,.0f}",
            f"{figures.throughput / floor.throughput:.2f}x",
            f"{figures.throughput / pool.throughput:.2f}x",
            f"{figures.median * 1e6:,.0f} us",
            f"{figures.p99 * 1e6:,.0f} us",
            f"{figures.median / single.median:.2f}x",
        )
    console = Console(width=130)
    console.print(table)
    curve = rows['batchcrew, security="curve"']
    watched = rows["batchcrew, curve, dashboard open"]
    journaled = rows["batchcrew, curve, journal"]
    checks = [
        (f"throughput vs plain loop, {PIPELINE} in flight", curve.throughput / floor.throughput,
         ">=", 1.0),
        ("round-trip median vs plain loop, 1 in flight", curve.median / single.median, "<=", 1.15),
        ('CURVE on vs security="none", throughput', curve.throughput / plain_off.throughput,
         ">=", 0.9),
        ("dashboard open vs closed, throughput", watched.throughput / curve.throughput, ">=",
         0.95),
        ("dashboard open vs closed, round-trip median", watched.median / curve.median, "<=",
         1.05),
        ("journal vs none, throughput", journaled.throughput / curve.throughput, ">=", 0.7),
    ]  # fmt: skip
    for label, ratio, sense, target in checks:
        met = ratio >= target if sense == ">=" else ratio <= target
        console.print(
            f"{label}: {ratio:.2f}x (target {sense} {target}x) {'met' if met else 'MISSED'}"
        )
    mine = [label for label in rows if label.endswith("this checkout")]
    if not mine:
        return
    here = rows[mine[0]]
    for label, figures in rows.items():
        if label.endswith("dashboard open") and "own process" in label:
            what = "this checkout with the dashboard open over closed"
            ratios = (figures.throughput / here.throughput, figures.median / here.median)
        elif label.endswith("own process"):
            what = f"this checkout over {label.split()[1].rstrip(',')}"
            ratios = (here.throughput / figures.throughput, here.median / figures.median)
        else:
            continue
        console.print(
            f"{what} (own processes): throughput {ratios[0]:.2f}x, round-trip median "
            f"{ratios[1]:.2f}x"
        )


RUN: Callable[[Any], Any] = asyncio.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--latency", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default=None)
    parser.add_argument(
        "--against",
        type=Path,
        nargs="+",
        default=[],
        metavar="CHECKOUT",
        help="other checkouts of batchcrew to measure in the same run",
    )
    parser.add_argument(
        "--awake",
        action="store_true",
        help="keep every core busy at idle priority, so none halts between messages",
    )
    parser.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    loop = args.loop
    if args.one is not None:  # a run of --against: one measurement, printed as JSON
        global RUN
        RUN = _uvloop_run() if loop == "uvloop" else asyncio.run
        figures = RUN(batchcrew_run(args.tasks, args.latency, "curve", args.one))
        print(json.dumps([figures.throughput, figures.median, figures.p99]))
        return
    if loop is None:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loop = "asyncio"
        else:
            loop = "both"
    with awake() if args.awake else contextlib.nullcontext():
        for name in ("asyncio", "uvloop") if loop == "both" else (loop,):
            rows = measure(args.tasks, args.latency, args.repeats, name, args.against)
            report(rows, args.tasks, args.latency, args.repeats, name)


if __name__ == "__main__":
    main()
