"""The emulated AWS Batch: its resources, the job state machine and the capacity scheduler.

Sans-I/O: API calls and runner events come in as method calls, decisions go out as return
values ("start these jobs") and flags (`Job.kill_reason`, `Job.host_reason`); `on_change`
tells the runner to look.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import botocore.model

from batchcrew.testing._rules import Rules, platform_of, requirement
from batchcrew.testing._wire import ACCOUNT_ID, ApiError, Params, service_model

STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
_DONE = frozenset({"SUCCEEDED", "FAILED"})
_NOT_STARTED = frozenset({"SUBMITTED", "PENDING", "RUNNABLE"})

#: The statusReason AWS gives a job whose container exited by itself, with any exit code.
EXITED = "Essential container in task exited"
TIMED_OUT = "Job attempt duration exceeded timeout"
OUT_OF_MEMORY = "OutOfMemoryError: Container killed due to memory usage"
FAILED_TO_START = "Task failed to start"
DEPENDENCY_FAILED = "Dependent Job failed"
ARRAY_CHILD_FAILED = "Array Child Job failed"
#: The statusReason of an attempt whose EC2 host went away, a Spot instance reclaimed among
#: them, as users report it ("StatusReason": "Host EC2 (instance i-08784105ffff56b4f)
#: terminated.", ministryofjustice/modernisation-platform-environments#17291) and as AWS's
#: retry examples match it (`"onStatusReason": "Host EC2*"`, "Introducing retry strategies
#: for AWS Batch", AWS Compute Blog). Such an attempt has no exit code.
HOST_TERMINATED = "Host EC2 (instance {instance_id}) terminated."

# Why a RUNNABLE job is not placed, as DescribeJobs and ListJobs give it in statusReason: the
# AWS Batch user guide, "Jobs stuck in a RUNNABLE status" (job_stuck_in_runnable), which
# lists "the messages returned from the ListJobs and DescribeJobs API actions"; the model's
# JobDetail.statusReason names the same codes. A job merely waiting its turn, behind running
# jobs, has none ("Status Reason it shows '-'", aws/containers-roadmap#2231).
#: "All connected compute environments have insufficient capacity errors": EC2 has no
#: instance to give a MANAGED compute environment that may still grow (here: the emulator's
#: capacity, `vcpus` and `memory_mib`, is taken while maxvCpus leaves room).
INSUFFICIENT_CAPACITY = (
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested "
    "for instance type {instance_type}"
)
#: "All compute environments have a maxvCpus parameter that is smaller than the job
#: requirements."
MAX_RESOURCE = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - CE(s) associated with the job queue "
    "cannot meet the CPU requirement of the job."
)
#: "None of the compute environments have instances that meet the job requirements" (here:
#: the job needs more vCPUs or memory than the emulator's whole capacity).
JOB_RESOURCE_REQUIREMENT = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement "
    "(vCPU/memory/GPU) is higher than that can be met by the CE(s) attached to the job queue."
)
#: "All compute environments are invalid."
ENVIRONMENTS_INVALID = "ACTION_REQUIRED - CE(s) associated with the job queue are invalid."
#: The guide lists no reason for compute environments that are DISABLED, where "the Batch
#: scheduler doesn't attempt to place jobs" (UpdateComputeEnvironmentRequest.state). This text
#: is the emulator's, in the guide's form: the user must act, as for invalid ones.
ENVIRONMENTS_DISABLED = "ACTION_REQUIRED - CE(s) associated with the job queue are disabled."
#: The statusReason DescribeComputeEnvironments gives an environment made INVALID without a
#: reason, as a user reported it (aws-samples/aws-batch-genomics#9: "Status INVALID
#: CLIENT_ERROR - Clusters can not be blank.").
INVALID_ENVIRONMENT = "CLIENT_ERROR - Clusters can not be blank."
HEALTHY_ENVIRONMENT = "ComputeEnvironment Healthy"

# An image that cannot be pulled fails the attempt in STARTING, its command never run, with
# statusReason "Task failed to start" and the error in container.reason, as users report it on
# EC2 ("Status reason: Task failed to start / Container message: CannotPullContainerError:
# Error response from daemon: pull access denied for myprivate/testbatch, repository does not
# exist or may require 'docker login'", awslabs/aws-batch-helpers#4; "Task failed to start -
# CannotPullContainerError: ...", nextflow-io/nextflow#5099). Fargate pulls with containerd,
# not Docker's daemon ("CannotPullContainerError: failed to resolve ref
# \"docker.io/library/chatalicious_braid:latest\": pull access denied, repository does not exist
# or may require authorization: server message: insufficient_scope: authorization failed",
# docker-archive/compose-cli#853), and fetches an ECR image's registry auth first, which fails
# as "ResourceInitializationError: unable to pull secrets or registry auth: execution resource
# retrieval failed: unable to retrieve ecr registry auth: service call has been retried 3
# time(s): RequestError: send request failed caused by: Post \"https://api.ecr...\": dial tcp
# ...: i/o timeout. Please check your task network configuration."
# (doctorray117/minecraft-ondemand#74, globaldothealth/list#2662).
PULL_DENIED_EC2 = (
    "CannotPullContainerError: Error response from daemon: pull access denied for "
    "{repository}, repository does not exist or may require 'docker login'"
)
PULL_DENIED_FARGATE = (
    'CannotPullContainerError: failed to resolve ref "{reference}": pull access denied, '
    "repository does not exist or may require authorization: server message: "
    "insufficient_scope: authorization failed"
)
ECR_AUTH_FAILED_FARGATE = (
    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource "
    "retrieval failed: unable to retrieve ecr registry auth: service call has been retried 3 "
    'time(s): RequestError: send request failed caused by: Post "https://api.ecr.{region}.'
    'amazonaws.com/": dial tcp 203.0.113.10:443: i/o timeout. Please check your task network '
    "configuration."
)
_ECR_IMAGE = re.compile(r"^[0-9]{12}\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/")

_ARN = re.compile(r"^arn:aws[a-z-]*:batch:[^:]*:[0-9]*:(?P<kind>[a-z-]+)/(?P<rest>.+)$")
_PAGE_DEFAULT = 100


def _client(message: str) -> ApiError:
    return ApiError("ClientException", message)


def _arn(region: str, kind: str, rest: str) -> str:
    return f"arn:aws:batch:{region}:{ACCOUNT_ID}:{kind}/{rest}"


@dataclass
class ComputeEnvironment:
    name: str
    arn: str
    type: str
    state: str
    compute_resources: Params | None
    service_role: str | None
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "VALID"
    status_reason: str = HEALTHY_ENVIRONMENT
    vcpus_used: float = 0.0  # by the attempts placed here that have not ended

    @property
    def max_vcpus(self) -> float | None:
        """The vCPUs its jobs may use at once: a MANAGED environment's maxvCpus ("The maximum
        number of vCPUs that a compute environment can support", ComputeResource.maxvCpus);
        None (no cap of its own) for an UNMANAGED one."""
        if self.type != "MANAGED" or not self.compute_resources:
            return None
        value = self.compute_resources.get("maxvCpus")
        return None if value is None else float(value)

    def has_room(self, vcpus: float) -> bool:
        cap = self.max_vcpus
        return cap is None or self.vcpus_used + vcpus <= cap + 1e-9

    @property
    def instance_type(self) -> str | None:
        """The instance type a MANAGED EC2 (or SPOT) environment launches, named in a capacity
        reason; None for UNMANAGED and Fargate ones, which launch none."""
        resources = self.compute_resources or {}
        if self.type != "MANAGED" or resources.get("type") not in ("EC2", "SPOT"):
            return None
        kinds = [str(kind) for kind in resources.get("instanceTypes") or []]
        for kind in kinds:
            if "." in kind:  # a size (c5.8xlarge), not a family (c5) or optimal
                return kind
        # A family stands for its sizes; optimal and default_x86_64 choose "from the m6i, c6i,
        # r6i, and c7i instance families" (ComputeResource.instanceTypes).
        families = [k for k in kinds if k not in ("optimal", "default_x86_64", "default_arm64")]
        return f"{families[0] if families else 'm6i'}.large"

    @property
    def platform(self) -> str:
        """What its jobs run on: "EC2" or "FARGATE" (or "MANAGED_INSTANCES")."""
        return platform_of(self.type, self.compute_resources)

    def describe(self, tags: dict[str, str]) -> Params:
        return {
            "computeEnvironmentName": self.name,
            "computeEnvironmentArn": self.arn,
            "ecsClusterArn": self.arn.replace(":batch:", ":ecs:").replace(
                f"compute-environment/{self.name}", f"cluster/{self.name}_Batch_{self.uuid}"
            ),
            "tags": tags,
            "type": self.type,
            "state": self.state,
            "status": self.status,
            "statusReason": self.status_reason,
            "computeResources": self.compute_resources,
            "serviceRole": self.service_role,
            "containerOrchestrationType": "ECS",
            "uuid": self.uuid,
        }


@dataclass
class JobQueue:
    name: str
    arn: str
    state: str
    priority: int
    compute_environment_order: list[Params]
    scheduling_policy_arn: str | None = None

    def describe(self, tags: dict[str, str]) -> Params:
        return {
            "jobQueueName": self.name,
            "jobQueueArn": self.arn,
            "state": self.state,
            "schedulingPolicyArn": self.scheduling_policy_arn,
            "status": "VALID",
            "statusReason": "JobQueue Healthy",
            "priority": self.priority,
            "computeEnvironmentOrder": self.compute_environment_order,
            "tags": tags,
            "jobStateTimeLimitActions": [],
        }


@dataclass
class JobDefinition:
    """A revision of a job definition: a container one (`container_properties`), a multi-node
    one (`node_properties`) or an EKS one (`eks_properties`). Only container ones run."""

    name: str
    revision: int
    arn: str
    type: str
    parameters: dict[str, str]
    container_properties: Params | None
    retry_strategy: Params | None
    timeout: Params | None
    propagate_tags: bool | None
    platform_capabilities: list[str] | None
    scheduling_priority: int | None
    node_properties: Params | None = None
    eks_properties: Params | None = None
    status: str = "ACTIVE"

    @property
    def kind(self) -> str:
        """ "container", "multinode" or "eks"."""
        if self.eks_properties is not None:
            return "eks"
        return "multinode" if self.type == "multinode" else "container"

    @property
    def platform(self) -> str:
        """The platform its jobs run on: "EC2" (the default) or "FARGATE"."""
        platforms = self.platform_capabilities or ["EC2"]
        return "FARGATE" if "FARGATE" in platforms else platforms[0]

    def describe(self, tags: dict[str, str]) -> Params:
        return {
            "jobDefinitionName": self.name,
            "jobDefinitionArn": self.arn,
            "revision": self.revision,
            "status": self.status,
            "type": self.type,
            "schedulingPriority": self.scheduling_priority,
            "parameters": self.parameters,
            "retryStrategy": self.retry_strategy,
            "containerProperties": self.container_properties,
            "nodeProperties": self.node_properties,
            "eksProperties": self.eks_properties,
            "timeout": self.timeout,
            "tags": tags,
            "propagateTags": self.propagate_tags,
            "platformCapabilities": self.platform_capabilities,
            "containerOrchestrationType": "EKS" if self.kind == "eks" else "ECS",
        }


@dataclass
class Job:
    """One job: a plain job, an array parent, or an array child (`parent` set)."""

    job_id: str
    arn: str
    name: str
    queue: JobQueue
    definition: JobDefinition
    region: str
    sequence: int
    created_at: int
    parameters: dict[str, str]
    container: Params  # the job's container properties after overrides (no runtime fields)
    command: list[str]  # after Ref:: substitution
    vcpus: float
    memory_mib: int | None
    timeout: Params | None
    retry_strategy: Params | None
    depends_on: list[Params]
    tags: dict[str, str]
    propagate_tags: bool
    share_identifier: str | None = None
    scheduling_priority: int | None = None
    status: str = "SUBMITTED"
    status_reason: str | None = None
    started_at: int | None = None
    stopped_at: int | None = None
    attempts: list[Params] = field(default_factory=list)
    # runtime of the current attempt
    exit_code: int | None = None
    container_reason: str | None = None
    log_stream_name: str | None = None
    task_arn: str | None = None
    compute_environment: ComputeEnvironment | None = None  # where the current attempt runs
    # array jobs
    array_size: int | None = None
    array_index: int | None = None
    parent: Job | None = None
    children: list[Job] = field(default_factory=list)
    status_summary_updated_at: int | None = None
    # waits: ids of jobs this one waits for (array-aware dependencies already expanded)
    waits_for: list[str] = field(default_factory=list)
    is_cancelled: bool = False
    is_terminated: bool = False
    kill_reason: str | None = None  # TerminateJob asked to stop the running attempt
    host_reason: str | None = None  # the attempt's host went away (LocalBatch.reclaim)
    waiting_reason: str | None = None  # why the scheduler cannot place it, while RUNNABLE

    @property
    def shown_reason(self) -> str | None:
        """The statusReason DescribeJobs and ListJobs give: while RUNNABLE, why the job cannot
        be placed, if something stops it (else the reason of its last attempt, if any)."""
        if self.status == "RUNNABLE" and self.waiting_reason is not None:
            return self.waiting_reason
        return self.status_reason

    @property
    def image(self) -> str:
        return str(self.container.get("image", ""))

    @property
    def attempt_number(self) -> int:
        """1-based number of the attempt that runs (or ran) now."""
        return len(self.attempts) + (0 if self.status in _DONE else 1)

    @property
    def attempts_allowed(self) -> int:
        return int((self.retry_strategy or {}).get("attempts", 1))

    @property
    def timeout_seconds(self) -> int | None:
        return (self.timeout or {}).get("attemptDurationSeconds")

    @property
    def platform(self) -> str:
        return self.definition.platform

    def status_summary(self) -> dict[str, int]:
        summary = dict.fromkeys(STATUSES, 0)
        for child in self.children:
            summary[child.status] += 1
        return summary


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, reported by the runner."""

    exit_code: int | None
    status_reason: str
    container_reason: str | None = None


