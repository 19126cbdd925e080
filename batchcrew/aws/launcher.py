"""The AWS Batch launcher: workers as Batch jobs, submitted and ended by aiobotocore coroutines.

Every call runs in the background, at most `max_concurrent_requests` at a time, so the one to
two seconds a Batch call can take never stalls dispatch. Workers launched together go out as
one array job. The launcher polls the status of its unconnected jobs so that a job that fails
before its worker connects counts as a failed launch at once, and on close it cancels and
terminates every job of its own that has not finished.
"""

from __future__ import annotations

import datetime
import logging
import shlex
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import polars as pl

from batchcrew.aws._client import map_errors, open_client
from batchcrew.aws.options import BatchOptions, sanitize_job_name
from batchcrew.controller import Controller
from batchcrew.errors import BatchError
from batchcrew.launchers.base import Launcher, LaunchRequest, WorkerExit

logger = logging.getLogger("batchcrew")

ARRAY_SIZE_MAX = 10_000
"""AWS Batch's largest array job: bigger launches are split into several."""

TAG = "batchcrew:controller"
"""The tag on every job a launcher submits: "<controller name>/<instance token>"."""

_DESCRIBE_MAX = 100  # job ids per DescribeJobs call
_SECONDS_CLOSE_QUIET = 5.0  # at close, how long ending jobs may take before a WARNING says so
_ERRORS_KEPT = 1000
_FINISHED = ("SUCCEEDED", "FAILED")


