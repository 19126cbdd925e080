"""The AWS Batch launcher: workers as Batch jobs, submitted and ended by aiobotocore coroutines.

Every call runs in the background, at most `max_concurrent_requests` at a time, so the one to
two seconds a Batch call can take never stalls dispatch. Workers launched together go out as
one array job. The launcher polls the status of its unconnected jobs so that a job that fails
before its worker connects counts as a failed launch at once. At start it reads the job
definition, so that each job asks for resources its platform (EC2 or Fargate) accepts; on close
it ends, with TerminateJobs (50 jobs a call), every job of its own that has not finished and
whose worker did not leave by itself.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import shlex
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import polars as pl

from batchcrew.aws import _rules
from batchcrew.aws._client import first_call, map_errors, open_client
from batchcrew.aws._ending import end_jobs
from batchcrew.aws.definition import find_definition
from batchcrew.aws.options import BatchOptions, Plan, Resources, sanitize_job_name
from batchcrew.controller import Controller
from batchcrew.errors import BatchError, LaunchError
from batchcrew.launchers.base import Cause, Launcher, LaunchRequest, WorkerExit, WorkerPending

logger = logging.getLogger("batchcrew")

ARRAY_SIZE_MAX = 10_000
"""AWS Batch's largest array job: bigger launches are split into several."""

TAG = "batchcrew:controller"
"""The tag on every job a launcher submits: "<controller name>/<instance token>"."""


#: statusReason of a job whose host went away (a reclaimed Spot instance, a lost instance),
#: as AWS reports it: "Host EC2 (instance i-0123456789abcdef0) terminated." (AWS's retry
#: examples match it with onStatusReason "Host EC2*").
_HOST_LOST = re.compile(r"^Host EC2 \(instance [^)]*\) terminated")
#: Container reasons of a job that ECS could not start or keep (an agent or daemon failure,
#: an image it could not pull): not the task's doing.
_ECS_FAILURES = (
    "CannotPullContainerError",
    "CannotStartContainerError",
    "CannotCreateContainerError",
    "CannotInspectContainerError",
    "DockerTimeoutError",
    "ResourceInitializationError",
    "Task failed to start",
)
#: The reasons batchcrew itself gives TerminateJob(s): a job it ended is not an outside stop.
_OWN_REASONS = ("batchcrew", "the batchcrew controller closed")


def _exit_of(job: _Job, child: int, detail: Mapping[str, Any]) -> WorkerExit:
    """How a finished job ended, and whose doing it was, from its JobDetail."""
    status = detail["status"]
    container = detail.get("container") or {}
    reason = detail.get("statusReason") or container.get("reason") or "no reason given"
    said = f"its AWS Batch job {detail['jobId']} {status.lower()}: {reason}"
    if status == "SUCCEEDED":
        return WorkerExit(job.launch, job.offset + child, 0, said)
    container_reason = str(container.get("reason") or "")
    cause: Cause | None = None
    if "OutOfMemoryError" in reason or container_reason.startswith("OutOfMemoryError"):
        cause = "task"
        said = f"killed out of memory: {said}"
    elif _HOST_LOST.match(reason):
        cause = "infrastructure"
        said = f"reclaimed: {reason} (its AWS Batch job {detail['jobId']})"
    elif detail.get("isTerminated") and not reason.startswith(_OWN_REASONS):
        cause = "infrastructure"
        said = f"its AWS Batch job {detail['jobId']} was terminated from outside: {reason}"
    elif any(mark in reason or container_reason.startswith(mark) for mark in _ECS_FAILURES):
        cause = "infrastructure"
    elif container.get("exitCode") is not None:
        cause = "task"  # its process exited, or was killed, with the task on it
    return WorkerExit(job.launch, job.offset + child, container.get("exitCode", 1), said, cause)