def _merge_environment(*layers: Iterable[Params]) -> list[Params]:
    """Name/value pairs, later layers overriding earlier ones, first-seen order kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        for pair in layer:
            merged[pair["name"]] = pair.get("value", "")
    return [{"name": name, "value": value} for name, value in merged.items()]


def _merge_requirements(base: Iterable[Params], override: Iterable[Params]) -> list[Params]:
    merged = {req["type"]: req for req in base}
    merged.update({req["type"]: req for req in override})
    return list(merged.values())


def substitute(command: Iterable[str], parameters: dict[str, str]) -> list[str]:
    """The command with each `Ref::name` argument replaced by parameter `name` (whole
    arguments only, as Batch does; a reference to an unknown parameter stays as it is)."""
    return [parameters.get(arg[5:], arg) if arg.startswith("Ref::") else arg for arg in command]


class BatchState:
    """Every Batch resource of the emulator and the decisions about its jobs."""

    def __init__(
        self,
        *,
        vcpus: float,
        memory_mib: int,
        clock: Callable[[], int],
        on_change: Callable[[], None] = lambda: None,
        lenient: Collection[str] = (),
    ) -> None:
        self.rules = Rules(lenient)
        self.vcpus = vcpus
        self.memory_mib = memory_mib
        self._clock = clock
        self.on_change = on_change
        self.compute_environments: dict[str, ComputeEnvironment] = {}
        self.queues: dict[str, JobQueue] = {}
        self.definitions: dict[str, list[JobDefinition]] = {}
        self.jobs: dict[str, Job] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self._sequence = 0
        self.vcpus_used = 0.0
        self.memory_used = 0
        #: Images whose pulls fail, by normalized reference: the container reason to give, or
        #: None for AWS's text on the job's platform.
        self.failing_pulls: dict[str, str | None] = {}

    # -- lookups ----------------------------------------------------------------------------

    def _parse_arn(self, value: str, kind: str) -> str | None:
        match = _ARN.match(value)
        if match and match["kind"] == kind:
            return match["rest"]
        return None

    def _compute_environment(self, name_or_arn: str) -> ComputeEnvironment:
        name = self._parse_arn(name_or_arn, "compute-environment") or name_or_arn
        environment = self.compute_environments.get(name)
        if environment is None or (
            name_or_arn.startswith("arn:") and environment.arn != name_or_arn
        ):
            raise _client(f"ComputeEnvironment {name_or_arn} does not exist")
        return environment

    def _queue(self, name_or_arn: str) -> JobQueue:
        name = self._parse_arn(name_or_arn, "job-queue") or name_or_arn
        queue = self.queues.get(name)
        if queue is None or (name_or_arn.startswith("arn:") and queue.arn != name_or_arn):
            raise _client(f"JobQueue {name_or_arn} not found.")
        return queue

    def _definition(self, reference: str, *, active_only: bool) -> JobDefinition:
        """The definition `reference` names: name (latest active), name:revision, or ARN."""
        name = self._parse_arn(reference, "job-definition") or reference
        base, _, revision = name.partition(":")
        revisions = self.definitions.get(base, [])
        found: JobDefinition | None = None
        if revision:
            if revision.isdigit() and 0 < int(revision) <= len(revisions):
                found = revisions[int(revision) - 1]
        else:
            active = [d for d in revisions if d.status == "ACTIVE"]
            found = active[-1] if active else None
        if found is None or (reference.startswith("arn:") and found.arn != reference):
            raise _client(f"Job definition {reference} does not exist.")
        if active_only and found.status != "ACTIVE":
            raise _client(f"Job definition {reference} is INACTIVE; register a new revision.")
        return found

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise _client(f"Job {job_id} not found.")
        return job

    def _resource_arn_known(self, arn: str) -> bool:
        kind_rest = _ARN.match(arn)
        if not kind_rest:
            return False
        kind, rest = kind_rest["kind"], kind_rest["rest"]
        if kind == "job":
            return rest in self.jobs and self.jobs[rest].arn == arn
        if kind == "job-queue":
            return rest in self.queues and self.queues[rest].arn == arn
        if kind == "compute-environment":
            env = self.compute_environments.get(rest)
            return env is not None and env.arn == arn
        if kind == "job-definition":
            try:
                self._definition(arn, active_only=False)
            except ApiError:
                return False
            return True
        return False

    # -- compute environments and queues ----------------------------------------------------

    def create_compute_environment(self, params: Params, region: str) -> Params:
        name = params["computeEnvironmentName"]
        self.rules.compute_environment(params)
        if name in self.compute_environments:
            raise _client(f"Object already exists: compute environment {name}")
        environment = ComputeEnvironment(
            name=name,
            arn=_arn(region, "compute-environment", name),
            type=params["type"],
            state=params.get("state", "ENABLED"),
            compute_resources=params.get("computeResources"),
            service_role=params.get("serviceRole"),
        )
        self.compute_environments[name] = environment
        self.tags[environment.arn] = dict(params.get("tags", {}))
        return {"computeEnvironmentName": name, "computeEnvironmentArn": environment.arn}

    def describe_compute_environments(self, params: Params, region: str) -> Params:
        wanted = params.get("computeEnvironments")
        if wanted:
            environments = []
            for ref in wanted:
                try:
                    environments.append(self._compute_environment(ref))
                except ApiError:
                    continue  # AWS leaves out names it does not know
        else:
            environments = list(self.compute_environments.values())
        described = [env.describe(self.tags.get(env.arn, {})) for env in environments]
        page, token = _page(described, params, "computeEnvironments")
        return {"computeEnvironments": page, "nextToken": token}

    def update_compute_environment(self, params: Params, region: str) -> Params:
        """Change the state and the compute resources given (maxvCpus among them), keeping the
        rest: ComputeResourceUpdate's members each say what changes when given. Waiting jobs
        move on at once if the change leaves them room."""
        environment = self._compute_environment(params["computeEnvironment"])
        update = params.get("computeResources")
        if update is not None:
            if environment.type != "MANAGED" or environment.compute_resources is None:
                raise _client(
                    f"Compute environment {environment.name} is {environment.type}: only a "
                    "MANAGED compute environment has computeResources to update (an UNMANAGED "
                    "one takes unmanagedvCpus)"
                )
            self.rules.compute_resources_update(environment.compute_resources["type"], update)
            environment.compute_resources = {**environment.compute_resources, **update}
        environment.state = params.get("state", environment.state)
        self.on_change()
        return {
            "computeEnvironmentName": environment.name,
            "computeEnvironmentArn": environment.arn,
        }

    def set_compute_environment_status(
        self, name_or_arn: str, status: str | None, reason: str | None
    ) -> None:
        """Make an environment VALID or INVALID, as AWS does when it finds it healthy or broken
        (its role, its network, its ECS cluster), and give the reason DescribeComputeEnvironments
        shows (by default, one that fits the status). An INVALID one places no job."""
        environment = self._compute_environment(name_or_arn)
        if status is not None:
            environment.status = status
            if reason is None:
                reason = INVALID_ENVIRONMENT if status == "INVALID" else HEALTHY_ENVIRONMENT
        if reason is not None:
            environment.status_reason = reason
        self.on_change()

    def delete_compute_environment(self, params: Params, region: str) -> Params:
        environment = self._compute_environment(params["computeEnvironment"])
        if environment.state != "DISABLED":
            raise _client("Cannot delete, found existing JobQueue relationship or ENABLED state")
        del self.compute_environments[environment.name]
        self.tags.pop(environment.arn, None)
        return {}

    def create_job_queue(self, params: Params, region: str) -> Params:
        name = params["jobQueueName"]
        self.rules.resource_name("Job queue", name)
        self.rules.tags(params.get("tags"))
        if name in self.queues:
            raise _client(f"Object already exists: job queue {name}")
        order = self._order(params.get("computeEnvironmentOrder", []))
        queue = JobQueue(
            name=name,
            arn=_arn(region, "job-queue", name),
            state=params.get("state", "ENABLED"),
            priority=params["priority"],
            compute_environment_order=order,
            scheduling_policy_arn=params.get("schedulingPolicyArn"),
        )
        self.queues[name] = queue
        self.tags[queue.arn] = dict(params.get("tags", {}))
        return {"jobQueueName": name, "jobQueueArn": queue.arn}

    def describe_job_queues(self, params: Params, region: str) -> Params:
        wanted = params.get("jobQueues")
        if wanted:
            queues = []
            for ref in wanted:
                try:
                    queues.append(self._queue(ref))
                except ApiError:
                    continue  # AWS leaves out names it does not know
        else:
            queues = list(self.queues.values())
        described = [queue.describe(self.tags.get(queue.arn, {})) for queue in queues]
        page, token = _page(described, params, "jobQueues")
        return {"jobQueues": page, "nextToken": token}

    def _order(self, entries: list[Params]) -> list[Params]:
        """A queue's computeEnvironmentOrder, each environment named by its ARN."""
        environments = [self._compute_environment(e["computeEnvironment"]) for e in entries]
        self.rules.queue_order([environment.platform for environment in environments])
        if not environments:  # lenient: the emulator needs somewhere to run
            raise _client("computeEnvironmentOrder must name at least one compute environment")
        return [
            {"order": entry["order"], "computeEnvironment": environment.arn}
            for entry, environment in zip(entries, environments, strict=True)
        ]

    def update_job_queue(self, params: Params, region: str) -> Params:
        queue = self._queue(params["jobQueue"])
        if "computeEnvironmentOrder" in params:
            queue.compute_environment_order = self._order(params["computeEnvironmentOrder"])
        queue.state = params.get("state", queue.state)
        queue.priority = params.get("priority", queue.priority)
        self.on_change()
        return {"jobQueueName": queue.name, "jobQueueArn": queue.arn}

    def delete_job_queue(self, params: Params, region: str) -> Params:
        queue = self._queue(params["jobQueue"])
        if queue.state != "DISABLED":
            raise _client(f"JobQueue {queue.name} must be DISABLED before it is deleted")
        del self.queues[queue.name]
        self.tags.pop(queue.arn, None)
        return {}

    # -- job definitions --------------------------------------------------------------------

    def register_job_definition(self, params: Params, region: str) -> Params:
        self.rules.job_definition(params)
        if params.get("ecsProperties") is not None:
            raise _client(
                "LocalBatch does not emulate ecsProperties job definitions: give "
                "containerProperties (or eksProperties or nodeProperties, which it stores but "
                "does not run)"
            )
        name = params["jobDefinitionName"]
        eks = params.get("eksProperties")
        container = params.get("containerProperties")
        platforms = params.get("platformCapabilities")
        if container is not None:
            container = _container_defaults(container, platforms or ["EC2"])
            _resources(container)  # the emulator's own needs, whatever is lenient
        revisions = self.definitions.setdefault(name, [])
        revision = len(revisions) + 1
        definition = JobDefinition(
            name=name,
            revision=revision,
            arn=_arn(region, "job-definition", f"{name}:{revision}"),
            type=params["type"],
            parameters=dict(params.get("parameters", {})),
            container_properties=container,
            retry_strategy=params.get("retryStrategy"),
            timeout=params.get("timeout"),
            # AWS describes an EKS definition without these two, which it must not be given.
            propagate_tags=None if eks is not None else bool(params.get("propagateTags", False)),
            platform_capabilities=None if eks is not None else list(platforms or ["EC2"]),
            scheduling_priority=params.get("schedulingPriority"),
            node_properties=params.get("nodeProperties"),
            eks_properties=eks,
        )
        revisions.append(definition)
        self.tags[definition.arn] = dict(params.get("tags", {}))
        return {"jobDefinitionName": name, "jobDefinitionArn": definition.arn, "revision": revision}

    def describe_job_definitions(self, params: Params, region: str) -> Params:
        references = params.get("jobDefinitions")
        name = params.get("jobDefinitionName")
        status = params.get("status")
        if references and (name or status):
            raise _client("jobDefinitions can't be used with other parameters")
        if references:
            found = []
            for ref in references:
                try:
                    found.append(self._definition(ref, active_only=False))
                except ApiError:
                    continue
        else:
            found = [d for revisions in self.definitions.values() for d in revisions]
            if name is not None:
                found = [d for d in found if d.name == name]
            if status is not None:
                found = [d for d in found if d.status == status]
        described = [d.describe(self.tags.get(d.arn, {})) for d in found]
        page, token = _page(described, params, "jobDefinitions")
        return {"jobDefinitions": page, "nextToken": token}

    def deregister_job_definition(self, params: Params, region: str) -> Params:
        definition = self._definition(params["jobDefinition"], active_only=False)
        definition.status = "INACTIVE"
        return {}

    # -- jobs -------------------------------------------------------------------------------

    def submit_job(self, params: Params, region: str) -> Params:
        rules = self.rules
        name = params["jobName"]
        rules.job_name(name)
        queue = self._queue(params["jobQueue"])
        if queue.state != "ENABLED":
            raise _client(f"JobQueue {queue.name} is not ENABLED; jobs can't be submitted to it.")
        rules.job_definition_reference(params["jobDefinition"])
        definition = self._definition(params["jobDefinition"], active_only=True)
        rules.tags(params.get("tags"))
        rules.share_identifier(
            params.get("shareIdentifier"), queue.scheduling_policy_arn is not None
        )
        rules.scheduling_priority(
            "schedulingPriorityOverride", params.get("schedulingPriorityOverride")
        )
        rules.retry_and_timeout(params)
        size = (params.get("arrayProperties") or {}).get("size")
        rules.array_size(size, definition.kind == "multinode")
        if size is not None and not 2 <= size <= 10_000:  # lenient: what the emulator can run
            raise _client(f"LocalBatch runs array jobs of 2 to 10000 children, not {size}")
        depends_on = list(params.get("dependsOn", []))
        rules.depends_on(depends_on, size is not None)
        for dependency in depends_on:
            if dependency.get("jobId") is not None:
                self._job(dependency["jobId"])
        platforms = definition.platform_capabilities or []
        rules.overrides(params, definition.kind, platforms)
        overrides = params.get("containerOverrides") or {}
        if definition.container_properties is None:
            # Every rule AWS applies has passed: the job would run on AWS, but not here.
            kind = {"eks": "EKS", "multinode": "multi-node parallel"}.get(definition.kind)
            if kind is None:  # a definition without properties, let through by leniency
                raise _client(
                    f"LocalBatch cannot run jobs of job definition {definition.name}: it has "
                    "no containerProperties"
                )
            raise _client(
                f"LocalBatch does not run {kind} jobs: job definition {definition.name} is "
                "registered and described, but its jobs cannot be submitted to this emulator. "
                "Use a container job definition (containerProperties)."
            )
        container = dict(definition.container_properties)
        for legacy in ("vcpus", "memory", "instanceType"):
            if overrides.get(legacy) is not None:
                container[legacy] = overrides[legacy]
        container["environment"] = _merge_environment(
            container.get("environment", []), overrides.get("environment", [])
        )
        container["resourceRequirements"] = _merge_requirements(
            container.get("resourceRequirements", []), overrides.get("resourceRequirements", [])
        )
        rules.container(container, platforms or ["EC2"], registering=False)
        vcpus, memory = _resources(container)
        parameters = {**definition.parameters, **params.get("parameters", {})}
        command = substitute(overrides.get("command") or container.get("command") or [], parameters)
        container["command"] = command
        timeout = params.get("timeout") or definition.timeout
        retry_strategy = params.get("retryStrategy") or definition.retry_strategy
        propagate = params.get("propagateTags", definition.propagate_tags)

        def new_job(job_id: str, index: int | None, parent: Job | None) -> Job:
            self._sequence += 1
            job = Job(
                job_id=job_id,
                arn=_arn(region, "job", job_id),
                name=name,
                queue=queue,
                definition=definition,
                region=region,
                sequence=self._sequence,
                created_at=self._clock(),
                parameters=parameters,
                container=container,
                command=command,
                vcpus=vcpus,
                memory_mib=memory,
                timeout=timeout,
                retry_strategy=retry_strategy,
                depends_on=depends_on if parent is None else [],
                tags=dict(params.get("tags", {})) if parent is None else {},
                propagate_tags=bool(propagate),
                share_identifier=params.get("shareIdentifier"),
                scheduling_priority=params.get(
                    "schedulingPriorityOverride", definition.scheduling_priority
                ),
                array_size=size if parent is None else None,
                array_index=index,
                parent=parent,
            )
            self.jobs[job_id] = job
            return job

        job = new_job(str(uuid.uuid4()), None, None)
        self.tags[job.arn] = job.tags
        plain_waits = [
            d["jobId"] for d in depends_on if d.get("type") != "N_TO_N" and d.get("jobId")
        ]
        job.waits_for = plain_waits
        if size is not None:
            sequential = any(d.get("type") == "SEQUENTIAL" for d in depends_on)
            n_to_n = [d["jobId"] for d in depends_on if d.get("type") == "N_TO_N"]
            for index in range(size):
                child = new_job(f"{job.job_id}:{index}", index, job)
                child.waits_for = list(plain_waits) + [f"{dep}:{index}" for dep in n_to_n]
                if sequential and index > 0:
                    child.waits_for.append(f"{job.job_id}:{index - 1}")
                job.children.append(child)
            job.waits_for = []  # the parent waits through its children
        self.on_change()
        return {"jobArn": job.arn, "jobName": job.name, "jobId": job.job_id}

    def describe_jobs(self, params: Params, region: str) -> Params:
        ids = params["jobs"]
        self.rules.describe_jobs(ids)
        # AWS leaves out IDs it does not know rather than failing the call.
        return {"jobs": [self.describe_job(self.jobs[i]) for i in ids if i in self.jobs]}

    def describe_job(self, job: Job) -> Params:
        """The JobDetail of `job`."""
        container = {
            key: value for key, value in job.container.items() if key in _container_detail_keys()
        }
        container.update(
            exitCode=job.exit_code,
            reason=job.container_reason,
            taskArn=job.task_arn,
            containerInstanceArn=_container_instance(job) if job.task_arn else None,
            logStreamName=job.log_stream_name,
            networkInterfaces=[],
        )
        detail: Params = {
            "jobArn": job.arn,
            "jobName": job.name,
            "jobId": job.job_id,
            "jobQueue": job.queue.arn,
            "status": job.status,
            "shareIdentifier": job.share_identifier,
            "schedulingPriority": job.scheduling_priority,
            "attempts": job.attempts,
            "statusReason": job.shown_reason,
            "createdAt": job.created_at,
            "retryStrategy": job.retry_strategy,
            "startedAt": job.started_at,
            "stoppedAt": job.stopped_at,
            "dependsOn": job.depends_on,
            "jobDefinition": job.definition.arn,
            "parameters": job.parameters,
            "timeout": job.timeout,
            "tags": self.tags.get(job.arn, {}) if job.parent is None else None,
            "propagateTags": job.propagate_tags,
            "platformCapabilities": job.definition.platform_capabilities,
            "isCancelled": job.is_cancelled,
            "isTerminated": job.is_terminated,
        }
        detail["container"] = container
        if job.children:
            detail["arrayProperties"] = {
                "statusSummary": job.status_summary(),
                "statusSummaryLastUpdatedAt": job.status_summary_updated_at,
                "size": job.array_size,
            }
        elif job.array_index is not None:
            detail["arrayProperties"] = {"index": job.array_index}
        return detail

    def list_jobs(self, params: Params, region: str) -> Params:
        queue_ref, array_id = params.get("jobQueue"), params.get("arrayJobId")
        if params.get("multiNodeJobId") is not None:
            raise _client("LocalBatch does not emulate multi-node parallel jobs")
        if (queue_ref is None) == (array_id is None):
            raise _client("Specify exactly one of jobQueue, arrayJobId or multiNodeJobId")
        filters = params.get("filters") or []
        if len(filters) > 1:
            raise _client("Only one filter can be used at a time")
        if array_id is not None:
            parent = self._job(array_id)
            if not parent.children:
                raise _client(f"Job {array_id} is not an array job")
            jobs = list(parent.children)
        else:
            queue = self._queue(queue_ref)  # type: ignore[arg-type]
            jobs = [j for j in self.jobs.values() if j.queue is queue and j.parent is None]
        if filters:
            jobs = [job for job in jobs if _filter_matches(filters[0], job)]
        else:
            # Without a filter, AWS lists only RUNNING jobs unless a status is given.
            status = params.get("jobStatus", "RUNNING").upper()
            jobs = [job for job in jobs if job.status == status]
        if array_id is None:
            jobs.sort(key=lambda j: j.sequence, reverse=True)  # newest first, as AWS sorts
        summaries = [self._summary(job) for job in jobs]
        page, token = _page(summaries, params, "jobs")
        return {"jobSummaryList": page, "nextToken": token}

    def _summary(self, job: Job) -> Params:
        summary: Params = {
            "jobArn": job.arn,
            "jobId": job.job_id,
            "jobName": job.name,
            "createdAt": job.created_at,
            "status": job.status,
            "statusReason": job.shown_reason,
            "startedAt": job.started_at,
            "stoppedAt": job.stopped_at,
            "jobDefinition": job.definition.arn,
            "isCancelled": job.is_cancelled,
            "isTerminated": job.is_terminated,
        }
        if job.children:
            summary["arrayProperties"] = {"size": job.array_size}
        else:
            if job.exit_code is not None or job.container_reason is not None:
                summary["container"] = {"exitCode": job.exit_code, "reason": job.container_reason}
            if job.array_index is not None:
                summary["arrayProperties"] = {"index": job.array_index}
        return summary

    def cancel_job(self, params: Params, region: str) -> Params:
        self.rules.reason(params["reason"])
        self._cancel(self._job(params["jobId"]), params["reason"])
        self.on_change()
        return {}

    def terminate_job(self, params: Params, region: str) -> Params:
        self.rules.reason(params["reason"])
        self._terminate(self._job(params["jobId"]), params["reason"])
        self.on_change()
        return {}

    def cancel_jobs(self, params: Params, region: str) -> Params:
        """CancelJob for up to 50 jobs, each reported on its own."""
        return self._bulk(params, self._cancel)

    def terminate_jobs(self, params: Params, region: str) -> Params:
        """TerminateJob for up to 50 jobs, each reported on its own."""
        return self._bulk(params, self._terminate)

    def _bulk(self, params: Params, end: Callable[[Job, str], None]) -> Params:
        self.rules.bulk_jobs(params["jobs"])
        self.rules.reason(params["reason"])
        successful, errors = [], []
        for job_id in params["jobs"]:
            if self.rules.malformed_job_id(job_id):
                errors.append(
                    {
                        "job": job_id,
                        "code": "ValidationException",
                        "message": f"Job id {job_id} is not valid: a job id is a UUID, followed "
                        "by :N for an array child",
                    }
                )
                continue
            job = self.jobs.get(job_id)
            if job is not None:
                end(job, params["reason"])
            # "Jobs that can't be found are treated as successfully processed." (CancelJobs,
            # TerminateJobs)
            successful.append(job_id)
        self.on_change()
        return {"successful": successful, "errors": errors}

    def _cancel(self, job: Job, reason: str) -> None:
        """Fail the job (an array parent: its children) if it has not started."""
        for target in job.children or [job]:
            if target.status in _NOT_STARTED:
                target.is_cancelled = True
                self._finish(target, "FAILED", reason)

    def _terminate(self, job: Job, reason: str) -> None:
        """Cancel the job (or an array parent's children) if not started, else stop it."""
        for target in job.children or [job]:
            if target.status in _NOT_STARTED:
                target.is_cancelled = True
                self._finish(target, "FAILED", reason)
            elif target.status in ("STARTING", "RUNNING") and target.kill_reason is None:
                target.kill_reason = reason
                target.is_terminated = True

    def reclaim(self, job: Job, instance_id: str) -> None:
        """The EC2 instance the job's attempt runs on goes away (a Spot reclaim): its container
        is stopped and the attempt fails with no exit code; the retry strategy decides what
        follows, since the job was not terminated. Raises ValueError for a job that is not
        STARTING or RUNNING, or that runs on Fargate."""
        if job.children:
            raise ValueError(
                f"Job {job.job_id} is an array job: its children run on hosts, not it; "
                f"reclaim a child's host (id {job.job_id}:N)"
            )
        if job.status not in ("STARTING", "RUNNING"):
            raise ValueError(
                f"Job {job.job_id} is {job.status}: only a STARTING or RUNNING job has a host "
                "to reclaim; wait until it is placed (wait_for_job(id, ['RUNNING']))"
            )
        if job.platform != "EC2":
            raise ValueError(
                f"Job {job.job_id} runs on {job.platform}: reclaim emulates an EC2 Spot "
                "instance reclaimed, and LocalBatch does not emulate Fargate Spot interruptions"
            )
        if job.host_reason is None and job.kill_reason is None:
            job.host_reason = HOST_TERMINATED.format(instance_id=instance_id)
            self.on_change()

    # -- image pulls ------------------------------------------------------------------------

    def fail_pulls(self, image: str, message: str | None) -> None:
        self.failing_pulls[image_reference(image)] = message

    def allow_pulls(self, image: str) -> None:
        self.failing_pulls.pop(image_reference(image), None)

    def pull_error(self, job: Job) -> str | None:
        """The container reason of a pull of the job's image that fails, or None if it
        succeeds."""
        reference = image_reference(job.image)
        if reference not in self.failing_pulls:
            return None
        message = self.failing_pulls[reference]
        if message is not None:
            return message
        if job.platform == "FARGATE":
            ecr = _ECR_IMAGE.match(job.image)
            if ecr:
                return ECR_AUTH_FAILED_FARGATE.format(region=ecr["region"])
            return PULL_DENIED_FARGATE.format(reference=reference)
        return PULL_DENIED_EC2.format(repository=_repository(job.image))

    # -- tags -------------------------------------------------------------------------------

    def _tagged(self, arn: str) -> dict[str, str]:
        if not self._resource_arn_known(arn):
            raise _client(f"Resource {arn} not found.")
        return self.tags.setdefault(arn, {})

    def tag_resource(self, params: Params, region: str) -> Params:
        self.rules.tags(params["tags"])
        self._tagged(params["resourceArn"]).update(params["tags"])
        return {}

    def untag_resource(self, params: Params, region: str) -> Params:
        self.rules.untag(params["tagKeys"])
        tags = self._tagged(params["resourceArn"])
        for key in params["tagKeys"]:
            tags.pop(key, None)
        return {}

    def list_tags_for_resource(self, params: Params, region: str) -> Params:
        return {"tags": dict(self._tagged(params["resourceArn"]))}

    # -- the scheduler ----------------------------------------------------------------------

    def schedule(self) -> list[Job]:
        """Move waiting jobs on: SUBMITTED -> PENDING -> RUNNABLE once their dependencies have
        succeeded (FAILED if one failed), then RUNNABLE -> STARTING while capacity lasts (the
        emulator's, and each compute environment's maxvCpus). A RUNNABLE job left waiting gets
        the reason AWS would show for it, if any (`Job.waiting_reason`).

        Returns the jobs just moved to STARTING, their capacity reserved: start them.
        """
        for job in sorted(self._waiting(), key=lambda j: j.sequence):
            if job.status == "SUBMITTED":
                job.status = "PENDING"
                self._touch_parent(job)
            if job.status == "PENDING" and not job.children:
                states = [
                    self.jobs[dep].status if dep in self.jobs else "FAILED" for dep in job.waits_for
                ]
                if "FAILED" in states:
                    self._finish(job, "FAILED", DEPENDENCY_FAILED)
                elif all(state == "SUCCEEDED" for state in states):
                    job.status = "RUNNABLE"
                    self._touch_parent(job)
        runnable = [j for j in self.jobs.values() if j.status == "RUNNABLE"]
        runnable.sort(key=lambda j: (-j.queue.priority, j.sequence))
        started = []
        environments = {env.arn: env for env in self.compute_environments.values()}
        for job in runnable:
            memory = job.memory_mib or 0
            fits = (
                job.vcpus <= self.vcpus - self.vcpus_used + 1e-9
                and memory <= self.memory_mib - self.memory_used
            )
            environment = self._placement(job, environments)
            job.waiting_reason = None
            if environment is None or not fits:
                job.waiting_reason = self._waiting_reason(job, environments)
            elif job.queue.state == "ENABLED":
                job.compute_environment = environment
                environment.vcpus_used += job.vcpus
                self.vcpus_used += job.vcpus
                self.memory_used += memory
                job.status = "STARTING"
                job.exit_code = job.container_reason = job.log_stream_name = None
                job.task_arn = (
                    f"arn:aws:ecs:{job.region}:{ACCOUNT_ID}:task/"
                    f"{job.queue.name}_Batch/{uuid.uuid4().hex}"
                )
                self._touch_parent(job)
                started.append(job)
        return started

    @staticmethod
    def _environments(
        job: Job, environments: dict[str, ComputeEnvironment]
    ) -> list[ComputeEnvironment]:
        """The compute environments of the job's queue, in its order, that run the job's
        platform: a Fargate job in a queue of EC2 environments waits RUNNABLE, as on AWS
        (RegisterJobDefinitionRequest.platformCapabilities: "To run the job on Fargate
        resources, specify FARGATE")."""
        ordered = sorted(job.queue.compute_environment_order, key=lambda e: e["order"])
        found = [environments.get(entry["computeEnvironment"]) for entry in ordered]
        return [env for env in found if env is not None and env.platform == job.platform]

    def _placement(
        self, job: Job, environments: dict[str, ComputeEnvironment]
    ) -> ComputeEnvironment | None:
        """The first of the job's environments that places jobs (ENABLED and VALID) and whose
        maxvCpus leaves room for the job's vCPUs. A DISABLED one: "the Batch scheduler
        doesn't attempt to place jobs within the environment" (ComputeEnvironmentDetail.state).
        """
        for environment in self._environments(job, environments):
            if (
                environment.state == "ENABLED"
                and environment.status == "VALID"
                and environment.has_room(job.vcpus)
            ):
                return environment
        return None

    def _waiting_reason(self, job: Job, environments: dict[str, ComputeEnvironment]) -> str | None:
        """Why a RUNNABLE job the scheduler cannot place waits, in the words of the user guide
        (see the constants above), or None if it only waits its turn."""
        candidates = self._environments(job, environments)
        if not candidates:
            return None  # no environment of its platform: AWS gives no reason it documents
        usable = [env for env in candidates if env.state == "ENABLED" and env.status == "VALID"]
        if not usable:
            if all(env.status == "INVALID" for env in candidates):
                return ENVIRONMENTS_INVALID
            return ENVIRONMENTS_DISABLED
        caps = [env.max_vcpus for env in usable]
        if all(cap is not None and job.vcpus > cap + 1e-9 for cap in caps):
            return MAX_RESOURCE
        if job.vcpus > self.vcpus + 1e-9 or (job.memory_mib or 0) > self.memory_mib:
            return JOB_RESOURCE_REQUIREMENT
        fits = (
            job.vcpus <= self.vcpus - self.vcpus_used + 1e-9
            and (job.memory_mib or 0) <= self.memory_mib - self.memory_used
        )
        if not fits:
            # EC2 is out of instances for an environment that would scale out to run it.
            for env in usable:
                if env.instance_type is not None and env.has_room(job.vcpus):
                    return INSUFFICIENT_CAPACITY.format(instance_type=env.instance_type)
        return None

    def _waiting(self) -> Iterable[Job]:
        return [j for j in self.jobs.values() if j.status in ("SUBMITTED", "PENDING")]

    def attempt_running(self, job: Job, log_stream_name: str) -> None:
        """The attempt's process has started."""
        job.status = "RUNNING"
        job.log_stream_name = log_stream_name
        job.started_at = self._clock()
        self._touch_parent(job)

    def attempt_finished(self, job: Job, outcome: Outcome) -> None:
        """The attempt has ended: record it, free its capacity, then retry or finish the job."""
        now = self._clock()
        if job.compute_environment is not None:
            placed = job.compute_environment
            placed.vcpus_used = max(0.0, placed.vcpus_used - job.vcpus)
        self.vcpus_used = max(0.0, self.vcpus_used - job.vcpus)
        self.memory_used = max(0, self.memory_used - (job.memory_mib or 0))
        job.exit_code = outcome.exit_code
        job.container_reason = outcome.container_reason
        job.attempts.append(
            {
                "container": {
                    "containerInstanceArn": _container_instance(job),
                    "taskArn": job.task_arn,
                    "exitCode": outcome.exit_code,
                    "reason": outcome.container_reason,
                    "logStreamName": job.log_stream_name,
                    "networkInterfaces": [],
                },
                "startedAt": job.started_at if job.status == "RUNNING" else None,
                "stoppedAt": now,
                "statusReason": job.kill_reason or outcome.status_reason,
            }
        )
        job.host_reason = None  # the next attempt runs on another host
        if job.kill_reason is not None:
            self._finish(job, "FAILED", job.kill_reason)
        elif outcome.exit_code == 0:
            self._finish(job, "SUCCEEDED", outcome.status_reason)
        elif self._retries(job, outcome):
            job.status = "RUNNABLE"
            job.status_reason = outcome.status_reason
            self._touch_parent(job)
        else:
            self._finish(job, "FAILED", outcome.status_reason)
        self.on_change()

    def _retries(self, job: Job, outcome: Outcome) -> bool:
        if len(job.attempts) >= job.attempts_allowed:
            return False
        exit_code = "" if outcome.exit_code is None else str(outcome.exit_code)
        for rule in (job.retry_strategy or {}).get("evaluateOnExit", []):
            if (
                fnmatch.fnmatchcase(exit_code, rule.get("onExitCode", "*"))
                and fnmatch.fnmatchcase(outcome.container_reason or "", rule.get("onReason", "*"))
                and fnmatch.fnmatchcase(outcome.status_reason, rule.get("onStatusReason", "*"))
            ):
                return str(rule["action"]).upper() == "RETRY"
        return True

    def _finish(self, job: Job, status: str, reason: str | None) -> None:
        job.status = status
        job.status_reason = reason
        job.stopped_at = self._clock()
        self._touch_parent(job)

    def _touch_parent(self, job: Job) -> None:
        """Keep an array parent's status in step with its children."""
        parent = job.parent
        if parent is None:
            return
        parent.status_summary_updated_at = self._clock()
        if job.status == "RUNNING" and parent.started_at is None:
            parent.started_at = job.started_at
        if parent.status not in _DONE and all(c.status in _DONE for c in parent.children):
            if any(c.status == "FAILED" for c in parent.children):
                parent.is_cancelled = any(c.is_cancelled for c in parent.children)
                self._finish(parent, "FAILED", ARRAY_CHILD_FAILED)
            else:
                self._finish(parent, "SUCCEEDED", None)

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.status in ("STARTING", "RUNNING")]


