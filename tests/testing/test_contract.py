"""Contract tests: the same scenarios run against LocalBatch and against moto's server, and both
must answer with the same shapes (keys and value types at every level, for the keys botocore's
output shapes define), apart from the documented differences listed below.

moto answers the Batch and Logs APIs but never runs a job (its Docker-less backend marks each job
SUCCEEDED at once), so the scenarios use only what both implement.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import botocore.model
import botocore.session
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from batchcrew.testing import LocalBatch

pytestmark = pytest.mark.timeout(30)

CONFIG = AioConfig(retries={"mode": "standard", "total_max_attempts": 1})

#: Keys LocalBatch returns and moto leaves out: real AWS returns them (moto is older or
#: simpler here). Paths are OPERATION.key[].key; `{}` stands for a map's values.
LOCALBATCH_ONLY = {
    "DescribeComputeEnvironments.computeEnvironments[].containerOrchestrationType",
    "DescribeComputeEnvironments.computeEnvironments[].uuid",
    "DescribeJobQueues.jobQueues[].statusReason",
    "DescribeJobQueues.jobQueues[].jobStateTimeLimitActions",
    "DescribeJobDefinitions.jobDefinitions[].propagateTags",
    "DescribeJobDefinitions.jobDefinitions[].platformCapabilities",
    "DescribeJobDefinitions.jobDefinitions[].platformCapabilities[]",
    "DescribeJobDefinitions.jobDefinitions[].containerOrchestrationType",
    "DescribeJobs.jobs[].statusReason",
    "DescribeJobs.jobs[].propagateTags",
    "DescribeJobs.jobs[].platformCapabilities",
    "DescribeJobs.jobs[].platformCapabilities[]",
    "DescribeJobs.jobs[].isCancelled",
    "DescribeJobs.jobs[].isTerminated",
    "DescribeJobs.jobs[].attempts[].statusReason",
    "DescribeJobs.jobs[].attempts[].container.exitCode",
    "DescribeJobs.jobs[].container.image",
    "DescribeJobs.jobs[].container.mountPoints",
    "DescribeJobs.jobs[].container.resourceRequirements",
    "DescribeJobs.jobs[].container.resourceRequirements[]",
    "DescribeJobs.jobs[].container.resourceRequirements[].type",
    "DescribeJobs.jobs[].container.resourceRequirements[].value",
    "DescribeJobs.jobs[].container.secrets",
    "DescribeJobs.jobs[].container.exitCode",
    "DescribeJobs.jobs[].container.containerInstanceArn",
    "DescribeJobs.jobs[].container.taskArn",
    "DescribeJobs.jobs[].container.networkInterfaces",
    "DescribeJobs.jobs[].arrayProperties.index",
    "DescribeJobs.jobs[].arrayProperties.statusSummaryLastUpdatedAt",
    "ListJobs.jobSummaryList[].statusReason",
    "ListJobs.jobSummaryList[].container",
    "ListJobs.jobSummaryList[].container.exitCode",
    "ListJobs.jobSummaryList[].arrayProperties",
    "ListJobs.jobSummaryList[].arrayProperties.index",
    "ListJobs.jobSummaryList[].isCancelled",
    "ListJobs.jobSummaryList[].isTerminated",
    "DescribeLogGroups.logGroups[].logGroupClass",
}
#: Keys moto returns that AWS leaves out or that LocalBatch does not emulate.
MOTO_ONLY = {
    # moto derives the legacy vcpus/memory fields from resourceRequirements and always adds
    # two container flags; AWS reports resourceRequirements as given.
    "DescribeJobs.jobs[].container.vcpus",
    "DescribeJobs.jobs[].container.memory",
    "DescribeJobs.jobs[].container.readonlyRootFilesystem",
    "DescribeJobs.jobs[].container.privileged",
}


@dataclass
class Backend:
    """One Batch + Logs implementation, with a compute environment and a queue ready."""

    kind: str
    batch: Any
    logs: Any
    queue: str
    service_role: str


Response = tuple[str, dict[str, Any]]  # (operation name, parsed response)
Scenario = Callable[[Backend], Awaitable[list[Response]]]
OpenBackend = Callable[[str], contextlib.AbstractAsyncContextManager[Backend]]


# -- the two backends ---------------------------------------------------------------------


@pytest.fixture
def open_backend(request: pytest.FixtureRequest, aws_session: AioSession) -> OpenBackend:
    """Open a backend by kind ("localbatch" or "moto"), with a fresh compute environment and
    queue (moto's server lives for the session, so names are made unique)."""

    @contextlib.asynccontextmanager
    async def open_(kind: str) -> AsyncIterator[Backend]:
        async with contextlib.AsyncExitStack() as stack:
            if kind == "moto":
                endpoint = request.getfixturevalue("moto_endpoint")
                kwargs = {
                    "endpoint_url": endpoint,
                    "region_name": "us-east-1",
                    "aws_access_key_id": "moto",
                    "aws_secret_access_key": "moto",
                }
            else:
                local = await stack.enter_async_context(LocalBatch(queues=()))
                kwargs = local.client_kwargs()
            create = aws_session.create_client
            batch = await stack.enter_async_context(create("batch", config=CONFIG, **kwargs))
            logs = await stack.enter_async_context(create("logs", config=CONFIG, **kwargs))
            suffix = uuid.uuid4().hex[:8]
            role = "arn:aws:iam::123456789012:role/batch-service"
            if kind == "moto":  # moto checks that the service role exists
                async with create("iam", config=CONFIG, **kwargs) as iam:
                    created = await iam.create_role(
                        RoleName=f"batch-{suffix}", AssumeRolePolicyDocument="{}"
                    )
                    role = created["Role"]["Arn"]
            environment = await batch.create_compute_environment(
                computeEnvironmentName=f"ce-{suffix}",
                type="UNMANAGED",
                state="ENABLED",
                serviceRole=role,
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
            yield Backend(kind, batch, logs, queue, role)

    return open_


@pytest.fixture(params=["localbatch", "moto"])
async def backend(
    request: pytest.FixtureRequest, open_backend: OpenBackend
) -> AsyncIterator[Backend]:
    async with open_backend(request.param) as opened:
        yield opened


# -- shapes -------------------------------------------------------------------------------


@functools.cache
def _output_shape(service: str, operation: str) -> botocore.model.Shape:
    shape = (
        botocore.session.get_session()
        .get_service_model(service)
        .operation_model(operation)
        .output_shape
    )
    assert shape is not None
    return shape


def flatten(value: Any, shape: botocore.model.Shape, path: str, out: dict[str, str]) -> None:
    """Record the JSON type at each path of `value`; an empty list or map is marked so, so that
    paths under it are not expected on the other side."""
    if isinstance(shape, botocore.model.StructureShape):
        out[path] = "structure"
        for key, item in value.items():
            if key in shape.members:
                flatten(item, shape.members[key], f"{path}.{key}", out)
    elif isinstance(shape, botocore.model.ListShape):
        out[path] = "list" if value else "list(empty)"
        for item in value:
            flatten(item, shape.member, f"{path}[]", out)
    elif isinstance(shape, botocore.model.MapShape):
        out[path] = "map" if value else "map(empty)"
        for item in value.values():
            flatten(item, shape.value, f"{path}{{}}", out)
    else:
        out[path] = type(value).__name__


def signature(responses: list[Response]) -> dict[str, str]:
    out: dict[str, str] = {}
    for operation, response in responses:
        body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
        service = "logs" if operation in LOGS_OPERATIONS else "batch"
        flatten(body, _output_shape(service, operation), operation, out)
    return out


def shape_differences(local: dict[str, str], moto: dict[str, str]) -> list[str]:
    def under_empty(path: str, other: dict[str, str]) -> bool:
        """Whether a list or map above `path` is empty on the other side."""
        return any(
            other.get(path[: m.start()], "").endswith("(empty)")
            for m in re.finditer(r"\[\]|\{\}", path)
        )

    def base(kind: str) -> str:
        return kind.removesuffix("(empty)")

    problems = []
    for path in sorted(local.keys() | moto.keys()):
        if path in local and path in moto:
            if base(local[path]) != base(moto[path]):
                problems.append(f"{path}: LocalBatch {local[path]}, moto {moto[path]}")
        elif path in local and path not in LOCALBATCH_ONLY and not under_empty(path, moto):
            problems.append(f"{path}: only LocalBatch returns it")
        elif path in moto and path not in MOTO_ONLY and not under_empty(path, local):
            problems.append(f"{path}: only moto returns it")
    return problems


_SIGNATURES: dict[tuple[str, str], dict[str, str]] = {}


async def run_contract(
    name: str, scenario: Scenario, backend: Backend, open_backend: OpenBackend
) -> list[Response]:
    """Run `scenario` on `backend`, then check its shapes against the other backend's (run
    now if this session has not run it yet)."""
    responses = await scenario(backend)
    _SIGNATURES[(name, backend.kind)] = signature(responses)
    other = "moto" if backend.kind == "localbatch" else "localbatch"
    if (name, other) not in _SIGNATURES:
        async with open_backend(other) as other_backend:
            _SIGNATURES[(name, other)] = signature(await scenario(other_backend))
    assert shape_differences(_SIGNATURES[(name, "localbatch")], _SIGNATURES[(name, "moto")]) == []
    return responses


async def wait_done(client: Any, job_id: str) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            response = await client.describe_jobs(jobs=[job_id])
            if response["jobs"][0]["status"] in ("SUCCEEDED", "FAILED"):
                return dict(response)
            await anyio.sleep(0.02)


CONTAINER = {
    "image": "busybox",
    "command": ["python", "-c", "pass"],
    "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "128"}],
}
LOGS_OPERATIONS = {
    "CreateLogGroup",
    "CreateLogStream",
    "PutLogEvents",
    "GetLogEvents",
    "FilterLogEvents",
    "DescribeLogStreams",
    "DescribeLogGroups",
}


# -- scenarios ----------------------------------------------------------------------------


async def compute_environments_and_queues(backend: Backend) -> list[Response]:
    batch = backend.batch
    return [
        ("DescribeComputeEnvironments", await batch.describe_compute_environments()),
        ("DescribeJobQueues", await batch.describe_job_queues(jobQueues=[backend.queue])),
    ]


async def test_compute_environments_and_queues(backend: Backend, open_backend: OpenBackend) -> None:
    responses = await run_contract("queues", compute_environments_and_queues, backend, open_backend)
    queues = responses[1][1]["jobQueues"]
    assert [(q["jobQueueName"], q["state"], q["status"]) for q in queues] == [
        (backend.queue, "ENABLED", "VALID")
    ]


async def job_definitions(backend: Backend) -> list[Response]:
    batch = backend.batch
    name = f"def-{uuid.uuid4().hex[:8]}"
    first = await batch.register_job_definition(
        jobDefinitionName=name, type="container", containerProperties=CONTAINER
    )
    second = await batch.register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties=CONTAINER,
        parameters={"p": "v"},
        retryStrategy={"attempts": 2},
        timeout={"attemptDurationSeconds": 120},
        tags={"k": "v"},
    )
    await batch.deregister_job_definition(jobDefinition=f"{name}:1")
    return [
        ("RegisterJobDefinition", first),
        ("RegisterJobDefinition", second),
        ("DescribeJobDefinitions", await batch.describe_job_definitions(jobDefinitionName=name)),
        (
            "DescribeJobDefinitions",
            await batch.describe_job_definitions(jobDefinitions=[second["jobDefinitionArn"]]),
        ),
        (
            "DescribeJobDefinitions",
            await batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE"),
        ),
    ]


async def test_job_definitions(backend: Backend, open_backend: OpenBackend) -> None:
    responses = await run_contract("definitions", job_definitions, backend, open_backend)
    first, second, by_name, by_revision, active = (r for _, r in responses)
    assert (first["revision"], second["revision"]) == (1, 2)
    assert sorted((d["revision"], d["status"]) for d in by_name["jobDefinitions"]) == [
        (1, "INACTIVE"),
        (2, "ACTIVE"),
    ]
    (definition,) = by_revision["jobDefinitions"]
    assert definition["jobDefinitionArn"] == second["jobDefinitionArn"]
    assert definition["parameters"] == {"p": "v"}
    assert definition["retryStrategy"]["attempts"] == 2
    assert [d["revision"] for d in active["jobDefinitions"]] == [2]


async def job_lifecycle(backend: Backend) -> list[Response]:
    batch = backend.batch
    name = f"life-{uuid.uuid4().hex[:8]}"
    await batch.register_job_definition(
        jobDefinitionName=name, type="container", containerProperties=CONTAINER
    )
    submitted = await batch.submit_job(
        jobName="contract-job", jobQueue=backend.queue, jobDefinition=name, tags={"team": "a"}
    )
    described = await wait_done(batch, submitted["jobId"])
    arn = submitted["jobArn"]
    await batch.tag_resource(resourceArn=arn, tags={"extra": "b"})
    await batch.untag_resource(resourceArn=arn, tagKeys=["team"])
    return [
        ("SubmitJob", submitted),
        ("DescribeJobs", described),
        ("ListJobs", await batch.list_jobs(jobQueue=backend.queue, jobStatus="SUCCEEDED")),
        ("ListTagsForResource", await batch.list_tags_for_resource(resourceArn=arn)),
        ("CancelJob", await batch.cancel_job(jobId=submitted["jobId"], reason="done anyway")),
    ]


async def test_job_lifecycle(backend: Backend, open_backend: OpenBackend) -> None:
    responses = await run_contract("lifecycle", job_lifecycle, backend, open_backend)
    submitted, described, listed, tags = (r for _, r in responses[:4])
    (job,) = described["jobs"]
    assert job["jobId"] == submitted["jobId"]
    assert job["status"] == "SUCCEEDED"
    assert job["jobQueue"].endswith(f":job-queue/{backend.queue}")
    assert job["container"]["command"] == ["python", "-c", "pass"]
    assert [s["jobId"] for s in listed["jobSummaryList"]] == [submitted["jobId"]]
    assert tags["tags"] == {"extra": "b"}


async def array_job(backend: Backend) -> list[Response]:
    batch = backend.batch
    name = f"array-{uuid.uuid4().hex[:8]}"
    await batch.register_job_definition(
        jobDefinitionName=name, type="container", containerProperties=CONTAINER
    )
    submitted = await batch.submit_job(
        jobName="contract-array",
        jobQueue=backend.queue,
        jobDefinition=name,
        arrayProperties={"size": 2},
    )
    parent = await wait_done(batch, submitted["jobId"])
    return [
        ("DescribeJobs", parent),
        ("ListJobs", await batch.list_jobs(arrayJobId=submitted["jobId"], jobStatus="SUCCEEDED")),
        ("DescribeJobs", await batch.describe_jobs(jobs=[f"{submitted['jobId']}:1"])),
    ]


async def test_array_job(backend: Backend, open_backend: OpenBackend) -> None:
    responses = await run_contract("array", array_job, backend, open_backend)
    parent, children, child = (r for _, r in responses)
    (parent_job,) = parent["jobs"]
    assert parent_job["status"] == "SUCCEEDED"
    assert parent_job["arrayProperties"]["size"] == 2
    assert parent_job["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 2
    child_ids = sorted(s["jobId"] for s in children["jobSummaryList"])
    assert child_ids == [f"{parent_job['jobId']}:0", f"{parent_job['jobId']}:1"]
    assert child["jobs"][0]["jobId"] == child_ids[1]


async def errors(backend: Backend) -> list[Response]:
    batch = backend.batch
    for kwargs in (
        {"jobQueue": "no-such-queue", "jobDefinition": "no-such-definition"},
        {"jobQueue": backend.queue, "jobDefinition": "no-such-definition"},
    ):
        with pytest.raises(batch.exceptions.ClientException) as raised:
            await batch.submit_job(jobName="j", **kwargs)
        assert raised.value.response["Error"]["Code"] == "ClientException"
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(backend.logs.exceptions.ResourceNotFoundException):
        await backend.logs.get_log_events(logGroupName="/no/such/group", logStreamName="s")
    return [("DescribeJobs", await batch.describe_jobs(jobs=[str(uuid.uuid4())]))]


async def test_errors(backend: Backend, open_backend: OpenBackend) -> None:
    responses = await run_contract("errors", errors, backend, open_backend)
    assert responses[-1][1]["jobs"] == []


async def logs(backend: Backend) -> list[Response]:
    client = backend.logs
    group, stream = f"/contract/{uuid.uuid4().hex[:8]}", "stream-1"
    await client.create_log_group(logGroupName=group)
    await client.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    put = await client.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[
            {"timestamp": now + i, "message": f"line {word}"}
            for i, word in enumerate(["zero", "one", "two"])
        ],
    )
    where = {"logGroupName": group, "logStreamName": stream}
    return [
        ("PutLogEvents", {k: v for k, v in put.items() if k != "nextSequenceToken"}),
        ("GetLogEvents", await client.get_log_events(startFromHead=True, **where)),
        ("GetLogEvents", await client.get_log_events(startFromHead=True, limit=1, **where)),
        (
            "FilterLogEvents",
            await client.filter_log_events(logGroupName=group, filterPattern="one"),
        ),
        ("DescribeLogStreams", await client.describe_log_streams(logGroupName=group)),
        ("DescribeLogGroups", await client.describe_log_groups(logGroupNamePrefix=group)),
    ]


async def test_logs(backend: Backend, open_backend: OpenBackend) -> None:
    responses = await run_contract("logs", logs, backend, open_backend)
    _, everything, first, filtered, streams, groups = (r for _, r in responses)
    assert [e["message"] for e in everything["events"]] == ["line zero", "line one", "line two"]
    assert [e["message"] for e in first["events"]] == ["line zero"]
    assert [e["message"] for e in filtered["events"]] == ["line one"]
    assert [s["logStreamName"] for s in streams["logStreams"]] == ["stream-1"]
    assert len(groups["logGroups"]) == 1
