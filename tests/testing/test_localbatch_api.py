"""LocalBatch speaks the AWS wire protocols as botocore expects: errors and their exception
classes, throttling and faults that botocore retries, paging, filters, tags, request records,
regions, latency that never blocks the server, and the `batchcrew emulator` command."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any

import anyio
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from batchcrew.testing import LocalBatch, LocalBatchOptions

pytestmark = pytest.mark.timeout(30)

RETRYING = AioConfig(retries={"mode": "standard", "total_max_attempts": 10})
NO_RETRIES = AioConfig(retries={"mode": "standard", "total_max_attempts": 1})
UNVALIDATED = AioConfig(parameter_validation=False, retries={"total_max_attempts": 1})


async def run_job(client: Any, batch: LocalBatch, code: str, **kwargs: Any) -> str:
    response = await client.submit_job(
        jobName=kwargs.pop("jobName", "api-job"),
        jobQueue=batch.job_queue,
        jobDefinition=batch.job_definition,
        containerOverrides={"command": ["python", "-c", code]},
        **kwargs,
    )
    return str(response["jobId"])


# -- errors -------------------------------------------------------------------------------


async def test_unknown_queue_definition_and_job_raise_client_exception(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    with pytest.raises(batch_client.exceptions.ClientException) as unknown_queue:
        await batch_client.submit_job(
            jobName="j", jobQueue="no-such-queue", jobDefinition=local_batch.job_definition
        )
    error = unknown_queue.value.response
    assert error["Error"] == {
        "Code": "ClientException",
        "Message": "JobQueue no-such-queue not found.",
    }
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400

    with pytest.raises(batch_client.exceptions.ClientException, match="no-such-definition"):
        await batch_client.submit_job(
            jobName="j", jobQueue=local_batch.job_queue, jobDefinition="no-such-definition:3"
        )
    with pytest.raises(batch_client.exceptions.ClientException, match="not found"):
        await batch_client.terminate_job(jobId="00000000-0000-0000-0000-000000000000", reason="x")
    with pytest.raises(batch_client.exceptions.ClientException, match="not found"):
        await batch_client.cancel_job(jobId="nope", reason="x")
    # DescribeJobs leaves unknown ids out, as AWS does.
    assert (await batch_client.describe_jobs(jobs=["nope"]))["jobs"] == []
    # Still serving.
    assert (await batch_client.describe_job_queues())["jobQueues"][0]["jobQueueName"] == (
        local_batch.job_queue
    )


async def test_malformed_requests_get_the_real_errors_and_the_server_keeps_serving(
    local_batch: LocalBatch, aws_session: AioSession
) -> None:
    kwargs = local_batch.client_kwargs()
    async with (
        aws_session.create_client("batch", config=UNVALIDATED, **kwargs) as batch,
        aws_session.create_client("logs", config=UNVALIDATED, **kwargs) as logs,
    ):
        with pytest.raises(batch.exceptions.ClientException) as missing:
            await batch.submit_job(jobQueue=local_batch.job_queue, jobDefinition="x")
        assert missing.value.response["Error"]["Message"] == (
            "1 validation error detected: Value null at 'jobName' failed to satisfy "
            "constraint: Member must not be null"
        )
        with pytest.raises(ClientError) as mistyped:
            await batch.submit_job(
                jobName="j",
                jobQueue=local_batch.job_queue,
                jobDefinition=local_batch.job_definition,
                arrayProperties={"size": "three"},
            )
        assert mistyped.value.response["Error"] == {
            "Code": "SerializationException",
            "Message": "STRING_VALUE can not be converted to an Integer",
        }
        with pytest.raises(batch.exceptions.ClientException, match="greater than or equal to 2"):
            await batch.submit_job(
                jobName="j",
                jobQueue=local_batch.job_queue,
                jobDefinition=local_batch.job_definition,
                arrayProperties={"size": 1},
            )
        with pytest.raises(batch.exceptions.ClientException) as bad_status:
            await batch.list_jobs(jobQueue=local_batch.job_queue, jobStatus="DONE")
        assert bad_status.value.response["Error"]["Message"] == (
            "1 validation error detected: Value 'DONE' at 'jobStatus' failed to satisfy "
            "constraint: Member must satisfy enum value set: [SUBMITTED, PENDING, RUNNABLE, "
            "STARTING, RUNNING, SUCCEEDED, FAILED]"
        )
        with pytest.raises(logs.exceptions.InvalidParameterException) as bad_limit:
            await logs.get_log_events(logGroupName="/aws/batch/job", logStreamName="s", limit=0)
        assert bad_limit.value.response["Error"]["Message"] == (
            "1 validation error detected: Value '0' at 'limit' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1"
        )

        def corrupt_body(request: Any, **_: Any) -> None:
            request.body = b'{"jobName": '
            request.headers["Content-Length"] = str(len(request.body))

        batch.meta.events.register("before-send.batch.SubmitJob", corrupt_body)
        with pytest.raises(ClientError) as not_json:
            await batch.submit_job(jobName="j", jobQueue="q", jobDefinition="d")
        assert not_json.value.response["Error"]["Code"] == "SerializationException"
        batch.meta.events.unregister("before-send.batch.SubmitJob", corrupt_body)

        assert (await batch.describe_job_queues())["jobQueues"]
        errors = [r.error for r in local_batch.requests]
        assert errors[-1] is None
        assert "SerializationException" in errors


async def test_unknown_log_group_and_stream_raise_resource_not_found(
    local_batch: LocalBatch, logs_client: Any
) -> None:
    with pytest.raises(logs_client.exceptions.ResourceNotFoundException) as no_group:
        await logs_client.get_log_events(logGroupName="/no/such/group", logStreamName="s")
    assert no_group.value.response["Error"]["Message"] == "The specified log group does not exist."
    with pytest.raises(logs_client.exceptions.ResourceNotFoundException, match="log stream"):
        await logs_client.get_log_events(logGroupName="/aws/batch/job", logStreamName="nope")
    with pytest.raises(logs_client.exceptions.ResourceNotFoundException):
        await logs_client.describe_log_streams(logGroupName="/no/such/group")


# -- injected conditions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "local_batch_options",
    [LocalBatchOptions(throttle_rate={"DescribeJobQueues": 0.4}, seed=1)],
)
async def test_throttling_is_retried_by_botocore_and_succeeds(
    local_batch: LocalBatch, aws_session: AioSession
) -> None:
    kwargs = local_batch.client_kwargs()
    async with aws_session.create_client("batch", config=RETRYING, **kwargs) as client:
        for _ in range(4):
            assert (await client.describe_job_queues())["jobQueues"]
    outcomes = [r.error for r in local_batch.requests if r.operation == "DescribeJobQueues"]
    assert outcomes.count(None) == 4
    assert "TooManyRequestsException" in outcomes

    async with aws_session.create_client("batch", config=NO_RETRIES, **kwargs) as client:
        with anyio.fail_after(10), pytest.raises(ClientError) as throttled:  # noqa: PT012
            while True:
                await client.describe_job_queues()
    assert throttled.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


@pytest.mark.parametrize(
    "local_batch_options",
    [LocalBatchOptions(fault_rate={"ListJobs": 1.0, "GetLogEvents": 1.0, "DescribeJobs": 0.5})],
)
async def test_faults_are_server_errors_that_botocore_retries(
    local_batch: LocalBatch, aws_session: AioSession, batch_client: Any, logs_client: Any
) -> None:
    with pytest.raises(batch_client.exceptions.ServerException) as fault:
        await batch_client.list_jobs(jobQueue=local_batch.job_queue)
    assert fault.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    with pytest.raises(logs_client.exceptions.ServiceUnavailableException):
        await logs_client.get_log_events(logGroupName="/aws/batch/job", logStreamName="s")
    kwargs = local_batch.client_kwargs()
    async with aws_session.create_client("batch", config=RETRYING, **kwargs) as client:
        for _ in range(2):
            assert (await client.describe_jobs(jobs=["x"]))["jobs"] == []
    outcomes = [r.error for r in local_batch.requests if r.operation == "DescribeJobs"]
    assert "ServerException" in outcomes


async def test_same_seed_same_injected_failures(aws_session: AioSession) -> None:
    async def outcomes() -> list[str | None]:
        options = LocalBatchOptions(throttle_rate=0.3, fault_rate=0.3, seed=42)
        async with (
            LocalBatch(options=options) as batch,
            aws_session.create_client("batch", config=NO_RETRIES, **batch.client_kwargs()) as c,
        ):
            for _ in range(12):
                with contextlib.suppress(ClientError):
                    await c.describe_job_queues()
            return [r.error for r in batch.requests]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert {None, "TooManyRequestsException", "ServerException"} <= set(first)


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(latency={"SubmitJob": 30})])
async def test_latency_delays_one_call_without_blocking_the_others(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    async def slow_submit() -> None:
        await run_job(batch_client, local_batch, "pass")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(slow_submit)
        # The slow call is in flight (its handler sleeps); other calls are answered meanwhile.
        for _ in range(3):
            assert (await batch_client.describe_job_queues())["jobQueues"]
        assert [r.operation for r in local_batch.requests] == ["DescribeJobQueues"] * 3
        tasks.cancel_scope.cancel()


# -- paging -------------------------------------------------------------------------------


async def test_describe_job_definitions_pages_and_filters(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    for n in range(5):
        response = await batch_client.register_job_definition(
            jobDefinitionName="paged",
            type="container",
            containerProperties={
                "image": "x",
                "command": ["echo", str(n)],
                "resourceRequirements": [
                    {"type": "VCPU", "value": "1"},
                    {"type": "MEMORY", "value": "128"},
                ],
            },
        )
        assert response["revision"] == n + 1
        assert response["jobDefinitionArn"] == (
            f"arn:aws:batch:us-east-1:123456789012:job-definition/paged:{n + 1}"
        )
    await batch_client.deregister_job_definition(jobDefinition="paged:2")

    pages, token = [], None
    while True:
        kwargs = {"nextToken": token} if token else {}
        page = await batch_client.describe_job_definitions(
            jobDefinitionName="paged", maxResults=2, **kwargs
        )
        pages.append([d["revision"] for d in page["jobDefinitions"]])
        token = page.get("nextToken")
        if token is None:
            break
    assert pages == [[1, 2], [3, 4], [5]]

    paginator = batch_client.get_paginator("describe_job_definitions")
    revisions = [
        d["revision"]
        async for page in paginator.paginate(
            jobDefinitionName="paged", status="ACTIVE", PaginationConfig={"PageSize": 1}
        )
        for d in page["jobDefinitions"]
    ]
    assert revisions == [1, 3, 4, 5]
    inactive = await batch_client.describe_job_definitions(
        jobDefinitionName="paged", status="INACTIVE"
    )
    assert [d["revision"] for d in inactive["jobDefinitions"]] == [2]
    arn = "arn:aws:batch:us-east-1:123456789012:job-definition/paged:4"
    found = await batch_client.describe_job_definitions(jobDefinitions=["paged:3", arn, "nope:1"])
    assert [d["revision"] for d in found["jobDefinitions"]] == [3, 4]
    # Submitting by name takes the latest ACTIVE revision; an INACTIVE one is refused.
    with pytest.raises(batch_client.exceptions.ClientException, match="INACTIVE"):
        await batch_client.submit_job(
            jobName="j", jobQueue="batchcrew-test", jobDefinition="paged:2"
        )
    response = await batch_client.submit_job(
        jobName="j", jobQueue=local_batch.job_queue, jobDefinition="paged"
    )
    (job,) = (await batch_client.describe_jobs(jobs=[response["jobId"]]))["jobs"]
    assert job["jobDefinition"].endswith("job-definition/paged:5")


async def test_list_jobs_pages_filters_and_defaults_to_running(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any, tmp_path: Any
) -> None:
    finished = [
        await run_job(batch_client, local_batch, "pass", jobName=f"done-{n}") for n in range(5)
    ]
    for job_id in finished:
        await wait_for(batch_client, job_id)
    release = tmp_path / "release"
    code = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.01)"
    running = await run_job(batch_client, local_batch, code, jobName="Runner")
    await wait_for(batch_client, running, ["RUNNING"])
    queue = local_batch.job_queue

    default = await batch_client.list_jobs(jobQueue=queue)
    assert [j["jobId"] for j in default["jobSummaryList"]] == [running]

    pages = []
    paginator = batch_client.get_paginator("list_jobs")
    async for page in paginator.paginate(
        jobQueue=queue, jobStatus="SUCCEEDED", PaginationConfig={"PageSize": 2}
    ):
        pages.append([j["jobId"] for j in page["jobSummaryList"]])
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [job for page in pages for job in page] == finished[::-1]  # newest first

    def listed(name: str, *values: str) -> Any:
        return batch_client.list_jobs(
            jobQueue=queue, filters=[{"name": name, "values": list(values)}]
        )

    by_name = await listed("JOB_NAME", "runner")  # case-insensitive, any status
    assert [j["jobId"] for j in by_name["jobSummaryList"]] == [running]
    by_prefix = await listed("JOB_NAME", "done-*")
    assert len(by_prefix["jobSummaryList"]) == 5
    by_definition = await listed("JOB_DEFINITION", local_batch.job_definition)
    assert len(by_definition["jobSummaryList"]) == 6
    (summary,) = (await batch_client.describe_jobs(jobs=[finished[2]]))["jobs"]
    after = await listed("AFTER_CREATED_AT", str(summary["createdAt"]))
    assert finished[0] not in [j["jobId"] for j in after["jobSummaryList"]]
    with pytest.raises(batch_client.exceptions.ClientException, match="exactly one"):
        await batch_client.list_jobs(jobQueue=queue, arrayJobId=running)
    release.touch()
    await wait_for(batch_client, running)


async def test_get_log_events_pages_forward_and_backward_like_aws(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any
) -> None:
    job = await wait_for(
        batch_client, await run_job(batch_client, local_batch, "for i in range(5): print(i)")
    )
    stream = {"logGroupName": "/aws/batch/job", "logStreamName": job["container"]["logStreamName"]}

    forward, token = [], None
    while True:
        kwargs = {"nextToken": token} if token else {"startFromHead": True}
        page = await logs_client.get_log_events(limit=2, **stream, **kwargs)
        forward.append([e["message"] for e in page["events"]])
        if page["nextForwardToken"] == token:
            break
        token = page["nextForwardToken"]
    assert forward == [["0", "1"], ["2", "3"], ["4"], []]

    page = await logs_client.get_log_events(limit=2, **stream)  # default: the newest events
    backward = [[e["message"] for e in page["events"]]]
    while page["events"]:
        page = await logs_client.get_log_events(
            limit=2, nextToken=page["nextBackwardToken"], **stream
        )
        backward.append([e["message"] for e in page["events"]])
    assert backward == [["3", "4"], ["1", "2"], ["0"], []]

    paginator = logs_client.get_paginator("filter_log_events")
    filtered = [
        e["message"]
        async for page in paginator.paginate(
            logGroupName="/aws/batch/job",
            logStreamNames=[stream["logStreamName"]],
            PaginationConfig={"PageSize": 2},
        )
        for e in page["events"]
    ]
    assert filtered == ["0", "1", "2", "3", "4"]


async def test_filter_log_events_and_describe_log_streams(
    local_batch: LocalBatch, batch_client: Any, logs_client: Any, wait_for: Any
) -> None:
    first = await wait_for(
        batch_client, await run_job(batch_client, local_batch, "print('a needle'); print('hay')")
    )
    second = await wait_for(
        batch_client, await run_job(batch_client, local_batch, "print('needle b'); print('straw')")
    )
    group = "/aws/batch/job"

    matched = await logs_client.filter_log_events(logGroupName=group, filterPattern="needle")
    assert sorted(e["message"] for e in matched["events"]) == ["a needle", "needle b"]
    assert {e["logStreamName"] for e in matched["events"]} == {
        first["container"]["logStreamName"],
        second["container"]["logStreamName"],
    }
    quoted = await logs_client.filter_log_events(logGroupName=group, filterPattern='"needle b"')
    assert [e["message"] for e in quoted["events"]] == ["needle b"]
    early = await logs_client.filter_log_events(logGroupName=group, endTime=second["startedAt"])
    assert "straw" not in [e["message"] for e in early["events"]]

    names = []
    paginator = logs_client.get_paginator("describe_log_streams")
    async for page in paginator.paginate(
        logGroupName=group, logStreamNamePrefix="batchcrew-test/", PaginationConfig={"PageSize": 1}
    ):
        names += [s["logStreamName"] for s in page["logStreams"]]
    assert sorted(names) == sorted(
        [first["container"]["logStreamName"], second["container"]["logStreamName"]]
    )
    newest = await logs_client.describe_log_streams(
        logGroupName=group, orderBy="LastEventTime", descending=True, limit=1
    )
    assert newest["logStreams"][0]["logStreamName"] == second["container"]["logStreamName"]
    with pytest.raises(logs_client.exceptions.InvalidParameterException):
        await logs_client.describe_log_streams(
            logGroupName=group, orderBy="LastEventTime", logStreamNamePrefix="x"
        )


# -- resources, tags, records, regions ----------------------------------------------------


async def test_queues_compute_environments_and_tags(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    environment = await batch_client.create_compute_environment(
        computeEnvironmentName="ce",
        type="MANAGED",
        tags={"team": "a"},
        computeResources={
            "type": "EC2",
            "maxvCpus": 4,
            "subnets": [],
            "securityGroupIds": ["sg-1"],
            "instanceRole": "r",
        },
    )
    queue = await batch_client.create_job_queue(
        jobQueueName="second",
        priority=10,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}
        ],
    )
    described = await batch_client.describe_job_queues(jobQueues=["second", "missing"])
    (detail,) = described["jobQueues"]
    assert (detail["jobQueueArn"], detail["state"], detail["status"]) == (
        queue["jobQueueArn"],
        "ENABLED",
        "VALID",
    )
    with pytest.raises(batch_client.exceptions.ClientException, match="already exists"):
        await batch_client.create_job_queue(
            jobQueueName="second",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "ce"}],
        )
    with pytest.raises(batch_client.exceptions.ClientException, match="does not exist"):
        await batch_client.create_job_queue(
            jobQueueName="third",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "missing"}],
        )

    job = await batch_client.submit_job(
        jobName="tagged",
        jobQueue=queue["jobQueueArn"],
        jobDefinition=local_batch.job_definition,
        tags={"a": "1"},
    )
    arn = job["jobArn"]
    await batch_client.tag_resource(resourceArn=arn, tags={"b": "2", "c": "3"})
    await batch_client.untag_resource(resourceArn=arn, tagKeys=["c", "a"])
    assert (await batch_client.list_tags_for_resource(resourceArn=arn))["tags"] == {"b": "2"}
    (detail,) = (await batch_client.describe_jobs(jobs=[job["jobId"]]))["jobs"]
    assert detail["tags"] == {"b": "2"}
    assert detail["jobQueue"] == queue["jobQueueArn"]
    tags = await batch_client.list_tags_for_resource(
        resourceArn=environment["computeEnvironmentArn"]
    )
    assert tags["tags"] == {"team": "a"}
    with pytest.raises(batch_client.exceptions.ClientException, match="not found"):
        await batch_client.list_tags_for_resource(
            resourceArn="arn:aws:batch:us-east-1:123456789012:job/nope"
        )


async def test_requests_are_recorded_with_their_parameters(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    await run_job(batch_client, local_batch, "pass", arrayProperties={"size": 2}, tags={"k": "v"})
    (params,) = local_batch.requests_for("SubmitJob")
    assert params["jobName"] == "api-job"
    assert params["jobQueue"] == local_batch.job_queue
    assert params["arrayProperties"] == {"size": 2}
    assert params["containerOverrides"]["command"] == ["python", "-c", "pass"]
    assert params["tags"] == {"k": "v"}
    (record,) = [r for r in local_batch.requests if r.operation == "SubmitJob"]
    assert (record.service, record.region, record.error) == ("batch", "us-east-1", None)


async def test_region_comes_from_the_request_signature(
    local_batch: LocalBatch, aws_session: AioSession
) -> None:
    kwargs = {**local_batch.client_kwargs(), "region_name": "eu-west-2"}
    async with aws_session.create_client("batch", config=NO_RETRIES, **kwargs) as client:
        job = await run_job(client, local_batch, "pass")
        (detail,) = (await client.describe_jobs(jobs=[job]))["jobs"]
    assert detail["jobArn"].startswith("arn:aws:batch:eu-west-2:123456789012:job/")
    assert local_batch.requests[-1].region == "eu-west-2"


async def test_environment_points_clients_at_the_emulator(
    local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch, aws_session: AioSession
) -> None:
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    async with aws_session.create_client("batch") as client:
        queues = (await client.describe_job_queues())["jobQueues"]
    assert [q["jobQueueName"] for q in queues] == [local_batch.job_queue]


def test_options_are_validated_at_the_door() -> None:
    with pytest.raises(ValueError, match="unknown operation 'SubmitJobs'"):
        LocalBatchOptions(latency={"SubmitJobs": 1.0})
    with pytest.raises(ValueError, match="throttle_rate"):
        LocalBatchOptions(throttle_rate=1.5)
    with pytest.raises(ValueError, match="vcpus"):
        LocalBatchOptions(vcpus=0)
    with pytest.raises(ValueError, match="invalid"):
        LocalBatch(queues=["bad name!"])


# -- the standalone server ----------------------------------------------------------------


async def test_emulator_command_serves_until_interrupted(aws_session: AioSession) -> None:
    command = [
        sys.executable,
        "-m",
        "batchcrew.testing._command",
        "--port",
        "0",
        "--queue",
        "cli-queue",
        "--vcpus",
        "4",
    ]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        output = ""
        with anyio.fail_after(20):
            async for chunk in process.stdout:
                output += chunk.decode()
                if "Press Ctrl-C" in output:
                    break
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in output.splitlines()
            if line.strip().startswith("export ")
        )
        async with aws_session.create_client(
            "batch",
            endpoint_url=exports["AWS_ENDPOINT_URL"],
            region_name=exports["AWS_DEFAULT_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        ) as client:
            queues = (await client.describe_job_queues())["jobQueues"]
        assert [q["jobQueueName"] for q in queues] == ["cli-queue"]
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await process.wait() == 0