def image_reference(image: str) -> str:
    """An image name as the registry resolves it: "python" is
    "docker.io/library/python:latest", a name without tag or digest is its :latest."""
    first, slash, rest = image.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        rest = image if slash else f"library/{image}"
        first = "docker.io"
    last = rest.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        rest += ":latest"
    return f"{first}/{rest}"


def _repository(image: str) -> str:
    """The repository of an image as Docker's daemon names it: without tag or digest."""
    name = image.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}"


def _container_instance(job: Job) -> str:
    return f"arn:aws:ecs:{job.region}:{ACCOUNT_ID}:container-instance/localbatch"


def _filter_matches(filter_: Params, job: Job) -> bool:
    name = filter_.get("name")
    values = filter_.get("values") or []
    if not values:
        raise _client("A ListJobs filter needs one value")
    value = values[0]
    if name == "JOB_NAME":
        if value.endswith("*"):
            return bool(job.name.lower().startswith(value[:-1].lower()))
        return bool(job.name.lower() == value.lower())
    if name == "JOB_DEFINITION":
        if value.startswith("arn:"):
            return bool(job.definition.arn == value)
        if value.endswith("*"):
            return bool(job.definition.name.startswith(value[:-1]))
        return bool(job.definition.name == value)
    if name in ("BEFORE_CREATED_AT", "AFTER_CREATED_AT"):
        if not value.isdigit():
            raise _client(f"{name} must be milliseconds since the epoch, got {value!r}")
        if name == "BEFORE_CREATED_AT":
            return job.created_at < int(value)
        return job.created_at > int(value)
    if name == "SHARE_IDENTIFIER":
        return False
    raise _client(
        f"Unknown ListJobs filter {name!r}: use JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT, "
        "AFTER_CREATED_AT or SHARE_IDENTIFIER"
    )


