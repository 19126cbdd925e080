"""Fixtures for the LocalBatch tests: aiobotocore clients pointed at the emulator, and a way to
wait for a job to reach a status (polling DescribeJobs under a deadline, never a bare sleep)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import anyio
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

from batchcrew.testing import LocalBatch

DONE = ("SUCCEEDED", "FAILED")
#: Tests see each error the emulator answers, unretried.
NO_RETRIES = AioConfig(retries={"mode": "standard", "total_max_attempts": 1})

WaitFor = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="session")
def aws_session() -> AioSession:
    """One aiobotocore session for all tests: it caches the service models clients load."""
    return get_session()


@pytest.fixture
async def batch_client(local_batch: LocalBatch, aws_session: AioSession) -> AsyncIterator[Any]:
    """An aiobotocore Batch client of the `local_batch` emulator."""
    async with aws_session.create_client(
        "batch", config=NO_RETRIES, **local_batch.client_kwargs()
    ) as client:
        yield client


@pytest.fixture
async def logs_client(local_batch: LocalBatch, aws_session: AioSession) -> AsyncIterator[Any]:
    """An aiobotocore CloudWatch Logs client of the `local_batch` emulator."""
    async with aws_session.create_client(
        "logs", config=NO_RETRIES, **local_batch.client_kwargs()
    ) as client:
        yield client


async def wait_for_status(
    client: Any, job_id: str, statuses: Collection[str] = DONE, within: float = 15.0
) -> dict[str, Any]:
    """Poll DescribeJobs until the job has one of `statuses` (TimeoutError after `within`
    seconds); return its JobDetail."""
    with anyio.fail_after(within):
        while True:
            (job,) = (await client.describe_jobs(jobs=[job_id]))["jobs"]
            if job["status"] in statuses:
                return dict(job)
            await anyio.sleep(0.02)


@pytest.fixture
def wait_for() -> WaitFor:
    """`await wait_for(client, job_id, statuses=("SUCCEEDED", "FAILED"), within=15)`."""
    return wait_for_status


async def read_log(logs: Any, stream: str, group: str = "/aws/batch/job") -> list[str]:
    """Every message of a log stream, paging GetLogEvents forward until the token repeats."""
    messages: list[str] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"nextToken": token} if token else {"startFromHead": True}
        page = await logs.get_log_events(logGroupName=group, logStreamName=stream, **kwargs)
        messages += [event["message"] for event in page["events"]]
        if page["nextForwardToken"] == token:
            return messages
        token = page["nextForwardToken"]


@pytest.fixture
def log_of() -> Callable[..., Awaitable[list[str]]]:
    """`await log_of(logs_client, stream_name)`: every message of the stream, oldest first."""
    return read_log
