"""Interrupts on AWS Batch workers (LocalBatch): a task that will not stop gets its array child
terminated, and the monitor shows it ended."""

from __future__ import annotations

import time

import anyio
import pytest

from batchcrew import aws
from batchcrew.aws.monitor import BatchMonitor
from batchcrew.testing import LocalBatch


@pytest.fixture(autouse=True)
def credentials(local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)


def stubborn(seconds: float) -> str:
    """Sleeps, ignoring every interruption, unless told to be quick."""
    if seconds < 1:
        return "quick"
    while True:
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            continue


async def test_a_timed_out_task_that_ignores_its_interrupt_gets_its_array_child_terminated(
    local_batch: LocalBatch,
) -> None:
    options = aws.BatchOptions(
        job_definition=local_batch.job_definition, job_queue=local_batch.job_queue
    )
    controller = aws.batch_controller(
        workers=2, options=options, seconds_interrupt=0.5, host="127.0.0.1"
    )
    monitor = BatchMonitor(
        job_queue=local_batch.job_queue, job_definition=local_batch.job_definition
    )
    async with controller, monitor:
        stuck, quick = await controller.walk(stubborn, [600, 0], seconds_timeout=1)
        assert (await quick).result == "quick"
        result = await stuck
        assert result.status == "error"
        assert result.error is not None
        assert result.error.startswith("TimeoutError")
        assert result.worker is not None
        index = int(result.worker.rsplit(":", 1)[1])
        (array,) = (await monitor.jobs())["id"].to_list()
        child = f"{array}:{index}"
        with anyio.fail_after(30):
            while not any(
                request["jobs"] == [child] for request in local_batch.requests_for("TerminateJobs")
            ):
                await anyio.sleep(0.02)
            while (await monitor.status(child))["status"][0] != "failed":
                await anyio.sleep(0.05)
        (terminate,) = [
            request
            for request in local_batch.requests_for("TerminateJobs")
            if request["jobs"] == [child]
        ]
        assert "did not stop" in terminate["reason"]
        # The other child, whose worker is fine, was not touched.
        assert all(
            job_id in (child, array) or not job_id.startswith(array)
            for request in local_batch.requests_for("TerminateJobs")
            for job_id in request["jobs"]
        )
