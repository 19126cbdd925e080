"""LocalBatch refuses what AWS refuses: the constraints of botocore's models (types, required
members, enums, ranges, lengths, sizes, map keys, patterns) and AWS Batch's prose rules, each
answered with AWS's error code and text through a real aiobotocore client over HTTP; leniency
by name; the bulk CancelJobs and TerminateJobs; Fargate queues; EKS and multi-node definitions
stored but not run."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import botocore.model
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from batchcrew.testing import LocalBatch, LocalBatchOptions
from batchcrew.testing._command import _options, add_arguments
from batchcrew.testing._localbatch import EXECUTION_ROLE, FARGATE_COMPUTE_ENVIRONMENT
from batchcrew.testing._rules import FARGATE_MEMORY, RULES
from batchcrew.testing._wire import compile_patterns, java_pattern, service_model

pytestmark = pytest.mark.timeout(30)

UNVALIDATED = AioConfig(parameter_validation=False, retries={"total_max_attempts": 1})
ROLE = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def resources(vcpu: str = "1", memory: str = "2048") -> list[dict[str, str]]:
    return [{"type": "VCPU", "value": vcpu}, {"type": "MEMORY", "value": memory}]


def container(**extra: Any) -> dict[str, Any]:
    return {
        "image": "busybox",
        "command": ["python", "-c", "pass"],
        "resourceRequirements": resources(),
        **extra,
    }


def fargate(**extra: Any) -> dict[str, Any]:
    return container(executionRoleArn=ROLE, **extra)


NODES = {
    "numNodes": 2,
    "mainNode": 0,
    "nodeRangeProperties": [{"targetNodes": "0:1", "container": container()}],
}
EKS = {
    "podProperties": {
        "containers": [
            {
                "image": "busybox",
                "command": ["true"],
                "resources": {"limits": {"cpu": "1", "memory": "1024Mi"}},
            }
        ]
    }
}


async def register(
    client: Any, properties: dict[str, Any] | None = None, *, platform: str | None = None, **kw: Any
) -> Any:
    params: dict[str, Any] = {"jobDefinitionName": "rules", "type": "container", **kw}
    if properties is not None:
        params["containerProperties"] = properties
    if platform is not None:
        params["platformCapabilities"] = [platform]
    return await client.register_job_definition(**params)


async def submit(client: Any, batch: LocalBatch, **kw: Any) -> Any:
    kw.setdefault("jobDefinition", batch.job_definition)
    return await client.submit_job(jobName="rules", jobQueue=batch.job_queue, **kw)


async def submit_on_fargate(client: Any, batch: LocalBatch, **kw: Any) -> Any:
    await register(client, fargate(), platform="FARGATE")
    return await submit(client, batch, jobDefinition="rules", **kw)


async def fair_share_queue(client: Any, batch: LocalBatch) -> str:
    await client.create_job_queue(
        jobQueueName="fair",
        priority=1,
        schedulingPolicyArn="arn:aws:batch:us-east-1:123456789012:scheduling-policy/fair",
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "localbatch"}],
    )
    return "fair"


async def fargate_environment(client: Any, name: str = "fargate-ce", **resources: Any) -> Any:
    return await client.create_compute_environment(
        computeEnvironmentName=name,
        type="MANAGED",
        serviceRole=ROLE,
        computeResources={
            "type": "FARGATE",
            "maxvCpus": 4,
            "subnets": ["subnet-1"],
            "securityGroupIds": ["sg-1"],
            **resources,
        },
    )


Act = Callable[[Any, LocalBatch], Awaitable[Any]]


@dataclass(frozen=True)
class Refusal:
    """A request AWS refuses: under which rule (None: the model's own constraints), with what
    code and message, and whether it succeeds once that rule is named lenient."""

    id: str
    rule: str | None
    act: Act
    code: str
    message: str
    accepted_when_lenient: bool = True

    def __repr__(self) -> str:
        return self.id


def invalid(count: int, *problems: str) -> str:
    return f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems)


BATCH_REFUSALS = [
    # -- the model's constraints ---------------------------------------------------------------
    Refusal(
        "too-many-tags",
        None,
        lambda c, b: submit(c, b, tags={f"k{n}": "v" for n in range(51)}),
        "ClientException",
        invalid(
            1,
            "Value '{"
            + ", ".join(f"k{n}=v" for n in range(51))
            + "}' at 'tags' failed to satisfy constraint: Member must have length less than or "
            "equal to 50",
        ),
    ),
    Refusal(
        "tag-key-too-long",
        None,
        lambda c, b: submit(c, b, tags={"k" * 129: "v"}),
        "ClientException",
        invalid(
            1,
            f"Value '{{{'k' * 129}=v}}' at 'tags' failed to satisfy constraint: Map keys must "
            "satisfy constraint: [Member must have length less than or equal to 128, Member "
            "must have length greater than or equal to 1]",
        ),
    ),
    Refusal(
        "tag-value-too-long",
        None,
        lambda c, b: c.tag_resource(
            resourceArn="arn:aws:batch:us-east-1:123456789012:job-queue/batchcrew-test",
            tags={"k": "v" * 257},
        ),
        "ClientException",
        invalid(
            1,
            f"Value '{{k={'v' * 257}}}' at 'tags' failed to satisfy constraint: Map value must "
            "satisfy constraint: [Member must have length less than or equal to 256]",
        ),
    ),
    # -- names and references ----------------------------------------------------------------
    Refusal(
        "job-name",
        "job_name",
        lambda c, b: c.submit_job(
            jobName="bad name!", jobQueue=b.job_queue, jobDefinition=b.job_definition
        ),
        "ClientException",
        "Job name should match valid pattern",
    ),
    Refusal(
        "job-definition-reference",
        "job_definition_reference",
        lambda c, b: submit(c, b, jobDefinition=f"{b.job_definition}:latest"),
        "ClientException",
        "Provided name batchcrew-test:latest is not supported pattern[a-zA-Z_0-9-]{1,128}",
        accepted_when_lenient=False,  # then the definition is not found
    ),
    Refusal(
        "resource-name",
        "resource_name",
        lambda c, b: register(c, container(), jobDefinitionName="bad name!"),
        "ClientException",
        "Job definition name 'bad name!' is invalid: up to 128 letters, numbers, hyphens and "
        "underscores, starting with a letter or number",
    ),
    # -- job definitions ---------------------------------------------------------------------
    Refusal(
        "definition-properties",
        "definition_properties",
        lambda c, b: register(c, None),
        "ClientException",
        "A container job definition needs exactly one of containerProperties, ecsProperties or "
        "eksProperties; got none",
    ),
    Refusal(
        "eks-definition-with-platform",
        "definition_properties",
        lambda c, b: register(c, None, eksProperties=EKS, platform="EC2"),
        "ClientException",
        "platformCapabilities must not be specified for a job definition with eksProperties",
    ),
    Refusal(
        "container-properties-on-managed-instances",
        "definition_properties",
        lambda c, b: register(c, container(), platform="MANAGED_INSTANCES"),
        "ClientException",
        "Jobs with the MANAGED_INSTANCES platform capability must use ecsProperties, not "
        "containerProperties",
    ),
    Refusal(
        "container-image",
        "container_image",
        lambda c, b: register(c, {"resourceRequirements": resources()}),
        "ClientException",
        "Container properties must specify an image",
    ),
    Refusal(
        "resources-required",
        "resources_required",
        lambda c, b: register(c, {"image": "busybox", "resourceRequirements": resources()[1:]}),
        "ClientException",
        "vCPU is not provided.",
    ),
    Refusal(
        "ec2-vcpu-1.0",
        "ec2_vcpu",
        lambda c, b: register(c, container(resourceRequirements=resources(vcpu="1.0"))),
        "ClientException",
        "Value 1.0 for type VCPU in resourceRequirement is not valid. Please provide a numeric "
        "value.",
    ),
    Refusal(
        "ec2-vcpu-fraction-at-submission",
        "ec2_vcpu",
        lambda c, b: submit(
            c,
            b,
            containerOverrides={"resourceRequirements": [{"type": "VCPU", "value": "0.5"}]},
        ),
        "ClientException",
        "Value 0.5 for type VCPU in resourceRequirement is not valid. Please provide a numeric "
        "value.",
    ),
    Refusal(
        "memory-minimum",
        "memory_minimum",
        lambda c, b: register(c, container(resourceRequirements=resources(memory="2"))),
        "ClientException",
        "Value 2 for type MEMORY in resourceRequirement is not valid. You must specify at least "
        "4 MiB of memory for a job.",
    ),
    Refusal(
        "ephemeral-storage",
        "ephemeral_storage",
        lambda c, b: register(c, fargate(ephemeralStorage={"sizeInGiB": 20}), platform="FARGATE"),
        "ClientException",
        invalid(
            1,
            "Value '20' at 'containerProperties.ephemeralStorage.sizeInGiB' failed to satisfy "
            "constraint: Member must have value greater than or equal to 21",
        ),
    ),
    Refusal(
        "multinode-nodes",
        "multinode_nodes",
        lambda c, b: c.register_job_definition(
            jobDefinitionName="mnp", type="multinode", nodeProperties={**NODES, "mainNode": 2}
        ),
        "ClientException",
        "nodeProperties.mainNode 2 must be a node index below numNodes 2",
    ),
    Refusal(
        "eks-containers",
        "eks_containers",
        lambda c, b: register(
            c,
            None,
            eksProperties={
                "podProperties": {"containers": EKS["podProperties"]["containers"] * 11}
            },
        ),
        "ClientException",
        invalid(
            1,
            "Value '["
            + ", ".join(
                ["{image=busybox, command=[true], resources={limits={cpu=1, memory=1024Mi}}}"] * 11
            )
            + "]' at 'eksProperties.podProperties.containers' failed to satisfy constraint: "
            "Member must have length less than or equal to 10",
        ),
    ),
    # -- Fargate ------------------------------------------------------------------------------
    Refusal(
        "fargate-resources-at-registration",
        "fargate_resources",
        lambda c, b: register(
            c, fargate(resourceRequirements=resources("2", "7629")), platform="FARGATE"
        ),
        "ClientException",
        "Fargate resource requirements (2.00 vCPU, 7629 MiB) not valid.",
    ),
    Refusal(
        "fargate-resources-after-overrides",
        "fargate_resources",
        lambda c, b: submit_on_fargate(
            c,
            b,
            containerOverrides={"resourceRequirements": [{"type": "MEMORY", "value": "4000"}]},
        ),
        "ClientException",
        "Fargate resource requirements (1.00 vCPU, 4000 MiB) not valid.",
    ),
    Refusal(
        "fargate-gpu",
        "fargate_gpu",
        lambda c, b: register(
            c,
            fargate(resourceRequirements=[*resources(), {"type": "GPU", "value": "1"}]),
            platform="FARGATE",
        ),
        "ClientException",
        "GPU is not applicable for Fargate. GPUs aren't available for jobs that are running on "
        "Fargate resources.",
    ),
    Refusal(
        "fargate-legacy-vcpus-at-submission",
        "fargate_legacy_resources",
        lambda c, b: submit_on_fargate(c, b, containerOverrides={"vcpus": 1}),
        "ClientException",
        "vcpus is not applicable for Fargate. Use resource requirements instead.",
    ),
    Refusal(
        "fargate-legacy-memory",
        "fargate_legacy_resources",
        lambda c, b: register(c, fargate(memory=2048), platform="FARGATE"),
        "ClientException",
        "memory is not applicable for Fargate. Use resource requirements instead.",
    ),
    Refusal(
        "fargate-execution-role",
        "fargate_execution_role",
        lambda c, b: register(c, container(), platform="FARGATE"),
        "ClientException",
        "executionRoleArn is required for jobs that run on Fargate resources.",
    ),
    Refusal(
        "network-configuration-on-ec2",
        "fargate_only_parameters",
        lambda c, b: register(c, container(networkConfiguration={"assignPublicIp": "ENABLED"})),
        "ClientException",
        "networkConfiguration is not applicable for EC2. Jobs that are running on Amazon EC2 "
        "resources must not specify this parameter.",
    ),
    Refusal(
        "platform-configuration-on-ec2",
        "fargate_only_parameters",
        lambda c, b: register(
            c, container(fargatePlatformConfiguration={"platformVersion": "LATEST"})
        ),
        "ClientException",
        "fargatePlatformConfiguration is not applicable for EC2. Jobs that are running on "
        "Amazon EC2 resources must not specify this parameter.",
    ),
    Refusal(
        "multinode-on-fargate",
        "fargate_multinode",
        lambda c, b: c.register_job_definition(
            jobDefinitionName="mnp",
            type="multinode",
            nodeProperties=NODES,
            platformCapabilities=["FARGATE"],
        ),
        "ClientException",
        "Multinode job definitions are not supported on Fargate",
    ),
    Refusal(
        "instance-type-on-fargate",
        "fargate_instance_type",
        lambda c, b: submit_on_fargate(c, b, containerOverrides={"instanceType": "m5.large"}),
        "ClientException",
        "instanceType is not applicable for Fargate.",
    ),
    Refusal(
        "privileged-on-fargate",
        "fargate_container_parameters",
        lambda c, b: register(c, fargate(privileged=True), platform="FARGATE"),
        "ClientException",
        "privileged is not applicable for Fargate.",
    ),
    Refusal(
        "log-driver-on-fargate",
        "fargate_container_parameters",
        lambda c, b: register(
            c, fargate(logConfiguration={"logDriver": "json-file"}), platform="FARGATE"
        ),
        "ClientException",
        "Log driver json-file is not supported for Fargate; jobs that are running on Fargate "
        "resources are restricted to the awslogs and splunk log drivers.",
    ),
    # -- timeouts, retries, priorities -------------------------------------------------------
    Refusal(
        "timeout-at-registration",
        "timeout_minimum",
        lambda c, b: register(c, container(), timeout={"attemptDurationSeconds": 59}),
        "ClientException",
        invalid(
            1,
            "Value '59' at 'timeout.attemptDurationSeconds' failed to satisfy constraint: "
            "Member must have value greater than or equal to 60",
        ),
    ),
    Refusal(
        "timeout-at-submission",
        "timeout_minimum",
        lambda c, b: submit(c, b, timeout={"attemptDurationSeconds": 1}),
        "ClientException",
        invalid(
            1,
            "Value '1' at 'timeout.attemptDurationSeconds' failed to satisfy constraint: "
            "Member must have value greater than or equal to 60",
        ),
    ),
    Refusal(
        "retry-attempts",
        "retry_attempts",
        lambda c, b: submit(c, b, retryStrategy={"attempts": 11}),
        "ClientException",
        invalid(
            1,
            "Value '11' at 'retryStrategy.attempts' failed to satisfy constraint: Member must "
            "have value less than or equal to 10",
        ),
    ),
    Refusal(
        "evaluate-on-exit-count",
        "evaluate_on_exit",
        lambda c, b: submit(
            c, b, retryStrategy={"attempts": 2, "evaluateOnExit": [{"action": "EXIT"}] * 6}
        ),
        "ClientException",
        invalid(
            1,
            "Value '[" + ", ".join(["{action=EXIT}"] * 6) + "]' at 'retryStrategy.evaluateOnExit' "
            "failed to satisfy constraint: Member must have length less than or equal to 5",
        ),
    ),
    Refusal(
        "evaluate-on-exit-pattern",
        "evaluate_on_exit",
        lambda c, b: submit(
            c,
            b,
            retryStrategy={
                "attempts": 2,
                "evaluateOnExit": [{"onExitCode": "1?", "action": "EXIT"}],
            },
        ),
        "ClientException",
        "onExitCode '1?' is not a valid pattern: only digits, optionally ending with *",
    ),
    Refusal(
        "evaluate-on-exit-without-attempts",
        "evaluate_on_exit",
        lambda c, b: submit(c, b, retryStrategy={"evaluateOnExit": [{"action": "EXIT"}]}),
        "ClientException",
        "retryStrategy.attempts must be specified when evaluateOnExit is specified",
    ),
    Refusal(
        "scheduling-priority",
        "scheduling_priority",
        lambda c, b: submit(c, b, schedulingPriorityOverride=10_000),
        "ClientException",
        invalid(
            1,
            "Value '10000' at 'schedulingPriorityOverride' failed to satisfy constraint: Member "
            "must have value less than or equal to 9999",
        ),
    ),
    Refusal(
        "share-identifier-missing",
        "share_identifier",
        lambda c, b: _submit_fair(c, b),
        "ClientException",
        "shareIdentifier must be specified.",
    ),
    Refusal(
        "share-identifier-on-fifo-queue",
        "share_identifier",
        lambda c, b: submit(c, b, shareIdentifier="team"),
        "ClientException",
        "shareIdentifier can't be specified: the job queue has no fair-share scheduling policy",
    ),
    # -- arrays, dependencies, overrides -----------------------------------------------------
    Refusal(
        "array-size",
        "array_size",
        lambda c, b: submit(c, b, arrayProperties={"size": 10_001}),
        "ClientException",
        invalid(
            1,
            "Value '10001' at 'arrayProperties.size' failed to satisfy constraint: Member must "
            "have value less than or equal to 10000",
        ),
        accepted_when_lenient=False,  # more children than the emulator runs
    ),
    Refusal(
        "multinode-array",
        "multinode_array",
        lambda c, b: _register_then_submit(
            c, b, {"type": "multinode", "nodeProperties": NODES}, arrayProperties={"size": 2}
        ),
        "ClientException",
        "Multinode Array Job not supported",
        accepted_when_lenient=False,  # LocalBatch does not run multi-node jobs
    ),
    Refusal(
        "depends-on",
        "depends_on",
        lambda c, b: submit(c, b, dependsOn=[{"jobId": UNKNOWN_ID}] * 21),
        "ClientException",
        "A job can depend upon a maximum of 20 jobs",
        accepted_when_lenient=False,  # the dependency does not exist
    ),
    Refusal(
        "environment-reserved-prefix",
        "environment_reserved_prefix",
        lambda c, b: submit(
            c, b, containerOverrides={"environment": [{"name": "AWS_BATCH_X", "value": "1"}]}
        ),
        "ClientException",
        "Environment variable AWS_BATCH_X uses the reserved prefix AWS_BATCH: Batch sets the "
        "variables of that prefix itself",
    ),
    Refusal(
        "command-empty-string",
        "command_empty_string",
        lambda c, b: submit(c, b, containerOverrides={"command": ["echo", ""]}),
        "ClientException",
        "Command cannot be empty",
    ),
    Refusal(
        "container-overrides-for-eks",
        "eks_overrides",
        lambda c, b: _register_then_submit(
            c, b, {"type": "container", "eksProperties": EKS}, containerOverrides={}
        ),
        "ClientException",
        "Container overrides or node overrides should not be set for Batch on EKS jobs.",
        accepted_when_lenient=False,  # LocalBatch does not run EKS jobs
    ),
    Refusal(
        "container-and-node-overrides",
        "overrides_exclusive",
        lambda c, b: _register_then_submit(
            c,
            b,
            {"type": "multinode", "nodeProperties": NODES},
            containerOverrides={"command": ["true"]},
            nodeOverrides={"numNodes": 2},
        ),
        "ClientException",
        "containerOverrides and nodeOverrides are mutually exclusive; give one",
        accepted_when_lenient=False,  # LocalBatch does not run multi-node jobs
    ),
    # -- tags -------------------------------------------------------------------------------
    Refusal(
        "tag-characters",
        "tag_characters",
        lambda c, b: submit(c, b, tags={"metaflow.version": "2.8.1+mc(0.10.0)"}),
        "BadRequestException",
        "'2.8.1+mc(0.10.0)' is not a valid value for TagValue - it contains illegal characters",
    ),
    Refusal(
        "tag-reserved-prefix",
        "tag_reserved_prefix",
        lambda c, b: c.tag_resource(
            resourceArn="arn:aws:batch:us-east-1:123456789012:job-queue/batchcrew-test",
            tags={"AWS:team": "a"},
        ),
        "ClientException",
        "'AWS:team' is not a valid value for TagKey - the aws: prefix is reserved for AWS use",
    ),
    Refusal(
        "untag-reserved-prefix",
        "tag_reserved_prefix",
        lambda c, b: c.untag_resource(
            resourceArn="arn:aws:batch:us-east-1:123456789012:job-queue/batchcrew-test",
            tagKeys=["aws:team"],
        ),
        "ClientException",
        "Tag key aws:team can't be removed: the aws: prefix is reserved for AWS use",
    ),
    # -- ids and reasons ---------------------------------------------------------------------
    Refusal(
        "reason-length",
        "reason_length",
        lambda c, b: c.terminate_job(jobId=UNKNOWN_ID, reason="r" * 1025),
        "ClientException",
        invalid(
            1,
            f"Value '{'r' * 1025}' at 'reason' failed to satisfy constraint: Member must have "
            "length less than or equal to 1024",
        ),
        accepted_when_lenient=False,  # the job does not exist
    ),
    Refusal(
        "describe-jobs-limit",
        "describe_jobs_limit",
        lambda c, b: c.describe_jobs(jobs=[UNKNOWN_ID] * 101),
        "ClientException",
        invalid(
            1,
            f"Value '[{', '.join([UNKNOWN_ID] * 101)}]' at 'jobs' failed to satisfy "
            "constraint: Member must have length less than or equal to 100",
        ),
    ),
    Refusal(
        "terminate-jobs-limit",
        "bulk_jobs_limit",
        lambda c, b: c.terminate_jobs(jobs=[UNKNOWN_ID] * 51, reason="r"),
        "ClientException",
        invalid(
            1,
            f"Value '[{', '.join([UNKNOWN_ID] * 51)}]' at 'jobs' failed to satisfy "
            "constraint: Member must have length less than or equal to 50",
        ),
    ),
    Refusal(
        "cancel-jobs-limit",
        "bulk_jobs_limit",
        lambda c, b: c.cancel_jobs(jobs=[UNKNOWN_ID] * 51, reason="r"),
        "ClientException",
        invalid(
            1,
            f"Value '[{', '.join([UNKNOWN_ID] * 51)}]' at 'jobs' failed to satisfy "
            "constraint: Member must have length less than or equal to 50",
        ),
    ),
    # -- compute environments and queues -----------------------------------------------------
    Refusal(
        "service-role",
        "service_role",
        lambda c, b: c.create_compute_environment(computeEnvironmentName="u", type="UNMANAGED"),
        "ClientException",
        "serviceRole must be specified for an UNMANAGED compute environment",
    ),
    Refusal(
        "fargate-security-groups",
        "compute_resources",
        lambda c, b: fargate_environment(c, securityGroupIds=[]),
        "ClientException",
        "securityGroupIds must contain at least one security group for FARGATE",
    ),
    Refusal(
        "ec2-only-field-on-fargate",
        "compute_resources",
        lambda c, b: fargate_environment(c, instanceRole="ecsInstanceRole"),
        "ClientException",
        "computeResources.instanceRole is not applicable for FARGATE",
    ),
    Refusal(
        "queue-mixes-platforms",
        "queue_compute_environments",
        lambda c, b: _mixed_queue(c),
        "ClientException",
        "All of the compute environments of a job queue must be either EC2 (EC2 or SPOT) or "
        "Fargate (FARGATE or FARGATE_SPOT); they can't be mixed",
    ),
]


async def _submit_fair(client: Any, batch: LocalBatch) -> Any:
    queue = await fair_share_queue(client, batch)
    return await client.submit_job(
        jobName="rules", jobQueue=queue, jobDefinition=batch.job_definition
    )


async def _register_then_submit(
    client: Any, batch: LocalBatch, definition: dict[str, Any], **submission: Any
) -> Any:
    await client.register_job_definition(jobDefinitionName="other", **definition)
    return await submit(client, batch, jobDefinition="other", **submission)


async def _mixed_queue(client: Any) -> Any:
    await fargate_environment(client)
    return await client.create_job_queue(
        jobQueueName="mixed",
        priority=1,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": "localbatch"},
            {"order": 2, "computeEnvironment": "fargate-ce"},
        ],
    )


@pytest.mark.parametrize("refusal", BATCH_REFUSALS, ids=repr)
async def test_batch_refuses_what_aws_refuses(
    refusal: Refusal, local_batch: LocalBatch, batch_client: Any
) -> None:
    with pytest.raises(ClientError) as refused:
        await refusal.act(batch_client, local_batch)
    error = refused.value.response["Error"]
    assert (error["Code"], error["Message"]) == (refusal.code, refusal.message)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    if refusal.code == "ClientException":
        assert isinstance(refused.value, batch_client.exceptions.ClientException)
    assert local_batch.requests[-1].error == refusal.code


LENIENT = [refusal for refusal in BATCH_REFUSALS if refusal.rule is not None]


@pytest.mark.parametrize(
    ("refusal", "local_batch_options"),
    [(refusal, LocalBatchOptions(lenient={refusal.rule})) for refusal in LENIENT],
    ids=[refusal.id for refusal in LENIENT],
)
async def test_a_rule_named_lenient_no_longer_refuses(
    refusal: Refusal, local_batch: LocalBatch, batch_client: Any
) -> None:
    if refusal.accepted_when_lenient:
        await refusal.act(batch_client, local_batch)
        return
    # The request goes past this rule, to another check (the emulator's limits, an unknown id).
    with pytest.raises(ClientError) as refused:
        await refusal.act(batch_client, local_batch)
    assert refused.value.response["Error"]["Message"] != refusal.message


def test_every_rule_has_a_refusal_here_and_a_line_in_the_docs() -> None:
    tested = {refusal.rule for refusal in BATCH_REFUSALS}
    # bulk_job_ids is an entry of a response, not a refusal: see the bulk operations' test.
    assert set(RULES) - tested == {"bulk_job_ids"}
    docs = (Path(__file__).parents[2] / "docs" / "testing.md").read_text()
    assert [name for name in RULES if f"`{name}`" not in docs] == []


def test_unknown_lenient_names_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown rules 'timeout'") as unknown:
        LocalBatchOptions(lenient={"timeout"})
    assert "timeout_minimum" in str(unknown.value)  # the known names are listed
    with pytest.raises(ValueError, match="not the string"):
        LocalBatchOptions(lenient="timeout_minimum")
    options = LocalBatchOptions(lenient=["timeout_minimum", "ec2_vcpu"])
    assert options.lenient == frozenset({"timeout_minimum", "ec2_vcpu"})
    assert hash(options) == hash(LocalBatchOptions(lenient={"ec2_vcpu", "timeout_minimum"}))


def test_the_emulator_command_takes_lenient_rules_by_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--lenient", "timeout_minimum", "--lenient", "ec2_vcpu", "--fargate-queue", "f"]
    )
    assert _options(args).lenient == {"timeout_minimum", "ec2_vcpu"}
    assert args.fargate_queues == ["f"]
    assert _options(parser.parse_args([])).lenient == frozenset()
    with pytest.raises(SystemExit):
        parser.parse_args(["--lenient", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# -- the model's constraints in CloudWatch Logs ------------------------------------------------


@pytest.fixture
async def unvalidated_logs(local_batch: LocalBatch, aws_session: AioSession) -> AsyncIterator[Any]:
    """A Logs client that sends what botocore would refuse to (its checks of `min`)."""
    async with aws_session.create_client(
        "logs", config=UNVALIDATED, **local_batch.client_kwargs()
    ) as client:
        yield client


async def test_logs_checks_patterns_lengths_and_reports_every_problem(
    local_batch: LocalBatch, logs_client: Any, unvalidated_logs: Any
) -> None:
    errors = logs_client.exceptions.InvalidParameterException
    with pytest.raises(errors) as one:
        await logs_client.create_log_group(logGroupName="bad name!")
    assert one.value.response["Error"]["Message"] == invalid(
        1,
        "Value 'bad name!' at 'logGroupName' failed to satisfy constraint: Member must satisfy "
        r"regular expression pattern: [\.\-_/#A-Za-z0-9]+",
    )
    with pytest.raises(errors) as two:
        await logs_client.get_log_events(logGroupName="a b", logStreamName="x:y")
    assert two.value.response["Error"]["Message"] == invalid(
        2,
        "Value 'a b' at 'logGroupName' failed to satisfy constraint: Member must satisfy "
        r"regular expression pattern: [\.\-_/#A-Za-z0-9]+",
        "Value 'x:y' at 'logStreamName' failed to satisfy constraint: Member must satisfy "
        "regular expression pattern: [^:*]*",
    )
    # The members of a list of strings are reported at the list, with every constraint.
    with pytest.raises(errors) as members:
        await logs_client.filter_log_events(logGroupName="/aws/batch/job", logStreamNames=["a*"])
    assert members.value.response["Error"]["Message"] == invalid(
        1,
        "Value '[a*]' at 'logStreamNames' failed to satisfy constraint: Member must satisfy "
        "constraint: [Member must have length less than or equal to 512, Member must have "
        "length greater than or equal to 1, Member must satisfy regular expression pattern: "
        "[^:*]*]",
    )
    # A structure in a list is reported by its position, as AWS numbers them.
    await logs_client.create_log_stream(logGroupName="/aws/batch/job", logStreamName="s")
    with pytest.raises(errors) as nested:
        await unvalidated_logs.put_log_events(
            logGroupName="/aws/batch/job",
            logStreamName="s",
            logEvents=[{"timestamp": 1, "message": "ok"}, {"timestamp": 2, "message": ""}],
        )
    assert nested.value.response["Error"]["Message"] == invalid(
        1,
        "Value '' at 'logEvents.2.member.message' failed to satisfy constraint: Member must "
        "have length greater than or equal to 1",
    )
    with pytest.raises(ClientError) as mistyped:
        await unvalidated_logs.get_log_events(
            logGroupName="/aws/batch/job", logStreamName="s", limit="ten"
        )
    assert mistyped.value.response["Error"] == {
        "Code": "SerializationException",
        "Message": "STRING_VALUE can not be converted to an Integer",
    }


async def test_logs_tag_patterns_know_unicode_letters_spaces_and_numbers(
    logs_client: Any,
) -> None:
    # \p{L}, \p{Z}, \p{N}: letters, separators and numbers of any script are tag characters.
    await logs_client.create_log_group(
        logGroupName="/unicode", tags={"équipe": "données ٣\u00a0Ⅻ", "团队": "数据"}
    )
    groups = await logs_client.describe_log_groups(logGroupNamePrefix="/unicode")
    assert [g["logGroupName"] for g in groups["logGroups"]] == ["/unicode"]
    with pytest.raises(logs_client.exceptions.InvalidParameterException) as refused:
        await logs_client.create_log_group(logGroupName="/tags", tags={"k": "tab\there"})
    assert refused.value.response["Error"]["Message"] == invalid(
        1,
        "Value '{k=tab\there}' at 'tags' failed to satisfy constraint: Map value must satisfy "
        "constraint: [Member must have length less than or equal to 256, Member must satisfy "
        r"regular expression pattern: ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$]",
    )


def test_every_model_pattern_compiles_and_matches_as_java_does() -> None:
    compile_patterns()  # every pattern of both models, as LocalBatch does at start
    tag = java_pattern(r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$")
    assert tag.fullmatch("é ж 中 ٣ Ⅻ \u00a0\u2028 a_.:/=+-@")
    assert not tag.fullmatch("\t")
    assert not tag.fullmatch("(")
    assert not tag.fullmatch("\n")
    # Java reads the "-" after \w in brackets as a literal; \w is ASCII in Java.
    dash = java_pattern(r"[\w-_]*")
    assert dash.fullmatch("a-_")
    assert not dash.fullmatch("é")


def test_the_fargate_table_is_the_models() -> None:
    """The emulator's Fargate pairs are those of ResourceRequirement.value's documentation."""
    shape = service_model("batch").shape_for("ResourceRequirement")
    assert isinstance(shape, botocore.model.StructureShape)
    text = re.sub(r"<[^>]+>", " ", shape.members["value"].documentation)
    vcpu_part = text[text.index('type="VCPU"') :]
    documented = {
        float(vcpu): tuple(int(m) for m in re.findall(r"\d+", memories))
        for vcpu, memories in re.findall(
            r"value\s*=\s*([\d.]+)\s+MEMORY\s*=\s*([\d, or]+)", vcpu_part.replace("\u00a0", " ")
        )
    }
    assert documented == dict(FARGATE_MEMORY)


# -- bulk CancelJobs and TerminateJobs -------------------------------------------------------


def wait_code(path: Path) -> list[str]:
    return [
        "python",
        "-c",
        f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.01)",
    ]


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(vcpus=1)])
async def test_terminate_jobs_ends_jobs_in_any_state_and_reports_each(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any, tmp_path: Path
) -> None:
    command = {"command": wait_code(tmp_path / "never")}
    running = (await submit(batch_client, local_batch, containerOverrides=command))["jobId"]
    await wait_for(batch_client, running, ["RUNNING"])
    waiting = (await submit(batch_client, local_batch, containerOverrides=command))["jobId"]
    await wait_for(batch_client, waiting, ["RUNNABLE"])
    array = (
        await submit(
            batch_client, local_batch, containerOverrides=command, arrayProperties={"size": 3}
        )
    )["jobId"]

    answer = await batch_client.terminate_jobs(
        jobs=[running, waiting, array, UNKNOWN_ID, "not-a-job-id"], reason="bulk end"
    )

    assert answer["successful"] == [running, waiting, array, UNKNOWN_ID]
    assert answer["errors"] == [
        {
            "job": "not-a-job-id",
            "code": "ValidationException",
            "message": "Job id not-a-job-id is not valid: a job id is a UUID, followed by :N "
            "for an array child",
        }
    ]
    stopped = await wait_for(batch_client, running)
    assert (stopped["status"], stopped["statusReason"], stopped["isTerminated"]) == (
        "FAILED",
        "bulk end",
        True,
    )
    cancelled = await wait_for(batch_client, waiting)
    assert (cancelled["status"], cancelled["isCancelled"]) == ("FAILED", True)
    parent = await wait_for(batch_client, array)
    assert parent["status"] == "FAILED"
    assert parent["arrayProperties"]["statusSummary"]["FAILED"] == 3
    # A second answer for the same ids: all of them are done, and that is a success too.
    again = await batch_client.terminate_jobs(jobs=[running, array], reason="again")
    assert (again["successful"], again["errors"]) == ([running, array], [])


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(vcpus=1)])
async def test_cancel_jobs_cancels_waiting_jobs_and_leaves_running_ones(
    local_batch: LocalBatch, batch_client: Any, wait_for: Any, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    command = {"command": wait_code(release)}
    running = (await submit(batch_client, local_batch, containerOverrides=command))["jobId"]
    await wait_for(batch_client, running, ["RUNNING"])
    waiting = (await submit(batch_client, local_batch, containerOverrides=command))["jobId"]

    answer = await batch_client.cancel_jobs(jobs=[running, waiting], reason="bulk cancel")

    assert (answer["successful"], answer["errors"]) == ([running, waiting], [])
    cancelled = await wait_for(batch_client, waiting)
    assert (cancelled["status"], cancelled["statusReason"]) == ("FAILED", "bulk cancel")
    release.touch()
    assert (await wait_for(batch_client, running))["status"] == "SUCCEEDED"


async def test_bulk_operations_need_a_reason(
    local_batch: LocalBatch, aws_session: AioSession
) -> None:
    async with aws_session.create_client(
        "batch", config=UNVALIDATED, **local_batch.client_kwargs()
    ) as client:
        with pytest.raises(client.exceptions.ClientException) as refused:
            await client.terminate_jobs(jobs=[UNKNOWN_ID])
    assert refused.value.response["Error"]["Message"] == invalid(
        1, "Value null at 'reason' failed to satisfy constraint: Member must not be null"
    )


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(latency=0.2)])
async def test_concurrent_calls_wait_their_latency_in_parallel(
    local_batch: LocalBatch, aws_session: AioSession
) -> None:
    config = AioConfig(max_pool_connections=20, retries={"total_max_attempts": 1})
    async with aws_session.create_client(
        "batch", config=config, **local_batch.client_kwargs()
    ) as client:
        answers: list[Any] = []

        async def call() -> None:
            answers.append(await client.terminate_jobs(jobs=[UNKNOWN_ID], reason="r"))

        # One after the other, 20 calls of 0.2 s take 4 s; side by side, about 0.2 s.
        with anyio.fail_after(2.0):
            async with anyio.create_task_group() as tasks:
                for _ in range(20):
                    tasks.start_soon(call)
    assert len(answers) == 20


# -- Fargate queues ----------------------------------------------------------------------------


@pytest.fixture
async def fargate_batch() -> AsyncIterator[LocalBatch]:
    async with LocalBatch(queues=["ec2"], fargate_queues=["fargate"]) as batch:
        yield batch


async def test_a_fargate_queue_runs_a_fargate_job(
    fargate_batch: LocalBatch, aws_session: AioSession, wait_for: Any, log_of: Any
) -> None:
    batch = fargate_batch
    batch.register_job_definition(
        "on-fargate",
        command=["python", "-c", "import os; print(os.environ['AWS_BATCH_CE_NAME'])"],
        vcpus=0.5,
        memory_mib=1024,
        platform="FARGATE",
    )
    kwargs = batch.client_kwargs()
    async with (
        aws_session.create_client("batch", config=UNVALIDATED, **kwargs) as client,
        aws_session.create_client("logs", config=UNVALIDATED, **kwargs) as logs,
    ):
        environments = await client.describe_compute_environments(
            computeEnvironments=[FARGATE_COMPUTE_ENVIRONMENT]
        )
        (environment,) = environments["computeEnvironments"]
        assert environment["type"] == "MANAGED"
        assert environment["computeResources"]["type"] == "FARGATE"
        assert environment["computeResources"]["subnets"]
        assert environment["computeResources"]["securityGroupIds"]

        job = await client.submit_job(jobName="f", jobQueue="fargate", jobDefinition="on-fargate")
        detail = await wait_for(client, job["jobId"])

        assert detail["status"] == "SUCCEEDED"
        assert detail["platformCapabilities"] == ["FARGATE"]
        assert detail["container"]["executionRoleArn"] == EXECUTION_ROLE
        assert detail["container"]["networkConfiguration"] == {"assignPublicIp": "DISABLED"}
        assert detail["container"]["fargatePlatformConfiguration"] == {"platformVersion": "LATEST"}
        lines = await log_of(logs, detail["container"]["logStreamName"])
        assert lines == [FARGATE_COMPUTE_ENVIRONMENT]


async def test_fargate_settings_are_echoed_as_given(
    fargate_batch: LocalBatch, aws_session: AioSession
) -> None:
    async with aws_session.create_client(
        "batch", config=UNVALIDATED, **fargate_batch.client_kwargs()
    ) as client:
        await register(
            client,
            fargate(
                networkConfiguration={"assignPublicIp": "ENABLED"},
                fargatePlatformConfiguration={"platformVersion": "1.4.0"},
                resourceRequirements=resources("0.25", "512"),
            ),
            platform="FARGATE",
        )
        (definition,) = (await client.describe_job_definitions(jobDefinitionName="rules"))[
            "jobDefinitions"
        ]
    properties = definition["containerProperties"]
    assert properties["networkConfiguration"] == {"assignPublicIp": "ENABLED"}
    assert properties["fargatePlatformConfiguration"] == {"platformVersion": "1.4.0"}
    assert properties["executionRoleArn"] == ROLE
    assert definition["platformCapabilities"] == ["FARGATE"]


async def test_a_job_runs_only_where_its_platform_is(
    fargate_batch: LocalBatch, aws_session: AioSession, wait_for: Any
) -> None:
    batch = fargate_batch
    batch.register_job_definition("ec2-job", command=["python", "-c", "pass"])
    batch.register_job_definition(
        "fargate-job", command=["python", "-c", "pass"], platform="FARGATE"
    )
    async with aws_session.create_client(
        "batch", config=UNVALIDATED, **batch.client_kwargs()
    ) as client:

        async def run(queue: str, definition: str) -> str:
            job = await client.submit_job(jobName="j", jobQueue=queue, jobDefinition=definition)
            return str(job["jobId"])

        stuck_fargate = await run("ec2", "fargate-job")
        stuck_ec2 = await run("fargate", "ec2-job")
        # Jobs submitted after them, each in a queue of its platform, run to the end...
        assert (await wait_for(client, await run("ec2", "ec2-job")))["status"] == "SUCCEEDED"
        assert (await wait_for(client, await run("fargate", "fargate-job")))["status"] == (
            "SUCCEEDED"
        )
        # ...while the two in a queue of the other platform wait RUNNABLE, as on AWS.
        described = await client.describe_jobs(jobs=[stuck_fargate, stuck_ec2])
        assert [job["status"] for job in described["jobs"]] == ["RUNNABLE", "RUNNABLE"]


def test_fargate_queues_and_definitions_need_no_client() -> None:
    batch = LocalBatch(queues=(), fargate_queues=["f1", "f2"])
    arn = batch.create_queue("f3", priority=5, platform="FARGATE")
    assert arn.endswith(":job-queue/f3")
    with pytest.raises(ValueError, match="platform must be"):
        batch.create_queue("x", platform="GPU")
    with pytest.raises(ValueError, match=re.escape("(2.00 vCPU, 7629 MiB) not valid.")):
        batch.register_job_definition(
            "bad", command=["true"], vcpus=2, memory_mib=7629, platform="FARGATE"
        )
    with pytest.raises(ValueError, match=r"Value 0\.5 for type VCPU"):
        batch.register_job_definition("half", command=["true"], vcpus=0.5)
    lenient = LocalBatch(options=LocalBatchOptions(lenient={"ec2_vcpu"}))
    assert lenient.register_job_definition("half", command=["true"], vcpus=0.5)
    with pytest.raises(TypeError, match="fargate_queues must be a sequence"):
        LocalBatch(fargate_queues="f")


# -- EKS and multi-node definitions: stored, described, not run ------------------------------


async def test_eks_and_multinode_definitions_are_stored_but_their_jobs_not_run(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    await batch_client.register_job_definition(
        jobDefinitionName="eks", type="container", eksProperties=EKS
    )
    await batch_client.register_job_definition(
        jobDefinitionName="mnp", type="multinode", nodeProperties=NODES
    )
    described = await batch_client.describe_job_definitions(jobDefinitions=["eks:1", "mnp:1"])
    eks, mnp = described["jobDefinitions"]
    assert eks["eksProperties"] == EKS
    assert eks["containerOrchestrationType"] == "EKS"
    assert "containerProperties" not in eks
    assert "platformCapabilities" not in eks
    assert mnp["nodeProperties"]["numNodes"] == 2
    assert mnp["type"] == "multinode"

    with pytest.raises(batch_client.exceptions.ClientException) as eks_job:
        await submit(batch_client, local_batch, jobDefinition="eks")
    assert eks_job.value.response["Error"]["Message"].startswith(
        "LocalBatch does not run EKS jobs: job definition eks is registered and described"
    )
    with pytest.raises(batch_client.exceptions.ClientException) as mnp_job:
        await submit(batch_client, local_batch, jobDefinition="mnp")
    assert mnp_job.value.response["Error"]["Message"].startswith(
        "LocalBatch does not run multi-node parallel jobs"
    )


async def test_an_unknown_member_is_ignored_as_aws_ignores_it(
    local_batch: LocalBatch, batch_client: Any
) -> None:
    def add_member(request: Any, **_: Any) -> None:
        body = json.loads(request.body)
        request.body = json.dumps({**body, "notAMember": {"anything": 1}}).encode()
        request.headers["Content-Length"] = str(len(request.body))

    batch_client.meta.events.register("before-send.batch.SubmitJob", add_member)
    job = await submit(batch_client, local_batch)
    assert job["jobId"]
    assert local_batch.requests_for("SubmitJob")[0]["notAMember"] == {"anything": 1}
