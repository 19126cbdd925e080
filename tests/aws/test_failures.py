"""AWS Batch failing the way AWS fails, on LocalBatch: jobs stopped from outside, hosts
reclaimed, workers that cannot reach the controller, jobs stuck RUNNABLE, an endpoint that does
not answer. Only the task's own deaths count against it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest
from aiobotocore.session import get_session

import batchcrew as bc
from batchcrew import aws
from batchcrew.testing import LocalBatch, LocalBatchOptions
from tests.aws.tasks import announce_then_wait, frozen_then_wait
from tests.aws.test_launcher import options_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def credentials(local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the standard AWS resolution (endpoint, region, dummy keys) at the emulator."""
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)


async def runs_of(folder: Path, count: int, within: float) -> list[int]:
    """The pids of the first `count` runs of `announce_then_wait` (waiting up to `within`)."""
    with anyio.fail_after(within):
        while len(list(folder.iterdir())) < count:
            await anyio.sleep(0.01)
    return sorted(int(path.name) for path in folder.iterdir())


async def job_of(controller: bc.Controller, pid: int) -> str:
    """The AWS Batch job (or array child) id of the worker whose process is `pid`."""
    workers = controller.workers().filter(pl.col("pid") == pid)
    (job_id,) = workers["job_id"].to_list()
    assert job_id
    return str(job_id)


async def test_terminate_job_on_a_busy_worker_runs_its_task_elsewhere_and_counts_no_crash(
    local_batch: LocalBatch, tmp_path: Path
) -> None:
    """TerminateJob from outside (a person, a script, a scale-in): ECS sends SIGTERM, the
    worker hands its task back, and the task runs on another worker at once. crashes_max=0:
    one crash would resolve it "crash"."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    runs.mkdir()
    controller = aws.batch_controller(
        workers=2, options=options_for(local_batch), crashes_max=0, host="127.0.0.1"
    )
    async with controller:
        controller.push(sum, [1])  # both workers up, one of them idle for the retry
        task = controller.push(announce_then_wait, str(runs), str(go))
        with anyio.fail_after(30):
            while len(controller.workers().filter(pl.col("state") == "idle")) < 1:
                await anyio.sleep(0.02)
        (first,) = await runs_of(runs, 1, within=30)
        job_id = await job_of(controller, first)
        async with get_session().create_client("batch", **local_batch.client_kwargs()) as client:
            await client.terminate_job(jobId=job_id, reason="stopped by the on-call engineer")
        await runs_of(runs, 2, within=2)  # running elsewhere within 2 s
        go.touch()
        result = await task
    assert result.status == "success"
    assert len(result.result) == 2
    gone = controller.workers().filter(pl.col("state") == "gone")
    assert gone["crashes"].sum() == 0
    assert any("SIGTERM" in reason for reason in gone["reason"].to_list())


async def test_an_endpoint_where_nothing_listens_fails_the_start_naming_it() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    options = aws.BatchOptions(job_definition="d", job_queue="q", endpoint_url=endpoint)
    controller = aws.batch_controller(workers=1, options=options, host="127.0.0.1")
    with (
        anyio.fail_after(15),
        pytest.raises(bc.LaunchError, match="cannot reach AWS Batch") as error,
    ):
        await controller.start()
    assert endpoint in str(error.value)
    assert "endpoint_url" in str(error.value)


async def test_workers_that_cannot_reach_the_controller_fail_the_run_at_once(
    local_batch: LocalBatch, dropped_port: int
) -> None:
    """The workers' jobs run, but their connections to the controller are dropped: after
    seconds_launch the run stops launching (launching more would only bill more jobs
    dialling in vain) and says what to fix, instead of launch_failures_max more rounds."""
    seconds_launch = 3.0
    launcher = aws.BatchLauncher(options_for(local_batch), seconds_poll=0.5)
    controller = bc.Controller(
        workers=3,
        launcher=launcher,
        host="127.0.0.1",
        port=dropped_port,
        seconds_launch=seconds_launch,
    )
    async with controller:
        tasks = await controller.walk(sum, [[1]] * 3)  # three workers' worth
        with anyio.fail_after(1.5 * seconds_launch), pytest.raises(bc.LaunchError) as raised:
            await tasks[0]
    message = str(raised.value)
    assert f"tcp://127.0.0.1:{dropped_port}" in message
    assert f"TCP port {dropped_port}" in message
    assert "security group" in message
    (submitted,) = local_batch.requests_for("SubmitJob")  # no more than `workers` jobs
    assert submitted["arrayProperties"] == {"size": 3}
    monitor = aws.BatchMonitor(local_batch.job_queue, local_batch.job_definition)
    (job_id,) = (await monitor.jobs())["id"].to_list()
    lines = local_batch.log_messages(f"{job_id}:0")
    assert lines[0].endswith(f"connecting to tcp://127.0.0.1:{dropped_port}")


# -- Spot: a reclaimed host is not the task's fault --------------------------------------------


async def test_a_spot_reclaim_reruns_the_task_at_once_on_a_first_level_worker(
    local_batch: LocalBatch, tmp_path: Path
) -> None:
    """The host under a busy worker is reclaimed ("Host EC2 (instance i-...) terminated.", no
    exit code). With crashes_max=0 a crash would resolve the task "crash", and a crash would
    send it up the memory ladder: an interruption does neither."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    runs.mkdir()
    launcher = aws.BatchLauncher(options_for(local_batch, memory=[256, 512]), seconds_poll=0.5)
    controller = bc.Controller(workers=2, launcher=launcher, crashes_max=0, host="127.0.0.1")
    async with controller:
        task = controller.push(announce_then_wait, str(runs), str(go))
        (first,) = await runs_of(runs, 1, within=30)
        job_id = await job_of(controller, first)
        local_batch.reclaim(job_id, instance_id="i-0123456789abcdef0")
        pids = await runs_of(runs, 2, within=5)  # running again within 5 s
        go.touch()
        result = await task
        with anyio.fail_after(10):  # the launcher's next poll reads why the job ended
            while "Host EC2" not in str(
                (workers := controller.workers()).filter(pl.col("pid") == first)["reason"][0]
            ):
                await anyio.sleep(0.05)
    assert result.status == "success"
    assert result.interruptions == 1
    assert result.attempts == 1  # an interruption is not a failed attempt
    second = workers.filter(pl.col("pid") == max(set(pids) - {first}))
    assert second["level"].to_list() == [0]  # the first level: 256 MiB, not 512
    reclaimed = workers.filter(pl.col("pid") == first)
    assert reclaimed["crashes"].to_list() == [0]
    (reason,) = reclaimed["reason"].to_list()
    assert "Host EC2 (instance i-0123456789abcdef0) terminated." in reason
    job = local_batch.describe_job(job_id)
    assert job["statusReason"] == "Host EC2 (instance i-0123456789abcdef0) terminated."
    assert "exitCode" not in job.get("container", {})


