"""Seeing inside a run: the workers table, resource use per task, and the timeline."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import polars as pl
import pytest

import batchcrew as bc
from tests.conftest import MakeController


def hang(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)  # touched: resident, then freed before returning
    block[::4096] = b"x" * len(block[::4096])
    return len(block) // 2**20


def noop(_: object = None) -> None:
    return None


async def until(predicate: object, within: float = 30.0) -> None:
    with anyio.fail_after(within):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.02)


def state(crew: bc.Controller, worker: str) -> str:
    rows = crew.workers().filter(pl.col("worker") == worker)
    return str(rows["state"][0]) if rows.height else "absent"


async def test_the_workers_table_follows_a_worker_through_its_life(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1)
    assert crew.workers().columns == [
        "worker", "launch", "level", "state", "host", "pid", "job_id", "launched",
        "connected", "ended", "tasks", "seconds", "errors", "crashes", "reason", "rss", "cpu",
        "output_tail",
    ]  # fmt: skip
    started = tmp_path / "started"
    long = crew.push(hang, str(started))
    (first,) = crew.workers()["worker"].to_list()
    assert state(crew, first) == "launching"  # launched, not connected yet
    await until(started.exists)
    await until(lambda: state(crew, first) == "busy")
    long.cancel()
    await until(lambda: state(crew, first) == "idle")
    row = crew.workers().row(0, named=True)
    assert row["pid"] == int(started.read_text())
    assert row["connected"] >= row["launched"]
    assert row["tasks"] == 1
    assert row["errors"] == 1  # the interrupted task reports as an error (dropped: cancelled)
    assert row["rss"] > 10 * 2**20
    assert row["cpu"] > 0
    assert (await crew.push(noop)).status == "success"
    os.kill(row["pid"], signal.SIGKILL)
    await until(lambda: state(crew, first) == "gone")
    gone = crew.workers().row(0, named=True)
    assert gone["ended"] >= gone["connected"]
    assert gone["tasks"] == 2
    assert "signal 9" in gone["reason"] or "connection closed" in gone["reason"]


async def test_a_worker_that_left_idle_says_so(controller: MakeController) -> None:
    crew = await controller(workers=1, seconds_idle=0.5)
    result = await crew.push(noop)
    assert result.worker is not None
    await until(lambda: state(crew, result.worker) == "gone")
    row = crew.workers().row(0, named=True)
    assert row["reason"] == "idle for seconds_idle=0.5"
    assert row["crashes"] == 0


async def test_a_killed_worker_counts_a_crash(controller: MakeController, tmp_path: Path) -> None:
    crew = await controller(workers=1, crashes_max=0)
    started = tmp_path / "started"
    task = crew.push(hang, str(started))
    await until(started.exists)
    os.kill(int(started.read_text()), signal.SIGKILL)
    assert (await task).status == "crash"
    await until(lambda: crew.workers()["state"].to_list() == ["gone"])
    assert crew.workers()["crashes"].to_list() == [1]


async def test_result_memory_is_the_peak_while_the_task_ran(controller: MakeController) -> None:
    crew = await controller(workers=1)
    big = await crew.push(allocate, 200)
    small = await crew.push(noop)
    assert big.memory is not None
    assert small.memory is not None
    assert big.memory >= 200 * 2**20  # the block was freed before returning: a peak
    assert small.memory < 150 * 2**20  # this worker's peak was reset for the next task
    frame = await crew.map(noop, range(3))
    assert frame["memory"].dtype == pl.Int64
    assert all(memory > 0 for memory in frame["memory"])


async def test_the_timeline_has_a_row_per_task_in_time_order(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2)
    await crew.map(noop, range(20))
    timeline = crew.timeline()
    assert timeline.height == 20
    assert timeline.columns == [
        "name", "worker", "status", "pushed", "started", "ended", "queue_seconds",
        "run_seconds",
    ]  # fmt: skip
    assert (timeline["started"] >= timeline["pushed"]).all()
    assert (timeline["ended"] >= timeline["started"]).all()
    assert timeline["worker"].null_count() == 0
    assert (timeline["queue_seconds"] >= 0).all()
    small = await controller(workers=1, timeline_max=5, name="small")
    await small.map(noop, range(8))
    assert small.timeline()["name"].to_list() == [f"task-{i}" for i in range(4, 9)]


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_timeline_max_must_be_a_count(bad: object) -> None:
    with pytest.raises(ValueError, match="timeline_max must be a whole number >= 0"):
        bc.Controller(timeline_max=bad)  # type: ignore[arg-type]


async def test_prometheus_metrics_read_the_running_counters(controller: MakeController) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import batchcrew.metrics

    crew = await controller(workers=2)
    registry = CollectorRegistry()
    batchcrew.metrics.register(crew, registry)
    await crew.map(noop, range(10))
    await crew.map(_raise, range(2), error="ignore")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    controller_label = ("controller", crew.name)
    counts = crew.counts()
    assert samples[("batchcrew_tasks_pushed_total", (controller_label,))] == counts["tasks"]
    for status in ("success", "error", "crash", "cancel"):
        key = ("batchcrew_tasks_total", (controller_label, ("status", status)))
        assert samples[key] == counts[status]
    assert samples[("batchcrew_tasks_unresolved", (controller_label,))] == 0
    busy_or_idle = sum(
        samples[("batchcrew_workers", (controller_label, ("state", state)))]
        for state in ("idle", "busy")
    )
    assert busy_or_idle == counts["workers"]
    assert samples[("batchcrew_launches_total", (controller_label,))] >= 1
    assert samples[("batchcrew_task_seconds_count", (controller_label,))] == 12


def _raise(_: object) -> None:
    raise ValueError("no")


async def test_the_timeline_plot_is_a_valid_png(controller: MakeController, tmp_path: Path) -> None:
    import batchcrew.plot

    crew = await controller(workers=2)
    await crew.map(noop, range(30))
    await crew.map(_raise, range(2), error="ignore")
    path = tmp_path / "timeline.png"
    figure = batchcrew.plot.timeline(crew, path, title="a test run")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000
    assert figure.axes[0].get_title() == "a test run"
