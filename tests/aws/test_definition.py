"""`JobDefinition` against LocalBatch and moto's server: register, describe, deregister, the
tables they return, how clients live, and bad input refused before any request."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import polars as pl
import pytest

from batchcrew.aws.definition import DESCRIBE_COLUMNS, REVISION_SCHEMA, JobDefinition
from batchcrew.aws.options import mebibytes
from batchcrew.errors import BatchError
from batchcrew.testing import LocalBatch
from tests.aws.conftest import Moto

pytestmark = pytest.mark.timeout(30)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["localbatch", "moto"])
def make_definition(request: pytest.FixtureRequest) -> Any:
    """`make_definition(name)`: a JobDefinition reaching LocalBatch (through the environment)
    or moto (through endpoint_url and region)."""
    if request.param == "localbatch":
        local: LocalBatch = request.getfixturevalue("local_aws")
        return lambda name: JobDefinition(name, local.job_queue)
    moto: Moto = request.getfixturevalue("moto")
    return lambda name: JobDefinition(
        name, moto.job_queue, region=moto.region, endpoint_url=moto.endpoint_url
    )


async def test_register_twice_describe_and_deregister(make_definition: Any) -> None:
    """Inside `async with`: one client serves every call (the faster way for many)."""
    definition = make_definition(unique("def"))
    async with definition:
        first = await definition.register(image="busybox")
        second = await definition.register(
            image="busybox", cpus=1, memory=512, memory_units="mebibytes"
        )
        assert first.schema == second.schema == pl.Schema(REVISION_SCHEMA)
        assert (first["revision"][0], second["revision"][0]) == (1, 2)
        assert first["name"][0] == definition.job_definition
        assert second["arn"][0].endswith(f"job-definition/{definition.job_definition}:2")

        described = await definition.describe()
        assert described.columns == list(DESCRIBE_COLUMNS)
        assert described["revision"].to_list() == [2, 1]  # newest first
        assert described["status"].to_list() == ["active", "active"]
        assert described["arn"].to_list() == [second["arn"][0], first["arn"][0]]

        gone = await definition.deregister()  # the greatest active revision
        assert gone.to_dicts() == second.to_dicts()
        active = await definition.describe(active=True)
        assert active["revision"].to_list() == [1]
        every = await definition.describe()
        assert every.select("revision", "status").rows() == [(2, "inactive"), (1, "active")]

        assert (await definition.deregister(revision=1))["revision"].to_list() == [1]
        nothing = await definition.deregister()  # no active revision left
        assert nothing.height == 0
        assert nothing.schema == pl.Schema(REVISION_SCHEMA)
        assert (await definition.describe(active=True)).height == 0


async def test_describe_keeps_nested_fields_structured(make_definition: Any) -> None:
    definition = make_definition(unique("nested"))
    await definition.register(
        image="busybox",
        tags={"team": "data"},
        parameters={"size": "large"},
        seconds_timeout=120,
        scheduling_priority=5,
        propagate_tags=True,
    )
    described = await definition.describe()
    schema = described.schema
    assert isinstance(schema["container_properties"], pl.Struct)
    assert schema["parameters"] == pl.List(pl.Struct({"key": pl.String, "value": pl.String}))
    assert schema["tags"] == schema["parameters"]
    assert schema["platform_capabilities"] == pl.List(pl.String)
    assert isinstance(schema["timeout"], pl.Struct)
    (row,) = described.to_dicts()
    assert row["parameters"] == [{"key": "size", "value": "large"}]
    assert row["timeout"]["attemptDurationSeconds"] == 120
    assert row["platform_capabilities"] == ["EC2"]
    container = row["container_properties"]
    assert container["image"] == "busybox"
    assert container["command"] == ["python", "-m", "batchcrew.worker"]
    # The image field is reachable the polars way, without Python loops.
    images = described.select(pl.col("container_properties").struct.field("image"))
    assert images.item() == "busybox"


async def test_describe_of_an_unknown_name_is_empty_with_the_same_columns(
    make_definition: Any,
) -> None:
    known = make_definition(unique("known"))
    await known.register(image="busybox")
    full = await known.describe()
    empty = await make_definition(unique("unknown")).describe()
    assert empty.height == 0
    assert empty.schema == full.schema


async def test_register_sends_the_worker_command_the_log_driver_and_resources(
    local_aws: LocalBatch,
) -> None:
    definition = JobDefinition(unique("params"))
    await definition.register(image="my/image:1", memory=8, cpus=2, scheduling_priority=5)
    await definition.register(
        image="my/image:1",
        memory=1000,
        memory_units="mebibytes",
        cpus=0.5,
        platform_capabilities="FARGATE",
        job_role_arn="arn:aws:iam::123456789012:role/job",
        execution_role_arn="arn:aws:iam::123456789012:role/exec",
        assign_public_ip=True,
        platform_version="1.4.0",
    )
    await definition.register(
        image="my/image:1", cpus=1, gpus=1, job_role_arn="arn:aws:iam::123456789012:role/job"
    )
    first, second, third = local_aws.requests_for("RegisterJobDefinition")
    container = first["containerProperties"]
    assert first["type"] == "container"
    assert first["platformCapabilities"] == ["EC2"]
    assert first["schedulingPriority"] == 5
    assert (await definition.describe())["scheduling_priority"].to_list() == [None, None, 5]
    assert container["command"] == ["python", "-m", "batchcrew.worker"]
    assert container["logConfiguration"] == {"logDriver": "awslogs"}
    assert container["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": str(mebibytes(8, "gigabytes"))},
    ]  # no GPU when gpus=0
    assert str(mebibytes(8, "gigabytes")) == "7629"
    assert "networkConfiguration" not in container  # Fargate's only
    assert second["platformCapabilities"] == ["FARGATE"]
    assert second["containerProperties"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "0.5"},
        {"type": "MEMORY", "value": "1024"},  # 1000 MiB rounds up to what Fargate allows
    ]
    assert second["containerProperties"]["networkConfiguration"] == {"assignPublicIp": "ENABLED"}
    assert second["containerProperties"]["fargatePlatformConfiguration"] == {
        "platformVersion": "1.4.0"
    }
    assert third["containerProperties"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "1"},
        {"type": "MEMORY", "value": "7629"},
        {"type": "GPU", "value": "1"},
    ]
    assert second["containerProperties"]["jobRoleArn"].endswith("role/job")
    assert second["containerProperties"]["executionRoleArn"].endswith("role/exec")


async def test_async_with_keeps_one_client_and_closes_it(local_aws: LocalBatch) -> None:
    definition = JobDefinition(unique("scoped"))
    async with definition:
        await definition.register(image="busybox")
        client = definition._scope._clients["batch"]
        await definition.describe()
        assert definition._scope._clients["batch"] is client
        with pytest.raises(RuntimeError, match="already open"):
            await definition.__aenter__()
    assert not definition._scope.is_open
    assert definition._scope._clients == {}
    # Without `async with`, each call makes and closes its own client.
    assert (await definition.describe()).height == 1
    assert definition._scope._clients == {}


async def test_aws_errors_surface_as_batch_error(local_aws: LocalBatch) -> None:
    with pytest.raises(BatchError, match="registering job definition") as caught:
        await JobDefinition("bad name!").register(image="busybox")
    assert caught.value.code == "ClientException"
    assert "bad name!" in caught.value.message
    with pytest.raises(BatchError, match="does not exist") as missing:
        await JobDefinition(unique("none")).deregister(revision=3)
    assert missing.value.code == "JobDefinitionNotFound"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"job_definition": ""}, "job_definition"),
        ({"job_definition": 7}, "job_definition"),
        ({"job_definition": "name:2"}, "job_definition"),
        ({"job_definition": "ok", "job_queue": ""}, "job_queue"),
        ({"job_definition": "ok", "region": ""}, "region"),
        ({"job_definition": "ok", "endpoint_url": 5}, "endpoint_url"),
    ],
)
def test_bad_constructor_arguments(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        JobDefinition(**arguments)


#: A Fargate definition's arguments that AWS requires.
FARGATE: dict[str, Any] = {
    "platform_capabilities": "FARGATE",
    "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
}


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"image": ""}, "image"),
        ({"image": None}, "image"),
        ({"memory_units": "bytes"}, "memory_units"),
        ({"memory": -1}, "memory"),
        ({"memory": 0}, "memory"),
        ({"cpus": -2}, "cpus"),
        ({"cpus": float("nan")}, "cpus"),
        ({"gpus": -1}, "gpus"),
        ({"gpus": 0.5}, "gpus"),
        ({"gpus": True}, "gpus"),
        ({"seconds_timeout": 0}, "seconds_timeout"),
        ({"scheduling_priority": -1}, "scheduling_priority"),
        ({"scheduling_priority": 1.5}, "scheduling_priority"),
        ({"platform_capabilities": "GPU"}, "platform_capabilities"),
        ({"tags": {"": "x"}}, "tags"),
        ({"tags": ["a"]}, "tags"),
        ({"parameters": {"a": 1}}, "parameters"),
        ({"propagate_tags": "yes"}, "propagate_tags"),
        ({"job_role_arn": ""}, "job_role_arn"),
        ({"execution_role_arn": ""}, "execution_role_arn"),
        # What AWS refuses, refused before the request, naming the fix.
        ({"seconds_timeout": 30}, "at least 60 seconds"),
        ({"tags": {f"k{i}": "v" for i in range(51)}}, "AWS allows 50"),
        ({"tags": {"aws:team": "x"}}, "AWS reserves"),
        ({"tags": {"team": "a(b)"}}, "does not allow in tags"),
        ({"tags": {"team": "x" * 257}}, "at most 256"),
        ({"cpus": 0.5}, "whole number of at least 1"),
        ({"cpus": 2.5}, "whole number of at least 1"),
        ({"assign_public_ip": True}, "for Fargate only"),
        ({"platform_version": "LATEST"}, "for Fargate only"),
        ({"assign_public_ip": "yes"}, "assign_public_ip must be True, False or None"),
        ({"platform_capabilities": "FARGATE"}, "needs execution_role_arn"),
        (FARGATE | {"gpus": 1}, "Fargate has no GPUs"),
        (FARGATE | {"cpus": 3}, "not a vCPU count Fargate offers"),
        (FARGATE | {"cpus": 2, "memory": 32}, "more memory than Fargate allows with 2 vCPU"),
        (FARGATE | {"cpus": None}, "cpus is required"),
        ({"memory": None}, "memory is required"),
    ],
)
async def test_bad_register_arguments_fail_before_any_request(
    local_aws: LocalBatch, arguments: dict[str, Any], named: str
) -> None:
    arguments = {"image": "busybox", **arguments}
    with pytest.raises(ValueError, match=named):
        await JobDefinition("checked").register(**arguments)
    assert local_aws.requests == []


async def test_a_fargate_definition_with_the_defaults_asks_for_memory_fargate_allows(
    local_aws: LocalBatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchcrew")
    await JobDefinition(unique("fargate")).register(image="busybox", **FARGATE)
    (sent,) = local_aws.requests_for("RegisterJobDefinition")
    # 8 gigabytes are 7629 MiB; Fargate allows 4096 to 16384 MiB in steps of 1024 with 2 vCPUs.
    assert sent["containerProperties"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": "8192"},
    ]
    assert sent["containerProperties"]["executionRoleArn"] == FARGATE["execution_role_arn"]
    (note,) = [r.getMessage() for r in caplog.records if "rounds up" in r.getMessage()]
    assert "7629 MiB to 8192 MiB" in note


@pytest.mark.parametrize("revision", [0, -1, 1.5, "2", True])
async def test_bad_revision_fails_before_any_request(local_aws: LocalBatch, revision: Any) -> None:
    with pytest.raises(ValueError, match="revision"):
        await JobDefinition("checked").deregister(revision=revision)
    with pytest.raises(ValueError, match="active"):
        await JobDefinition("checked").describe(active="yes")  # type: ignore[arg-type]
    assert local_aws.requests == []


async def test_monitor_reaches_the_same_queue_and_definition(local_aws: LocalBatch) -> None:
    definition = JobDefinition(local_aws.job_definition, local_aws.job_queue)
    monitor = definition.monitor()
    assert (monitor.job_queue, monitor.job_definition) == (
        local_aws.job_queue,
        local_aws.job_definition,
    )
    assert (await monitor.jobs()).height == 0
    with pytest.raises(ValueError, match="job_queue"):
        JobDefinition("no-queue").monitor()
