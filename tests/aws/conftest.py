"""Fixtures for the AWS tests: the standard AWS resolution pointed at the `local_batch` emulator,
moto's server with a queue of its own, and waiting for a job's status through the monitor."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import polars as pl
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from batchcrew.aws.monitor import BatchMonitor
from batchcrew.testing import LocalBatch

MOTO_REGION = "us-east-1"


@pytest.fixture
def local_aws(local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch) -> LocalBatch:
    """`local_batch`, with AWS_ENDPOINT_URL, the region and dummy keys set in the environment,
    so that objects made without endpoint_url or region reach it."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    return local_batch


async def wait_for_status(
    monitor: BatchMonitor, job_id: str, statuses: Collection[str], within: float = 15.0
) -> pl.DataFrame:
    """Poll `monitor.status(job_id)` until the job's status is one of `statuses`."""
    with anyio.fail_after(within):
        while True:
            row = await monitor.status(job_id)
            if row.height and row["status"][0] in statuses:
                return row
            await anyio.sleep(0.02)


@dataclass(frozen=True)
class Moto:
    """A queue in moto, ready for jobs; names are unique because the server is shared."""

    endpoint_url: str
    region: str
    job_queue: str


@pytest.fixture
async def moto(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Moto:
    """moto's server with a fresh compute environment and job queue (and the IAM role moto
    wants for them); dummy keys in the environment."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto")
    kwargs: dict[str, Any] = {
        "endpoint_url": moto_endpoint,
        "region_name": MOTO_REGION,
        "config": AioConfig(retries={"mode": "standard", "total_max_attempts": 1}),
    }
    suffix = uuid.uuid4().hex[:8]
    session = get_session()
    async with session.create_client("iam", **kwargs) as iam:
        role = await iam.create_role(RoleName=f"batch-{suffix}", AssumeRolePolicyDocument="{}")
    async with session.create_client("batch", **kwargs) as batch:
        environment = await batch.create_compute_environment(
            computeEnvironmentName=f"ce-{suffix}",
            type="UNMANAGED",
            state="ENABLED",
            serviceRole=role["Role"]["Arn"],
        )
        queue = f"queue-{suffix}"
        await batch.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[
                {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}
            ],
        )
    return Moto(moto_endpoint, MOTO_REGION, queue)


@pytest.fixture
def dropped_port() -> Iterator[int]:
    """A free port whose incoming TCP connections this machine drops silently, as a security
    group without the self-referencing rule does: a connection attempt hangs, and nothing says
    why. (nftables, in a table of its own, removed after the test.)"""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("dropping connections needs root and `nft` (apt-get install nftables)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    table = f"batchcrew_unreachable_{port}"
    rules = [
        f"add table inet {table}",
        f"add chain inet {table} output {{ type filter hook output priority 0 ; }}",
        f"add rule inet {table} output tcp dport {port} drop",
    ]
    for rule in rules:
        subprocess.run(["nft", *rule.split()], check=True, capture_output=True, timeout=30)
    try:
        yield port
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, timeout=30)
