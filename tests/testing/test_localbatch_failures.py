"""LocalBatch fails the way AWS fails, on demand: containers stopped as ECS stops them (SIGTERM,
then SIGKILL after the stop timeout), Spot hosts reclaimed, jobs that wait RUNNABLE with the
reason DescribeJobs gives, and images that cannot be pulled. Real job processes, real HTTP."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchcrew.testing import LocalBatch, LocalBatchOptions
from batchcrew.testing._batch import image_reference

pytestmark = pytest.mark.timeout(30)

#: Short enough to keep the tests fast; ECS's default is 30 seconds.
FAST_STOP = LocalBatchOptions(stop_timeout=0.5)

MAX_RESOURCE = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - CE(s) associated with the job queue "
    "cannot meet the CPU requirement of the job."
)
JOB_RESOURCE_REQUIREMENT = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement "
    "(vCPU/memory/GPU) is higher than that can be met by the CE(s) attached to the job queue."
)


@pytest.fixture
def local_batch_options() -> LocalBatchOptions:
    return FAST_STOP


def python(code: str) -> list[str]:
    return ["python", "-c", code]


async def submit(
    client: Any, batch: LocalBatch, command: list[str], *, queue: str | None = None, **kwargs: Any
) -> str:
    overrides = kwargs.pop("containerOverrides", {})
    response = await client.submit_job(
        jobName=kwargs.pop("jobName", "failure-job"),
        jobQueue=queue or batch.job_queue,
        jobDefinition=kwargs.pop("jobDefinition", batch.job_definition),
        containerOverrides={"command": command, **overrides},
        **kwargs,
    )
    return str(response["jobId"])


def until_exists(path: Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.01)\n"


def trapping_sigterm(marks: Path, then: str) -> list[str]:
    """A job that records each SIGTERM in `marks`, runs `then` in its handler, and otherwise
    waits forever; `marks` holds "ready" once the handler is installed."""
    return python(
        "import signal, sys, time\n"
        f"def on_term(signum, frame):\n    open({str(marks)!r}, 'a').write('TERM\\n')\n"
        f"    {then}\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        f"open({str(marks)!r}, 'w').write('ready\\n')\n"
        "while True: time.sleep(0.05)\n"
    )


async def wait_for_file(path: Path, text: str = "", within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not (path.exists() and text in path.read_text()):
            await anyio.sleep(0.01)


async def describe_environment(client: Any, name: str) -> dict[str, Any]:
    (environment,) = (await client.describe_compute_environments(computeEnvironments=[name]))[
        "computeEnvironments"
    ]
    return dict(environment)


# -- stopping a container as ECS does -------------------------------------------------------


def test_stop_timeout_is_ecs_default_and_is_validated() -> None:
    assert LocalBatchOptions().stop_timeout == 30.0
    with pytest.raises(ValueError, match=r"stop_timeout must be a number of seconds >= 0"):
        LocalBatchOptions(stop_timeout=-1)


# A stop timeout far longer than the wait: the job ends on its SIGTERM, not on a SIGKILL.
@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(stop_timeout=20)])
async def test_terminate_sends_sigterm_first_and_a_job_that_exits_on_it_ends_terminated(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    marks = tmp_path / "marks"
    job_id = await submit(
        batch_client, local_batch, trapping_sigterm(marks, "sys.exit(3)"), jobName="graceful"
    )
    await wait_for(batch_client, job_id, ["RUNNING"])
    await wait_for_file(marks, "ready")

    await batch_client.terminate_job(jobId=job_id, reason="stopped by the test")
    job = await wait_for(batch_client, job_id, within=10)

    assert marks.read_text() == "ready\nTERM\n"
    assert (job["status"], job["statusReason"]) == ("FAILED", "stopped by the test")
    assert job["isTerminated"] is True
    assert job["container"]["exitCode"] == 3
    assert len(job["attempts"]) == 1


# A 1 second job timeout (AWS's least is 60), by name, to stop a job the third way.
@pytest.mark.parametrize(
    "local_batch_options",
    [LocalBatchOptions(stop_timeout=0.5, lenient={"timeout_minimum"})],
)
@pytest.mark.parametrize("stop", ["TerminateJob", "TerminateJobs", "timeout"])
async def test_a_job_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any, stop: str
) -> None:
    marks = tmp_path / "marks"
    timeout = {"timeout": {"attemptDurationSeconds": 1}} if stop == "timeout" else {}
    job_id = await submit(batch_client, local_batch, trapping_sigterm(marks, "pass"), **timeout)
    await wait_for(batch_client, job_id, ["RUNNING"])
    await wait_for_file(marks, "ready")

    asked = anyio.current_time()
    if stop == "TerminateJob":
        await batch_client.terminate_job(jobId=job_id, reason="stop, whatever it takes")
    elif stop == "TerminateJobs":
        await batch_client.terminate_jobs(jobs=[job_id], reason="stop, whatever it takes")
    await wait_for_file(marks, "TERM")  # SIGTERM first: the job saw it and went on
    termed = anyio.current_time()
    job = await wait_for(batch_client, job_id, within=10)

    assert anyio.current_time() - termed >= FAST_STOP.stop_timeout - 0.05
    assert anyio.current_time() - asked >= FAST_STOP.stop_timeout
    assert job["status"] == "FAILED"
    assert job["container"]["exitCode"] == 128 + signal.SIGKILL
    if stop == "timeout":
        assert job["statusReason"] == "Job attempt duration exceeded timeout"
    else:
        assert job["statusReason"] == "stop, whatever it takes"
        assert job["isTerminated"] is True


# -- a Spot host reclaimed ------------------------------------------------------------------


async def test_reclaim_fails_the_attempt_with_the_host_reason_and_no_exit_code(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    marks = tmp_path / "marks"
    # The container exits 0 on its SIGTERM: the host is gone all the same.
    job_id = await submit(batch_client, local_batch, trapping_sigterm(marks, "sys.exit(0)"))
    await wait_for(batch_client, job_id, ["RUNNING"])
    await wait_for_file(marks, "ready")

    local_batch.reclaim(job_id)
    job = await wait_for(batch_client, job_id)

    assert marks.read_text() == "ready\nTERM\n"
    assert job["status"] == "FAILED"
    assert re.fullmatch(r"Host EC2 \(instance i-[0-9a-f]{17}\) terminated\.", job["statusReason"])
    assert "exitCode" not in job["container"]
    assert job["isTerminated"] is False
    (attempt,) = job["attempts"]
    assert attempt["statusReason"] == job["statusReason"]
    assert "exitCode" not in attempt["container"]
    summary = (await batch_client.list_jobs(jobQueue=local_batch.job_queue, jobStatus="FAILED"))[
        "jobSummaryList"
    ]
    assert [(s["jobId"], s["statusReason"]) for s in summary] == [(job_id, job["statusReason"])]


@pytest.mark.parametrize(("action", "attempts"), [("RETRY", 2), ("EXIT", 1)])
async def test_evaluate_on_exit_decides_whether_a_reclaimed_job_runs_again(
    local_batch: LocalBatch,
    batch_client: Any,
    tmp_path: Path,
    wait_for: Any,
    action: str,
    attempts: int,
) -> None:
    ready = tmp_path / "ready"
    # The first attempt waits to be reclaimed; a second one succeeds.
    code = (
        "import os, sys, time\n"
        "if os.environ['AWS_BATCH_JOB_ATTEMPT'] != '1': sys.exit(0)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    job_id = await submit(
        batch_client,
        local_batch,
        python(code),
        # As AWS's own examples retry a reclaimed Spot host.
        retryStrategy={
            "attempts": 2,
            "evaluateOnExit": [
                {"onStatusReason": "Host EC2*", "action": action},
                {"onReason": "*", "action": "EXIT"},
            ],
        },
    )
    await wait_for(batch_client, job_id, ["RUNNING"])
    await wait_for_file(ready)

    local_batch.reclaim(job_id, instance_id="i-0123456789abcdef0")
    job = await wait_for(batch_client, job_id)

    assert len(job["attempts"]) == attempts
    first = job["attempts"][0]
    assert first["statusReason"] == "Host EC2 (instance i-0123456789abcdef0) terminated."
    assert "exitCode" not in first["container"]
    if action == "RETRY":
        assert job["status"] == "SUCCEEDED"
        assert job["attempts"][1]["container"]["exitCode"] == 0
    else:
        assert (job["status"], job["statusReason"]) == ("FAILED", first["statusReason"])


async def test_reclaim_takes_an_array_child_and_refuses_what_has_no_host(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    release = tmp_path / "release"
    parent = await submit(
        batch_client, local_batch, python(until_exists(release)), arrayProperties={"size": 2}
    )
    child = f"{parent}:0"
    await wait_for(batch_client, child, ["RUNNING"])

    with pytest.raises(ValueError, match="is an array job"):
        local_batch.reclaim(parent)
    with pytest.raises(ValueError, match="must be an EC2 instance id"):
        local_batch.reclaim(child, instance_id="host-1")
    with pytest.raises(KeyError):
        local_batch.reclaim("00000000-0000-0000-0000-000000000000")
    local_batch.reclaim(child, instance_id="i-0123abcd")
    reclaimed = await wait_for(batch_client, child)
    assert reclaimed["statusReason"] == "Host EC2 (instance i-0123abcd) terminated."
    release.touch()
    done = await wait_for(batch_client, f"{parent}:1")
    assert done["status"] == "SUCCEEDED"
    with pytest.raises(ValueError, match=r"is SUCCEEDED: only a STARTING or RUNNING job"):
        local_batch.reclaim(f"{parent}:1")


# -- jobs that stay RUNNABLE, and why ---------------------------------------------------------


async def test_max_vcpus_caps_running_jobs_and_the_rest_wait_their_turn(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    local_batch.create_queue("capped", max_vcpus=2)
    ids = [
        await submit(
            batch_client, local_batch, python(until_exists(tmp_path / f"{n}")), queue="capped"
        )
        for n in range(3)
    ]
    for job_id in ids[:2]:
        await wait_for(batch_client, job_id, ["RUNNING"])

    # Two 1-vCPU jobs fill maxvCpus: the third waits its turn, with no reason to give.
    waiting = await wait_for(batch_client, ids[2], ["RUNNABLE"])
    assert "statusReason" not in waiting

    # Raising maxvCpus lets it start at once, with both others still running.
    await batch_client.update_compute_environment(
        computeEnvironment="capped-ce", computeResources={"maxvCpus": 3}
    )
    await wait_for(batch_client, ids[2], ["RUNNING"])
    environment = await describe_environment(batch_client, "capped-ce")
    assert environment["computeResources"]["maxvCpus"] == 3
    assert environment["computeResources"]["subnets"]  # kept: an update changes what it names
    for n in range(3):
        (tmp_path / f"{n}").touch()
    for job_id in ids:
        assert (await wait_for(batch_client, job_id))["status"] == "SUCCEEDED"


async def test_a_job_over_max_vcpus_waits_with_the_max_resource_reason_until_raised(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    local_batch.create_queue("small", max_vcpus=2)
    job_id = await submit(
        batch_client,
        local_batch,
        python("pass"),
        queue="small",
        containerOverrides={"resourceRequirements": [{"type": "VCPU", "value": "4"}]},
    )

    job = await wait_for(batch_client, job_id, ["RUNNABLE"])
    with anyio.fail_after(5):
        while job.get("statusReason") != MAX_RESOURCE:
            await anyio.sleep(0.02)
            (job,) = (await batch_client.describe_jobs(jobs=[job_id]))["jobs"]
    listed = await batch_client.list_jobs(jobQueue="small", jobStatus="RUNNABLE")
    assert [s["statusReason"] for s in listed["jobSummaryList"]] == [MAX_RESOURCE]

    await batch_client.update_compute_environment(
        computeEnvironment="small-ce", computeResources={"maxvCpus": 4}
    )
    assert (await wait_for(batch_client, job_id))["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    "requirement",
    [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "4096"}],
    ids=["vcpus", "memory"],
)
@pytest.mark.parametrize(
    "local_batch_options", [LocalBatchOptions(vcpus=2, memory_mib=3072, stop_timeout=0.5)]
)
async def test_a_job_larger_than_any_instance_waits_with_the_job_resource_reason(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any, requirement: dict[str, str]
) -> None:
    job_id = await submit(
        batch_client,
        local_batch,
        python("pass"),
        containerOverrides={"resourceRequirements": [requirement]},
    )
    with anyio.fail_after(5):
        while (job := await wait_for(batch_client, job_id, ["RUNNABLE"])).get(
            "statusReason"
        ) != JOB_RESOURCE_REQUIREMENT:
            await anyio.sleep(0.02)

    # Nothing will ever fit it: cancelling it is the way out, as the user guide advises.
    await batch_client.cancel_job(jobId=job_id, reason="too big for this queue")
    job = await wait_for(batch_client, job_id)
    assert (job["status"], job["statusReason"]) == ("FAILED", "too big for this queue")


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(vcpus=2, stop_timeout=0.5)])
async def test_jobs_wait_with_the_capacity_reason_when_ec2_has_no_instance_to_give(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    # maxvCpus would let the environment grow to 8 vCPUs; EC2 (the emulator's 2) has no more.
    local_batch.create_queue("growing", max_vcpus=8)
    release = tmp_path / "release"
    ids = [
        await submit(batch_client, local_batch, python(until_exists(release)), queue="growing")
        for _ in range(3)
    ]
    for job_id in ids[:2]:
        await wait_for(batch_client, job_id, ["RUNNING"])

    job = await wait_for(batch_client, ids[2], ["RUNNABLE"])
    with anyio.fail_after(5):
        while "statusReason" not in job:
            await anyio.sleep(0.02)
            (job,) = (await batch_client.describe_jobs(jobs=[ids[2]]))["jobs"]
    assert job["statusReason"] == (
        "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity "
        "requested for instance type m6i.large"
    )

    local_batch.reclaim(ids[0])  # capacity frees: the waiting job moves on
    running = await wait_for(batch_client, ids[2], ["RUNNING"])
    assert "statusReason" not in running
    release.touch()
    assert (await wait_for(batch_client, ids[2]))["status"] == "SUCCEEDED"


async def test_a_disabled_environment_places_no_job_until_enabled_and_running_ones_go_on(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    release = tmp_path / "release"
    running = await submit(batch_client, local_batch, python(until_exists(release)))
    await wait_for(batch_client, running, ["RUNNING"])

    local_batch.set_compute_environment("localbatch", state="DISABLED")
    environment = await describe_environment(batch_client, "localbatch")
    assert (environment["state"], environment["status"]) == ("DISABLED", "VALID")
    waiting = await submit(batch_client, local_batch, python("pass"))
    job = await wait_for(batch_client, waiting, ["RUNNABLE"])
    with anyio.fail_after(5):
        while "statusReason" not in job:
            await anyio.sleep(0.02)
            (job,) = (await batch_client.describe_jobs(jobs=[waiting]))["jobs"]
    assert job["statusReason"] == (
        "ACTION_REQUIRED - CE(s) associated with the job queue are disabled."
    )
    release.touch()
    assert (await wait_for(batch_client, running))["status"] == "SUCCEEDED"

    await batch_client.update_compute_environment(computeEnvironment="localbatch", state="ENABLED")
    assert (await wait_for(batch_client, waiting))["status"] == "SUCCEEDED"


async def test_an_invalid_environment_places_no_job_and_says_why_until_valid(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    local_batch.set_compute_environment("localbatch", status="INVALID")
    environment = await describe_environment(batch_client, "localbatch")
    assert (environment["state"], environment["status"], environment["statusReason"]) == (
        "ENABLED",
        "INVALID",
        "CLIENT_ERROR - Clusters can not be blank.",
    )
    job_id = await submit(batch_client, local_batch, python("pass"))
    job = await wait_for(batch_client, job_id, ["RUNNABLE"])
    with anyio.fail_after(5):
        while "statusReason" not in job:
            await anyio.sleep(0.02)
            (job,) = (await batch_client.describe_jobs(jobs=[job_id]))["jobs"]
    assert (
        job["statusReason"] == "ACTION_REQUIRED - CE(s) associated with the job queue are invalid."
    )

    local_batch.set_compute_environment("localbatch", status_reason="CLIENT_ERROR - role gone")
    assert (await describe_environment(batch_client, "localbatch"))["statusReason"] == (
        "CLIENT_ERROR - role gone"
    )
    local_batch.set_compute_environment("localbatch", status="VALID")
    assert (await wait_for(batch_client, job_id))["status"] == "SUCCEEDED"
    environment = await describe_environment(batch_client, "localbatch")
    assert (environment["status"], environment["statusReason"]) == (
        "VALID",
        "ComputeEnvironment Healthy",
    )


async def test_create_queue_gives_its_environment_the_network_given(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    local_batch.create_queue("net", subnets=["subnet-0aaa"], security_group_ids=["sg-0bbb"])
    local_batch.create_queue(
        "net-fargate", platform="FARGATE", max_vcpus=16, subnets=["subnet-0ccc"]
    )

    ec2 = await describe_environment(batch_client, "net-ce")
    assert (ec2["type"], ec2["state"], ec2["status"]) == ("MANAGED", "ENABLED", "VALID")
    resources = ec2["computeResources"]
    assert (resources["type"], resources["maxvCpus"]) == ("EC2", 256)
    assert (resources["subnets"], resources["securityGroupIds"]) == (["subnet-0aaa"], ["sg-0bbb"])
    fargate = (await describe_environment(batch_client, "net-fargate-ce"))["computeResources"]
    assert (fargate["type"], fargate["maxvCpus"], fargate["subnets"]) == (
        "FARGATE",
        16,
        ["subnet-0ccc"],
    )
    (queue,) = (await batch_client.describe_job_queues(jobQueues=["net"]))["jobQueues"]
    assert queue["computeEnvironmentOrder"][0]["computeEnvironment"] == ec2["computeEnvironmentArn"]

    with pytest.raises(ValueError, match="max_vcpus must be a whole number"):
        local_batch.create_queue("bad", max_vcpus=-1)
    with pytest.raises(TypeError, match="subnets must be a sequence"):
        local_batch.create_queue("bad", subnets="subnet-0aaa")
    with pytest.raises(ValueError, match='state must be "ENABLED" or "DISABLED"'):
        local_batch.set_compute_environment("net-ce", state="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        local_batch.set_compute_environment("no-such-ce", status="INVALID")


async def test_update_compute_environment_refuses_what_aws_refuses(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    local_batch.create_queue("serverless", platform="FARGATE", max_vcpus=4)
    with pytest.raises(batch_client.exceptions.ClientException, match="only a MANAGED"):
        await batch_client.update_compute_environment(
            computeEnvironment="localbatch", computeResources={"maxvCpus": 4}
        )
    with pytest.raises(batch_client.exceptions.ClientException, match="minvCpus is not"):
        await batch_client.update_compute_environment(
            computeEnvironment="serverless-ce", computeResources={"minvCpus": 1}
        )


# -- images that cannot be pulled -------------------------------------------------------------


async def test_an_image_that_cannot_be_pulled_fails_at_starting_on_ec2(
    local_batch: LocalBatch, batch_client: Any, tmp_path: Path, wait_for: Any
) -> None:
    ran = tmp_path / "ran"
    local_batch.register_job_definition(
        "private-tool",
        command=python(f"open({str(ran)!r}, 'w').close()"),
        image="example/private-tool:1.0",
    )
    local_batch.fail_pulls("example/private-tool:1.0")

    job_id = await submit(
        batch_client,
        local_batch,
        python(f"open({str(ran)!r}, 'w').close()"),
        jobDefinition="private-tool",
    )
    job = await wait_for(batch_client, job_id)

    assert (job["status"], job["statusReason"]) == ("FAILED", "Task failed to start")
    assert job["container"]["reason"] == (
        "CannotPullContainerError: Error response from daemon: pull access denied for "
        "example/private-tool, repository does not exist or may require 'docker login'"
    )
    assert "exitCode" not in job["container"]
    assert "logStreamName" not in job["container"]
    assert "startedAt" not in job
    assert not ran.exists()

    local_batch.allow_pulls("example/private-tool:1.0")
    again = await submit(batch_client, local_batch, python("pass"), jobDefinition="private-tool")
    assert (await wait_for(batch_client, again))["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (
            "python:3.12",
            'CannotPullContainerError: failed to resolve ref "docker.io/library/python:3.12": '
            "pull access denied, repository does not exist or may require authorization: "
            "server message: insufficient_scope: authorization failed",
        ),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/tool",
            "ResourceInitializationError: unable to pull secrets or registry auth: execution "
            "resource retrieval failed: unable to retrieve ecr registry auth: service call has "
            "been retried 3 time(s): RequestError: send request failed caused by: Post "
            '"https://api.ecr.eu-west-1.amazonaws.com/": dial tcp 203.0.113.10:443: i/o '
            "timeout. Please check your task network configuration.",
        ),
    ],
    ids=["docker-hub", "ecr"],
)
async def test_an_image_that_cannot_be_pulled_fails_at_starting_on_fargate(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any, image: str, reason: str
) -> None:
    local_batch.create_queue("serverless", platform="FARGATE")
    local_batch.register_job_definition(
        "serverless-job",
        command=python("pass"),
        vcpus=0.5,
        memory_mib=1024,
        image=image,
        platform="FARGATE",
    )
    local_batch.fail_pulls(image_reference(image))  # the same image, however it is named

    job_id = await submit(
        batch_client,
        local_batch,
        python("pass"),
        queue="serverless",
        jobDefinition="serverless-job",
    )
    job = await wait_for(batch_client, job_id)

    assert (job["status"], job["statusReason"]) == ("FAILED", "Task failed to start")
    assert job["container"]["reason"] == reason
    assert "exitCode" not in job["container"]


async def test_a_pull_failure_with_a_message_is_retried_as_aws_retries_it(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any
) -> None:
    local_batch.register_job_definition(
        "flaky", command=python("pass"), image="registry.example.com/team/tool@sha256:ab12"
    )
    message = "CannotPullContainerError: context deadline exceeded"
    local_batch.fail_pulls("registry.example.com/team/tool@sha256:ab12", message)

    job_id = await submit(
        batch_client,
        local_batch,
        python("pass"),
        jobDefinition="flaky",
        retryStrategy={
            "attempts": 3,
            "evaluateOnExit": [
                {"onStatusReason": "Task failed to start", "action": "RETRY"},
                {"onReason": "*", "action": "EXIT"},
            ],
        },
    )
    job = await wait_for(batch_client, job_id)

    assert (job["status"], len(job["attempts"])) == ("FAILED", 3)
    assert {a["container"]["reason"] for a in job["attempts"]} == {message}


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.12", "docker.io/library/python:3.12"),
        ("example/tool", "docker.io/example/tool:latest"),
        ("localhost:5000/tool", "localhost:5000/tool:latest"),
        ("ghcr.io/a/b@sha256:ab12", "ghcr.io/a/b@sha256:ab12"),
    ],
)
def test_image_references_name_an_image_however_it_is_written(image: str, reference: str) -> None:
    assert image_reference(image) == reference
