"""LocalBatch runs jobs for real: output to CloudWatch Logs, capacity, memory limits, arrays,
termination, timeouts, retries, dependencies, and no process left behind on close."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiobotocore.session import get_session

from batchcrew.testing import LocalBatch, LocalBatchOptions

pytestmark = pytest.mark.timeout(30)


def python(code: str) -> list[str]:
    return ["python", "-c", code]


async def submit(client: Any, batch: LocalBatch, command: list[str], **kwargs: Any) -> str:
    overrides = kwargs.pop("containerOverrides", {})
    response = await client.submit_job(
        jobName=kwargs.pop("jobName", "test-job"),
        jobQueue=batch.job_queue,
        jobDefinition=kwargs.pop("jobDefinition", batch.job_definition),
        containerOverrides={"command": command, **overrides},
        **kwargs,
    )
    return str(response["jobId"])


def wait_until_exists(path: Path) -> str:
    """Python code that returns once `path` exists: lets a test decide when a job ends."""
    return f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.01)"


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a zombie is dead, merely unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def test_job_runs_and_its_output_lines_come_back_from_the_log(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any
) -> None:
    assert local_batch.job_queue == "batchcrew-test"
    assert local_batch.job_definition == "batchcrew-test"
    job_id = await submit(
        batch_client,
        local_batch,
        python("import sys; print('first'); print('second', file=sys.stderr)"),
    )

    job = await wait_for(batch_client, job_id)

    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == "Essential container in task exited"
    assert job["container"]["exitCode"] == 0
    assert job["createdAt"] <= job["startedAt"] <= job["stoppedAt"]
    stream = job["container"]["logStreamName"]
    assert re.fullmatch(r"batchcrew-test/default/[0-9a-f]{32}", stream)
    events = (
        await logs_client.get_log_events(
            logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True
        )
    )["events"]
    assert sorted(e["message"] for e in events) == ["first", "second"]
    assert all(e["timestamp"] >= job["startedAt"] and e["ingestionTime"] > 0 for e in events)


async def test_job_over_its_memory_limit_is_killed(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    job_id = await submit(
        batch_client,
        local_batch,
        python("import time; data = b'x' * (200 << 20); time.sleep(30)"),
        containerOverrides={"resourceRequirements": [{"type": "MEMORY", "value": "64"}]},
    )

    job = await wait_for(batch_client, job_id)

    assert job["status"] == "FAILED"
    assert job["statusReason"] == "OutOfMemoryError: Container killed due to memory usage"
    assert job["container"]["exitCode"] == 137
    assert job["container"]["reason"] == job["statusReason"]


@pytest.mark.parametrize(
    ("local_batch_options", "requirements"),
    [
        (LocalBatchOptions(vcpus=2), []),  # three 1-vCPU jobs on 2 vCPUs
        (LocalBatchOptions(memory_mib=1024), [{"type": "MEMORY", "value": "512"}]),
    ],
    ids=["vcpus", "memory"],
)
async def test_third_job_waits_runnable_until_capacity_frees(
    local_batch: LocalBatch,
    batch_client: Any,
    tmp_path: Path,
    wait_for: Any,
    requirements: list[dict[str, str]],
) -> None:
    async def submit_waiting_for(name: str) -> str:
        command = python(wait_until_exists(tmp_path / name))
        overrides = {"resourceRequirements": requirements}
        return await submit(batch_client, local_batch, command, containerOverrides=overrides)

    first = await submit_waiting_for("first")
    second = await submit_waiting_for("second")
    await wait_for(batch_client, first, ["RUNNING"])
    await wait_for(batch_client, second, ["RUNNING"])
    third = await submit_waiting_for("third")

    # Two 1-vCPU jobs fill 2 vCPUs: the scheduler keeps the third RUNNABLE.
    await wait_for(batch_client, third, ["RUNNABLE"])
    listed = await batch_client.list_jobs(jobQueue=local_batch.job_queue, jobStatus="RUNNABLE")
    assert [j["jobId"] for j in listed["jobSummaryList"]] == [third]

    (tmp_path / "first").touch()
    assert (await wait_for(batch_client, first))["status"] == "SUCCEEDED"
    await wait_for(batch_client, third, ["RUNNING"])
    (tmp_path / "second").touch()
    (tmp_path / "third").touch()
    assert (await wait_for(batch_client, third))["status"] == "SUCCEEDED"


async def test_array_job_runs_one_child_per_index(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any, log_of: Any
) -> None:
    parent_id = await submit(
        batch_client,
        local_batch,
        python(
            "import os; print(*map(os.getenv, ['AWS_BATCH_JOB_ARRAY_INDEX', 'AWS_BATCH_JOB_ID']))"
        ),
        arrayProperties={"size": 3},
    )

    parent = await wait_for(batch_client, parent_id)

    assert parent["status"] == "SUCCEEDED"
    assert parent["arrayProperties"]["size"] == 3
    assert parent["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3
    children = (await batch_client.list_jobs(arrayJobId=parent_id, jobStatus="SUCCEEDED"))[
        "jobSummaryList"
    ]
    assert sorted(c["jobId"] for c in children) == [f"{parent_id}:{i}" for i in range(3)]
    assert sorted(c["arrayProperties"]["index"] for c in children) == [0, 1, 2]
    details = (await batch_client.describe_jobs(jobs=[c["jobId"] for c in children]))["jobs"]
    for child in details:
        lines = await log_of(logs_client, child["container"]["logStreamName"])
        assert lines == [f"{child['arrayProperties']['index']} {child['jobId']}"]


async def test_array_parent_stays_pending_while_children_run_then_fails_if_one_fails(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    parent_id = await submit(
        batch_client,
        local_batch,
        python("import os, sys; sys.exit(int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX']) == 1)"),
        arrayProperties={"size": 2},
    )
    parent = await wait_for(batch_client, parent_id)
    assert parent["status"] == "FAILED"
    summary = parent["arrayProperties"]["statusSummary"]
    assert (summary["SUCCEEDED"], summary["FAILED"]) == (1, 1)


async def test_terminate_stops_a_running_job_within_a_second(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    job_id = await submit(batch_client, local_batch, ["sleep", "30"])
    await wait_for(batch_client, job_id, ["RUNNING"])

    await batch_client.terminate_job(jobId=job_id, reason="no longer needed")
    job = await wait_for(batch_client, job_id, within=1.0)

    assert job["status"] == "FAILED"
    assert job["statusReason"] == "no longer needed"
    assert job["isTerminated"] is True
    assert job["container"]["exitCode"] == 128 + signal.SIGTERM


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(startup_delay=60)])
async def test_jobs_spend_the_startup_delay_in_starting(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    job_id = await submit(batch_client, local_batch, python("pass"))
    job = await wait_for(batch_client, job_id, ["STARTING"])
    assert "logStreamName" not in job["container"]
    assert "startedAt" not in job

    await batch_client.terminate_job(jobId=job_id, reason="stop while starting")

    job = await wait_for(batch_client, job_id)
    assert (job["status"], job["statusReason"]) == ("FAILED", "stop while starting")


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(vcpus=1)])
async def test_cancel_fails_waiting_jobs_but_leaves_running_ones(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    release = tmp_path / "release"
    command = python(
        f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.01)"
    )
    running = await submit(batch_client, local_batch, command)
    await wait_for(batch_client, running, ["RUNNING"])
    waiting = await submit(batch_client, local_batch, command)
    await wait_for(batch_client, waiting, ["RUNNABLE"])

    also_waiting = await submit(batch_client, local_batch, command)

    await batch_client.cancel_job(jobId=waiting, reason="changed my mind")
    await batch_client.cancel_job(jobId=running, reason="too late")
    await batch_client.terminate_job(jobId=also_waiting, reason="terminated before start")

    cancelled = await wait_for(batch_client, waiting)
    assert (cancelled["status"], cancelled["statusReason"]) == ("FAILED", "changed my mind")
    assert cancelled["isCancelled"] is True
    terminated = await wait_for(batch_client, also_waiting)
    assert (terminated["status"], terminated["statusReason"]) == (
        "FAILED",
        "terminated before start",
    )
    release.touch()
    assert (await wait_for(batch_client, running))["status"] == "SUCCEEDED"


async def test_command_not_found_fails_the_job_not_the_emulator(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    job_id = await submit(batch_client, local_batch, ["no-such-program-anywhere", "--help"])

    job = await wait_for(batch_client, job_id)

    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Task failed to start"
    reason = job["container"]["reason"]
    assert reason.startswith("CannotStartContainerError:")
    assert '"no-such-program-anywhere": executable file not found in $PATH' in reason
    assert "logStreamName" not in job["container"]
    # Still serving, and still running jobs.
    ok = await submit(batch_client, local_batch, python("pass"))
    assert (await wait_for(batch_client, ok))["status"] == "SUCCEEDED"


# AWS's timeouts are at least 60 seconds; this test asks for a 1 second one, by name.
@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(lenient={"timeout_minimum"})])
async def test_attempt_duration_timeout_kills_the_job(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    job_id = await submit(
        batch_client, local_batch, ["sleep", "30"], timeout={"attemptDurationSeconds": 1}
    )

    job = await wait_for(batch_client, job_id, within=10)

    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Job attempt duration exceeded timeout"
    assert job["timeout"] == {"attemptDurationSeconds": 1}


async def test_retry_strategy_runs_new_attempts_with_new_log_streams(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any, log_of: Any
) -> None:
    job_id = await submit(
        batch_client,
        local_batch,
        python(
            "import os, sys; n = os.environ['AWS_BATCH_JOB_ATTEMPT']; print('attempt', n); "
            "sys.exit(0 if n == '3' else 3)"
        ),
        retryStrategy={"attempts": 3},
    )

    job = await wait_for(batch_client, job_id)

    assert job["status"] == "SUCCEEDED"
    attempts = job["attempts"]
    assert [a["container"]["exitCode"] for a in attempts] == [3, 3, 0]
    streams = [a["container"]["logStreamName"] for a in attempts]
    assert len(set(streams)) == 3
    assert streams[-1] == job["container"]["logStreamName"]
    for number, stream in enumerate(streams, start=1):
        assert await log_of(logs_client, stream) == [f"attempt {number}"]


async def test_evaluate_on_exit_can_stop_retrying(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    job_id = await submit(
        batch_client,
        local_batch,
        python("raise SystemExit(7)"),
        retryStrategy={
            "attempts": 5,
            "evaluateOnExit": [{"onExitCode": "7", "action": "exit"}],
        },
    )
    job = await wait_for(batch_client, job_id)
    assert (job["status"], len(job["attempts"])) == ("FAILED", 1)


async def test_depends_on_waits_for_the_dependency_and_fails_with_it(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    release = tmp_path / "release"
    first = await submit(
        batch_client,
        local_batch,
        python(f"{wait_until_exists(release)}\nraise SystemExit(1)"),
    )
    second = await submit(batch_client, local_batch, python("pass"), dependsOn=[{"jobId": first}])
    await wait_for(batch_client, first, ["RUNNING"])
    assert (await wait_for(batch_client, second, ["PENDING"]))["dependsOn"] == [{"jobId": first}]

    release.touch()

    job = await wait_for(batch_client, second)
    assert (job["status"], job["statusReason"]) == ("FAILED", "Dependent Job failed")


async def test_job_sees_parameters_environment_and_batch_variables(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any, log_of: Any
) -> None:
    await batch_client.register_job_definition(
        jobDefinitionName="echo",
        type="container",
        parameters={"greeting": "hello", "name": "default"},
        containerProperties={
            "image": "python:3.12",
            "command": [
                "python",
                "-c",
                "import os, sys; env = os.environ; print(*sys.argv[1:], *(env[name] for name in "
                "['FROM_DEF', 'FROM_SUBMIT', 'AWS_BATCH_JQ_NAME', 'AWS_BATCH_CE_NAME', "
                "'AWS_BATCH_JOB_ATTEMPT']))",
                "Ref::greeting",
                "Ref::name",
                "Ref::unknown",
            ],
            "environment": [
                {"name": "FROM_DEF", "value": "def"},
                {"name": "FROM_SUBMIT", "value": "x"},
            ],
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "256"},
            ],
        },
    )
    response = await batch_client.submit_job(
        jobName="echo",
        jobQueue=local_batch.job_queue,
        jobDefinition="echo",
        parameters={"name": "world"},
        containerOverrides={"environment": [{"name": "FROM_SUBMIT", "value": "submit"}]},
    )
    job = await wait_for(batch_client, response["jobId"])

    assert job["status"] == "SUCCEEDED"
    assert job["parameters"] == {"greeting": "hello", "name": "world"}
    assert job["container"]["command"][-3:] == ["hello", "world", "Ref::unknown"]
    lines = await log_of(logs_client, job["container"]["logStreamName"])
    assert lines == ["hello world Ref::unknown def submit batchcrew-test localbatch 1"]


async def test_closing_kills_every_job_process_and_its_children(wait_for: Any, log_of: Any) -> None:
    batch = LocalBatch(queues=["q"], job_definition="jd")
    async with (
        batch,
        get_session().create_client("batch", **batch.client_kwargs()) as client,
        get_session().create_client("logs", **batch.client_kwargs()) as logs,
    ):
        # Each job starts a grandchild, reports both pids, then waits: both must die on close.
        code = (
            "import subprocess, os, time; child = subprocess.Popen(['sleep', '60']); "
            "print(os.getpid(), child.pid, flush=True); time.sleep(60)"
        )
        ids = [await submit(client, batch, python(code)) for _ in range(3)]
        pids: list[int] = []
        for job_id in ids:
            job = await wait_for(client, job_id, ["RUNNING"])
            with anyio.fail_after(10):
                while True:
                    if lines := await log_of(logs, job["container"]["logStreamName"]):
                        break
                    await anyio.sleep(0.02)
            pids += [int(pid) for pid in lines[0].split()]
        assert set(batch.process_ids()) == set(pids[0::2])
        assert all(alive(pid) for pid in pids)

    assert [pid for pid in pids if alive(pid)] == []
    assert batch.process_ids() == []


async def test_emulator_processes_are_in_their_own_process_groups(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any, log_of: Any
) -> None:
    job_id = await submit(
        batch_client, local_batch, python("import os; print(os.getpgid(0) == os.getpid())")
    )
    job = await wait_for(batch_client, job_id)
    assert await log_of(logs_client, job["container"]["logStreamName"]) == ["True"]
    assert os.getpgid(0) != 0


async def test_helpers_wait_for_a_job_and_read_its_log_without_a_client(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    job_id = await submit(
        batch_client,
        local_batch,
        python("import os, sys; print('try', os.environ['AWS_BATCH_JOB_ATTEMPT']); sys.exit(1)"),
        retryStrategy={"attempts": 2},
    )

    job = await local_batch.wait_for_job(job_id)

    assert (job["status"], len(job["attempts"])) == ("FAILED", 2)
    assert job == (await batch_client.describe_jobs(jobs=[job_id]))["jobs"][0]
    assert local_batch.log_messages(job_id) == ["try 1", "try 2"]
    with pytest.raises(KeyError):
        local_batch.describe_job("nope")
    with pytest.raises(TimeoutError):
        await local_batch.wait_for_job(job_id, statuses=["RUNNING"], seconds=0.1)