def tag_value(controller: str, instance: str) -> str:
    """The value of `TAG` for a controller's jobs: "<name>/<instance>", the name made of the
    characters AWS allows in tags and cut so that the whole fits AWS's 256 characters."""
    room = _rules.TAG_VALUE_MAX - len(instance) - 1
    return f"{_rules.tag_text(controller, room)}/{instance}"


_DESCRIBE_MAX = 100  # job ids per DescribeJobs call ("A list of up to 100 job IDs")
_SECONDS_DEFINITION = 30.0  # at start, the longest wait to read the job definition
_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
_SECONDS_LOOK = 1.0  # how often a lost worker's job is looked at, until it has ended
_SECONDS_CLOSE_QUIET = 5.0  # at close, how long ending jobs may take before a WARNING says so
_ERRORS_KEPT = 1000
_FINISHED = ("SUCCEEDED", "FAILED")
#: The statusReason prefixes of a RUNNABLE job that nothing places until its owner acts: the
#: AWS Batch user guide's "Jobs stuck in a RUNNABLE status" lists MISCONFIGURATION:... (no
#: compute environment can ever run it) and ACTION_REQUIRED (they are invalid).
_ACT = ("MISCONFIGURATION", "ACTION_REQUIRED")


@dataclass
class _Job:
    """One submitted job: a plain job (size 1) or an array job of `size` children."""

    id: str
    launch: str
    offset: int
    size: int
    unfinished: set[int] = field(default_factory=set)  # child numbers not known finished
    seen: dict[int, str] = field(default_factory=dict)  # what was last reported of a child

    def child_id(self, child: int) -> str:
        return f"{self.id}:{child}" if self.size > 1 else self.id


