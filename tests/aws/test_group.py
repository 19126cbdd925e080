"""A controller group across launchers: local workers and two sizes of AWS Batch workers (on
LocalBatch), with a memory backup from the small Batch controller to the big one."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import pytest

import batchcrew as bc
from batchcrew import aws
from batchcrew.aws.monitor import BatchMonitor
from batchcrew.testing import LocalBatch, LocalBatchOptions
from batchcrew.testing.pytest_plugin import MakeGroup

ACTIVE = {"submitted", "pending", "runnable", "starting", "running"}


@pytest.fixture(autouse=True)
def credentials(local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)


def hog(megabytes: int) -> int:
    """Hold `megabytes` of memory long enough for the emulator's memory watch to see it."""
    block = bytearray(megabytes * 2**20)
    time.sleep(1.0)
    return len(block) // 2**20


def where(_: object = None) -> str:
    return "batch" if "AWS_BATCH_JOB_ID" in os.environ else "local"


def batch(local_batch: LocalBatch, name: str, memory: int, **options: Any) -> bc.Controller:
    settings = aws.BatchOptions(
        job_definition=local_batch.job_definition,
        job_queue=local_batch.job_queue,
        memory=memory,
        memory_units="mebibytes",
    )
    return aws.batch_controller(name, 2, options=settings, host="127.0.0.1", **options)


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(memory_poll_interval=0.02)])
async def test_a_local_and_two_batch_controllers_with_a_memory_backup(
    controller_group: MakeGroup, local_batch: LocalBatch
) -> None:
    local = bc.Controller("local", 2, seconds_heartbeat=5.0)
    small = batch(local_batch, "small", 160, crashes_max=1)
    big = batch(local_batch, "big", 700)
    small.backup = big
    group = await controller_group(local, small, big)
    with anyio.fail_after(60):
        assert (await group.push(where)).result == "local"
        assert (await group.push(where, controller="small")).result == "batch"
        heavy = await group.push(hog, 300, controller="small")  # killed twice, then moves
    assert (heavy.status, heavy.result, heavy.controller) == ("success", 300, "big")
    await group.aclose()
    monitor = BatchMonitor(
        job_queue=local_batch.job_queue, job_definition=local_batch.job_definition
    )
    async with monitor:
        # Workers told to leave at close end their jobs as their processes exit, a moment on.
        with anyio.fail_after(20):
            while set((jobs := await monitor.jobs())["status"]) & ACTIVE:
                await anyio.sleep(0.05)
    assert jobs.height >= 3  # small's launches, and big's
    reasons = [job.get("statusReason", "") for job in _with_children(local_batch, jobs["id"])]
    assert any("OutOfMemoryError" in reason for reason in reasons), reasons


def _with_children(local_batch: LocalBatch, ids: list[str]) -> list[dict[str, Any]]:
    """Each job's JobDetail, and its array children's."""
    details = []
    for job_id in ids:
        detail = local_batch.describe_job(job_id)
        details.append(detail)
        size = detail.get("arrayProperties", {}).get("size", 0)
        details += [local_batch.describe_job(f"{job_id}:{child}") for child in range(size)]
    return details
