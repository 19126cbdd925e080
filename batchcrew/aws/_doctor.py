"""`aws.doctor()`: check, before a run, that a job queue and a job definition can run batchcrew
workers (credentials, queue, compute environments, definition, security groups, the
controller's address), each finding with its fix, then launch one worker and see it work.
`batchcrew doctor` prints the same report.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import re
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import polars as pl
import zmq

from batchcrew.aws._client import ClientSettings, first_call, map_errors, open_client
from batchcrew.aws.definition import WORKER_COMMAND, find_definition
from batchcrew.aws.launcher import BatchLauncher
from batchcrew.aws.options import BatchOptions, Plan, Resources
from batchcrew.controller import Controller
from batchcrew.errors import BatchcrewError, BatchError

__all__ = ["CHECK_SCHEMA", "DoctorReport", "Status", "doctor"]

logger = logging.getLogger("batchcrew.aws")

Status = Literal["ok", "problem", "skipped"]

#: Columns of `DoctorReport.checks`: one row per check, in the order they ran. `subject` is
#: what was looked at (a queue, a compute environment, an address, a job); `fix` says what to
#: do for a problem (and, for a check skipped, what would let it run), else null.
CHECK_SCHEMA: dict[str, pl.DataType] = {
    "check": pl.String(),
    "subject": pl.String(),
    "status": pl.String(),
    "found": pl.String(),
    "fix": pl.String(),
}

# A first call to AWS (DescribeJobQueues) gets a few quick attempts, as the launcher's does at
# start (`first_call`): an endpoint nothing answers at fails the check in seconds.
_SECONDS_CALL = 30.0  # the longest any one stage of AWS calls may take
#: EC2 is optional here: two attempts, and a check skipped if it takes longer than this.
_SECONDS_EC2 = 15.0
#: How long past `seconds_launch` the launched worker may take to run the trivial task.
_SECONDS_TASK = 30.0
#: How long, after the close, the doctor watches its job end (AWS shows a job ended by
#: TerminateJob, or by its worker leaving, within seconds).
_SECONDS_ENDING = 10.0
_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
_BAD_KEYS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
    }
)
#: The port range a controller with port=0 binds in: pyzmq's bind_to_random_port draws from
#: min_port=49152 to max_port=65536 (exclusive), the IANA dynamic range.
_RANDOM_PORTS = (49152, 65535)
#: ComputeResource.type (botocore's Batch model, CRType): EC2, SPOT, FARGATE, FARGATE_SPOT.
_FARGATE_TYPES = frozenset({"FARGATE", "FARGATE_SPOT"})
#: Job statuses that end a job (JobStatus, botocore's Batch model).
_FINISHED = frozenset({"SUCCEEDED", "FAILED"})
#: Container reasons of an image that could not be pulled (on Fargate, an ECR registry whose
#: auth could not be fetched): see the messages testing/_batch.py quotes from users' reports.
_PULL_ERRORS = ("CannotPullContainerError", "ResourceInitializationError")
#: The reasons batchcrew gives TerminateJob(s) (aws/launcher.py): a job that failed so was
#: ended by the controller, not by AWS.
_OWN_REASONS = ("batchcrew", "the batchcrew controller closed")
#: What a RUNNABLE job's statusReason means and what to do, from the AWS Batch user guide,
#: "Jobs stuck in a RUNNABLE status"
#: (https://docs.aws.amazon.com/batch/latest/userguide/job_stuck_in_runnable.html and its
#: sub-pages on capacity, misconfiguration and invalid compute environments).
_RUNNABLE_FIXES = (
    (
        "COMPUTE_ENVIRONMENT_MAX_RESOURCE",
        "every compute environment's maxvCpus is below what one worker asks: raise it (aws "
        "batch update-compute-environment --compute-environment CE --compute-resources "
        "maxvCpus=N), or ask fewer vCPUs per worker: cpus= (CLI: --cpus)",
    ),
    (
        "JOB_RESOURCE_REQUIREMENT",
        "no instance type the compute environments may launch has the vCPUs, memory or GPUs a "
        "worker asks: allow bigger instance types (instanceTypes, e.g. optimal or a bigger "
        "family), or ask less per worker: cpus= and memory= (CLI: --cpus, --memory)",
    ),
    (
        "INSUFFICIENT_INSTANCE_CAPACITY",
        "EC2 has no instances of the types asked for in the subnets' Availability Zones right "
        "now: allow more instance types and subnets in more zones, or try again later",
    ),
    (
        "SERVICE_ROLE_PERMISSIONS",
        "AWS Batch's service role lacks permissions: use the service-linked role "
        "AWSServiceRoleForBatch, or attach the AWSBatchServiceRole managed policy",
    ),
    (
        "are disabled",
        "enable them: aws batch update-compute-environment --compute-environment CE --state "
        "ENABLED (console: AWS Batch > Compute environments > CE > Enable)",
    ),
    (
        "are invalid",
        "fix what each compute environment's statusReason names (see the compute environment "
        "rows), as https://docs.aws.amazon.com/batch/latest/userguide/"
        "invalid_compute_environment.html describes",
    ),
)
#: What the launcher reports of a RUNNABLE job: "its AWS Batch job ID is RUNNABLE[, not
#: placed]: REASON" (aws/launcher.py, check_jobs).
_RUNNABLE_SAID = re.compile(r"is RUNNABLE[^:]*: (.+)$", re.DOTALL)
_RUNNABLE_DEFAULT = (
    "a new instance takes minutes to start: give the launch more time, seconds_launch=900 "
    "(CLI: --seconds-launch 900). If jobs never leave RUNNABLE, check that the compute "
    "environment's subnets reach the ECS and ECR endpoints (a NAT gateway, public IPs, or VPC "
    "endpoints) and that its instance role has AmazonEC2ContainerServiceforEC2Role "
    "(https://docs.aws.amazon.com/batch/latest/userguide/job_stuck_in_runnable.html)"
)


@dataclass(frozen=True, eq=False)
class DoctorReport:
    """What `aws.doctor()` found: `checks` (columns of `CHECK_SCHEMA`, one row per check),
    `ok` (no check found a problem; skipped checks do not count), and `str(report)`, the
    report as a person reads it, each problem followed by its fix."""

    job_queue: str
    job_definition: str
    checks: pl.DataFrame

    @property
    def ok(self) -> bool:
        """True when no check found a problem."""
        return not bool((self.checks["status"] == "problem").any())

    @property
    def problems(self) -> pl.DataFrame:
        """The rows of the checks that found a problem."""
        return self.checks.filter(pl.col("status") == "problem")

    def __str__(self) -> str:
        lines = [
            f"batchcrew doctor: job queue {self.job_queue}, job definition {self.job_definition}"
        ]
        width = len("[skipped]")
        for row in self.checks.iter_rows(named=True):
            subject = f" ({row['subject']})" if row["subject"] else ""
            lines.append(f"{'[' + row['status'] + ']':<{width}} {row['check']}{subject}")
            lines.append(f"{'':<{width}}   {row['found']}")
            if row["fix"]:
                lines.append(f"{'':<{width}}   fix: {row['fix']}")
        count = self.problems.height
        lines.append(
            "all checks passed"
            if count == 0
            else f"{count} problem{'s' if count > 1 else ''}: fix them, then run the doctor again"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"DoctorReport(job_queue={self.job_queue!r}, job_definition="
            f"{self.job_definition!r}, ok={self.ok}, checks={self.checks.height})"
        )


async def doctor(
    job_queue: str | None = None,
    job_definition: str | None = None,
    *,
    options: BatchOptions | None = None,
    workers: int = 1,
    host: str | None = None,
    port: int = 0,
    address: str | None = None,
    launch: bool = True,
    seconds_launch: float = 600.0,
) -> DoctorReport:
    """Check that `job_queue` and `job_definition` can run batchcrew workers, and return a
    `DoctorReport` naming each problem with its fix.

    Give the queue and the definition, or `options` (an `aws.BatchOptions`, whose region,
    endpoint_url, profile and resources the checks use). `workers` is how many workers the run
    will ask for, checked against the compute environments' maxvCpus. `host`, `port` and
    `address` are the controller's (see `bc.Controller`): where it listens, and where workers
    dial; the security groups and subnets are checked against them.

    Unless `launch` is False, it then launches one worker for real (waiting up to
    `seconds_launch` for it to connect), runs a trivial task on it and closes, ending the job:
    where that stops (RUNNABLE, an image that does not pull, a worker that runs but never
    connects, a refused version) is the last check. A worker that connects overrules the
    network checks' guesses. Needs the IAM permissions of a controller and the monitor, and
    ec2:DescribeSecurityGroups, ec2:DescribeSubnets and ec2:DescribeVpcs (without them those
    checks are skipped). EC2 is reached the standard way (AWS_ENDPOINT_URL_EC2, not
    `endpoint_url`, which is AWS Batch's).

    Raises ValueError for a bad argument; what AWS answers is in the report, never raised.
    """
    options = _options(job_queue, job_definition, options)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
    if not isinstance(launch, bool):
        raise ValueError(f"launch must be True or False, not {launch!r}")
    if host is not None and (not isinstance(host, str) or not host):
        raise ValueError(
            f"host must be a non-empty string (an address of this machine), not {host!r}"
        )
    if isinstance(seconds_launch, bool) or not (
        isinstance(seconds_launch, int | float) and 0 < seconds_launch < math.inf
    ):
        raise ValueError(
            f"seconds_launch must be a positive number of seconds, not {seconds_launch!r}"
        )
    # The controller of the launch is made now, so that its own checks (port, address) refuse
    # bad values at the door, and so that the address checked is the one it would use.
    controller = _controller(options, host, port, address, seconds_launch)
    if address is not None:
        dial_host, _, dial_port = address.removeprefix("tcp://").rpartition(":")
        dialled = (dial_host.strip("[]"), int(dial_port))
    else:
        dialled = (controller.host, port)
    run = _Doctor(options, workers, dialled, port, float(seconds_launch))
    await run.check(controller if launch else None)
    return DoctorReport(options.job_queue, options.job_definition, run.frame())


def _options(
    job_queue: str | None, job_definition: str | None, options: BatchOptions | None
) -> BatchOptions:
    if options is None:
        if job_queue is None or job_definition is None:
            raise ValueError(
                "give the job queue and the job definition to check: doctor(job_queue, "
                "job_definition), or doctor(options=aws.BatchOptions(...))"
            )
        # BatchOptions refuses empty names, saying which.
        return BatchOptions(job_definition=job_definition, job_queue=job_queue)
    if not isinstance(options, BatchOptions):
        raise ValueError(f"options must be aws.BatchOptions, not {type(options).__name__}")
    for name, given in (("job_queue", job_queue), ("job_definition", job_definition)):
        if given is not None and given != getattr(options, name):
            raise ValueError(
                f"{name}={given!r} but options names {getattr(options, name)!r}: give one of "
                "them, or the same in both"
            )
    return options


def _controller(
    options: BatchOptions, host: str | None, port: int, address: str | None, seconds: float
) -> Controller:
    """The controller of the launch: one worker, given up on after `seconds`, at the first
    failed launch, its jobs polled often enough to see a failure well within `seconds`."""
    launcher = BatchLauncher(
        options, seconds_poll=max(0.25, min(5.0, seconds / 8)), seconds_close=60.0
    )
    extra: dict[str, Any] = {} if address is None else {"address": address}
    return Controller(
        f"batchcrew-doctor-{secrets.token_hex(3)}",
        1,
        launcher=launcher,
        host=host,
        port=port,
        seconds_launch=seconds,
        launch_failures_max=1,
        crashes_max=0,
        **extra,
    )


@dataclass
class _Row:
    check: str
    subject: str | None
    status: Status
    found: str
    fix: str | None = None


class _Doctor:
    """One run of the checks: the rows found so far, and what later checks need."""

    def __init__(
        self,
        options: BatchOptions,
        workers: int,
        dialled: tuple[str, int],
        port: int,
        seconds_launch: float,
    ) -> None:
        self.options = options
        self.workers = workers
        self.seconds_launch = seconds_launch
        self.dial_host, self.dial_port = dialled
        self.port = port  # where the controller listens (0: a random port)
        self.rows: list[_Row] = []
        self.region: str | None = None
        self.queue: dict[str, Any] | None = None
        self.environments: list[dict[str, Any]] = []
        self.definition: dict[str, Any] | None = None
        self.plan: Plan | None = None
        self.blocking: list[str] = []  # why a launch would be pointless

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame([dataclasses.asdict(row) for row in self.rows], schema=CHECK_SCHEMA)

    def add(
        self,
        check: str,
        subject: str | None,
        status: Status,
        found: str,
        fix: str | None = None,
    ) -> _Row:
        row = _Row(check, subject, status, found, fix)
        self.rows.append(row)
        return row

    async def check(self, controller: Controller | None) -> None:
        settings = first_call(self.options.client_settings())
        async with AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(open_client("batch", settings))
            except BatchError as error:
                self._credentials_failed(error, "AWS Batch")
                self._skip_rest("the credentials and region check failed", controller)
                return
            if not await self._credentials(client):
                self._skip_rest("the credentials and region check failed", controller)
                return
            await self._queue_and_environments(client)
            await self._definition(client)
            self._platform()
            self._capacity()
            await self._network()
            if controller is None:
                self.add(
                    "launch",
                    None,
                    "skipped",
                    "not asked for (launch=False; CLI: --no-launch): no worker was launched",
                )
            elif self.blocking:
                self.add(
                    "launch",
                    None,
                    "skipped",
                    "no worker launched: it could not start while "
                    + "; ".join(dict.fromkeys(self.blocking))
                    + " (fix that first)",
                )
            else:
                await self._launch(client, controller)

    def _skip_rest(self, why: str, controller: Controller | None) -> None:
        for check in ("job queue", "job definition", "security groups", "address", "launch"):
            if check == "launch" and controller is None:
                self.add(check, None, "skipped", "not asked for (launch=False; CLI: --no-launch)")
                continue
            self.add(check, None, "skipped", f"not checked: {why}")

    # -- credentials and region -------------------------------------------------------------

    async def _credentials(self, client: Any) -> bool:
        """DescribeJobQueues for the queue: that it answers proves credentials and region (STS
        would too, but the emulator has none, and this call is needed anyway)."""
        endpoint = f"AWS Batch at {client.meta.endpoint_url}"
        self.region = client.meta.region_name
        queue = self.options.job_queue
        try:
            with anyio.fail_after(_SECONDS_CALL), map_errors(f"DescribeJobQueues {queue}"):
                answer = await client.describe_job_queues(jobQueues=[queue])
        except TimeoutError:
            self.add(
                "credentials",
                self.region,
                "problem",
                f"{endpoint} did not answer DescribeJobQueues within {_SECONDS_CALL:g} s",
                "check the network, the region and endpoint_url (CLI: --region, --endpoint-url; "
                "or AWS_ENDPOINT_URL)",
            )
            return False
        except BatchError as error:
            self._credentials_failed(error, endpoint)
            return False
        self.add(
            "credentials",
            self.region,
            "ok",
            f"{endpoint} answered DescribeJobQueues in region {self.region}: the credentials "
            "and region work",
        )
        queues = answer.get("jobQueues") or []
        self.queue = queues[0] if queues else None
        return True

    def _credentials_failed(self, error: BatchError, endpoint: str) -> None:
        code = error.code
        if code == "NoCredentials":
            fix = (
                "give AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile "
                "(AWS_PROFILE, or profile= (CLI: --profile); `aws sso login` for SSO), or run "
                "where an IAM role provides them (an EC2 instance profile)"
            )
        elif code == "NoRegion":
            fix = "set AWS_DEFAULT_REGION, a region in the profile, or region= (CLI: --region)"
        elif code == "ProfileNotFound":
            fix = "name a profile of ~/.aws/config, profile= (CLI: --profile), or unset AWS_PROFILE"
        elif code in _DENIED:
            fix = (
                'allow batch:DescribeJobQueues (on "Resource": "*") to this identity, and the '
                "rest a controller needs: batch:DescribeComputeEnvironments, "
                "batch:DescribeJobDefinitions, batch:SubmitJob, batch:TagResource, "
                "batch:DescribeJobs, batch:ListJobs, batch:TerminateJob (docs/security.md)"
            )
        elif code in _BAD_KEYS:
            fix = (
                "the credentials are not valid here (wrong, revoked or expired keys, or another "
                "partition): renew them (`aws sso login`, new keys) and check the region"
            )
        elif code == "Connection":
            fix = (
                "check the network, the region and endpoint_url (CLI: --region, --endpoint-url; "
                "or AWS_ENDPOINT_URL)"
            )
        else:
            fix = "see the error; check the region and endpoint_url (CLI: --region, --endpoint-url)"
        self.add("credentials", self.region, "problem", f"{endpoint}: {error}", fix)

    # -- the queue and its compute environments ---------------------------------------------

    async def _queue_and_environments(self, client: Any) -> None:
        name = self.options.job_queue
        queue = self.queue
        if queue is None:
            self.add(
                "job queue",
                name,
                "problem",
                f"no job queue {name!r} in region {self.region}",
                "check the name and the region (aws batch describe-job-queues lists the queues; "
                "CLI: --region), or create it (console: AWS Batch > Job queues > Create)",
            )
            self.blocking.append(f"job queue {name} does not exist")
            return
        state, status = queue.get("state"), queue.get("status")
        reason = queue.get("statusReason")
        kind = queue.get("jobQueueType")
        order = sorted(queue.get("computeEnvironmentOrder") or [], key=lambda e: e.get("order", 0))
        if kind in ("EKS", "SAGEMAKER_TRAINING"):
            # JobQueueDetail.jobQueueType (botocore's Batch model): EKS, ECS, ECS_FARGATE,
            # SAGEMAKER_TRAINING. batchcrew's jobs are ECS container jobs.
            self.add(
                "job queue",
                name,
                "problem",
                f"{name} is a {kind} queue: batchcrew runs its workers as ECS container jobs",
                "use a queue of ECS compute environments (EC2, Spot or Fargate)",
            )
            self.blocking.append(f"job queue {name} is for {kind}")
            return
        if state != "ENABLED":
            # JobQueueDetail.state: DISABLED queues accept no new job (SubmitJob refuses).
            self.add(
                "job queue",
                name,
                "problem",
                f"{name} is {state}: it accepts no new job (status {status})",
                f"aws batch update-job-queue --job-queue {name} --state ENABLED (console: AWS "
                f"Batch > Job queues > {name} > Enable)",
            )
            self.blocking.append(f"job queue {name} is {state}")
        elif status != "VALID":
            self.add(
                "job queue",
                name,
                "problem",
                f"{name} is {status}{f': {reason}' if reason else ''}",
                "wait while it is CREATING or UPDATING; if INVALID, fix what statusReason names "
                "(its compute environments, below), then aws batch update-job-queue",
            )
            self.blocking.append(f"job queue {name} is {status}")
        elif not order:
            self.add(
                "job queue",
                name,
                "problem",
                f"{name} has no compute environment: its jobs would wait RUNNABLE for ever",
                f"attach one: aws batch update-job-queue --job-queue {name} "
                "--compute-environment-order order=1,computeEnvironment=CE",
            )
            self.blocking.append(f"job queue {name} has no compute environment")
        else:
            self.add(
                "job queue",
                name,
                "ok",
                f"{name} is ENABLED and VALID, with {len(order)} compute environment(s)",
            )
        names = [str(entry["computeEnvironment"]) for entry in order]
        if not names:
            return
        try:
            with (
                anyio.fail_after(_SECONDS_CALL),
                map_errors("DescribeComputeEnvironments"),
            ):
                answer = await client.describe_compute_environments(computeEnvironments=names[:100])
        except (TimeoutError, BatchError) as error:
            denied = isinstance(error, BatchError) and error.code in _DENIED
            self.add(
                "compute environment",
                None,
                "skipped",
                f"could not describe {', '.join(names)}: {error or 'no answer in time'}",
                'allow batch:DescribeComputeEnvironments (on "Resource": "*")' if denied else None,
            )
            return
        found = {
            key: environment
            for environment in answer.get("computeEnvironments") or []
            for key in (
                environment.get("computeEnvironmentArn"),
                environment.get("computeEnvironmentName"),
            )
        }
        usable = 0
        for reference in names:
            environment = found.get(reference)
            label = reference.rpartition("compute-environment/")[2] or reference
            if environment is None:
                self.add(
                    "compute environment",
                    label,
                    "problem",
                    f"{label}, in the queue's order, does not exist (deleted?)",
                    f"attach an existing one: aws batch update-job-queue --job-queue {name} "
                    "--compute-environment-order ...",
                )
                continue
            self.environments.append(environment)
            usable += self._environment(environment)
        if self.environments and not usable:
            self.blocking.append("no compute environment of the queue is ENABLED and VALID")

    def _environment(self, environment: Mapping[str, Any]) -> int:
        """One compute environment's row; 1 if it can place jobs (ENABLED and VALID)."""
        name = str(environment.get("computeEnvironmentName"))
        state, status = environment.get("state"), environment.get("status")
        reason = environment.get("statusReason")
        resources = environment.get("computeResources") or {}
        kind = environment.get("type", "")
        what = f"{kind} {resources.get('type', '')}".strip()
        if resources.get("maxvCpus") is not None:
            what += f", maxvCpus {resources['maxvCpus']}"
        if environment.get("containerOrchestrationType") == "EKS":
            self.add(
                "compute environment",
                name,
                "problem",
                f"{name} runs on EKS, which batchcrew does not support",
                "use an ECS compute environment (EC2, Spot or Fargate)",
            )
            return 0
        if state == "ENABLED" and status == "VALID":
            self.add("compute environment", name, "ok", f"{name} ({what}) is ENABLED and VALID")
            return 1
        if state != "ENABLED":
            # ComputeEnvironmentDetail.state: "If the state is DISABLED, then the Batch
            # scheduler doesn't attempt to place jobs within the environment."
            self.add(
                "compute environment",
                name,
                "problem",
                f"{name} ({what}) is {state}: AWS Batch places no job there",
                f"aws batch update-compute-environment --compute-environment {name} --state "
                f"ENABLED (console: AWS Batch > Compute environments > {name} > Enable)",
            )
            return 0
        self.add(
            "compute environment",
            name,
            "problem",
            f"{name} ({what}) is {status}: {reason or 'AWS gives no reason'}",
            "fix what the reason names (often the service role, the instance role "
            "ecsInstanceRole, a subnet or security group that no longer exists, or a deleted ECS "
            "cluster), then aws batch update-compute-environment; see "
            "https://docs.aws.amazon.com/batch/latest/userguide/invalid_compute_environment.html",
        )
        return 0

    # -- the job definition -----------------------------------------------------------------

    async def _definition(self, client: Any) -> None:
        reference = self.options.job_definition
        try:
            with anyio.fail_after(_SECONDS_CALL), map_errors(f"describing {reference!r}"):
                definition = await find_definition(client, reference)
        except (TimeoutError, BatchError) as error:
            denied = isinstance(error, BatchError) and error.code in _DENIED
            self.add(
                "job definition",
                reference,
                "problem" if denied else "skipped",
                f"could not read {reference}: {error or 'no answer in time'}",
                'allow batch:DescribeJobDefinitions (on "Resource": "*"): the controller reads '
                "the definition at start"
                if denied
                else None,
            )
            if denied:
                self.blocking.append("the job definition cannot be read")
            return
        if definition is None:
            revision = " (no ACTIVE revision of that name)" if ":" not in reference else ""
            self.add(
                "job definition",
                reference,
                "problem",
                f"no job definition {reference} in region {self.region}{revision}",
                f"register one: batchcrew definition register --definition {reference} --image "
                f"IMAGE (aws.JobDefinition({reference!r}).register(image=...)), or check the "
                "name and the region",
            )
            self.blocking.append(f"job definition {reference} does not exist")
            return
        name = f"{definition.get('jobDefinitionName')}:{definition.get('revision')}"
        if definition.get("status", "ACTIVE") != "ACTIVE":
            self.add(
                "job definition",
                name,
                "problem",
                f"{name} is {definition['status']} (deregistered): AWS refuses its jobs",
                "name an ACTIVE revision, or register a new one (batchcrew definition register)",
            )
            self.blocking.append(f"job definition {name} is deregistered")
            return
        try:
            # The launcher's own check at start: a definition workers can run on, and the
            # options' resources on its platform.
            BatchLauncher(self.options).use_definition(definition)
            container = definition.get("containerProperties") or {}
            platform = _platform_of(definition)
            self.plan = self.options.plan(platform, Resources.of_container(container))
        except (BatchcrewError, ValueError) as error:
            self.add("job definition", name, "problem", f"{name} cannot run workers", str(error))
            self.blocking.append(f"job definition {name} cannot run workers")
            return
        self.definition = definition
        cpus = _cpus(self.plan, 0) or Resources.of_container(container).cpus
        memory = Resources.of_container(container).memory_mib
        self.add(
            "job definition",
            name,
            "ok",
            f"{name}: a container definition for {platform}"
            + (f", {_vcpus(cpus)}" if cpus else "")
            + (f", {memory} MiB" if memory else ""),
        )
        self._image(container)
        self._command(container)
        self._logs(container, platform)

    def _image(self, container: Mapping[str, Any]) -> None:
        image = str(container.get("image") or "")
        self.add(
            "image",
            image,
            "ok",
            f"{image}: it must hold this Python minor version and batchcrew version; whether "
            "it pulls shows only when a worker starts (the launch check)",
        )

    def _command(self, container: Mapping[str, Any]) -> None:
        command = list(container.get("command") or [])
        worker = " ".join(WORKER_COMMAND)
        if not command:
            found = f"none: the launcher gives every job `{worker}`"
        elif tuple(command) == WORKER_COMMAND:
            found = f"`{worker}`, the batchcrew worker"
        else:
            # SubmitJob's containerOverrides.command replaces it ("The command to send to the
            # container that overrides the default command from the Docker image or the job
            # definition", ContainerOverrides.command), so it is harmless to a controller.
            found = (
                f"{command!r}: the launcher replaces it with `{worker}` on every job (jobs "
                "submitted by hand run it as it is)"
            )
        self.add(
            "command",
            None,
            "ok",
            f"{found}. The image must run `{worker}`: `python` on its PATH, batchcrew installed, "
            "no ENTRYPOINT that takes the command as its arguments",
        )

    def _logs(self, container: Mapping[str, Any], platform: str) -> None:
        configuration = container.get("logConfiguration") or {}
        driver = configuration.get("logDriver")
        group = (configuration.get("options") or {}).get("awslogs-group", "/aws/batch/job")
        if driver is None:
            # "By default, AWS Batch enables the awslogs log driver to send log information to
            # CloudWatch Logs" (AWS Batch user guide, using_awslogs), group /aws/batch/job.
            self.add(
                "logs",
                "/aws/batch/job",
                "ok",
                "no logConfiguration: AWS Batch's default, the awslogs driver, sends each "
                "worker's output to CloudWatch Logs group /aws/batch/job (batchcrew logs JOB_ID)",
            )
        elif driver == "awslogs":
            other = (
                f"; pass log_group={group!r} to BatchMonitor (CLI: --log-group {group})"
                if group != "/aws/batch/job"
                else ""
            )
            self.add(
                "logs",
                group,
                "ok",
                f"awslogs: each worker's output goes to CloudWatch Logs group {group}{other}",
            )
        else:
            self.add(
                "logs",
                str(driver),
                "problem",
                f"log driver {driver}: the workers' output does not reach CloudWatch Logs, so "
                "`batchcrew logs` and BatchMonitor.log() cannot show why a worker failed",
                "register a revision with logConfiguration {logDriver: awslogs}, as batchcrew "
                "definition register does"
                + (
                    " (on Fargate only awslogs and splunk are allowed)"
                    if platform == "FARGATE"
                    else ""
                ),
            )

    def _platform(self) -> None:
        """Whether the definition's platform is the compute environments': a Fargate job in a
        queue of EC2 environments waits RUNNABLE for ever (RegisterJobDefinitionRequest.
        platformCapabilities: "To run the job on Fargate resources, specify FARGATE")."""
        if self.definition is None or not self.environments:
            return
        platform = _platform_of(self.definition)
        kinds = {_environment_platform(environment) for environment in self.environments}
        if platform in kinds:
            return
        names = ", ".join(str(e.get("computeEnvironmentName")) for e in self.environments)
        self.add(
            "platform",
            platform,
            "problem",
            f"the definition is for {platform}, the queue's compute environments ({names}) for "
            f"{' and '.join(sorted(kinds))}: its jobs would wait RUNNABLE for ever",
            f"use a queue of {platform} compute environments, or a definition for "
            f"{' or '.join(sorted(kinds))} (batchcrew definition register --platform ...)",
        )
        self.blocking.append(f"the definition is for {platform}, the queue is not")

    # -- capacity ---------------------------------------------------------------------------

    def _capacity(self) -> None:
        queue = self.options.job_queue
        if self.plan is None or self.definition is None:
            return
        container = self.definition.get("containerProperties") or {}
        own = Resources.of_container(container).cpus
        levels = [_cpus(self.plan, level) or own for level in range(len(self.plan.levels))]
        if not levels or levels[0] is None:
            self.add("capacity", queue, "skipped", "the definition gives no vCPUs to count")
            return
        per_worker = float(levels[0])
        top = max(float(value) for value in levels if value is not None)
        usable = [
            environment
            for environment in self.environments
            if environment.get("state") == "ENABLED" and environment.get("status") == "VALID"
        ]
        if not usable:
            self.add(
                "capacity",
                queue,
                "skipped",
                "no compute environment of the queue is ENABLED and VALID (above)",
            )
            return
        limits = {
            str(environment.get("computeEnvironmentName")): (
                environment.get("computeResources") or {}
            ).get("maxvCpus")
            for environment in usable
        }
        known = {name: int(limit) for name, limit in limits.items() if limit is not None}
        if not known:
            self.add(
                "capacity",
                queue,
                "skipped",
                "the compute environments are UNMANAGED: their capacity is the instances you "
                "register in their ECS clusters, which this does not count",
            )
            return
        unmanaged = len(known) < len(limits)
        largest, total = max(known.values()), sum(known.values())
        need = self.workers * per_worker
        names = ", ".join(f"{name} ({limit})" for name, limit in known.items())
        biggest = max(known, key=lambda name: known[name])
        if top > largest and not unmanaged:
            self.add(
                "capacity",
                queue,
                "problem",
                f"a worker asks {_vcpus(top)}, more than any compute environment's maxvCpus "
                f"({names}): its job would wait RUNNABLE for ever "
                "(MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE)",
                f"aws batch update-compute-environment --compute-environment {biggest} "
                f"--compute-resources maxvCpus={math.ceil(top)}, or ask fewer vCPUs "
                "per worker: cpus= (CLI: --cpus)",
            )
            self.blocking.append("a worker asks more vCPUs than any compute environment allows")
        elif need > total and not unmanaged:
            at_once = int(total // per_worker)
            self.add(
                "capacity",
                queue,
                "problem",
                f"{self.workers} workers x {_vcpus(per_worker)} = {_vcpus(need)}, but the "
                f"compute environments allow {total} (maxvCpus: {names}): only {at_once} "
                "workers run at once; the others wait RUNNABLE until seconds_launch fails them",
                f"aws batch update-compute-environment --compute-environment {biggest} "
                f"--compute-resources maxvCpus={math.ceil(need - total + known[biggest])}, or "
                f"ask for workers={at_once} (CLI: --workers {at_once})",
            )
        else:
            self.add(
                "capacity",
                queue,
                "ok",
                f"{self.workers} worker(s) x {_vcpus(per_worker)} = {_vcpus(need)}, within the "
                f"compute environments' maxvCpus ({names}"
                + (", and UNMANAGED ones not counted" if unmanaged else "")
                + ")",
            )

    # -- the network: security groups and the controller's address --------------------------

    def _ports(self) -> tuple[int, int]:
        if self.dial_port:
            return self.dial_port, self.dial_port
        return _RANDOM_PORTS

    def _ports_text(self) -> str:
        low, high = self._ports()
        if low == high:
            return f"TCP port {low}"
        return f"TCP ports {low}-{high} (port=0: the controller picks one of them)"

    async def _network(self) -> None:
        managed = [
            environment for environment in self.environments if environment.get("computeResources")
        ]
        if not self.environments:
            for check in ("security groups", "address"):
                self.add(check, None, "skipped", "no compute environment to look at (above)")
            return
        if not managed:
            found = (
                "the compute environments are UNMANAGED: the network of their instances is set "
                "where you launch them, which this does not see"
            )
            self.add("security groups", None, "skipped", found)
            self.add("address", self.dial_host, "skipped", found + _outside_warning())
            return
        # EC2 resolves its endpoint the standard way (AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL,
        # config files): the options' endpoint_url is AWS Batch's, where no EC2 answers.
        settings = ClientSettings(
            region=self.region,
            endpoint_url=None,
            profile=self.options.profile,
            retry_mode=self.options.retry_mode,
            max_attempts=2,
            seconds_connect=first_call(ClientSettings()).seconds_connect,
        )
        try:
            async with open_client("ec2", settings) as ec2:
                endpoint = f"EC2 at {ec2.meta.endpoint_url}"
                for environment in managed:
                    await self._security_groups(ec2, endpoint, environment)
                await self._address(ec2, endpoint, managed)
        except BatchError as error:
            for check in ("security groups", "address"):
                if not any(row.check == check for row in self.rows):
                    self.add(check, None, "skipped", f"no EC2 client: {error}", _EC2_FIX)

    async def _ec2_call(self, endpoint: str, action: str, call: Any, **params: Any) -> Any:
        """An EC2 call under a deadline. Raises `_Skip` (why) when EC2 cannot be asked: no
        answer, refused (IAM), or not EC2 at all; `BatchError` for an id EC2 does not know
        (InvalidGroup.NotFound, InvalidSubnetID.NotFound, ...), which is a finding."""
        try:
            with anyio.fail_after(_SECONDS_EC2), map_errors(f"{endpoint}: {action}"):
                return await call(**params)
        except TimeoutError:
            raise _Skip(f"{endpoint} did not answer {action} within {_SECONDS_EC2:g} s") from None
        except BatchError as error:
            if error.code.startswith("Invalid"):
                raise
            if error.code in _DENIED:
                raise _Skip(f"{endpoint} refused {action}: {error.code}") from error
            if error.code == "Connection":
                raise _Skip(str(error)) from error
            # Something answered, but not as EC2 does: AWS_ENDPOINT_URL sends every service
            # to one endpoint (such as the Batch emulator's); say where the client went.
            raise _Skip(
                f"{error} (is {endpoint} an EC2 endpoint? AWS_ENDPOINT_URL_EC2 sets EC2's alone)"
            ) from error

    async def _security_groups(
        self, ec2: Any, endpoint: str, environment: Mapping[str, Any]
    ) -> None:
        name = str(environment.get("computeEnvironmentName"))
        resources = environment.get("computeResources") or {}
        groups = [str(group) for group in resources.get("securityGroupIds") or []]
        if not groups:
            # ComputeResource.securityGroupIds: "One or more security groups must be specified,
            # either in securityGroupIds or using a launch template".
            template = resources.get("launchTemplate") or {}
            which = template.get("launchTemplateName") or template.get("launchTemplateId")
            self.add(
                "security groups",
                name,
                "skipped",
                f"{name} takes its security groups from launch template {which}, which this "
                "does not read",
                f"check by hand that one of its groups allows inbound {self._ports_text()} "
                "from itself",
            )
            return
        try:
            answer = await self._ec2_call(
                endpoint,
                "DescribeSecurityGroups",
                ec2.describe_security_groups,
                GroupIds=groups,
            )
        except _Skip as skip:
            self.add("security groups", name, "skipped", skip.reason, _EC2_FIX)
            return
        except BatchError as error:
            self.add(
                "security groups",
                name,
                "problem",
                f"{name}'s security groups {', '.join(groups)}: {error}",
                f"give {name} existing security groups (aws batch update-compute-environment "
                f"--compute-environment {name} --compute-resources securityGroupIds=sg-...)",
            )
            return
        low, high = self._ports()
        found = answer.get("SecurityGroups") or []
        partial: list[str] = []
        for group in found:
            for permission in group.get("IpPermissions") or []:
                sources = {pair.get("GroupId") for pair in permission.get("UserIdGroupPairs") or []}
                if not sources & set(groups):
                    continue
                covered = _covers(permission, low, high)
                if covered:
                    self.add(
                        "security groups",
                        name,
                        "ok",
                        f"{name}: {group['GroupId']} allows inbound {covered} from "
                        f"{', '.join(sorted(str(s) for s in sources & set(groups)))} (the "
                        "workers' own groups): a controller in it can be reached on "
                        f"{self._ports_text()}",
                    )
                    return
                partial.append(f"{group['GroupId']} allows only {_rule_text(permission)}")
        ids = ", ".join(groups)
        first = groups[0]
        low_text = f"{low}" if low == high else f"{low}-{high}"
        self.add(
            "security groups",
            name,
            "problem",
            f"{name}: no inbound rule of {ids} allows {self._ports_text()} from {ids} itself"
            + (f" ({'; '.join(partial)})" if partial else "")
            + ": workers in these groups cannot reach a controller in them",
            f"aws ec2 authorize-security-group-ingress --group-id {first} --protocol tcp "
            f"--port {low_text} --source-group {first} (console: EC2 > Security groups > "
            f"{first} > Edit inbound rules > Custom TCP, port {low_text}, source {first}), and "
            f"run the controller in {first}; a controller with a security group of its own "
            f"must allow that port from {first}"
            + (
                "; or give the port your rule allows: port= (CLI: --port)"
                if partial and low != high
                else ""
            ),
        )

    async def _address(self, ec2: Any, endpoint: str, managed: Sequence[Mapping[str, Any]]) -> None:
        host = self.dial_host
        subnets = sorted(
            {
                str(subnet)
                for environment in managed
                for subnet in (environment.get("computeResources") or {}).get("subnets") or []
            }
        )
        if not subnets:
            self.add("address", host, "skipped", "the compute environments name no subnet")
            return
        try:
            found = (
                await self._ec2_call(
                    endpoint, "DescribeSubnets", ec2.describe_subnets, SubnetIds=subnets
                )
            ).get("Subnets") or []
            vpc_ids = sorted({str(subnet["VpcId"]) for subnet in found if subnet.get("VpcId")})
            vpcs = (
                (
                    await self._ec2_call(
                        endpoint, "DescribeVpcs", ec2.describe_vpcs, VpcIds=vpc_ids
                    )
                ).get("Vpcs")
                or []
                if vpc_ids
                else []
            )
        except _Skip as skip:
            self.add("address", host, "skipped", skip.reason + _outside_warning(), _EC2_FIX)
            return
        except BatchError as error:
            self.add(
                "address",
                host,
                "problem",
                f"the compute environments' subnets {', '.join(subnets)}: {error}",
                "give the compute environments existing subnets (aws batch "
                "update-compute-environment --compute-resources subnets=...)",
            )
            return
        addresses = await _resolve(host)
        if not addresses:
            self.add(
                "address",
                host,
                "problem",
                f"{host} does not resolve here, so the workers cannot dial it",
                "give host= an address of this machine that the workers reach (CLI: --host)",
            )
            return
        subnet_networks = [
            (str(subnet.get("SubnetId")), network)
            for subnet in found
            for network in _networks(subnet)
        ]
        vpc_networks = [
            (str(vpc.get("VpcId")), network) for vpc in vpcs for network in _networks(vpc)
        ]
        for address in addresses:
            for subnet_id, network in subnet_networks:
                if address.version == network.version and address in network:
                    self.add(
                        "address",
                        host,
                        "ok",
                        f"the workers dial {host}, in subnet {subnet_id} ({network}) of the "
                        "compute environments",
                    )
                    return
            for vpc_id, network in vpc_networks:
                if address.version == network.version and address in network:
                    self.add(
                        "address",
                        host,
                        "ok",
                        f"the workers dial {host}, in VPC {vpc_id} ({network}), where the "
                        "compute environments' subnets are (a VPC routes between its subnets)",
                    )
                    return
        where = "; ".join(f"{vpc_id} {network}" for vpc_id, network in vpc_networks) or (
            "; ".join(f"{subnet_id} {network}" for subnet_id, network in subnet_networks)
        )
        note = ""
        if any(address.is_loopback for address in addresses):
            note = " (a loopback address: only this machine reaches it)"
        elif any(address.is_global for address in addresses):
            note = (
                " (a public address: the workers reach it only through a NAT gateway, and only "
                "if its firewall admits them)"
            )
        port = self.dial_port or "PORT"
        self.add(
            "address",
            host,
            "problem",
            f"the workers dial {host}{note}, outside the VPC where they run ({where}): nothing "
            "there routes to it unless you made a route (VPC peering, a VPN). A laptop outside "
            "the VPC will not work",
            "run the controller on a machine in the VPC (an EC2 instance, a SageMaker notebook, "
            "Cloud9) and give host= its VPC address (CLI: --host); or tunnel through a bastion "
            f"in the VPC: ssh -N -R 0.0.0.0:{port}:127.0.0.1:{port} ec2-user@BASTION, with "
            f"host='127.0.0.1', port={port}, address='BASTION_VPC_ADDRESS:{port}' (CLI: --host "
            f"127.0.0.1 --port {port} --address BASTION_VPC_ADDRESS:{port})",
        )

    # -- one worker, for real ---------------------------------------------------------------

    async def _launch(self, client: Any, controller: Controller) -> None:
        """Start the controller, push a trivial task, and see where its one worker stops;
        the controller's close ends its job, whatever happened."""
        try:
            await controller.start()
        except (BatchcrewError, ValueError, zmq.ZMQError, OSError) as error:
            # The definition at start, AWS unreachable, or a host= this machine cannot
            # listen on.
            if isinstance(error, zmq.ZMQError | OSError):
                self.add(
                    "launch",
                    None,
                    "problem",
                    f"the controller cannot listen on {controller.host}, port {self.port}: {error}",
                    "give host= an address of this machine (CLI: --host) and a free port= (CLI: "
                    "--port; 0: any)",
                )
            else:
                self.add(
                    "launch",
                    None,
                    "problem",
                    f"the controller could not start: {error}",
                    "see the message",
                )
            return
        failure: BaseException | None = None
        outcome: Any = None
        try:
            dialled = controller.address
            task = controller.push(sum, [1, 2])
            with anyio.move_on_after(self.seconds_launch + _SECONDS_TASK):
                try:
                    outcome = await task
                except BatchcrewError as error:
                    failure = error
            if outcome is None and failure is None:
                failure = TimeoutError(
                    f"no result within seconds_launch={self.seconds_launch:g} plus "
                    f"{_SECONDS_TASK:g} s"
                )
            # Before the close, which ends the job: how it stood when the launch failed.
            detail = await self._job_of(client, controller.name)
            workers = controller.workers()
        finally:
            await controller.aclose()
        job_id = str(detail["jobId"]) if detail else None
        after = await self._job_after(client, job_id)
        if failure is None and getattr(outcome, "status", None) == "success":
            row = workers.filter(pl.col("job_id").is_not_null())
            where = f" on {row['host'][0]}" if row.height and row["host"][0] else ""
            self.add(
                "launch",
                job_id,
                "ok",
                f"a worker started{where}, connected to {dialled} and ran a task; {after}",
            )
            self._overrule_network()
            return
        if failure is not None:
            message = str(failure)
        else:
            message = f"the task ended {outcome.status}: {outcome.error}"
        connected = bool(workers.filter(pl.col("connected").is_not_null()).height)
        status, found, fix = _classify(
            message,
            detail,
            connected,
            dialled,
            self._ports(),
            self._groups(),
            self.definition,
        )
        self.add("launch", job_id, status, f"{found}; {after}" if job_id else found, fix)

    async def _job_of(self, client: Any, controller: str) -> dict[str, Any] | None:
        """The JobDetail of the controller's one job, found by its name (the launcher names
        jobs "<controller>-<launch>"): ListJobs with a JOB_NAME filter ending in "*" matches
        names that begin so, in any status (ListJobsRequest.filters, botocore's Batch model)."""
        try:
            with anyio.fail_after(_SECONDS_CALL), map_errors("ListJobs"):
                listed = await client.list_jobs(
                    jobQueue=self.options.job_queue,
                    filters=[{"name": "JOB_NAME", "values": [f"{controller}-*"]}],
                )
                summaries = listed.get("jobSummaryList") or []
                if not summaries:
                    return None
                answer = await client.describe_jobs(jobs=[summaries[0]["jobId"]])
        except (TimeoutError, BatchError) as error:
            logger.info("doctor: could not find the launched job: %s", error or "no answer")
            return None
        jobs = answer.get("jobs") or []
        return dict(jobs[0]) if jobs else None

    async def _job_after(self, client: Any, job_id: str | None) -> str:
        """How the job stands once the controller has closed, which ended it if it had not
        ended: looked at for a few seconds, until AWS shows it finished."""
        if job_id is None:
            return "no job of the doctor's was found"
        status = None
        with anyio.move_on_after(_SECONDS_ENDING):
            while True:
                try:
                    with map_errors("DescribeJobs"):
                        jobs = (await client.describe_jobs(jobs=[job_id])).get("jobs") or []
                except BatchError:
                    break
                status = jobs[0].get("status") if jobs else None
                if status in _FINISHED:
                    return f"job {job_id} is {status} now"
                await anyio.sleep(0.25)
        return (
            f"job {job_id} is being ended (TerminateJobs sent, {status or 'status unknown'} "
            "still): "
            f"check with batchcrew status {job_id}"
        )

    def _groups(self) -> list[str]:
        return [
            str(group)
            for environment in self.environments
            for group in (environment.get("computeResources") or {}).get("securityGroupIds") or []
        ]

    def _overrule_network(self) -> None:
        """A worker connected: the network checks' doubts were wrong (a route or rule they do
        not see, such as a peered VPC or the controller's own security group)."""
        for row in self.rows:
            if row.check in ("security groups", "address") and row.status == "problem":
                row.status = "ok"
                row.found += (
                    "; but the doctor's worker reached the controller all the same, through a "
                    "route or rule this check does not see"
                )
                row.fix = None


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_EC2_FIX = (
    "allow ec2:DescribeSecurityGroups, ec2:DescribeSubnets and ec2:DescribeVpcs to this "
    "identity, and let it reach EC2 (AWS_ENDPOINT_URL_EC2 for another endpoint)"
)


def _outside_warning() -> str:
    return (
        ". The workers must reach the controller: a laptop outside the compute environment's "
        "VPC will not work (use a machine in the VPC, or an SSH reverse tunnel through a bastion)"
    )


def _vcpus(count: float) -> str:
    return f"{count:g} vCPU" + ("" if count == 1 else "s")


def _platform_of(definition: Mapping[str, Any]) -> Literal["EC2", "FARGATE"]:
    capabilities = definition.get("platformCapabilities") or ["EC2"]
    return "FARGATE" if "FARGATE" in capabilities else "EC2"


def _environment_platform(environment: Mapping[str, Any]) -> str:
    resources = environment.get("computeResources") or {}
    return "FARGATE" if resources.get("type") in _FARGATE_TYPES else "EC2"


def _cpus(plan: Plan, level: int) -> float | None:
    """The vCPUs a worker of `level` asks in SubmitJob, if the options set them."""
    for requirement in plan.levels[min(level, len(plan.levels) - 1)]:
        if requirement.get("type") == "VCPU":
            return float(requirement["value"])
    return None


def _covers(permission: Mapping[str, Any], low: int, high: int) -> str | None:
    """What of an inbound rule admits TCP ports low..high, or None. IpPermission.IpProtocol
    (botocore's EC2 model): "Use -1 to specify all protocols ... specifying -1 or a protocol
    number other than tcp, udp, icmp, or icmpv6 allows traffic on all ports"; for tcp,
    FromPort and ToPort are the range."""
    protocol = str(permission.get("IpProtocol", ""))
    if protocol == "-1":
        return "all traffic"
    if protocol in ("tcp", "6"):
        start, end = permission.get("FromPort"), permission.get("ToPort")
        if start is not None and end is not None and start <= low and end >= high:
            return f"TCP {start}-{end}" if start != end else f"TCP {start}"
        return None
    if protocol not in ("udp", "17", "icmp", "1", "icmpv6", "58"):
        return f"protocol {protocol} (all ports)"
    return None


def _rule_text(permission: Mapping[str, Any]) -> str:
    protocol = str(permission.get("IpProtocol", ""))
    start, end = permission.get("FromPort"), permission.get("ToPort")
    ports = f" {start}" if start == end else f" {start}-{end}"
    return f"{protocol.upper()}{ports if start is not None else ''}"


def _networks(
    item: Mapping[str, Any],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The CIDR blocks of a Subnet or a Vpc (DescribeSubnets, DescribeVpcs): CidrBlock, the
    associated IPv4 blocks (CidrBlockAssociationSet) and IPv6 blocks."""
    blocks = [item.get("CidrBlock")]
    blocks += [
        entry.get("CidrBlock")
        for entry in item.get("CidrBlockAssociationSet") or []
        if (entry.get("CidrBlockState") or {}).get("State", "associated") == "associated"
    ]
    blocks += [
        entry.get("Ipv6CidrBlock") for entry in item.get("Ipv6CidrBlockAssociationSet") or []
    ]
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for block in dict.fromkeys(blocks):
        if block:
            try:
                networks.append(ipaddress.ip_network(block, strict=False))
            except ValueError:
                continue
    return networks


async def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` stands for: itself if an address, else what the resolver says."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        with anyio.fail_after(10):
            answers = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return []
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for answer in answers:
        try:
            found.append(ipaddress.ip_address(str(answer[4][0]).split("%")[0]))
        except ValueError:
            continue
    return list(dict.fromkeys(found))


def _classify(
    message: str,
    detail: Mapping[str, Any] | None,
    connected: bool,
    dialled: str,
    ports: tuple[int, int],
    groups: Iterable[str],
    definition: Mapping[str, Any] | None,
) -> tuple[Status, str, str]:
    """Where the launched worker stopped, from the controller's error `message`, the job's
    JobDetail (None if no job was found) and whether its worker `connected`; and the fix."""
    detail = detail or {}
    job_id = detail.get("jobId", "JOB_ID")
    status = detail.get("status")
    reason = str(detail.get("statusReason") or "")
    container = detail.get("container") or {}
    container_reason = str(container.get("reason") or "")
    ours = reason.startswith(_OWN_REASONS)
    image = str(((definition or {}).get("containerProperties") or {}).get("image") or "the image")
    if "the worker runs Python" in message or "its hello did not parse" in message:
        said = message.partition("because ")[2] or message
        return (
            "problem",
            f"a worker connected and was refused: {said.split('. Check the launcher')[0]}",
            f"rebuild {image} with this Python minor version and batchcrew version (batchcrew "
            "dockerfile writes a Dockerfile that installs them), push it and register a new "
            "revision (batchcrew definition register)",
        )
    if connected:
        return (
            "problem",
            f"the worker connected, but the trivial task did not succeed: {message}",
            f"read the worker's log: batchcrew logs {job_id}",
        )
    if (
        status == "FAILED"
        and not ours
        and (
            any(mark in container_reason for mark in _PULL_ERRORS)
            or any(mark in reason for mark in _PULL_ERRORS)
        )
    ):
        return (
            "problem",
            f"the job FAILED at STARTING, its image not pulled: {reason}: "
            f"{container_reason or 'no container reason'}",
            f"check that {image} exists (name, tag, region); for ECR, the puller (on EC2 the "
            "instance role, with AmazonEC2ContainerServiceforEC2Role; on Fargate the execution "
            "role, with AmazonECSTaskExecutionRolePolicy) needs ecr:GetAuthorizationToken, "
            "ecr:BatchGetImage and ecr:GetDownloadUrlForLayer; the subnets need a way to the "
            "registry (a NAT gateway, a public IP: on Fargate assign_public_ip=True, or VPC "
            "endpoints for ECR and S3); a private Docker Hub image needs repositoryCredentials",
        )
    if status == "FAILED" and not ours:
        code = container.get("exitCode")
        exited = f", exit code {code}" if code is not None else ""
        return (
            "problem",
            f"the job FAILED before its worker connected: {reason or 'no reason'}"
            f"{f': {container_reason}' if container_reason else ''}{exited}",
            f"read its log: batchcrew logs {job_id}. The image must run `python -m "
            "batchcrew.worker`: `python` on its PATH with batchcrew installed, and no "
            "ENTRYPOINT that takes the command as its arguments",
        )
    host, _, port = dialled.removeprefix("tcp://").rpartition(":")
    ran = detail.get("startedAt") is not None or status in ("STARTING", "RUNNING")
    if ("RUNNING" in message and "reached the controller" in message) or (
        ran and "RUNNABLE" not in message
    ):
        group = next(iter(groups), "SG")
        # What a rule must admit: the fixed port, or every port a port=0 controller picks.
        span = f"{ports[0]}" if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"
        return (
            "problem",
            f"the job was RUNNING, but its worker never connected to {dialled}",
            f"the workers dial {host.strip('[]')} on TCP port {port}, which they cannot reach: "
            "run the controller on a machine in the compute environment's VPC and security "
            f"group, with an inbound rule allowing TCP {span} from the group itself (aws ec2 "
            f"authorize-security-group-ingress --group-id {group} --protocol tcp --port {span} "
            f"--source-group {group}); a laptop outside the VPC cannot be reached (use a "
            "machine in the VPC, or an SSH reverse tunnel through a bastion with host=, port= "
            f"and address=). The worker's log says where it dialled: batchcrew logs {job_id}",
        )
    if "RUNNABLE" in message or (status in ("SUBMITTED", "PENDING", "RUNNABLE") or ours):
        # The launcher's note says what AWS gave while the job waited ("... is RUNNABLE, not
        # placed: <statusReason>; <environments not ENABLED and VALID>"); by now the job is
        # ended, its reason the controller's.
        noted = _RUNNABLE_SAID.search(message)
        waited = noted[1] if noted else (reason if not ours else "") or "AWS gives no reason"
        waited = waited.split(". Check the launcher")[0].rstrip(". ")
        fix = next((fix for mark, fix in _RUNNABLE_FIXES if mark in waited), _RUNNABLE_DEFAULT)
        return (
            "problem",
            f"the job never left RUNNABLE within seconds_launch: {waited}",
            fix,
        )
    if "SubmitJob" in message:
        denied = any(code in message for code in _DENIED)
        return (
            "problem",
            f"the job could not be submitted: {message}",
            "allow batch:SubmitJob (the queue and the definition) and batch:TagResource to this "
            "identity (docs/security.md)"
            if denied
            else "see the error: AWS refused SubmitJob",
        )
    return (
        "problem",
        f"the worker did not run the task: {message}",
        f"see the message; the job's log: batchcrew logs {job_id}",
    )