async def test_a_task_reclaimed_past_interruptions_max_moves_to_the_on_demand_backup(
    local_batch: LocalBatch, controller_group: Any, tmp_path: Path
) -> None:
    """Spot, with an on-demand controller as the backup: after interruptions_max reruns, the
    task's next reclaim sends it to the backup, where nothing reclaims it."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    runs.mkdir()
    on_demand_queue = local_batch.create_queue("on-demand")
    spot = aws.batch_controller(
        "spot",
        1,
        options=options_for(local_batch),
        interruptions_max=1,
        crashes_max=0,
        host="127.0.0.1",
    )
    on_demand = aws.batch_controller(
        "on-demand",
        1,
        options=options_for(local_batch, job_queue=on_demand_queue),
        host="127.0.0.1",
    )
    spot.backup = on_demand
    group = await controller_group(spot, on_demand)
    task = group.push(announce_then_wait, str(runs), str(go), controller="spot")
    for count in (1, 2):  # the first run, then its one rerun on Spot: both reclaimed
        pids = await runs_of(runs, count, within=30)
        local_batch.reclaim(await job_of(spot, max(pids)))
    await runs_of(runs, 3, within=30)  # the third run: on the backup
    go.touch()
    with anyio.fail_after(30):
        result = await task
    assert (result.status, result.controller) == ("success", "on-demand")
    assert result.interruptions == 2
    on_demand_jobs = await aws.BatchMonitor(on_demand_queue, local_batch.job_definition).jobs()
    assert on_demand_jobs.height == 1


# -- RUNNABLE: AWS's reason, not "did not connect" ---------------------------------------------


async def test_a_job_stuck_in_runnable_says_so_with_the_reason_aws_gives(
    local_batch: LocalBatch,
) -> None:
    local_batch.set_compute_environment("localbatch", state="DISABLED")
    launcher = aws.BatchLauncher(options_for(local_batch), seconds_poll=0.5)
    controller = bc.Controller(
        workers=1, launcher=launcher, host="127.0.0.1", seconds_launch=2, launch_failures_max=1
    )
    async with controller:
        task = controller.push(sum, [1])
        with anyio.fail_after(15), pytest.raises(bc.LaunchError) as raised:
            await task
    message = str(raised.value)
    assert "RUNNABLE" in message
    assert "RUNNABLE, not placed: ACTION_REQUIRED - CE(s) associated with the job queue" in message
    assert "compute environment localbatch is DISABLED" in message
    assert "did not connect" not in message


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(stop_timeout=0.5)])
async def test_a_worker_killed_without_a_word_waits_for_the_launchers_reason(
    local_batch: LocalBatch, tmp_path: Path
) -> None:
    """The reclaimed worker cannot say goodbye (its process is stopped) and dies by SIGKILL:
    its connection drops with no reason given. The controller waits for the launcher's next
    poll, which reads "Host EC2 ... terminated.", before it decides: not a crash."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    runs.mkdir()
    launcher = aws.BatchLauncher(options_for(local_batch), seconds_poll=0.5)
    controller = bc.Controller(workers=1, launcher=launcher, crashes_max=0, host="127.0.0.1")
    async with controller:
        task = controller.push(frozen_then_wait, str(runs), str(go))
        (first,) = await runs_of(runs, 1, within=30)
        local_batch.reclaim(await job_of(controller, first))
        await runs_of(runs, 2, within=15)
        go.touch()
        result = await task
        reclaimed = controller.workers().filter(pl.col("pid") == first)
    assert (result.status, result.interruptions) == ("success", 1)
    assert reclaimed["crashes"].to_list() == [0]
    assert reclaimed["reason"][0].startswith("reclaimed: Host EC2 (instance i-")