class BatchLauncher(Launcher):
    """Launch workers as AWS Batch jobs.

    `options` says where and how (queue, definition, resources, escalation lists).
    `max_concurrent_requests` bounds the Batch calls under way at once. `seconds_poll` is how
    often the status of jobs whose workers have not connected is checked. `seconds_close`
    bounds how long closing spends ending the jobs still running: after it, close gives up
    and logs an ERROR naming the jobs it could not end.
    """

    name = "aws_batch"
    remote = True

    def __init__(
        self,
        options: BatchOptions,
        *,
        max_concurrent_requests: int = 8,
        seconds_poll: float = 10.0,
        seconds_close: float = 60.0,
    ) -> None:
        super().__init__()
        if not isinstance(options, BatchOptions):
            raise TypeError(f"options must be aws.BatchOptions, not {type(options).__name__}")
        if isinstance(max_concurrent_requests, bool) or not (
            isinstance(max_concurrent_requests, int) and max_concurrent_requests >= 1
        ):
            raise ValueError(
                "max_concurrent_requests must be a whole number >= 1, "
                f"not {max_concurrent_requests!r}"
            )
        if not (isinstance(seconds_poll, int | float) and seconds_poll > 0):
            raise ValueError(f"seconds_poll must be a positive number, not {seconds_poll!r}")
        if isinstance(seconds_close, bool) or not (
            isinstance(seconds_close, int | float) and seconds_close > 0
        ):
            raise ValueError(
                f"seconds_close must be a positive number of seconds, not {seconds_close!r}"
            )
        self.options = options
        self.levels = options.levels
        self.max_concurrent_requests = max_concurrent_requests
        self.seconds_poll = seconds_poll
        self.seconds_close = seconds_close
        self._limiter = anyio.CapacityLimiter(max_concurrent_requests)
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._jobs: dict[str, list[_Job]] = {}  # by launch
        self._errors: deque[dict[str, Any]] = deque(maxlen=_ERRORS_KEPT)
        self._polling = False
        self._plan: Plan | None = None
        # The controller waits this long for why a worker's connection dropped (its job's
        # status reason) before it blames the task; workers lost meanwhile are looked at now.
        self.seconds_cause = seconds_poll
        self._lost: dict[str, float] = {}  # child job id -> until when to look at it
        self._told: set[tuple[str, str]] = set()  # (job id, RUNNABLE reason) warned of
        self._lost_now = asyncio.Event()  # set in a loop callback: no anyio task runs there

    # -- life -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the launcher's one Batch client, and read the job definition: its platform
        (EC2 or Fargate) and resources settle what each level's jobs ask for.

        Raises `LaunchError` when workers cannot run on that definition (none active by that
        name, a multi-node or EKS definition, another platform than `options.platform`),
        ValueError when the options' resources do not fit its platform, and `BatchError` when
        AWS cannot be asked.
        """
        self._polling = False  # the last controller's poller, if any, ended with its task group
        self._stack = AsyncExitStack()
        try:
            self._client = await self._stack.enter_async_context(
                open_client("batch", self.options.client_settings())
            )
            definition = await self._describe_definition()
            if definition is None:
                assert self.options.platform is not None
                self._plan = self.options.plan(self.options.platform, None)
            else:
                self.use_definition(definition)
        except BaseException:
            await self._stack.aclose()
            self._client = None
            raise

    async def _describe_definition(self) -> dict[str, Any] | None:
        """The job definition the options name (its latest ACTIVE revision for a bare name);
        None when IAM does not allow reading it and `options.platform` says enough."""
        reference = self.options.job_definition
        settings = first_call(self.options.client_settings())
        endpoint = "AWS Batch"
        try:
            with anyio.fail_after(_SECONDS_DEFINITION):
                async with open_client("batch", settings) as client:
                    endpoint = f"AWS Batch at {client.meta.endpoint_url}"
                    with map_errors(f"describing job definition {reference!r}"):
                        definition = await find_definition(client, reference)
        except TimeoutError:
            raise LaunchError(
                f"{endpoint} did not answer DescribeJobDefinitions for {reference!r} within "
                f"{_SECONDS_DEFINITION:g} s: check the network, region and endpoint_url"
            ) from None
        except BatchError as error:
            if error.code == "Connection":
                raise LaunchError(
                    f"cannot reach {endpoint}: {error.message}. Check the network, the region "
                    "and endpoint_url (or AWS_ENDPOINT_URL)"
                ) from error
            if error.code not in _DENIED:
                raise
            if self.options.platform is None:
                raise LaunchError(
                    f"{error}; batchcrew reads the job definition at start to learn its platform "
                    "(EC2 or Fargate) and resources: allow batch:DescribeJobDefinitions (on "
                    '"Resource": "*"), or give BatchOptions(platform="EC2" or "FARGATE")'
                ) from error
            logger.warning(
                "%s; going on with platform=%s, without checking the definition",
                error,
                self.options.platform,
            )
            return None
        if definition is None:
            region = self._client.meta.region_name
            raise LaunchError(
                f"job definition {reference!r} not found in region {region}"
                f"{' (no ACTIVE revision of that name)' if ':' not in reference else ''}: "
                "register one (aws.JobDefinition(name).register(image=...), or `batchcrew "
                "definition register`), or check job_definition and the region"
            )
        if definition.get("status", "ACTIVE") != "ACTIVE":
            raise LaunchError(
                f"job definition {reference} is {definition['status']} (deregistered): AWS "
                "refuses jobs of it; name an ACTIVE revision, or register a new one"
            )
        return definition

    def use_definition(self, definition: Mapping[str, Any]) -> None:
        """Check that workers can run on `definition` (a JobDefinition as
        DescribeJobDefinitions answers it) and settle each level's resources against it.

        Raises `LaunchError` for a definition workers cannot run on, ValueError when the
        options' cpus, gpus or memory do not fit its platform. Logs, once, each memory that
        Fargate rounds up.
        """
        name = f"{definition.get('jobDefinitionName')}:{definition.get('revision')}"
        if definition.get("type") == "multinode" or definition.get("nodeProperties"):
            raise LaunchError(
                f"job definition {name} is a multi-node parallel definition; batchcrew runs "
                "each worker as a container job: register a container definition "
                "(aws.JobDefinition(...).register())"
            )
        if definition.get("eksProperties") or definition.get("containerOrchestrationType") == "EKS":
            raise LaunchError(
                f"job definition {name} is for AWS Batch on EKS, which batchcrew does not "
                "support: its worker's command and environment travel in containerOverrides, "
                "which AWS refuses for EKS jobs. Use an ECS (EC2 or Fargate) compute "
                "environment and a container definition"
            )
        container = definition.get("containerProperties")
        if not container:
            raise LaunchError(
                f"job definition {name} has no containerProperties: batchcrew runs its workers "
                "from a container definition (aws.JobDefinition(...).register())"
            )
        capabilities = definition.get("platformCapabilities") or ["EC2"]
        platform: _rules.Platform = "FARGATE" if "FARGATE" in capabilities else "EC2"
        if self.options.platform is not None and self.options.platform != platform:
            raise LaunchError(
                f"BatchOptions(platform={self.options.platform!r}) but job definition {name} is "
                f"for {platform}: name a {self.options.platform} definition, or drop platform= "
                "to follow the definition's"
            )
        propagate = self.options.propagate_tags
        if propagate is None:
            propagate = bool(definition.get("propagateTags"))
        if propagate:
            combined = {**(definition.get("tags") or {}), **(self.options.tags or {}), TAG: ""}
            if len(combined) > _rules.TAGS_MAX:
                # SubmitJob.propagateTags: "If the total number of combined tags from the job
                # and job definition is over 50, the job is moved to the FAILED state."
                raise LaunchError(
                    f"with propagate_tags, the job's and job definition {name}'s tags come to "
                    f"{len(combined)} (batchcrew's own included), over AWS's "
                    f"{_rules.TAGS_MAX}: every job would fail; give fewer tags, or "
                    "propagate_tags=False"
                )
        plan = self.options.plan(platform, Resources.of_container(container))
        if plan.rounded:
            logger.info(
                "job definition %s runs on Fargate, which allows only some memory values: "
                "memory rounds up from %s",
                name,
                ", ".join(plan.rounded),
            )
        self._plan = plan

    def launch_record(self, launch: str) -> dict[str, Any]:
        """The jobs of `launch` (id, first worker, size), for a restarted controller to end."""
        return {"jobs": [[job.id, job.offset, job.size] for job in self._jobs.get(launch, [])]}

    def adopt(self, launch: str, count: int, record: Mapping[str, Any]) -> None:
        """Take back the jobs of an earlier run's `launch` (from its journal): watched as this
        launcher's own, and ended when they are not needed (TerminateJobs ends a job in any
        state, one that has finished included)."""
        jobs = [_Job(str(id), launch, int(offset), int(size), set(range(int(size))))
                for id, offset, size in record.get("jobs") or ()]  # fmt: skip
        if not jobs:
            return
        self._jobs.setdefault(launch, []).extend(jobs)
        if not self._polling:
            self._polling = True
            self._lost_now = asyncio.Event()
            self.start_soon(self._poll)
            self.start_soon(self._look)

    def worker_left(self, launch: str, index: int) -> None:
        """Worker `index` of `launch` said goodbye: its process exits by itself and its job
        ends as it does (SUCCEEDED), so nothing needs ending, at close or later."""
        for job in self._jobs.get(launch, []):
            if job.offset <= index < job.offset + job.size:
                job.unfinished.discard(index - job.offset)

    async def close(self) -> None:
        """End every job of this launcher not known to have finished and whose worker did not
        say goodbye (those end by themselves): TerminateJobs, 50 jobs a call (a job whose
        children are all unfinished goes as the array job, which ends them all), concurrently
        (bounded), giving up after `seconds_close`; then close the client.

        Names the jobs it ends at INFO, and at WARNING if ending them takes more than a few
        seconds; logs an ERROR naming those it could not end (AWS unreachable, refusing, or too
        slow), so that they can be ended by hand.
        """
        try:
            targets: list[str] = []
            for jobs in self._jobs.values():
                for job in jobs:
                    if len(job.unfinished) == job.size:
                        targets.append(job.id)  # ending an array job ends its children
                    else:
                        targets += [job.child_id(child) for child in sorted(job.unfinished)]
            if targets and not self.detached:
                await self._end_at_close(targets)
            self._jobs.clear()
        finally:
            if self._stack is not None:
                await self._stack.aclose()
            self._client = None

    async def _end_at_close(self, targets: list[str]) -> None:
        logger.info(
            "closing: ending %d AWS Batch job(s) not known to have finished (TerminateJobs): %s",
            len(targets),
            " ".join(targets),
        )
        outcome: dict[str, str | None] = {}
        unanswered = (
            f"no answer within seconds_close={self.seconds_close:g} (AWS slow or unreachable: "
            "botocore was still retrying)"
        )

        def failures() -> dict[str, str]:
            return {
                job_id: unanswered if job_id not in outcome else str(outcome[job_id])
                for job_id in targets
                if outcome.get(job_id, unanswered) is not None
            }

        async def warn_if_slow() -> None:
            # A healthy close ends its jobs in a second or two and says so at INFO; one that
            # waits on AWS says at WARNING what it waits for, long before it gives up.
            seconds = min(_SECONDS_CLOSE_QUIET, self.seconds_close / 2)
            await anyio.sleep(seconds)
            waiting = [job_id for job_id in targets if job_id not in outcome]
            logger.warning(
                "closing: still ending %d AWS Batch job(s) after %g s (AWS slow or "
                "unreachable?); giving up after seconds_close=%g: %s",
                len(waiting),
                seconds,
                self.seconds_close,
                " ".join(waiting),
            )

        with anyio.move_on_after(self.seconds_close):
            async with anyio.create_task_group() as group:
                group.start_soon(warn_if_slow)
                await end_jobs(
                    self._client,
                    targets,
                    "the batchcrew controller closed",
                    self._limiter,
                    outcome=outcome,
                )
                group.cancel_scope.cancel()
        for job_id, error in outcome.items():
            if error is not None:
                self._record("TerminateJobs", job_id, error)
        failed = failures()
        if failed:
            logger.error(
                "could not end %d AWS Batch job(s) at close; they may still be running, and "
                "costing. End them by hand: %s\n%s",
                len(failed),
                self._terminate_command(list(failed)),
                "\n".join(f"  {job_id}: {error}" for job_id, error in failed.items()),
            )

    def _terminate_command(self, job_ids: list[str]) -> str:
        """The `batchcrew terminate` command line that ends `job_ids` where this launcher does."""
        words = ["batchcrew", "terminate", *job_ids]
        for flag, value in (
            ("--region", self.options.region),
            ("--endpoint-url", self.options.endpoint_url),
            ("--profile", self.options.profile),
        ):
            if value is not None:
                words += [flag, value]
        return shlex.join(words)

    # -- launching ------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> None:
        """Submit the workers of `request`: one array job (or one job per 10,000 workers), or
        a plain job for a single worker. Raises `BatchError` if a submission fails."""
        offset = 0
        while offset < request.count:
            size = min(ARRAY_SIZE_MAX, request.count - offset)
            async with self._limiter:
                if self.stopping:
                    return  # the controller is closing: nothing more goes out
                job_id = await self._submit(request, offset, size)
            job = _Job(job_id, request.launch, offset, size, set(range(size)))
            self._jobs.setdefault(request.launch, []).append(job)
            offset += size
        if not self._polling:
            self._polling = True
            self._lost_now = asyncio.Event()  # of this controller's loop
            self.start_soon(self._poll)
            self.start_soon(self._look)

    def submit_job_request(self, request: LaunchRequest, offset: int, size: int) -> dict[str, Any]:
        """The SubmitJob parameters for workers offset..offset+size-1 of `request`.

        Needs the resources settled: by `open()` (or `use_definition()`), or by the options'
        own `platform`. Raises RuntimeError before either.
        """
        options = self.options
        plan = self._plan
        if plan is None:
            if options.platform is None:
                raise RuntimeError(
                    "the job definition's platform is not known yet: open the launcher (start "
                    "its controller), call use_definition(), or give BatchOptions(platform=...)"
                )
            plan = self._plan = options.plan(options.platform, None)
        environment = dict(request.environment)
        if size == 1:
            environment["BATCHCREW_WORKER_INDEX"] = str(offset)
        elif offset:
            environment["BATCHCREW_INDEX_OFFSET"] = str(offset)
        extra = [
            dict(item)
            for item in (options.container_overrides or {}).get("environment", [])
            if item["name"] not in environment
        ]
        overrides: dict[str, Any] = {
            "command": list(request.command),
            "environment": extra
            + [{"name": name, "value": value} for name, value in sorted(environment.items())],
        }
        requirements = plan.levels[min(request.level, len(plan.levels) - 1)]
        if requirements:
            overrides["resourceRequirements"] = [dict(item) for item in requirements]
        name = f"{request.controller}-{request.launch}"
        if offset:
            name += f"-{offset}"
        params: dict[str, Any] = {
            "jobName": sanitize_job_name(name),
            "jobQueue": options.job_queue,
            "jobDefinition": options.job_definition,
            "containerOverrides": overrides,
            "tags": {**(options.tags or {}), TAG: tag_value(request.controller, request.instance)},
        }
        if size > 1:
            params["arrayProperties"] = {"size": size}
        passthrough = {
            "shareIdentifier": options.share_identifier,
            "schedulingPriorityOverride": options.scheduling_priority_override,
            "parameters": options.parameters,
            "retryStrategy": options.retry_strategy,
            "propagateTags": options.propagate_tags,
            "timeout": options.timeout,
        }
        params.update({key: value for key, value in passthrough.items() if value is not None})
        return params

    async def _submit(self, request: LaunchRequest, offset: int, size: int) -> str:
        params = self.submit_job_request(request, offset, size)
        try:
            with map_errors(f"SubmitJob to queue {self.options.job_queue!r}"):
                response = await self._client.submit_job(**params)
        except BatchError as error:
            self._record("SubmitJob", None, error)
            raise
        logger.info(
            "submitted AWS Batch job %s (%s worker(s), launch %s)",
            response["jobId"],
            size,
            request.launch,
        )
        return str(response["jobId"])

    # -- ending ---------------------------------------------------------------------------

    async def terminate(self, launch: str, indexes: Sequence[int] | None = None) -> None:
        """End the jobs (or array children) of `launch` running `indexes` (TerminateJobs)."""
        targets: list[str] = []
        for job in self._jobs.get(launch, []):
            children = (
                range(job.size)
                if indexes is None
                else [
                    index - job.offset
                    for index in indexes
                    if job.offset <= index < job.offset + job.size
                ]
            )
            if indexes is None or len(children) == job.size:
                targets.append(job.id)
            else:
                targets += [job.child_id(child) for child in children]
        await self._end(targets, "batchcrew: the worker did not connect within seconds_launch")

    async def end_worker(self, launch: str, index: int, reason: str) -> None:
        """End the job, or the array child, that runs worker `index` (TerminateJobs)."""
        for job in self._jobs.get(launch, []):
            if job.offset <= index < job.offset + job.size:
                await self._end([job.child_id(index - job.offset)], reason)

    async def _end(self, job_ids: list[str], reason: str) -> None:
        """TerminateJobs `job_ids` (it ends a job in any state), logging and recording what
        AWS would not end."""
        if not job_ids:
            return
        outcome = await end_jobs(self._client, job_ids, reason, self._limiter)
        for job_id, error in outcome.items():
            if error is not None:
                self._record("TerminateJobs", job_id, error)
                logger.warning("%s", error)

    # -- watching -------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await anyio.sleep(self.seconds_poll)
            await self.check_jobs()

    def worker_lost(self, launch: str, index: int) -> None:
        """A worker's connection dropped: look at its job every second, until it has ended
        or `seconds_cause` has passed, so that the controller learns why (a reclaimed host,
        an out-of-memory kill) before it blames the task. (Called in a loop callback: no
        task runs it, so the clock is time.monotonic's.)"""
        for job in self._jobs.get(launch, []):
            if job.offset <= index < job.offset + job.size:
                child = index - job.offset
                if child in job.unfinished:
                    self._lost[job.child_id(child)] = time.monotonic() + self.seconds_cause
                    self._lost_now.set()

    async def _look(self) -> None:
        while True:
            await self._lost_now.wait()
            self._lost_now.clear()
            while self._lost:
                await self.check_jobs(list(self._lost))
                now = time.monotonic()
                self._lost = {job: until for job, until in self._lost.items() if until > now}
                if self._lost:
                    await anyio.sleep(_SECONDS_LOOK)

    def explain_unreachable(self, address: str) -> str:
        """Why AWS Batch workers that run do not reach the controller, and what to do."""
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        return (
            f"its AWS Batch jobs were RUNNING, but no worker reached the controller at "
            f"{address}: the workers dial {host.strip('[]')} on TCP port {port}, which the "
            "compute environment's instances cannot reach. Put the controller's machine in the "
            "compute environment's VPC and security group, with an inbound rule allowing all "
            f"TCP (or port {port}) from the security group itself; a laptop outside the VPC "
            "cannot be reached (run the controller in the VPC, or tunnel through a bastion with "
            "`ssh -R` and give the controller address=). `batchcrew doctor` checks the rule. "
            "Each worker's log says where it dialled: batchcrew logs JOB_ID"
        )

    async def check_jobs(self, only: list[str] | None = None) -> None:
        """Describe the jobs not known finished (or those of `only`); report to the controller
        those that finished, with whose doing it was (so a job that failed before its worker
        connected counts as a failed launch now, and a reclaimed host is not the task's
        crash), and how those not finished are doing (RUNNABLE, and why; RUNNING)."""
        children: dict[str, tuple[_Job, int]] = {}
        for jobs in self._jobs.values():
            for job in jobs:
                for child in job.unfinished:
                    children[job.child_id(child)] = (job, child)
        ids = list(children) if only is None else [i for i in only if i in children]
        environments: str | None = None  # the queue's compute environments, once per check
        for start in range(0, len(ids), _DESCRIBE_MAX):
            chunk = ids[start : start + _DESCRIBE_MAX]
            try:
                async with self._limiter:
                    with map_errors("DescribeJobs"):
                        response = await self._client.describe_jobs(jobs=chunk)
            except BatchError as error:
                self._record("DescribeJobs", None, error)
                continue
            for detail in response.get("jobs", []):
                if detail["jobId"] not in children:
                    continue
                job, child = children[detail["jobId"]]
                status = detail.get("status")
                if status in _FINISHED:
                    job.unfinished.discard(child)
                    self._lost.pop(detail["jobId"], None)
                    self.report(_exit_of(job, child, detail))
                    continue
                running = status in ("STARTING", "RUNNING")
                said = f"its AWS Batch job {detail['jobId']} is {status}"
                reason = detail.get("statusReason")
                if status == "RUNNABLE":
                    if environments is None:
                        environments = await self._environments()
                    said += (
                        f", not placed: {reason.rstrip('.') if reason else 'AWS gives no reason'}"
                        f"{environments}"
                    )
                    if reason and reason.startswith(_ACT) and (job.id, reason) not in self._told:
                        # Nothing places it until someone acts: say so now, not after
                        # seconds_launch (user guide, "Jobs stuck in a RUNNABLE status").
                        self._told.add((job.id, reason))
                        logger.warning(
                            "%s. AWS places it only once that is fixed; `batchcrew doctor` "
                            "checks the queue and its compute environments",
                            said,
                        )
                if job.seen.get(child) != said:
                    job.seen[child] = said
                    self.report(WorkerPending(job.launch, job.offset + child, running, said))
        for launch, jobs in list(self._jobs.items()):
            jobs[:] = [job for job in jobs if job.unfinished]
            if not jobs:
                del self._jobs[launch]

    async def _environments(self) -> str:
        """The state of the job queue and of its compute environments, where one is not
        ENABLED and VALID ("" when all are, or when AWS cannot be asked)."""
        queue = self.options.job_queue
        try:
            async with self._limiter:
                with map_errors(f"DescribeJobQueues {queue}"):
                    queues = (await self._client.describe_job_queues(jobQueues=[queue]))[
                        "jobQueues"
                    ]
                names = [
                    entry["computeEnvironment"]
                    for found in queues
                    for entry in found.get("computeEnvironmentOrder", [])
                ]
                found_environments = []
                if names:
                    with map_errors("DescribeComputeEnvironments"):
                        found_environments = (
                            await self._client.describe_compute_environments(
                                computeEnvironments=names[:100]
                            )
                        )["computeEnvironments"]
        except BatchError as error:
            self._record("DescribeJobQueues", None, error)
            return ""
        said = []
        for item in [*queues, *found_environments]:
            state, status = item.get("state"), item.get("status")
            if state == "ENABLED" and status == "VALID":
                continue
            kind = "job queue" if "jobQueueName" in item else "compute environment"
            name = item.get("jobQueueName") or item.get("computeEnvironmentName")
            why = ""
            if status != "VALID" and item.get("statusReason"):
                why = f": {item['statusReason'].rstrip('.')}"
            said.append(f"{kind} {name} is {state} and {status}{why}")
        return f"; {'; '.join(said)}" if said else ""

    # -- errors ---------------------------------------------------------------------------

    def _record(self, action: str, job_id: str | None, error: BatchError | str) -> None:
        self._errors.append(
            {
                "time": datetime.datetime.now(datetime.UTC),
                "action": action,
                "job_id": job_id,
                "error": str(error),
            }
        )

    def errors(self) -> pl.DataFrame:
        """Recent launch and termination errors (the last 1,000): time, action, job_id, error."""
        return pl.DataFrame(
            list(self._errors),
            schema={
                "time": pl.Datetime("us", "UTC"),
                "action": pl.String,
                "job_id": pl.String,
                "error": pl.String,
            },
        )


def batch_controller(
    name: str = "controller",
    workers: int = 1,
    *,
    options: BatchOptions,
    max_concurrent_requests: int = 8,
    seconds_close: float = 60.0,
    seconds_launch: float = 600.0,
    seconds_idle: float = 60.0,
    **controller_options: Any,
) -> Controller:
    """A controller whose workers are AWS Batch jobs: the same as
    `bc.Controller(name, workers, launcher=aws.BatchLauncher(options, ...), ...)`.

    `max_concurrent_requests` and `seconds_close` are the launcher's. `seconds_launch`
    defaults to 600: a Batch job may wait minutes for an instance. Other keyword arguments are
    the controller's (tasks_max, seconds_wall, host, port, ...).
    """
    launcher = BatchLauncher(
        options, max_concurrent_requests=max_concurrent_requests, seconds_close=seconds_close
    )
    return Controller(
        name,
        workers,
        launcher=launcher,
        seconds_launch=seconds_launch,
        seconds_idle=seconds_idle,
        **controller_options,
    )