def _container_defaults(container: Params, platforms: list[str]) -> Params:
    """A definition's containerProperties as AWS describes them: the lists it fills in empty,
    and on Fargate the network and platform settings it defaults (NetworkConfiguration.
    assignPublicIp: 'The default value is "DISABLED"'; FargatePlatformConfiguration.
    platformVersion: 'If one isn't specified, the LATEST platform version is used')."""
    container = dict(container)
    for key in ("volumes", "environment", "mountPoints", "ulimits", "resourceRequirements"):
        container.setdefault(key, [])
    container.setdefault("secrets", [])
    if "FARGATE" in platforms:
        container["networkConfiguration"] = {
            "assignPublicIp": "DISABLED",
            **(container.get("networkConfiguration") or {}),
        }
        container["fargatePlatformConfiguration"] = {
            "platformVersion": "LATEST",
            **(container.get("fargatePlatformConfiguration") or {}),
        }
    return container


def _resources(container: Params) -> tuple[float, int | None]:
    """The (vCPUs, MiB) a container needs: resourceRequirements first, then the legacy
    `vcpus`/`memory` fields; 1 vCPU and no memory limit when neither says (which AWS refuses
    unless `resources_required` is lenient).

    The rules have checked the values; this refuses only what the emulator cannot schedule
    whatever is lenient: a VCPU that is not a positive number, a MEMORY that is not a positive
    whole number of MiB."""
    vcpus_value = requirement(container, "VCPU")
    if vcpus_value is None:
        vcpus_value = container.get("vcpus")
    memory_value = requirement(container, "MEMORY")
    if memory_value is None:
        memory_value = container.get("memory")
    try:
        vcpus = float(vcpus_value) if vcpus_value is not None else 1.0
        memory = int(memory_value) if memory_value is not None else None
    except ValueError:
        vcpus = memory = -1
    if not vcpus > 0 or (memory is not None and memory <= 0):
        raise _client(
            "LocalBatch schedules a job by its VCPU (a number > 0) and MEMORY (a whole number "
            f"of MiB > 0); got VCPU={vcpus_value!r}, MEMORY={memory_value!r}"
        )
    return vcpus, memory


def _page(items: list[Params], params: Params, what: str) -> tuple[list[Params], str | None]:
    """One page of `items` after `params["nextToken"]`, at most `params["maxResults"]` long
    (1 to 100, except ListJobs, which allows up to 1000 as AWS does)."""
    limit = params.get("maxResults") or _PAGE_DEFAULT
    most = 1000 if what == "jobs" else 100
    if not 1 <= limit <= most:
        raise _client(f"maxResults must be between 1 and {most}, got {limit}")
    token = params.get("nextToken")
    offset = 0
    if token is not None:
        prefix, _, number = token.partition(":")
        if prefix != what or not number.isdigit():
            raise _client(f"The nextToken {token!r} is not valid for this request.")
        offset = int(number)
    end = offset + limit
    return items[offset:end], (f"{what}:{end}" if end < len(items) else None)


@functools.cache
def _container_detail_keys() -> frozenset[str]:
    """The members of the ContainerDetail shape, which DescribeJobs copies from the definition."""
    shape = service_model("batch").shape_for("ContainerDetail")
    assert isinstance(shape, botocore.model.StructureShape)
    return frozenset(shape.members)
