"""Launch overhead on (emulated) AWS Batch: how long until every worker is submitted.

    python benchmarks/launch.py [--workers 100] [--latency 1.0]

LocalBatch runs in its own process (`batchcrew emulator`) and answers each SubmitJob after
`--latency` seconds, as AWS Batch takes one to two. Three ways to launch `--workers` workers:
batchcrew pushing a burst (one array job), batchcrew launching one job per worker (tasks pushed
one at a time, up to 8 calls at once), and one call at a time (what crew.aws.batch does without
`processes`). For each: seconds until every worker is submitted, SubmitJob calls, and the
controller's event-loop lag (p99 and max) meanwhile, sampled every 5 ms. The emulator runs two
jobs at once at most, so the machine stays free for the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
from rich.console import Console
from rich.table import Table

from batchcrew import aws


def wait_a_little(_: object = None) -> None:
    time.sleep(0.01)


@dataclass
class Row:
    label: str
    seconds: float
    calls: int
    lag_p99: float
    lag_max: float


class Submissions(logging.Handler):
    """Counts the workers the launcher reports submitted (its INFO log records)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.workers = 0
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("submitted AWS Batch job"):
            self.calls += 1
            self.workers += int(record.args[1])  # type: ignore[index]


@contextmanager
def emulator(latency: float) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchcrew.cli",
            "emulator",
            "--port",
            str(port),
            "--queue",
            "q",
            "--job-definition",
            "d",
            "--vcpus",
            "2",
            "--latency",
            f"SubmitJob={latency}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            break
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(label: str, workers: int, latency: float, burst: bool, concurrent: int) -> Row:
    counter = Submissions()
    logger = logging.getLogger("batchcrew")
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    with emulator(latency) as endpoint:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
        )
        options = aws.BatchOptions(job_definition="d", job_queue="q", cpus=1)
        controller = aws.batch_controller(
            name="bench", workers=workers, options=options, max_concurrent_requests=concurrent
        )
        lags: list[float] = []
        async with controller, anyio.create_task_group() as group:

            async def watch() -> None:
                while True:
                    start = time.perf_counter()
                    await anyio.sleep(0.005)
                    lags.append(time.perf_counter() - start - 0.005)

            group.start_soon(watch)
            start = time.perf_counter()
            if burst:
                controller.walk(wait_a_little, range(workers))
            else:
                for _ in range(workers):
                    controller.push(wait_a_little)
                    await anyio.lowlevel.checkpoint()
            while counter.workers < workers:  # noqa: ASYNC110 - polling a log counter
                await anyio.sleep(0.005)
            seconds = time.perf_counter() - start
            group.cancel_scope.cancel()
            controller.cancel(all=True)
    logger.removeHandler(counter)
    ordered = sorted(lags)
    return Row(label, seconds, counter.calls, ordered[int(len(ordered) * 0.99) - 1], ordered[-1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    n, latency = args.workers, args.latency
    rows = [
        await measure("batchcrew, a burst (array job)", n, latency, True, 8),
        await measure("batchcrew, one job per worker, 8 calls at once", n, latency, False, 8),
        await measure("one call at a time", n, latency, False, 1),
    ]
    baseline = rows[-1].seconds
    table = Table(title=f"launching {n} workers, {latency:g} s per SubmitJob (LocalBatch)")
    columns = ("", "s to submit all", "vs one at a time", "SubmitJob calls", "lag p99", "lag max")
    for column in columns:
        table.add_column(column, justify="left" if not column else "right")
    for row in rows:
        table.add_row(
            row.label,
            f"{row.seconds:.2f}",
            f"{baseline / row.seconds:.1f}x faster",
            str(row.calls),
            f"{row.lag_p99 * 1000:.2f} ms",
            f"{row.lag_max * 1000:.2f} ms",
        )
    Console(width=130).print(table)


if __name__ == "__main__":
    asyncio.run(main())
