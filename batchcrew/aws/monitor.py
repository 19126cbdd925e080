"""`BatchMonitor`: list, inspect, read the logs of and end the AWS Batch jobs of one job queue
and job definition by hand, each answer a polars DataFrame (crew.aws.batch's monitor, async).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import polars as pl

from batchcrew.aws import _rules
from batchcrew.aws._client import map_errors
from batchcrew.aws._ending import end_jobs
from batchcrew.aws._tables import (
    TIMESTAMP,
    ClientScope,
    ScopedClients,
    check_amount,
    check_optional_text,
    check_text,
    client_settings,
    table,
)
from batchcrew.aws.definition import find_definition
from batchcrew.aws.options import MemoryUnits, Resources, mebibytes, sanitize_job_name
from batchcrew.errors import BatchError

if TYPE_CHECKING:
    from types_aiobotocore_batch import BatchClient
    from types_aiobotocore_batch.type_defs import JobDetailTypeDef, JobQueueDetailTypeDef

logger = logging.getLogger("batchcrew.aws")

#: Every job status, in the order a job goes through them.
STATUSES = ("submitted", "pending", "runnable", "starting", "running", "succeeded", "failed")
ACTIVE = STATUSES[:5]
INACTIVE = STATUSES[5:]
#: The reason shown when AWS gives none (no statusReason, container reason or attempt reason):
#: usual for a job that has not ended yet.
NO_REASON = "no reason given"
#: Columns of `submit()`.
SUBMIT_SCHEMA: dict[str, pl.DataType] = {"name": pl.String(), "id": pl.String(), "arn": pl.String()}
#: Columns of `status()` and `jobs()`.
JOB_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "id": pl.String(),
    "arn": pl.String(),
    "queue": pl.String(),
    "status": pl.String(),
    "reason": pl.String(),
    "created": TIMESTAMP,
    "started": TIMESTAMP,
    "stopped": TIMESTAMP,
}
#: Columns of `terminate()`: `ended` is False, with the error, for a job that could not be ended.
TERMINATE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "ended": pl.Boolean(),
    "error": pl.String(),
}
#: Columns of `log()` and of each table `follow()` yields.
LOG_SCHEMA: dict[str, pl.DataType] = {
    "message": pl.String(),
    "timestamp": TIMESTAMP,
    "ingestion_time": TIMESTAMP,
}
#: Columns of `find()`: the short id given, then the columns of `status()`.
FIND_SCHEMA: dict[str, pl.DataType] = {"short_id": pl.String(), **JOB_SCHEMA}
#: Columns of `job_queues()` (state and status in lower case: "enabled", "valid").
QUEUE_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "arn": pl.String(),
    "state": pl.String(),
    "status": pl.String(),
}
#: ListJobs returns at most 1000 jobs a page when given a jobStatus (100 with filters).
LIST_JOBS_PAGE = 1000
#: How many ListJobs calls `jobs()` and `find()` have under way at once.
LIST_CONCURRENCY = 8
#: DescribeJobs takes at most 100 job ids a call.
DESCRIBE_JOBS_MAX = 100
#: Job ids per DescribeJobs call ("A list of up to 100 job IDs", botocore's Batch model).
_DESCRIBE_MAX = 100
#: How many TerminateJobs calls (of up to 50 jobs each) `terminate()` has under way at once.
TERMINATE_CONCURRENCY = 8
#: `terminate()` shows a progress bar on a terminal from this many jobs on.
PROGRESS_FROM = 4


class BatchMonitor(ScopedClients):
    """The jobs of `job_definition` in `job_queue`, and their logs in CloudWatch `log_group`.

    `job_definition` is a name (every revision), "name:revision" or an ARN. `job_queue` and
    `job_definition` may be None for a monitor used only for `status()`, `log()` and
    `follow()`, which look jobs up by id. `region`, `endpoint_url` and `profile` override the
    standard AWS resolution (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, config files).

    Use it with `async with` to keep one client per service for the block, or call its methods
    directly to make clients per call; both close every client they make. IAM permissions:
    batch:SubmitJob, batch:DescribeJobs, batch:ListJobs, batch:TerminateJob (which TerminateJobs
    needs too), logs:GetLogEvents, and batch:DescribeJobQueues for `job_queues()` and for
    `find()` without a `job_queue`.
    """

    def __init__(
        self,
        job_queue: str | None = None,
        job_definition: str | None = None,
        log_group: str = "/aws/batch/job",
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
    ) -> None:
        self.job_queue = check_optional_text("job_queue", job_queue)
        self.job_definition = check_optional_text("job_definition", job_definition)
        self.log_group = check_text("log_group", log_group)
        self._scope = ClientScope(client_settings(region, endpoint_url, profile))
        # Job definitions `submit()` has read (platform and resources), by reference: read
        # once per monitor, not once per job.
        self._definitions: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return (
            f"BatchMonitor(job_queue={self.job_queue!r}, job_definition={self.job_definition!r}, "
            f"log_group={self.log_group!r})"
        )

    def _queue_and_definition(self, action: str) -> tuple[str, str]:
        if self.job_queue is None or self.job_definition is None:
            raise ValueError(
                f"{action} needs the monitor's job_queue and job_definition; make it with "
                "BatchMonitor(job_queue=..., job_definition=...)"
            )
        return self.job_queue, self.job_definition

    # -- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        name: str,
        command: Sequence[str] | None = None,
        cpus: float | None = None,
        gpus: float | None = None,
        memory: float | None = None,
        memory_units: MemoryUnits = "gigabytes",
    ) -> pl.DataFrame:
        """Submit one job named `name` (made valid for AWS: other characters than letters,
        digits, "-" and "_" become "_") running `command` (a list of arguments, run without a
        shell; None: the definition's command). `cpus`, `gpus` and `memory` (in
        `memory_units`) override the definition's resources, as its platform allows them (read
        from DescribeJobDefinitions): on EC2 whole vCPUs, on Fargate its vCPU and memory pairs,
        a memory rounding up to the next value allowed. Returns one row: name, id, arn. Raises
        ValueError, naming the value and the rule, for resources AWS would refuse."""
        queue, definition = self._queue_and_definition("submit()")
        check_text("name", name)
        if command is not None and (
            isinstance(command, str)
            or not isinstance(command, Sequence)
            or not command
            or not all(isinstance(arg, str) for arg in command)
        ):
            raise ValueError(
                f"command must be a non-empty list of strings such as ['echo', 'hello'], "
                f"not {command!r}"
            )
        if memory_units not in ("gigabytes", "mebibytes"):
            raise ValueError(
                f'memory_units must be "gigabytes" or "mebibytes", not {memory_units!r}'
            )
        if command is not None and "" in command:
            # ContainerOverrides.command: "This parameter can't contain an empty string."
            raise ValueError(f"command may not hold an empty string (AWS refuses it): {command!r}")
        cpu_count = check_amount("cpus", cpus, zero=False)
        gpu_count = check_amount("gpus", gpus, zero=True)
        if gpu_count is not None and gpu_count != int(gpu_count):
            raise ValueError(f"gpus must be a whole number, not {gpus!r}")
        memory_amount = check_amount("memory", memory, zero=False)
        memory_mib = None if memory_amount is None else mebibytes(memory_amount, memory_units)
        overrides: dict[str, Any] = {}
        if command is not None:
            overrides["command"] = list(command)
        job_name = sanitize_job_name(name)
        async with self._scope.batch() as client:
            if cpu_count is not None or memory_mib is not None or gpu_count:
                requirements = await self._requirements(
                    client, definition, cpu_count, gpu_count, memory_mib
                )
                if requirements:
                    overrides["resourceRequirements"] = requirements
            with map_errors(f"submitting job {job_name!r} to queue {queue!r}"):
                answer = await client.submit_job(
                    jobName=job_name,
                    jobQueue=queue,
                    jobDefinition=definition,
                    containerOverrides=overrides,  # type: ignore[arg-type]
                )
        row = {"name": answer["jobName"], "id": answer["jobId"], "arn": answer["jobArn"]}
        return table([row], SUBMIT_SCHEMA)

    async def _requirements(
        self,
        client: Any,
        definition: str,
        cpus: float | None,
        gpus: float | None,
        memory_mib: int | None,
    ) -> list[dict[str, str]]:
        """resourceRequirements AWS accepts for a job of `definition`: its platform (EC2 or
        Fargate) and its own resources, read from DescribeJobDefinitions once per monitor,
        settle them."""
        found = self._definitions.get(definition)
        if found is None:
            with map_errors(f"describing job definition {definition!r}"):
                found = await find_definition(client, definition)
            if found is not None:
                self._definitions[definition] = found
        if found is None:
            raise BatchError(
                f"job definition {definition!r} not found (no ACTIVE revision of that name): "
                "check job_definition and the region",
                code="JobDefinitionNotFound",
                message=f"no job definition {definition}",
            )
        capabilities = found.get("platformCapabilities") or ["EC2"]
        platform: _rules.Platform = "FARGATE" if "FARGATE" in capabilities else "EC2"
        if platform == "FARGATE" and (cpus is None) != (memory_mib is None):
            # Fargate's memory depends on the vCPUs: both go out, the missing one the
            # definition's.
            own = Resources.of_container(found.get("containerProperties") or {})
            cpus = own.cpus if cpus is None else cpus
            memory_mib = own.memory_mib if memory_mib is None else memory_mib
        requirements = _rules.requirements(
            cpus=cpus, gpus=gpus, memory_mib=memory_mib, platform=platform, where=""
        )
        granted = next((int(r["value"]) for r in requirements if r["type"] == "MEMORY"), None)
        if memory_mib is not None and granted != memory_mib:
            logger.info(
                "on Fargate, memory rounds up from %d MiB to %d MiB (with %g vCPUs)",
                memory_mib,
                granted,
                cpus,
            )
        return requirements

    # -- looking at jobs --------------------------------------------------------------------

    async def _describe(self, id: str) -> JobDetailTypeDef | None:
        async with self._scope.batch() as client:
            with map_errors(f"describing job {id}"):
                answer = await client.describe_jobs(jobs=[id])
        jobs = answer.get("jobs", [])
        return jobs[0] if jobs else None

    async def status(self, id: str) -> pl.DataFrame:
        """One row about job `id` (any queue): name, id, arn, queue, status (lower case),
        reason, created, started, stopped (UTC, null where AWS has none). An unknown id: no
        row."""
        check_text("id", id)
        job = await self._describe(id)
        if job is None:
            return table([], JOB_SCHEMA)
        return table([_job_row(job, _queue_name(job.get("jobQueue", "")))], JOB_SCHEMA)

    async def jobs(self, status: str | Iterable[str] | None = None) -> pl.DataFrame:
        """The jobs of this queue and definition whose status is `status` (one of `STATUSES`
        or a list of them; None: every status), newest first, with the columns of `status()`.

        One ListJobs call per status asked, run concurrently, each paging at 1000 jobs a
        page, and the rows filtered to the definition here: AWS ignores jobStatus when a
        filter is given (and pages at 100 then), so this is the fewest calls. A job that
        changes status while the calls run may be missed or, once, listed twice (the later
        status is kept).
        """
        statuses = _statuses(status)
        queue, definition = self._queue_and_definition("jobs()")
        matches = _definition_matcher(definition)
        async with self._scope.batch() as client:
            found = await _list_jobs(client, [queue], statuses)
        queue_name = _queue_name(queue)
        rows: dict[str, dict[str, Any]] = {}
        for job_status in STATUSES:  # later statuses win for a job listed twice
            for summary in found.get((queue, job_status), []):
                if matches(summary.get("jobDefinition", "")):
                    rows[summary["jobId"]] = _job_row(summary, queue_name)
        frame = table(list(rows.values()), JOB_SCHEMA)
        frame = frame.filter(pl.col("status").is_in(statuses))
        return frame.sort("created", descending=True, nulls_last=True, maintain_order=True)

    async def find(self, ids: str | Iterable[str]) -> pl.DataFrame:
        """The jobs whose id starts with each of `ids` (short ids, such as the 8 characters
        `batchcrew jobs` shows; "start:index" for a child of an array job), among the jobs of
        `job_queue` in any status and of any definition, or, when `job_queue` is None, of every
        job queue in the region.

        One row per short id and job it matches, in the order of `ids` (each one's jobs newest
        first): `short_id` (as given), then the columns of `status()`. A short id that is a
        whole job id matches that job only; one that matches nothing has no row, and one with
        several rows is ambiguous. ListJobs lists no child of an array job: "start:index"
        matches child `index` of each array job whose id starts with `start` (DescribeJobs).

        One ListJobs call per queue and status (at most `LIST_CONCURRENCY` at once), so
        looking in every queue costs 7 calls a queue, and DescribeJobQueues first.
        """
        given = [ids] if isinstance(ids, str) else _listed(ids)
        if not given:
            raise ValueError(f"ids must be a job id or a non-empty list of them, not {ids!r}")
        short_ids = list(dict.fromkeys(check_text("ids", short_id) for short_id in given))
        async with self._scope.batch() as client:
            if self.job_queue is not None:
                queues = [self.job_queue]
            else:
                queues = [queue["jobQueueArn"] for queue in await _describe_queues(client)]
            found = await _list_jobs(client, queues, STATUSES)
            listed: dict[str, dict[str, Any]] = {}
            arrays: set[str] = set()
            for queue in queues:
                for job_status in STATUSES:  # later statuses win for a job listed twice
                    for summary in found.get((queue, job_status), []):
                        listed[summary["jobId"]] = _job_row(summary, _queue_name(queue))
                        if (summary.get("arrayProperties") or {}).get("size"):
                            arrays.add(summary["jobId"])
            matched: dict[str, list[str]] = {}  # short id: the ids it matches
            for short_id in short_ids:
                start, colon, index = short_id.partition(":")
                if start in listed:
                    starts = [start]  # a whole id: that job, not the longer ids it starts
                else:
                    starts = [job_id for job_id in listed if job_id.startswith(start)]
                if colon:
                    matched[short_id] = [
                        f"{job_id}:{index}" for job_id in starts if job_id in arrays
                    ]
                else:
                    matched[short_id] = starts
            children = sorted({job_id for found_ids in matched.values() for job_id in found_ids})
            children = [job_id for job_id in children if job_id not in listed]
            for first in range(0, len(children), DESCRIBE_JOBS_MAX):
                chunk = children[first : first + DESCRIBE_JOBS_MAX]
                with map_errors(f"describing jobs {', '.join(chunk)}"):
                    answer = await client.describe_jobs(jobs=chunk)
                for job in answer.get("jobs", []):
                    listed[job["jobId"]] = _job_row(job, _queue_name(job.get("jobQueue", "")))
        rows = []
        for short_id, job_ids in matched.items():
            jobs = [listed[job_id] for job_id in job_ids if job_id in listed]
            jobs.sort(key=lambda job: -(job["created"] or 0))
            rows += [{"short_id": short_id, **job} for job in jobs]
        return table(rows, FIND_SCHEMA)

    async def job_queues(self) -> pl.DataFrame:
        """Every job queue in the region (DescribeJobQueues, every page), by name: name, arn,
        state ("enabled" or "disabled") and status ("valid", "invalid", "creating", ...)."""
        async with self._scope.batch() as client:
            queues = await _describe_queues(client)
        rows = [
            {
                "name": queue.get("jobQueueName"),
                "arn": queue.get("jobQueueArn"),
                "state": str(queue.get("state", "")).lower() or None,
                "status": str(queue.get("status", "")).lower() or None,
            }
            for queue in queues
        ]
        return table(rows, QUEUE_SCHEMA).sort("name")

    async def submitted(self) -> pl.DataFrame:
        """Jobs whose status is "submitted"."""
        return await self.jobs("submitted")

    async def pending(self) -> pl.DataFrame:
        """Jobs whose status is "pending"."""
        return await self.jobs("pending")

    async def runnable(self) -> pl.DataFrame:
        """Jobs whose status is "runnable"."""
        return await self.jobs("runnable")

    async def starting(self) -> pl.DataFrame:
        """Jobs whose status is "starting"."""
        return await self.jobs("starting")

    async def running(self) -> pl.DataFrame:
        """Jobs whose status is "running"."""
        return await self.jobs("running")

    async def succeeded(self) -> pl.DataFrame:
        """Jobs whose status is "succeeded"."""
        return await self.jobs("succeeded")

    async def failed(self) -> pl.DataFrame:
        """Jobs whose status is "failed"."""
        return await self.jobs("failed")

    async def active(self) -> pl.DataFrame:
        """Jobs not ended yet: submitted, pending, runnable, starting or running."""
        return await self.jobs(ACTIVE)

    async def inactive(self) -> pl.DataFrame:
        """Jobs that have ended: succeeded or failed."""
        return await self.jobs(INACTIVE)

    # -- ending jobs ------------------------------------------------------------------------

    async def terminate(
        self,
        ids: str | Iterable[str] | None = None,
        all: bool = False,
        reason: str = "terminated by batchcrew monitor",
    ) -> pl.DataFrame:
        """End jobs `ids` (one id, or a list or polars Series of them), or with `all=True`
        every active job of this queue and definition: TerminateJobs, 50 jobs a call (it ends a
        job in any state), at most `TERMINATE_CONCURRENCY` calls at once, with a progress bar
        on a terminal.

        Returns one row per job: id, ended (whether AWS accepted its termination), error (why
        not, else null: an id given that AWS does not know is not ended). A job that cannot be
        ended does not stop the others: check `ended`.
        """
        check_text("reason", reason)
        if not isinstance(all, bool):
            raise ValueError(f"all must be True or False, not {all!r}")
        if all and ids is not None:
            raise ValueError("give either ids or all=True, not both")
        if all:
            targets = (await self.active())["id"].to_list()
        elif ids is None:
            raise ValueError("give the ids of the jobs to end, or all=True to end every active one")
        else:
            given = [ids] if isinstance(ids, str) else _listed(ids)
            if not given:
                raise ValueError(f"ids must be a job id or a non-empty list of them, not {ids!r}")
            targets = [check_text("ids", job_id) for job_id in given]
        targets = list(dict.fromkeys(targets))  # each job once, in the order given
        limiter = anyio.CapacityLimiter(TERMINATE_CONCURRENCY)
        errors: dict[str, str | None] = {}
        async with self._scope.batch() as client:
            known = targets
            if not all:
                # TerminateJobs counts an id it does not know as ended ("Jobs that can't be
                # found are treated as successfully processed"): a mistyped id would look
                # ended. Ids given by hand are looked up first, 100 to a DescribeJobs call.
                found: set[str] = set()
                for start in range(0, len(targets), _DESCRIBE_MAX):
                    chunk = targets[start : start + _DESCRIBE_MAX]
                    with map_errors(f"describing jobs {chunk[0]} ..."):
                        answer = await client.describe_jobs(jobs=chunk)
                    found.update(job["jobId"] for job in answer.get("jobs", []))
                for job_id in targets:
                    if job_id not in found:
                        errors[job_id] = (
                            f"no job {job_id}: DescribeJobs knows no such id in this region (AWS "
                            "keeps ended jobs for about 7 days); check the id and region"
                        )
                known = [job_id for job_id in targets if job_id in found]
            with _progress(len(targets)) as advance:
                advance(len(targets) - len(known))
                errors.update(await end_jobs(client, known, reason, limiter, advance))
        for job_id, error in errors.items():
            if error is not None:
                logger.warning("could not end job %s: %s", job_id, error)
        rows = [
            {"id": job_id, "ended": errors[job_id] is None, "error": errors[job_id]}
            for job_id in targets
        ]
        return table(rows, TERMINATE_SCHEMA)

    # -- logs -------------------------------------------------------------------------------

    async def log(self, id: str, start_from_head: bool = True) -> pl.DataFrame:
        """Every event of job `id`'s log stream (its latest attempt's), oldest first (newest
        first if not `start_from_head`): message, timestamp, ingestion_time.

        Raises `BatchError` with code "JobNotFound" for an unknown id, "JobNotStarted" for a
        job without a log stream yet, and "ResourceNotFoundException" if the stream is not in
        the log group (nothing written yet, or the logs go to another group: see log_group).
        """
        check_text("id", id)
        if not isinstance(start_from_head, bool):
            raise ValueError(f"start_from_head must be True or False, not {start_from_head!r}")
        job = await self._describe(id)
        group, stream = self._log_stream(id, job)
        if stream is None:
            raise BatchError(
                f"job {id} has not started: it has no log stream yet (status "
                f"{_status(job)}); wait until status() says it is running, then try again",
                code="JobNotStarted",
                message="the job has no log stream yet",
            )
        try:
            events, _ = await self._read_log(id, group, stream, None, forward=start_from_head)
        except BatchError as error:
            if error.code != "ResourceNotFoundException":
                raise
            raise BatchError(
                f"{error}; the job may not have written anything yet, or its logs are in "
                "another log group: pass log_group= (CLI: --log-group)",
                code=error.code,
                message=error.message,
            ) from error
        return table(events, LOG_SCHEMA)

    async def follow(
        self, id: str, *, seconds_interval: float = 2.0
    ) -> AsyncIterator[pl.DataFrame]:
        """Yield job `id`'s new log events (tables like `log()`'s, oldest first) as they
        arrive, checking every `seconds_interval` seconds, until the job has ended and its
        last events are read. Waits for the job to start; a job with several attempts is
        followed into each new attempt's stream. Stop early by leaving the `async for`."""
        check_text("id", id)
        interval = check_amount("seconds_interval", seconds_interval, zero=False)
        assert interval is not None
        current: tuple[str, str] | None = None
        token: str | None = None
        while True:
            job = await self._describe(id)
            done = job is not None and job["status"] in ("SUCCEEDED", "FAILED")
            group, stream = self._log_stream(id, job)
            if stream is not None:
                if current != (group, stream):
                    current, token = (group, stream), None
                try:
                    events, token = await self._read_log(id, group, stream, token, forward=True)
                except BatchError as error:
                    # On AWS the stream appears with the job's first output line, which may
                    # come after DescribeJobs names it.
                    if error.code != "ResourceNotFoundException" or done:
                        raise
                    events = []
                if events:
                    yield table(events, LOG_SCHEMA)
            if done:
                return
            await anyio.sleep(interval)

    def _log_stream(self, id: str, job: JobDetailTypeDef | None) -> tuple[str, str | None]:
        """(log group, log stream) of the job's latest attempt; the stream is None before
        the job has one. Raises `BatchError` "JobNotFound" when `job` is None."""
        if job is None:
            raise BatchError(
                f"job {id} not found: DescribeJobs knows no such id in this region (AWS keeps "
                "ended jobs for about 7 days); check the id and region",
                code="JobNotFound",
                message=f"no job {id}",
            )
        container: Mapping[str, Any] = job.get("container") or {}
        stream = container.get("logStreamName")
        if not stream:
            # Between attempts (a retry waiting as RUNNABLE) only the attempts name a stream.
            for attempt in reversed(job.get("attempts") or []):
                stream = (attempt.get("container") or {}).get("logStreamName")
                if stream:
                    break
        group = self.log_group
        configuration = container.get("logConfiguration") or {}
        if configuration.get("logDriver") == "awslogs":
            # A definition may send its logs elsewhere; that is where they are.
            group = (configuration.get("options") or {}).get("awslogs-group", group)
        return group, stream or None

    async def _read_log(
        self, id: str, group: str, stream: str, token: str | None, *, forward: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Every event after `token` (None: from the head, or from the tail backward when not
        `forward`), paging GetLogEvents until the token comes back unchanged, as AWS ends a
        stream. Returns the events (in reading order) and the last token."""
        pages: list[list[dict[str, Any]]] = []
        async with self._scope.logs() as client:
            with map_errors(f"reading the log of job {id} (group {group!r}, stream {stream!r})"):
                while True:
                    kwargs: dict[str, Any] = {"nextToken": token} if token else {}
                    page = await client.get_log_events(
                        logGroupName=group,
                        logStreamName=stream,
                        startFromHead=forward,  # AWS wants it true with forward tokens
                        **kwargs,
                    )
                    pages.append(
                        [
                            {
                                "message": event.get("message"),
                                "timestamp": event.get("timestamp"),
                                "ingestion_time": event.get("ingestionTime"),
                            }
                            for event in page.get("events", [])
                        ]
                    )
                    if forward:
                        following = page.get("nextForwardToken")
                    else:
                        following = page.get("nextBackwardToken")
                    if following is None or following == token:
                        break
                    token = following
        if not forward:
            # Each page is oldest first; newest first overall reverses pages and events.
            return [event for page in pages for event in reversed(page)], token
        return [event for page in pages for event in page], token


# -- helpers of the tables above ------------------------------------------------------------


async def _list_jobs(
    client: BatchClient, queues: Sequence[str], statuses: Sequence[str]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The job summaries of each queue in each status, {(queue, status): summaries}: one
    ListJobs call per pair (every page, 1000 jobs a page), at most `LIST_CONCURRENCY` at
    once. One failure (an unknown queue, say) fails them all, raised once as its
    `BatchError` rather than as a group of them."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    failures: list[BatchError] = []
    limiter = anyio.CapacityLimiter(LIST_CONCURRENCY)

    async def list_status(queue: str, job_status: str) -> None:
        summaries: list[dict[str, Any]] = []
        token: str | None = None
        try:
            async with limiter:
                with map_errors(f"listing {job_status} jobs of queue {queue!r}"):
                    while True:
                        kwargs: dict[str, Any] = {"nextToken": token} if token else {}
                        page = await client.list_jobs(
                            jobQueue=queue,
                            jobStatus=job_status.upper(),  # type: ignore[arg-type]
                            maxResults=LIST_JOBS_PAGE,
                            **kwargs,
                        )
                        summaries += page.get("jobSummaryList", [])  # type: ignore[arg-type]
                        token = page.get("nextToken")
                        if not token:
                            break
        except BatchError as error:
            failures.append(error)
            group.cancel_scope.cancel()
        found[queue, job_status] = summaries

    async with anyio.create_task_group() as group:
        for queue in queues:
            for job_status in statuses:
                group.start_soon(list_status, queue, job_status)
    if failures:
        raise failures[0]
    return found


async def _describe_queues(client: BatchClient) -> list[JobQueueDetailTypeDef]:
    """Every job queue in the region, every page of DescribeJobQueues."""
    queues: list[JobQueueDetailTypeDef] = []
    token: str | None = None
    with map_errors("describing the job queues"):
        while True:
            kwargs: dict[str, Any] = {"nextToken": token} if token else {}
            page = await client.describe_job_queues(maxResults=100, **kwargs)
            queues += page.get("jobQueues", [])
            token = page.get("nextToken")
            if not token:
                return queues


def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...]:
    if status is None:
        return STATUSES
    given = [status] if isinstance(status, str) else _listed(status)
    if not given:
        raise ValueError(f"status must be a job status or a list of them, not {status!r}")
    chosen = []
    for item in given:
        if not isinstance(item, str) or item.lower() not in STATUSES:
            raise ValueError(f"status must be among {', '.join(STATUSES)}; not {item!r}")
        chosen.append(item.lower())
    return tuple(dict.fromkeys(chosen))


def _listed(values: object) -> list[object]:
    """The items of a list, tuple, polars Series or other iterable; [] for a non-iterable."""
    if isinstance(values, Iterable) and not isinstance(values, str | bytes | Mapping):
        return list(values)
    return []


def _definition_matcher(reference: str) -> Callable[[str], bool]:
    """Whether a job's definition ARN is `reference`: an ARN (that revision), "name:revision"
    or a name (any revision)."""
    if reference.startswith("arn:"):
        return lambda arn: arn == reference
    name, _, revision = reference.partition(":")

    def matches(arn: str) -> bool:
        found_name, _, found_revision = arn.rpartition("job-definition/")[2].partition(":")
        return found_name == name and (not revision or found_revision == revision)

    return matches


def _queue_name(queue: str) -> str:
    """A queue's name, from its name or ARN."""
    return queue.rpartition("job-queue/")[2] if queue.startswith("arn:") else queue


def _status(job: Mapping[str, Any] | None) -> str:
    return str(job["status"]).lower() if job else "unknown"


def _reason(job: Mapping[str, Any]) -> str:
    """Why the job is where it is: statusReason, else its container's reason, else its latest
    attempt's reason, else `NO_REASON`."""
    attempts = job.get("attempts") or [{}]
    candidates = (
        job.get("statusReason"),
        (job.get("container") or {}).get("reason"),
        attempts[-1].get("statusReason"),
    )
    return next((str(reason) for reason in candidates if reason), NO_REASON)


def _job_row(job: Mapping[str, Any], queue: str) -> dict[str, Any]:
    """A row of `JOB_SCHEMA` from a JobDetail (DescribeJobs) or JobSummary (ListJobs)."""
    return {
        "name": job.get("jobName"),
        "id": job.get("jobId"),
        "arn": job.get("jobArn"),
        "queue": queue,
        "status": _status(job),
        "reason": _reason(job),
        "created": job.get("createdAt"),
        "started": job.get("startedAt"),
        "stopped": job.get("stoppedAt"),
    }


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A function to call with the number of jobs each call ended: it advances a rich progress
    bar on stderr when stderr is a terminal and there are at least `PROGRESS_FROM` jobs, else
    does nothing."""
    if total < PROGRESS_FROM or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("ending jobs"), BarColumn(), MofNCompleteColumn(), console=Console(stderr=True)
    ) as progress:
        task = progress.add_task("end", total=total)
        yield lambda count: progress.advance(task, count)
