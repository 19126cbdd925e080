"""`JobDefinition`: register, describe and deregister the revisions of an AWS Batch job
definition, each answer a polars DataFrame (crew.aws.batch's definition class, async).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import botocore.model
import polars as pl

from batchcrew.aws import _rules
from batchcrew.aws._client import map_errors
from batchcrew.aws._rules import MemoryUnits, mebibytes
from batchcrew.aws._tables import (
    ClientScope,
    ScopedClients,
    check_amount,
    check_optional_text,
    check_strings,
    check_text,
    client_settings,
    dtype_of,
    table,
    value_of,
)
from batchcrew.errors import BatchError

if TYPE_CHECKING:
    from batchcrew.aws.monitor import BatchMonitor

logger = logging.getLogger("batchcrew.aws")

#: The command of a definition made by `register()`: a batchcrew worker, which reads its
#: settings from the BATCHCREW_* variables a launcher sets, so the definition serves a controller.
WORKER_COMMAND = ("python", "-m", "batchcrew.worker")

#: Columns of `describe()`, in order, and the JobDefinition member each comes from.
DESCRIBE_COLUMNS = {
    "name": "jobDefinitionName",
    "arn": "jobDefinitionArn",
    "revision": "revision",
    "status": "status",
    "type": "type",
    "scheduling_priority": "schedulingPriority",
    "parameters": "parameters",
    "retry_strategy": "retryStrategy",
    "container_properties": "containerProperties",
    "timeout": "timeout",
    "node_properties": "nodeProperties",
    "tags": "tags",
    "propagate_tags": "propagateTags",
    "platform_capabilities": "platformCapabilities",
    "eks_properties": "eksProperties",
    "container_orchestration_type": "containerOrchestrationType",
}
#: Columns of `register()` and `deregister()`.
REVISION_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "revision": pl.Int64(),
    "arn": pl.String(),
}


class JobDefinition(ScopedClients):
    """The revisions of AWS Batch job definition `job_definition` (a name, without revision).

    `job_queue` is only used by `monitor()`. `region`, `endpoint_url` and `profile` override the
    standard AWS resolution (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, config files).

    Use it with `async with` to keep one AWS client for the block, or call its methods directly
    to make a client per call; both close every client they make. Needs the IAM permissions
    batch:RegisterJobDefinition, batch:DescribeJobDefinitions, batch:DeregisterJobDefinition
    (and iam:PassRole for the roles given to `register()`).
    """

    def __init__(
        self,
        job_definition: str,
        job_queue: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
    ) -> None:
        self.job_definition = check_text("job_definition", job_definition)
        if ":" in job_definition or "/" in job_definition:
            raise ValueError(
                f"job_definition must be a job definition name without revision or ARN, such as "
                f"'my-def', not {job_definition!r}"
            )
        self.job_queue = check_optional_text("job_queue", job_queue)
        self._scope = ClientScope(client_settings(region, endpoint_url, profile))

    def __repr__(self) -> str:
        return (
            f"JobDefinition(job_definition={self.job_definition!r}, job_queue={self.job_queue!r})"
        )

    def monitor(self, log_group: str = "/aws/batch/job") -> BatchMonitor:
        """A `BatchMonitor` of this definition's jobs in `job_queue`, reaching AWS the same way."""
        from batchcrew.aws.monitor import BatchMonitor

        settings = self._scope.settings
        return BatchMonitor(
            job_queue=check_text("job_queue", self.job_queue),
            job_definition=self.job_definition,
            log_group=log_group,
            region=settings.region,
            endpoint_url=settings.endpoint_url,
            profile=settings.profile,
        )

    async def register(
        self,
        image: str,
        platform_capabilities: Literal["EC2", "FARGATE"] = "EC2",
        memory_units: MemoryUnits = "gigabytes",
        memory: float | None = 8,
        cpus: float | None = 2,
        gpus: float = 0,
        seconds_timeout: float | None = None,
        scheduling_priority: int | None = None,
        tags: Mapping[str, str] | None = None,
        propagate_tags: bool | None = None,
        parameters: Mapping[str, str] | None = None,
        job_role_arn: str | None = None,
        execution_role_arn: str | None = None,
        assign_public_ip: bool | None = None,
        platform_version: str | None = None,
    ) -> pl.DataFrame:
        """Register a new revision: a container running `image` with the batchcrew worker as
        its command, output to CloudWatch Logs ("awslogs" driver, the default log group
        /aws/batch/job), and `cpus`, `gpus` (0: none) and `memory` (in `memory_units`,
        "gigabytes" or "mebibytes") as its resources; AWS requires cpus and memory.

        `job_role_arn` is the IAM role the tasks' code runs as. On Fargate
        (`platform_capabilities="FARGATE"`) AWS requires `execution_role_arn` (the role ECS
        pulls the image and sends the logs with), memory rounds up to the smallest value Fargate
        allows with `cpus` (8 gigabytes with 2 vCPUs: 8192 MiB), GPUs are refused,
        `assign_public_ip=True` gives each job a public IP (needed to pull the image in a subnet
        without a NAT gateway, such as a default VPC's; AWS's default is no public IP) and
        `platform_version` picks the Fargate platform ("LATEST" by default). A
        `seconds_timeout` is at least 60 (AWS's minimum).

        Returns one row: name, revision, arn. Raises ValueError for a bad argument or one AWS
        would refuse (before any request), naming it and the fix, and `BatchError` if AWS
        refuses.
        """
        params = register_parameters(
            self.job_definition,
            image=image,
            platform_capabilities=platform_capabilities,
            memory_units=memory_units,
            memory=memory,
            cpus=cpus,
            gpus=gpus,
            seconds_timeout=seconds_timeout,
            scheduling_priority=scheduling_priority,
            tags=tags,
            propagate_tags=propagate_tags,
            parameters=parameters,
            job_role_arn=job_role_arn,
            execution_role_arn=execution_role_arn,
            assign_public_ip=assign_public_ip,
            platform_version=platform_version,
        )
        async with self._scope.batch() as client:
            with map_errors(f"registering job definition {self.job_definition!r}"):
                answer = await client.register_job_definition(**params)
        row = {
            "name": answer["jobDefinitionName"],
            "revision": answer["revision"],
            "arn": answer["jobDefinitionArn"],
        }
        return table([row], REVISION_SCHEMA)

    async def describe(self, active: bool = False) -> pl.DataFrame:
        """Every revision (only the active ones if `active`), newest first, one row each with
        the columns of `DESCRIBE_COLUMNS`; nested fields are polars Structs and Lists, maps
        (parameters, tags) Lists of {key, value}. No revision: an empty DataFrame."""
        if not isinstance(active, bool):
            raise ValueError(f"active must be True or False, not {active!r}")
        async with self._scope.batch() as client:
            shape = client.meta.service_model.shape_for("JobDefinition")
            assert isinstance(shape, botocore.model.StructureShape)
            found: list[Any] = []
            token: str | None = None
            with map_errors(f"describing job definition {self.job_definition!r}"):
                while True:
                    kwargs: dict[str, Any] = {"jobDefinitionName": self.job_definition}
                    if active:
                        kwargs["status"] = "ACTIVE"
                    if token is not None:
                        kwargs["nextToken"] = token
                    page = await client.describe_job_definitions(maxResults=100, **kwargs)
                    found += page.get("jobDefinitions", [])
                    token = page.get("nextToken")
                    if not token:
                        break
        found.sort(key=lambda d: d.get("revision", 0), reverse=True)
        members = shape.members
        rows = [
            {
                column: value_of(definition.get(member), members[member])
                for column, member in DESCRIBE_COLUMNS.items()
            }
            for definition in found
        ]
        for row in rows:
            row["status"] = (row["status"] or "").lower() or None  # "active", as crew shows it
        schema = {column: dtype_of(members[member]) for column, member in DESCRIBE_COLUMNS.items()}
        return table(rows, schema)

    async def deregister(self, revision: int | None = None) -> pl.DataFrame:
        """Deregister `revision` (None: the greatest active revision). Returns one row (name,
        revision, arn) of what was deregistered, or no row when `revision` is None and no
        revision is active. Raises `BatchError` (code "JobDefinitionNotFound") for a revision
        that does not exist."""
        if revision is not None and (
            isinstance(revision, bool) or not isinstance(revision, int) or revision < 1
        ):
            raise ValueError(f"revision must be a whole number >= 1 or None, not {revision!r}")
        described = await self.describe(active=revision is None)
        if revision is None:
            chosen = described.head(1)  # newest first
        else:
            chosen = described.filter(pl.col("revision") == revision)
            if chosen.height == 0:
                raise BatchError(
                    f"deregistering job definition {self.job_definition}:{revision}: it does not "
                    "exist; see describe() for the revisions there are",
                    code="JobDefinitionNotFound",
                    message=f"no revision {revision} of {self.job_definition}",
                )
        chosen = chosen.select(list(REVISION_SCHEMA))
        if chosen.height == 0:
            return chosen
        arn = chosen["arn"][0]
        async with self._scope.batch() as client:
            with map_errors(f"deregistering job definition {arn}"):
                await client.deregister_job_definition(jobDefinition=arn)
        return chosen