@dataclass
class _Job:
    """One submitted job: a plain job (size 1) or an array job of `size` children."""

    id: str
    launch: str
    offset: int
    size: int
    unfinished: set[int] = field(default_factory=set)  # child numbers not known finished

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

    # -- life -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the launcher's one Batch client."""
        self._polling = False  # the last controller's poller, if any, ended with its task group
        self._stack = AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            open_client("batch", self.options.client_settings())
        )

    async def close(self) -> None:
        """Cancel and terminate every job of this launcher not known to have finished,
        concurrently (bounded), giving up after `seconds_close`; then close the client.

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
            if targets:
                await self._end_at_close(targets)
            self._jobs.clear()
        finally:
            if self._stack is not None:
                await self._stack.aclose()
            self._client = None

    async def _end_at_close(self, targets: list[str]) -> None:
        logger.info(
            "closing: ending %d AWS Batch job(s) not known to have finished (CancelJob, "
            "TerminateJob): %s",
            len(targets),
            " ".join(targets),
        )
        failures: dict[str, str] = {
            job_id: f"no answer within seconds_close={self.seconds_close:g} (AWS slow or "
            "unreachable: botocore was still retrying)"
            for job_id in targets
        }

        async def end(job_id: str) -> None:
            error = await self._end(job_id, "the batchcrew controller closed")
            if error is None:
                del failures[job_id]
            else:
                failures[job_id] = error

        async def warn_if_slow() -> None:
            # A healthy close ends its jobs in a second or two and says so at INFO; one that
            # waits on AWS says at WARNING what it waits for, long before it gives up.
            seconds = min(_SECONDS_CLOSE_QUIET, self.seconds_close / 2)
            await anyio.sleep(seconds)
            logger.warning(
                "closing: still ending %d AWS Batch job(s) after %g s (AWS slow or "
                "unreachable?); giving up after seconds_close=%g: %s",
                len(failures),
                seconds,
                self.seconds_close,
                " ".join(failures),
            )

        with anyio.move_on_after(self.seconds_close):
            async with anyio.create_task_group() as group:
                group.start_soon(warn_if_slow)
                async with anyio.create_task_group() as ends:
                    for job_id in targets:
                        ends.start_soon(end, job_id)
                group.cancel_scope.cancel()
        if failures:
            logger.error(
                "could not end %d AWS Batch job(s) at close; they may still be running, and "
                "costing. End them by hand: %s\n%s",
                len(failures),
                self._terminate_command(list(failures)),
                "\n".join(f"  {job_id}: {error}" for job_id, error in failures.items()),
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
            self.start_soon(self._poll)

    def submit_job_request(self, request: LaunchRequest, offset: int, size: int) -> dict[str, Any]:
        """The SubmitJob parameters for workers offset..offset+size-1 of `request`."""
        options = self.options
        environment = dict(request.environment)
        if size == 1:
            environment["BATCHCREW_WORKER_INDEX"] = str(offset)
        elif offset:
            environment["BATCHCREW_INDEX_OFFSET"] = str(offset)
        overrides: dict[str, Any] = dict(options.container_overrides or {})
        extra = [
            item for item in overrides.get("environment", []) if item.get("name") not in environment
        ]
        overrides["command"] = list(request.command)
        overrides["environment"] = extra + [
            {"name": name, "value": value} for name, value in sorted(environment.items())
        ]
        requirements = options.resource_requirements(request.level)
        if requirements:
            kinds = {item["type"] for item in requirements}
            overrides["resourceRequirements"] = [
                item
                for item in overrides.get("resourceRequirements", [])
                if item.get("type") not in kinds
            ] + requirements
        name = f"{request.controller}-{request.launch}"
        if offset:
            name += f"-{offset}"
        params: dict[str, Any] = {
            "jobName": sanitize_job_name(name),
            "jobQueue": options.job_queue,
            "jobDefinition": options.job_definition,
            "containerOverrides": overrides,
            "tags": {**(options.tags or {}), TAG: f"{request.controller}/{request.instance}"},
        }
        if size > 1:
            params["arrayProperties"] = {"size": size}
        passthrough = {
            "shareIdentifier": options.share_identifier,
            "schedulingPriorityOverride": options.scheduling_priority_override,
            "parameters": options.parameters,
            "nodeOverrides": options.node_overrides,
            "retryStrategy": options.retry_strategy,
            "propagateTags": options.propagate_tags,
            "timeout": options.timeout,
            "eksPropertiesOverride": options.eks_properties_override,
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
        """Cancel then terminate the jobs (or array children) of `launch` running `indexes`."""
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
        async with anyio.create_task_group() as group:
            for job_id in targets:
                group.start_soon(
                    self._end, job_id, "batchcrew: the worker did not connect within seconds_launch"
                )

    async def end_worker(self, launch: str, index: int, reason: str) -> None:
        """Cancel then terminate the job, or the array child, that runs worker `index`."""
        for job in self._jobs.get(launch, []):
            if job.offset <= index < job.offset + job.size:
                await self._end(job.child_id(index - job.offset), reason)

    async def _end(self, job_id: str, reason: str) -> str | None:
        """Cancel, then terminate `job_id`; return None if TerminateJob succeeded, else why not."""
        # CancelJob ends a job not yet started; TerminateJob one already running. A job can
        # move between the two calls, so both are sent, as crew.aws.batch does.
        failure: str | None = None
        for action in ("CancelJob", "TerminateJob"):
            try:
                async with self._limiter:
                    with map_errors(f"{action} {job_id}"):
                        method = (
                            self._client.cancel_job
                            if action == "CancelJob"
                            else self._client.terminate_job
                        )
                        await method(jobId=job_id, reason=reason)
                failure = None
            except BatchError as error:
                self._record(action, job_id, error)
                logger.warning("%s", error)
                failure = str(error)
        return failure

    # -- watching -------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await anyio.sleep(self.seconds_poll)
            await self.check_jobs()

    async def check_jobs(self) -> None:
        """Describe the jobs not known finished; report those that finished to the controller
        (so a job that failed before its worker connected counts as a failed launch now)."""
        children: dict[str, tuple[_Job, int]] = {}
        for jobs in self._jobs.values():
            for job in jobs:
                for child in job.unfinished:
                    children[job.child_id(child)] = (job, child)
        ids = list(children)
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
                if detail.get("status") not in _FINISHED or detail["jobId"] not in children:
                    continue
                job, child = children[detail["jobId"]]
                job.unfinished.discard(child)
                succeeded = detail["status"] == "SUCCEEDED"
                container = detail.get("container", {})
                reason = detail.get("statusReason") or container.get("reason") or "no reason given"
                self.report(
                    WorkerExit(
                        job.launch,
                        job.offset + child,
                        0 if succeeded else container.get("exitCode", 1),
                        f"its AWS Batch job {detail['jobId']} {detail['status'].lower()}: {reason}",
                    )
                )
        for launch, jobs in list(self._jobs.items()):
            jobs[:] = [job for job in jobs if job.unfinished]
            if not jobs:
                del self._jobs[launch]

    # -- errors ---------------------------------------------------------------------------

    def _record(self, action: str, job_id: str | None, error: BatchError) -> None:
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
