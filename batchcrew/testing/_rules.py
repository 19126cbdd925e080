"""AWS Batch's prose rules: what AWS refuses beyond the constraints its model's shapes state,
as the API reference, the documentation strings of the model and users' reports of AWS's
answers say. Each rule has a stable name, so that a test may opt out of one by name
(`LocalBatchOptions(lenient=...)`); every other request is refused as AWS refuses it.

Sans-I/O, like the state machine that calls it: parameters in, `ApiError` out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchcrew.testing._wire import (
    ApiError,
    Params,
    constraint_problem,
    java_pattern,
    validation_message,
)


@dataclass(frozen=True)
class Rule:
    """One rule: its name, what it refuses, and where AWS says so."""

    name: str
    checks: str
    source: str


#: Every rule, by name. `source` names the model shape and member whose documentation states
#: the rule, an API reference page, or the public report of AWS's answer.
RULES: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "job_name",
            "SubmitJob's jobName: 1 to 128 letters, digits, hyphens and underscores, starting "
            "with a letter or digit",
            "SubmitJobRequest.jobName; text from fluidattacks/makes#697",
        ),
        Rule(
            "resource_name",
            "names of compute environments, job queues and job definitions: up to 128 letters, "
            "digits, hyphens and underscores",
            "CreateComputeEnvironmentRequest.computeEnvironmentName, "
            "CreateJobQueueRequest.jobQueueName, RegisterJobDefinitionRequest.jobDefinitionName",
        ),
        Rule(
            "job_definition_reference",
            "SubmitJob's jobDefinition: name, name:revision or a job definition ARN",
            "SubmitJobRequest.jobDefinition; text from boto/boto3#1330, aws/aws-sdk-js#4280",
        ),
        Rule(
            "definition_properties",
            "a container definition has one of containerProperties, ecsProperties, "
            "eksProperties; a multinode one has nodeProperties; an EKS one has no "
            "containerProperties, nodeProperties, propagateTags or platformCapabilities; "
            "MANAGED_INSTANCES takes ecsProperties, not containerProperties",
            "RegisterJobDefinitionRequest.type, .containerProperties, .nodeProperties, "
            ".propagateTags, .platformCapabilities",
        ),
        Rule(
            "container_image",
            "containerProperties.image is required, at most 255 characters",
            "ContainerProperties.image",
        ),
        Rule(
            "resources_required",
            "a job definition gives VCPU and MEMORY (resourceRequirements, or vcpus and memory "
            "on EC2)",
            "ResourceRequirement.value (VCPU, MEMORY: 'This is required'); text from "
            "ASFHyP3/hyp3#586",
        ),
        Rule(
            "ec2_vcpu",
            "on EC2, VCPU is a whole number of at least 1",
            "ResourceRequirement.value (VCPU); text from kestra-io/plugin-aws#504",
        ),
        Rule(
            "memory_minimum",
            "MEMORY is a whole number of MiB, at least 4",
            "ResourceRequirement.value (MEMORY), ContainerProperties.memory",
        ),
        Rule(
            "fargate_resources",
            "on Fargate, VCPU and MEMORY form one of the pairs Fargate offers (0.25 to 32 vCPU)",
            "ResourceRequirement.value (the table of VCPU and MEMORY values); text from "
            "Netflix/metaflow#749",
        ),
        Rule(
            "fargate_gpu",
            "no GPU resourceRequirement on Fargate",
            "ResourceRequirement.value (GPU)",
        ),
        Rule(
            "fargate_legacy_resources",
            "no vcpus or memory (the deprecated fields) on Fargate, in definitions or overrides",
            "ContainerProperties.vcpus, .memory, ContainerOverrides.vcpus, .memory; text from "
            "insitro/redun#95",
        ),
        Rule(
            "fargate_execution_role",
            "a Fargate definition gives executionRoleArn",
            "ContainerProperties.executionRoleArn",
        ),
        Rule(
            "fargate_only_parameters",
            "networkConfiguration and fargatePlatformConfiguration only on Fargate",
            "ContainerProperties.networkConfiguration, .fargatePlatformConfiguration",
        ),
        Rule(
            "fargate_multinode",
            "no multinode definitions (nodeProperties) and no nodeOverrides on Fargate",
            "RegisterJobDefinitionRequest.type, .nodeProperties, SubmitJobRequest.nodeOverrides",
        ),
        Rule(
            "fargate_instance_type",
            "no instanceType, in containerProperties or containerOverrides, on Fargate",
            "ContainerProperties.instanceType, ContainerOverrides.instanceType",
        ),
        Rule(
            "fargate_container_parameters",
            "on Fargate: no ulimits, no privileged, no linuxParameters devices, "
            "sharedMemorySize, tmpfs, maxSwap or swappiness, and only the awslogs and splunk "
            "log drivers",
            "ContainerProperties.ulimits, .privileged, LinuxParameters, LogConfiguration.logDriver",
        ),
        Rule(
            "ephemeral_storage",
            "ephemeralStorage.sizeInGiB from 21 to 200",
            "EphemeralStorage.sizeInGiB",
        ),
        Rule(
            "timeout_minimum",
            "timeout.attemptDurationSeconds at least 60, at registration and submission "
            "(lenient: at least 1)",
            "JobTimeout.attemptDurationSeconds, SubmitJobRequest.timeout",
        ),
        Rule(
            "retry_attempts",
            "retryStrategy.attempts from 1 to 10",
            "RetryStrategy.attempts",
        ),
        Rule(
            "evaluate_on_exit",
            "at most 5 evaluateOnExit conditions, only with attempts; onExitCode digits and an "
            "optional trailing *, onStatusReason and onReason letters, digits, periods, colons "
            "and white space; each at most 512 characters",
            "RetryStrategy.evaluateOnExit, EvaluateOnExit",
        ),
        Rule(
            "scheduling_priority",
            "schedulingPriority and schedulingPriorityOverride from 0 to 9999",
            "RegisterJobDefinitionRequest.schedulingPriority, "
            "SubmitJobRequest.schedulingPriorityOverride",
        ),
        Rule(
            "share_identifier",
            "shareIdentifier exactly when the queue has a fair-share scheduling policy; up to "
            "255 letters and digits, optionally followed by *",
            "SubmitJobRequest.shareIdentifier; text from boto/boto3#3158",
        ),
        Rule(
            "array_size",
            "arrayProperties.size from 2 to 10,000",
            "SubmitJobRequest.arrayProperties",
        ),
        Rule(
            "multinode_array",
            "no arrayProperties for a multi-node parallel job",
            "Batch user guide, multi-node parallel jobs (text as given to this project)",
        ),
        Rule(
            "depends_on",
            "at most 20 dependencies, each with a jobId except SEQUENTIAL for array jobs",
            "SubmitJobRequest.dependsOn",
        ),
        Rule(
            "environment_reserved_prefix",
            "no environment variable named AWS_BATCH...",
            "ContainerProperties.environment, ContainerOverrides.environment",
        ),
        Rule(
            "command_empty_string",
            "containerOverrides.command holds no empty string",
            "ContainerOverrides.command; text from boto/boto3#3612",
        ),
        Rule(
            "eks_overrides",
            "no containerOverrides or nodeOverrides for an EKS job; eksPropertiesOverride only "
            "for one",
            "SubmitJobRequest.eksPropertiesOverride; text from nextflow-io/nextflow#5817",
        ),
        Rule(
            "overrides_exclusive",
            "containerOverrides and nodeOverrides are mutually exclusive",
            "SubmitJobRequest.nodeOverrides, NodeOverrides (apache/airflow#25522 quotes the "
            "API reference)",
        ),
        Rule(
            "multinode_nodes",
            "nodeProperties: mainNode below numNodes, node ranges within 0 to numNodes - 1 "
            "covering every node, at most one instance type per range",
            "NodeProperties.mainNode, NodeRangeProperty.targetNodes, .instanceTypes",
        ),
        Rule(
            "eks_containers",
            "at most 10 containers and 10 init containers in an EKS pod",
            "EksPodProperties.containers, .initContainers",
        ),
        Rule(
            "tag_characters",
            "tag keys and values of letters, numbers, spaces (Unicode separators) and "
            "_ . : / = + - @",
            "Batch user guide, tag restrictions; text and code (BadRequestException) from "
            "Netflix/metaflow#1345",
        ),
        Rule(
            "tag_reserved_prefix",
            "no tag key or value starting with aws: (any case), and no untagging of one",
            "Batch user guide, tag restrictions",
        ),
        Rule(
            "reason_length",
            "reason of CancelJob, TerminateJob, CancelJobs, TerminateJobs at most 1024 characters",
            "CancelJobRequest.reason, TerminateJobRequest.reason, CancelJobsRequest.reason, "
            "TerminateJobsRequest.reason",
        ),
        Rule(
            "describe_jobs_limit",
            "DescribeJobs takes at most 100 job ids",
            "DescribeJobsRequest.jobs",
        ),
        Rule(
            "bulk_jobs_limit",
            "CancelJobs and TerminateJobs take at most 50 job ids",
            "CancelJobsRequest.jobs, TerminateJobsRequest.jobs",
        ),
        Rule(
            "bulk_job_ids",
            "CancelJobs and TerminateJobs report an id that is not a job id (a UUID, with :N for "
            "an array child) in errors, as ValidationException",
            "CancelJobsErrorDetail.code, TerminateJobsErrorDetail.code",
        ),
        Rule(
            "queue_compute_environments",
            "a job queue has 1 to 3 compute environments, all EC2 (EC2, SPOT) or all Fargate "
            "(FARGATE, FARGATE_SPOT)",
            "CreateJobQueueRequest.computeEnvironmentOrder, ComputeEnvironmentOrder",
        ),
        Rule(
            "compute_resources",
            "a MANAGED compute environment gives computeResources: subnets and security groups "
            "(Fargate: up to 16 subnets, at least one security group, no EC2-only fields), "
            "instanceRole on EC2 and SPOT",
            "CreateComputeEnvironmentRequest.computeResources, ComputeResource",
        ),
        Rule(
            "service_role",
            "an UNMANAGED compute environment gives serviceRole",
            "CreateComputeEnvironmentRequest.serviceRole",
        ),
    )
}


def check_lenient(names: Collection[str]) -> frozenset[str]:
    """`names` as a set of rule names; ValueError naming the unknown ones and the known."""
    if isinstance(names, str):
        raise ValueError(
            f"lenient must be a collection of rule names such as {{'timeout_minimum'}}, not the "
            f"string {names!r}"
        )
    unknown = sorted(set(names) - RULES.keys())
    if unknown:
        raise ValueError(
            f"lenient names unknown rules {', '.join(map(repr, unknown))}; the rules are: "
            + ", ".join(sorted(RULES))
        )
    return frozenset(names)


# -- values the rules hold ---------------------------------------------------------------------

#: The memory values (MiB) Fargate allows with each vCPU count: the table in the documentation
#: of ResourceRequirement.value (VCPU) in botocore's Batch model. tests/testing checks it against
#: the model's text, so a botocore that changes the table fails a test instead of diverging.
FARGATE_MEMORY: Mapping[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4096 + 1, 1024)),
    1: tuple(range(2048, 8192 + 1, 1024)),
    2: tuple(range(4096, 16384 + 1, 1024)),
    4: tuple(range(8192, 30720 + 1, 1024)),
    8: tuple(range(16384, 61440 + 1, 4096)),
    16: tuple(range(32768, 122880 + 1, 8192)),
    32: (61440, 122880, 249856),
}
FARGATE = frozenset({"FARGATE", "FARGATE_SPOT"})
#: The characters of AWS's tags: "letters, numbers, spaces representable in UTF-8, and the
#: following characters: + - = . _ : / @" (Batch user guide, tag restrictions), the class of
#: the TagKey pattern of the CloudWatch Logs model.
_TAG_TEXT = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*"
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_DEFINITION_REFERENCE = re.compile(
    r"[A-Za-z0-9_-]{1,128}(:[0-9]+)?|arn:aws[a-z-]*:batch:[^:]*:[0-9]*:job-definition/"
    r"[A-Za-z0-9_-]{1,128}(:[0-9]+)?"
)
#: A job id as Batch makes them: a UUID, then :N for an array child or #N for a node.
JOB_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(:[0-9]+)?(#[0-9]+)?"
)
_EXIT_CODE_PATTERN = re.compile(r"[0-9]*\*?")
_REASON_PATTERN = re.compile(r"[A-Za-z0-9.:\s]*\*?")
_SHARE_IDENTIFIER = re.compile(r"[A-Za-z0-9]{1,255}\*?")
#: Fields of ComputeResource that Fargate refuses: each says "This parameter isn't applicable
#: to jobs that are running on Fargate resources. Don't specify it."
_EC2_ONLY_COMPUTE = (
    "allocationStrategy",
    "minvCpus",
    "desiredvCpus",
    "imageId",
    "ec2KeyPair",
    "instanceRole",
    "tags",
    "placementGroup",
    "bidPercentage",
    "spotIamFleetRole",
    "launchTemplate",
    "ec2Configuration",
    "scalingPolicy",
)
#: LinuxParameters fields Fargate refuses: each says "This parameter isn't applicable to jobs
#: that are running on Fargate resources."
_EC2_ONLY_LINUX = ("devices", "sharedMemorySize", "tmpfs", "maxSwap", "swappiness")


def requirement(container: Params, kind: str) -> Any:
    """The value of resourceRequirement `kind` ("VCPU", "MEMORY", "GPU") of a container, or
    None."""
    for item in container.get("resourceRequirements") or []:
        if item.get("type") == kind:
            return item.get("value")
    return None


def platform_of(environment_type: str, compute_resources: Params | None) -> str:
    """The platform ("EC2", "FARGATE", "MANAGED_INSTANCES") jobs of a compute environment run
    on: an UNMANAGED environment is EC2 instances the user runs."""
    if environment_type == "UNMANAGED" or not compute_resources:
        return "EC2"
    kind = compute_resources.get("type")
    if kind in FARGATE:
        return "FARGATE"
    if kind == "ECS_MANAGED_INSTANCES":
        return "MANAGED_INSTANCES"
    return "EC2"


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _bound(value: Any, path: str, constraint: str) -> ApiError:
    """A bound the documentation states, refused in the words AWS's model validation uses for
    the bounds its shapes state (AWS's own text for these is not reported)."""
    return ApiError(
        "ClientException", validation_message([constraint_problem(value, path, constraint)])
    )


def _nodes(target: str, count: int) -> range | None:
    """The node indexes of a targetNodes range ("0:3", ":3", "2:", "4"), or None if it is not
    one."""
    low, colon, high = target.partition(":")
    if not colon:
        high = low
    if not (low.isdigit() or low == "") or not (high.isdigit() or high == ""):
        return None
    start = int(low) if low else 0
    end = int(high) if high else count - 1
    return range(start, end + 1)


class Rules:
    """The prose rules, each refusing with an `ApiError` unless named in `lenient`."""

    def __init__(self, lenient: Collection[str] = ()) -> None:
        self.lenient = check_lenient(lenient)

    def enforced(self, name: str) -> bool:
        """Whether rule `name` is enforced (not named lenient)."""
        assert name in RULES, name
        return name not in self.lenient

    def _refuse(self, name: str, message: str, code: str = "ClientException") -> None:
        if self.enforced(name):
            raise ApiError(code, message)

    def _within(
        self, name: str, value: float | None, path: str, low: float, high: float | None = None
    ) -> None:
        """Refuse, under rule `name`, a number outside [low, high] that the documentation
        bounds, in the words of the model's validation of the bounds it states."""
        if value is None or not self.enforced(name):
            return
        if value < low:
            raise _bound(value, path, f"Member must have value greater than or equal to {low}")
        if high is not None and value > high:
            raise _bound(value, path, f"Member must have value less than or equal to {high}")

    # -- names ------------------------------------------------------------------------------

    def job_name(self, name: str) -> None:
        # SubmitJobRequest.jobName: "It can be up to 128 letters long. The first character must
        # be alphanumeric, can contain uppercase and lowercase letters, numbers, hyphens (-),
        # and underscores (_)." AWS's text: fluidattacks/makes#697 ("Error executing request,
        # Exception : Job name should match valid pattern").
        if not _JOB_NAME.fullmatch(name):
            self._refuse("job_name", "Job name should match valid pattern")

    def resource_name(self, kind: str, name: str) -> None:
        # The `...Name` members of CreateComputeEnvironmentRequest, CreateJobQueueRequest and
        # RegisterJobDefinitionRequest: "It can be up to 128 letters long. It can contain
        # uppercase and lowercase letters, numbers, hyphens (-), and underscores (_)." The text
        # is the emulator's.
        if not _RESOURCE_NAME.fullmatch(name):
            self._refuse(
                "resource_name",
                f"{kind} name {name!r} is invalid: up to 128 letters, numbers, hyphens and "
                "underscores, starting with a letter or number",
            )

    def job_definition_reference(self, reference: str) -> None:
        # SubmitJobRequest.jobDefinition: "definition-name, definition-name:revision, or the
        # Amazon Resource Name (ARN) for the job definition". AWS's answer to another form
        # ("name:latest", a queue's ARN): boto/boto3#1330, aws/aws-sdk-js#4280.
        if not _DEFINITION_REFERENCE.fullmatch(reference):
            self._refuse(
                "job_definition_reference",
                f"Provided name {reference} is not supported pattern[a-zA-Z_0-9-]{{1,128}}",
            )

    # -- tags -------------------------------------------------------------------------------

    def tags(self, tags: Mapping[str, str] | None) -> None:
        """Tag characters and the reserved prefix (counts and lengths are in the model)."""
        allowed = java_pattern(_TAG_TEXT)
        for key, value in (tags or {}).items():
            for text, what in ((key, "TagKey"), (value, "TagValue")):
                # Batch user guide, tag restrictions. AWS's text and code for a value:
                # Netflix/metaflow#1345 ("'2.8.1+mc(0.10.0)' is not a valid value for TagValue -
                # it contains illegal characters", BadRequestException); for a key, the same.
                if not allowed.fullmatch(text):
                    self._refuse(
                        "tag_characters",
                        f"'{text}' is not a valid value for {what} - it contains illegal "
                        "characters",
                        "BadRequestException",
                    )
                # Batch user guide, tag restrictions: "Don't use aws:, AWS:, or any upper or
                # lowercase combination of such as a prefix for either keys or values, as it is
                # reserved for AWS use." The text is the emulator's.
                if text.lower().startswith("aws:"):
                    self._refuse(
                        "tag_reserved_prefix",
                        f"'{text}' is not a valid value for {what} - the aws: prefix is "
                        "reserved for AWS use",
                    )

    def untag(self, keys: Iterable[str]) -> None:
        # Batch user guide, tag restrictions: "You can't edit or delete tag keys or values with
        # this prefix." The text is the emulator's.
        for key in keys:
            if key.lower().startswith("aws:"):
                self._refuse(
                    "tag_reserved_prefix",
                    f"Tag key {key} can't be removed: the aws: prefix is reserved for AWS use",
                )

    # -- requests with job ids and reasons --------------------------------------------------

    def reason(self, reason: str) -> None:
        # CancelJobRequest.reason (and TerminateJob, CancelJobs, TerminateJobs): "This parameter
        # has a limit of 1024 characters."
        if len(reason) > 1024 and self.enforced("reason_length"):
            raise _bound(reason, "reason", "Member must have length less than or equal to 1024")

    def describe_jobs(self, ids: list[str]) -> None:
        # DescribeJobsRequest.jobs: "A list of up to 100 job IDs."
        if len(ids) > 100 and self.enforced("describe_jobs_limit"):
            raise _bound(ids, "jobs", "Member must have length less than or equal to 100")

    def bulk_jobs(self, ids: list[str]) -> None:
        # CancelJobsRequest.jobs, TerminateJobsRequest.jobs: "An array of up to 50 Batch job
        # IDs".
        if len(ids) > 50 and self.enforced("bulk_jobs_limit"):
            raise _bound(ids, "jobs", "Member must have length less than or equal to 50")

    def malformed_job_id(self, job_id: str) -> bool:
        """Whether a CancelJobs/TerminateJobs id is to be reported as malformed: the error
        detail's code "ValidationException - A job identifier in the request is malformed or
        isn't valid" (CancelJobsErrorDetail.code, TerminateJobsErrorDetail.code)."""
        return self.enforced("bulk_job_ids") and not JOB_ID.fullmatch(job_id)

    # -- job definitions --------------------------------------------------------------------

    def job_definition(self, params: Params) -> None:
        """Every rule of a RegisterJobDefinition request (its model validation passed)."""
        self.resource_name("Job definition", params["jobDefinitionName"])
        self.tags(params.get("tags"))
        kind = params["type"]
        given = [
            key
            for key in ("containerProperties", "ecsProperties", "eksProperties")
            if params.get(key) is not None
        ]
        node_properties = params.get("nodeProperties")
        platforms = params.get("platformCapabilities") or ["EC2"]
        fargate = "FARGATE" in platforms
        # RegisterJobDefinitionRequest.type: "If the value is container, then one of the
        # following is required: containerProperties, ecsProperties, or eksProperties. If the
        # value is multinode, then nodeProperties is required." The texts are the emulator's.
        if kind == "container" and len(given) != 1:
            self._refuse(
                "definition_properties",
                "A container job definition needs exactly one of containerProperties, "
                f"ecsProperties or eksProperties; got {', '.join(given) or 'none'}",
            )
        # RegisterJobDefinitionRequest.platformCapabilities: "Jobs with the MANAGED_INSTANCES
        # platform capability must use ecsProperties (not containerProperties)". The text is
        # the emulator's.
        if "MANAGED_INSTANCES" in platforms and params.get("containerProperties") is not None:
            self._refuse(
                "definition_properties",
                "Jobs with the MANAGED_INSTANCES platform capability must use ecsProperties, "
                "not containerProperties",
            )
        if kind == "container" and node_properties is not None:
            self._refuse(
                "definition_properties",
                "nodeProperties is for multinode job definitions; use type multinode",
            )
        if kind == "multinode":
            # RegisterJobDefinitionRequest.type: "If the job is run on Fargate resources, then
            # multinode isn't supported." (the Batch user guide: "AWS Fargate doesn't support
            # multi-node parallel jobs"). The text is the emulator's.
            if fargate:
                self._refuse(
                    "fargate_multinode", "Multinode job definitions are not supported on Fargate"
                )
            if node_properties is None:
                self._refuse(
                    "definition_properties", "A multinode job definition needs nodeProperties"
                )
        if params.get("eksProperties") is not None:
            # RegisterJobDefinitionRequest: containerProperties "must not be specified for
            # Amazon EKS-based job definitions"; of nodeProperties, propagateTags and
            # platformCapabilities: "If the job runs on Amazon EKS resources, then you must not
            # specify" it. The texts are the emulator's.
            for key in ("nodeProperties", "propagateTags", "platformCapabilities"):
                if params.get(key) is not None:
                    self._refuse(
                        "definition_properties",
                        f"{key} must not be specified for a job definition with eksProperties",
                    )
            self.eks_properties(params["eksProperties"])
        if node_properties is not None:
            self.node_properties(node_properties)
        if params.get("containerProperties") is not None and kind == "container":
            self.container(params["containerProperties"], platforms, registering=True)
        self.retry_and_timeout(params)
        self.scheduling_priority("schedulingPriority", params.get("schedulingPriority"))

    def eks_properties(self, properties: Params) -> None:
        pod = properties.get("podProperties") or {}
        for key in ("containers", "initContainers"):
            # EksPodProperties.containers, .initContainers: "This object is limited to 10
            # elements."
            items = pod.get(key) or []
            if len(items) > 10 and self.enforced("eks_containers"):
                raise _bound(
                    items,
                    f"eksProperties.podProperties.{key}",
                    "Member must have length less than or equal to 10",
                )

    def node_properties(self, properties: Params) -> None:
        count, main = properties["numNodes"], properties["mainNode"]
        # NodeProperties.mainNode: "This node index value must be fewer than the number of
        # nodes." NodeRangeProperty.targetNodes: "Your accumulative node ranges must account
        # for all nodes (0:n)." NodeRangeProperty.instanceTypes: "this list object is currently
        # limited to one element." The texts are the emulator's.
        if not 0 <= main < count:
            self._refuse(
                "multinode_nodes",
                f"nodeProperties.mainNode {main} must be a node index below numNodes {count}",
            )
        covered: set[int] = set()
        for node_range in properties["nodeRangeProperties"]:
            target = node_range["targetNodes"]
            nodes = _nodes(target, count)
            if nodes is None or not nodes or nodes.start < 0 or nodes.stop > count:
                self._refuse(
                    "multinode_nodes",
                    f"targetNodes {target!r} is not a range of node indexes within 0:{count - 1}",
                )
            else:
                covered.update(nodes)
            if len(node_range.get("instanceTypes") or []) > 1:
                self._refuse(
                    "multinode_nodes",
                    f"Node range {target}: instanceTypes is limited to one element",
                )
            if node_range.get("container") is not None:
                self.container(node_range["container"], ["EC2"], registering=False)
        missing = sorted(set(range(count)) - covered)
        if missing:
            self._refuse(
                "multinode_nodes",
                f"The node ranges of nodeProperties must account for all {count} nodes; none "
                f"covers node {missing[0]}",
            )

    def container(self, container: Params, platforms: list[str], *, registering: bool) -> None:
        """The rules of a container's properties: a definition's (`registering`), or a job's
        once its overrides are merged in."""
        fargate = "FARGATE" in platforms
        if registering:
            image = container.get("image")
            # ContainerProperties.image: "Required. ... It can be 255 characters long." The
            # texts are the emulator's.
            if not image:
                self._refuse("container_image", "Container properties must specify an image")
            elif len(image) > 255 and self.enforced("container_image"):
                raise _bound(
                    image,
                    "containerProperties.image",
                    "Member must have length less than or equal to 255",
                )
        self.environment(container.get("environment") or [])
        vcpu = requirement(container, "VCPU")
        memory = requirement(container, "MEMORY")
        if registering:
            # ResourceRequirement.value, VCPU and MEMORY: "This is required but can be
            # specified in several places". AWS's text for a definition without VCPU:
            # ASFHyP3/hyp3#586 ("vCPU is not provided."); memory's follows it.
            if vcpu is None and (fargate or container.get("vcpus") is None):
                self._refuse("resources_required", "vCPU is not provided.")
            if memory is None and (fargate or container.get("memory") is None):
                self._refuse("resources_required", "memory is not provided.")
        if memory is not None or container.get("memory") is not None:
            self._memory(memory if memory is not None else container["memory"])
        ephemeral = (container.get("ephemeralStorage") or {}).get("sizeInGiB")
        # EphemeralStorage.sizeInGiB: "The minimum supported value is 21 GiB and the maximum
        # supported value is 200 GiB."
        self._within(
            "ephemeral_storage",
            ephemeral,
            "containerProperties.ephemeralStorage.sizeInGiB",
            21,
            200,
        )
        if fargate:
            self._fargate(container, vcpu, memory, registering=registering)
        else:
            self._ec2(container, vcpu)

    def _memory(self, value: Any) -> None:
        # ResourceRequirement.value (MEMORY) and ContainerProperties.memory: "You must specify
        # at least 4 MiB of memory for a job." The first text follows the one AWS answers for a
        # VCPU that is not a whole number (kestra-io/plugin-aws#504); the second is the
        # emulator's, from the documentation's sentence.
        text = str(value)
        if not text.isdigit():
            self._refuse(
                "memory_minimum",
                f"Value {text} for type MEMORY in resourceRequirement is not valid. Please "
                "provide a numeric value.",
            )
        elif int(text) < 4:
            self._refuse(
                "memory_minimum",
                f"Value {text} for type MEMORY in resourceRequirement is not valid. You must "
                "specify at least 4 MiB of memory for a job.",
            )

    def _ec2(self, container: Params, vcpu: Any) -> None:
        # ResourceRequirement.value (VCPU): "For Amazon EC2 resources, you must specify at
        # least one vCPU." AWS refuses "1.0" so: kestra-io/plugin-aws#504 ("Value 1.0 for type
        # VCPU in resourceRequirement is not valid. Please provide a numeric value."); the
        # emulator answers the same for any value that is not a whole number of at least 1.
        for value in (vcpu, container.get("vcpus")):
            if value is not None and not (str(value).isdigit() and int(str(value)) >= 1):
                self._refuse(
                    "ec2_vcpu",
                    f"Value {value} for type VCPU in resourceRequirement is not valid. Please "
                    "provide a numeric value.",
                )
        # ContainerProperties.networkConfiguration, .fargatePlatformConfiguration: "Jobs that
        # are running on Amazon EC2 resources must not specify this parameter." The text is the
        # emulator's.
        for key in ("networkConfiguration", "fargatePlatformConfiguration"):
            if container.get(key) is not None:
                self._refuse(
                    "fargate_only_parameters",
                    f"{key} is not applicable for EC2. Jobs that are running on Amazon EC2 "
                    "resources must not specify this parameter.",
                )

    def _fargate(self, container: Params, vcpu: Any, memory: Any, *, registering: bool) -> None:
        # ContainerProperties.vcpus, .memory (and ContainerOverrides'): "It's not supported for
        # jobs running on Fargate resources." AWS's text for vcpus: insitro/redun#95; memory's
        # follows it.
        for key in ("vcpus", "memory"):
            if container.get(key) is not None:
                self._refuse(
                    "fargate_legacy_resources",
                    f"{key} is not applicable for Fargate. Use resource requirements instead.",
                )
        # ResourceRequirement.value (GPU): "GPUs aren't available for jobs that are running on
        # Fargate resources." The text is the emulator's, in the style of the one above.
        if requirement(container, "GPU") is not None:
            self._refuse(
                "fargate_gpu",
                "GPU is not applicable for Fargate. GPUs aren't available for jobs that are "
                "running on Fargate resources.",
            )
        # ResourceRequirement.value: for Fargate, VCPU "must match one of the supported values
        # and the MEMORY values must be one of the values supported for that VCPU value" (the
        # table, FARGATE_MEMORY). AWS's text: Netflix/metaflow#749 ("Fargate resource
        # requirements (1.00 vCPU, 4000 MiB) not valid.").
        cpus = _number(vcpu)
        mib = _number(memory)
        if vcpu is not None and cpus is None:
            self._refuse(
                "fargate_resources",
                f"Value {vcpu} for type VCPU in resourceRequirement is not valid. Please "
                "provide a numeric value.",
            )
        elif cpus is None or cpus not in FARGATE_MEMORY or mib not in FARGATE_MEMORY[cpus]:
            self._refuse(
                "fargate_resources",
                f"Fargate resource requirements ({cpus or 0:.2f} vCPU, {mib or 0:.0f} MiB) not "
                "valid.",
            )
        # ContainerProperties.executionRoleArn: "For jobs that run on Fargate resources, you
        # must provide an execution role." The text is the emulator's.
        if registering and not container.get("executionRoleArn"):
            self._refuse(
                "fargate_execution_role",
                "executionRoleArn is required for jobs that run on Fargate resources.",
            )
        # ContainerProperties.instanceType, ContainerOverrides.instanceType: "This parameter
        # isn't applicable to ... jobs that run on Fargate resources, and shouldn't be
        # provided." The text is the emulator's, in the style of redun#95's.
        if container.get("instanceType") is not None:
            self._refuse(
                "fargate_instance_type",
                "instanceType is not applicable for Fargate.",
            )
        self._fargate_container(container)

    def _fargate_container(self, container: Params) -> None:
        # ContainerProperties.ulimits and .privileged: "This parameter isn't applicable to jobs
        # that are running on Fargate resources and shouldn't be provided"; the LinuxParameters
        # fields of _EC2_ONLY_LINUX: "This parameter isn't applicable to jobs that are running
        # on Fargate resources. Don't provide it for these jobs."; LogConfiguration.logDriver:
        # "Jobs that are running on Fargate resources are restricted to the awslogs and splunk
        # log drivers." The texts are the emulator's, in the style of redun#95's.
        refused = []
        if container.get("ulimits"):
            refused.append("ulimits")
        if container.get("privileged"):
            refused.append("privileged")
        linux = container.get("linuxParameters") or {}
        refused += [f"linuxParameters.{key}" for key in _EC2_ONLY_LINUX if linux.get(key)]
        for key in refused:
            self._refuse("fargate_container_parameters", f"{key} is not applicable for Fargate.")
        driver = (container.get("logConfiguration") or {}).get("logDriver")
        if driver is not None and driver not in ("awslogs", "splunk"):
            self._refuse(
                "fargate_container_parameters",
                f"Log driver {driver} is not supported for Fargate; jobs that are running on "
                "Fargate resources are restricted to the awslogs and splunk log drivers.",
            )

    def environment(self, environment: Iterable[Params]) -> None:
        # ContainerProperties.environment, ContainerOverrides.environment: "Environment
        # variables cannot start with "AWS_BATCH". This naming convention is reserved for
        # variables that Batch sets." The text is the emulator's.
        for pair in environment:
            name = pair.get("name") or ""
            if name.startswith("AWS_BATCH"):
                self._refuse(
                    "environment_reserved_prefix",
                    f"Environment variable {name} uses the reserved prefix AWS_BATCH: Batch "
                    "sets the variables of that prefix itself",
                )

    def retry_and_timeout(self, params: Params) -> None:
        """retryStrategy and timeout of a RegisterJobDefinition or SubmitJob request."""
        strategy = params.get("retryStrategy") or {}
        attempts = strategy.get("attempts")
        # RetryStrategy.attempts: "You can specify between 1 and 10 attempts."
        self._within("retry_attempts", attempts, "retryStrategy.attempts", 1, 10)
        conditions = strategy.get("evaluateOnExit")
        if conditions is not None:
            self._evaluate_on_exit(conditions, attempts)
        seconds = (params.get("timeout") or {}).get("attemptDurationSeconds")
        # JobTimeout.attemptDurationSeconds: "The minimum value for the timeout is 60 seconds."
        # The text is the emulator's, in the words of model validation. Lenient, the emulator
        # still needs a positive number of seconds to count down.
        path = "timeout.attemptDurationSeconds"
        if self.enforced("timeout_minimum"):
            self._within("timeout_minimum", seconds, path, 60)
        elif seconds is not None and seconds < 1:
            raise _bound(seconds, path, "Member must have value greater than or equal to 1")

    def _evaluate_on_exit(self, conditions: list[Params], attempts: int | None) -> None:
        if not self.enforced("evaluate_on_exit"):
            return
        # RetryStrategy.evaluateOnExit: "Array of up to 5 objects"; "If this parameter is
        # specified, then the attempts parameter must also be specified."
        if len(conditions) > 5:
            raise _bound(
                conditions,
                "retryStrategy.evaluateOnExit",
                "Member must have length less than or equal to 5",
            )
        if attempts is None:
            raise ApiError(
                "ClientException",
                "retryStrategy.attempts must be specified when evaluateOnExit is specified",
            )
        # EvaluateOnExit.onExitCode: "It can contain only numbers, and can end with an asterisk
        # (*)"; .onStatusReason and .onReason: "It can contain letters, numbers, periods (.),
        # colons (:), and white space (including spaces and tabs). It can optionally end with
        # an asterisk (*)"; each: "The pattern can contain up to 512 characters." The texts
        # are the emulator's.
        for index, condition in enumerate(conditions, start=1):
            for key, pattern in (
                ("onExitCode", _EXIT_CODE_PATTERN),
                ("onStatusReason", _REASON_PATTERN),
                ("onReason", _REASON_PATTERN),
            ):
                value = condition.get(key)
                if value is None:
                    continue
                path = f"retryStrategy.evaluateOnExit.{index}.member.{key}"
                if len(value) > 512:
                    raise _bound(value, path, "Member must have length less than or equal to 512")
                if not pattern.fullmatch(value):
                    raise ApiError(
                        "ClientException",
                        f"{key} {value!r} is not a valid pattern: "
                        + (
                            "only digits, optionally ending with *"
                            if key == "onExitCode"
                            else "only letters, numbers, periods, colons and white space, "
                            "optionally ending with *"
                        ),
                    )

    def scheduling_priority(self, member: str, priority: int | None) -> None:
        # RegisterJobDefinitionRequest.schedulingPriority, SubmitJobRequest.
        # schedulingPriorityOverride: "The minimum supported value is 0 and the maximum
        # supported value is 9999."
        self._within("scheduling_priority", priority, member, 0, 9999)

    # -- job submission ---------------------------------------------------------------------

    def share_identifier(self, identifier: str | None, fair_share: bool) -> None:
        # SubmitJobRequest.shareIdentifier: "Don't specify this parameter if the job queue
        # doesn't have a fair-share scheduling policy. If the job queue has a fair-share
        # scheduling policy, then this parameter must be specified. This string is limited to
        # 255 alphanumeric characters, and can be followed by an asterisk (*)." AWS's text
        # when it is missing: boto/boto3#3158; the others are the emulator's.
        if identifier is None:
            if fair_share:
                self._refuse("share_identifier", "shareIdentifier must be specified.")
            return
        if not fair_share:
            self._refuse(
                "share_identifier",
                "shareIdentifier can't be specified: the job queue has no fair-share "
                "scheduling policy",
            )
        elif not _SHARE_IDENTIFIER.fullmatch(identifier):
            self._refuse(
                "share_identifier",
                f"shareIdentifier {identifier!r} is not valid: up to 255 letters and digits, "
                "optionally followed by *",
            )

    def array_size(self, size: int | None, multinode: bool) -> None:
        # SubmitJobRequest.arrayProperties: "The array size can be between 2 and 10,000." (the
        # Batch user guide's array jobs page: "between 2 and 10,000").
        self._within("array_size", size, "arrayProperties.size", 2, 10_000)
        # A multi-node parallel job is "submitted as a single job" whose nodes are addressed
        # as <id>#N (Batch user guide, multi-node parallel jobs); it cannot be an array job.
        # AWS answers "Multinode Array Job not supported": its text as given to this project,
        # not found in a public report.
        if size is not None and multinode:
            self._refuse("multinode_array", "Multinode Array Job not supported")

    def depends_on(self, depends_on: list[Params], array: bool) -> None:
        # SubmitJobRequest.dependsOn: "A job can depend upon a maximum of 20 jobs. You can
        # specify a SEQUENTIAL type dependency without specifying a job ID for array jobs".
        # The texts are the emulator's (the first is the documentation's sentence).
        if len(depends_on) > 20:
            self._refuse("depends_on", "A job can depend upon a maximum of 20 jobs")
        for dependency in depends_on:
            if dependency.get("jobId") is None and (
                dependency.get("type") != "SEQUENTIAL" or not array
            ):
                self._refuse(
                    "depends_on", "dependsOn needs a jobId, except SEQUENTIAL for array jobs"
                )

    def overrides(self, params: Params, definition_kind: str, platforms: list[str]) -> None:
        """The rules of SubmitJob's overrides against the definition's kind ("container",
        "multinode" or "eks") and platform."""
        container, nodes = params.get("containerOverrides"), params.get("nodeOverrides")
        eks = params.get("eksPropertiesOverride")
        # AWS's answer to containerOverrides or nodeOverrides for a job of an EKS definition:
        # nextflow-io/nextflow#5817. SubmitJobRequest.eksPropertiesOverride: "can only be
        # specified for jobs that are run on Amazon EKS resources"; that text is the emulator's.
        if (container is not None or nodes is not None) and (
            definition_kind == "eks" or eks is not None
        ):
            self._refuse(
                "eks_overrides",
                "Container overrides or node overrides should not be set for Batch on EKS jobs.",
            )
        if eks is not None and definition_kind != "eks":
            self._refuse(
                "eks_overrides",
                "eksPropertiesOverride can only be specified for jobs that are run on Amazon "
                "EKS resources",
            )
        # SubmitJob's containerOverrides and nodeOverrides are mutually exclusive (the API
        # reference, as apache/airflow#25522 quotes it). The text is the emulator's.
        if container is not None and nodes is not None:
            self._refuse(
                "overrides_exclusive",
                "containerOverrides and nodeOverrides are mutually exclusive; give one",
            )
        # SubmitJobRequest.nodeOverrides: "This parameter isn't applicable to jobs that are
        # running on Fargate resources; use containerOverrides instead." The text is the
        # emulator's.
        if nodes is not None and "FARGATE" in platforms:
            self._refuse(
                "fargate_multinode",
                "nodeOverrides is not applicable for Fargate. Use containerOverrides instead.",
            )
        # ContainerOverrides.command: "This parameter can't contain an empty string." AWS's
        # text: boto/boto3#3612.
        if container is not None and "" in (container.get("command") or []):
            self._refuse("command_empty_string", "Command cannot be empty")

    # -- compute environments and queues ----------------------------------------------------

    def compute_environment(self, params: Params) -> None:
        """Every rule of a CreateComputeEnvironment request."""
        self.resource_name("Compute environment", params["computeEnvironmentName"])
        self.tags(params.get("tags"))
        kind, resources = params["type"], params.get("computeResources")
        # CreateComputeEnvironmentRequest.serviceRole: "For UNMANAGED compute environments, you
        # must explicitly specify a serviceRole." The text is the emulator's.
        if kind == "UNMANAGED" and not params.get("serviceRole"):
            self._refuse(
                "service_role",
                "serviceRole must be specified for an UNMANAGED compute environment",
            )
        if kind != "MANAGED":
            return
        # CreateComputeEnvironmentRequest.computeResources: "This parameter is required for
        # managed compute environments." ComputeResource.subnets: "required for compute
        # environments using EC2, SPOT, FARGATE, or FARGATE_SPOT compute resources";
        # "Fargate compute resources can contain up to 16 subnets". .securityGroupIds: "One or
        # more security groups must be specified, either in securityGroupIds or using a launch
        # template"; "required for jobs that are running on Fargate resources and must contain
        # at least one security group. Fargate doesn't support launch templates."
        # .instanceRole: "required for Amazon EC2 instances types". The fields of
        # _EC2_ONLY_COMPUTE: "Don't specify it" on Fargate. The texts are the emulator's.
        if resources is None:
            self._refuse(
                "compute_resources",
                "computeResources must be specified for a MANAGED compute environment",
            )
            return
        resource_type = resources["type"]
        if resource_type in ("EC2", "SPOT", "FARGATE", "FARGATE_SPOT") and (
            resources.get("subnets") is None
        ):
            self._refuse("compute_resources", f"subnets must be specified for {resource_type}")
        if resource_type in FARGATE:
            if not resources.get("securityGroupIds"):
                self._refuse(
                    "compute_resources",
                    "securityGroupIds must contain at least one security group for "
                    + resource_type,
                )
            if len(resources.get("subnets") or []) > 16:
                self._refuse(
                    "compute_resources", f"{resource_type} compute resources take up to 16 subnets"
                )
            for key in _EC2_ONLY_COMPUTE:
                if resources.get(key) is not None:
                    self._refuse(
                        "compute_resources",
                        f"computeResources.{key} is not applicable for {resource_type}",
                    )
        elif resource_type in ("EC2", "SPOT"):
            if not resources.get("securityGroupIds") and not resources.get("launchTemplate"):
                self._refuse(
                    "compute_resources",
                    "One or more security groups must be specified, either in securityGroupIds "
                    "or using a launch template",
                )
            if not resources.get("instanceRole"):
                self._refuse(
                    "compute_resources", f"instanceRole must be specified for {resource_type}"
                )

    def compute_resources_update(self, resource_type: str, update: Params) -> None:
        """The rules of an UpdateComputeEnvironment's computeResources, for an environment of
        compute resources `resource_type`."""
        # ComputeResourceUpdate: the fields of _EC2_ONLY_COMPUTE each say "This parameter isn't
        # applicable to jobs that are running on Fargate resources. Don't specify it", as
        # ComputeResource's do. The text is the emulator's.
        if resource_type in FARGATE:
            for key in _EC2_ONLY_COMPUTE:
                if update.get(key) is not None:
                    self._refuse(
                        "compute_resources",
                        f"computeResources.{key} is not applicable for {resource_type}",
                    )

    def queue_order(self, platforms: list[str]) -> None:
        """The rules of a job queue's computeEnvironmentOrder, given each environment's
        platform."""
        # CreateJobQueueRequest.computeEnvironmentOrder: "You can associate up to three
        # compute environments with a job queue. All of the compute environments must be
        # either EC2 (EC2 or SPOT) or Fargate (FARGATE or FARGATE_SPOT); EC2 and Fargate
        # compute environments can't be mixed." The texts are the emulator's.
        if not platforms:
            self._refuse(
                "queue_compute_environments",
                "computeEnvironmentOrder must name at least one compute environment",
            )
        if len(platforms) > 3:
            self._refuse(
                "queue_compute_environments",
                "A job queue can have up to three compute environments",
            )
        if len(set(platforms)) > 1:
            self._refuse(
                "queue_compute_environments",
                "All of the compute environments of a job queue must be either EC2 (EC2 or "
                "SPOT) or Fargate (FARGATE or FARGATE_SPOT); they can't be mixed",
            )