async def find_definition(client: Any, reference: str) -> dict[str, Any] | None:
    """The job definition `reference` names, as DescribeJobDefinitions answers it: a name's
    latest ACTIVE revision, or the revision a "name:revision" or ARN names (whatever its
    status). None when there is none. Paging through every page; the caller maps errors."""
    by_revision = ":" in reference  # name:revision, or an ARN
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"nextToken": token} if token else {}
        if by_revision:
            kwargs["jobDefinitions"] = [reference]
        else:
            kwargs.update(jobDefinitionName=reference, status="ACTIVE")
        page = await client.describe_job_definitions(maxResults=100, **kwargs)
        found += page.get("jobDefinitions", [])
        token = page.get("nextToken")
        if not token:
            break
    if not found:
        return None
    return max(found, key=lambda definition: int(definition.get("revision", 0)))


def register_parameters(
    name: str,
    *,
    image: str,
    platform_capabilities: str,
    memory_units: str,
    memory: float | None,
    cpus: float | None,
    gpus: float,
    seconds_timeout: float | None,
    scheduling_priority: int | None,
    tags: Mapping[str, str] | None,
    propagate_tags: bool | None,
    parameters: Mapping[str, str] | None,
    job_role_arn: str | None,
    execution_role_arn: str | None,
    assign_public_ip: bool | None = None,
    platform_version: str | None = None,
) -> dict[str, Any]:
    """RegisterJobDefinition's parameters for `JobDefinition.register()`, every argument
    checked against AWS's rules (ValueError naming the first bad one and the fix)."""
    check_text("image", image)
    if platform_capabilities not in ("EC2", "FARGATE"):
        raise ValueError(
            f'platform_capabilities must be "EC2" or "FARGATE", not {platform_capabilities!r}'
        )
    platform: _rules.Platform = "FARGATE" if platform_capabilities == "FARGATE" else "EC2"
    if memory_units not in ("gigabytes", "mebibytes"):
        raise ValueError(f'memory_units must be "gigabytes" or "mebibytes", not {memory_units!r}')
    memory = check_amount("memory", memory, zero=False)
    cpus = check_amount("cpus", cpus, zero=False)
    gpu_count = check_amount("gpus", gpus, zero=True) or 0.0
    if gpu_count != int(gpu_count):
        raise ValueError(f"gpus must be a whole number, not {gpus!r}")
    timeout = check_amount("seconds_timeout", seconds_timeout, zero=False)
    if scheduling_priority is not None and (
        isinstance(scheduling_priority, bool)
        or not isinstance(scheduling_priority, int)
        or not 0 <= scheduling_priority <= 9999
    ):
        raise ValueError(
            f"scheduling_priority must be a whole number from 0 to 9999 or None, "
            f"not {scheduling_priority!r}"
        )
    tags = check_strings("tags", tags)
    if tags:
        _rules.check_tags("tags", tags)
    parameters = check_strings("parameters", parameters)
    if propagate_tags is not None and not isinstance(propagate_tags, bool):
        raise ValueError(f"propagate_tags must be True, False or None, not {propagate_tags!r}")
    job_role_arn = check_optional_text("job_role_arn", job_role_arn)
    execution_role_arn = check_optional_text("execution_role_arn", execution_role_arn)
    if assign_public_ip is not None and not isinstance(assign_public_ip, bool):
        raise ValueError(f"assign_public_ip must be True, False or None, not {assign_public_ip!r}")
    platform_version = check_optional_text("platform_version", platform_version)
    if platform == "FARGATE":
        if execution_role_arn is None:
            # ContainerProperties.executionRoleArn: "For jobs that run on Fargate resources,
            # you must provide an execution role."
            raise ValueError(
                'platform_capabilities="FARGATE" needs execution_role_arn: AWS requires an '
                "execution role for Fargate jobs (ECS pulls the image and sends the logs with "
                "it); make one with the AmazonECSTaskExecutionRolePolicy managed policy "
                "(docs/aws-batch.md, IAM)"
            )
    else:
        # NetworkConfiguration and FargatePlatformConfiguration: "Jobs that are running on
        # Amazon EC2 resources must not specify this parameter."
        for argument, value in (
            ("assign_public_ip", assign_public_ip),
            ("platform_version", platform_version),
        ):
            if value is not None:
                raise ValueError(
                    f'{argument} is for Fargate only (platform_capabilities="FARGATE"); AWS '
                    "refuses it on EC2, where the compute environment's launch template and "
                    "subnets decide networking"
                )

    if cpus is None or memory is None:
        # ResourceRequirement.value, VCPU and MEMORY: "This is required" (AWS answers "vCPU is
        # not provided." for a definition without one, as reported in ASFHyP3/hyp3#586).
        raise ValueError(
            f"{'cpus' if cpus is None else 'memory'} is required: AWS refuses a job definition "
            "without a VCPU and a MEMORY requirement (jobs may still override them)"
        )
    memory_mib = None
    if memory is not None:
        units: MemoryUnits = "gigabytes" if memory_units == "gigabytes" else "mebibytes"
        memory_mib = mebibytes(memory, units)
    requirements = _rules.requirements(
        cpus=cpus, gpus=gpu_count, memory_mib=memory_mib, platform=platform, where=""
    )
    granted = next((int(r["value"]) for r in requirements if r["type"] == "MEMORY"), None)
    if memory_mib is not None and granted != memory_mib:
        logger.info(
            "job definition %s: Fargate allows only some memory values with %g vCPU(s): "
            "memory rounds up from %d MiB to %d MiB",
            name,
            cpus,
            memory_mib,
            granted,
        )
    container: dict[str, Any] = {
        "image": image,
        "command": list(WORKER_COMMAND),
        "resourceRequirements": requirements,
        "logConfiguration": {"logDriver": "awslogs"},
    }
    if job_role_arn is not None:
        container["jobRoleArn"] = job_role_arn
    if execution_role_arn is not None:
        container["executionRoleArn"] = execution_role_arn
    if assign_public_ip is not None:
        container["networkConfiguration"] = {
            "assignPublicIp": "ENABLED" if assign_public_ip else "DISABLED"
        }
    if platform_version is not None:
        container["fargatePlatformConfiguration"] = {"platformVersion": platform_version}
    params: dict[str, Any] = {
        "jobDefinitionName": name,
        "type": "container",
        "platformCapabilities": [platform_capabilities],
        "containerProperties": container,
    }
    if timeout is not None:
        seconds = _rules.check_timeout("seconds_timeout", timeout)
        params["timeout"] = {"attemptDurationSeconds": seconds}
    if scheduling_priority is not None:
        params["schedulingPriority"] = scheduling_priority
    if tags:
        params["tags"] = tags
    if propagate_tags is not None:
        params["propagateTags"] = propagate_tags
    if parameters:
        params["parameters"] = parameters
    return params
