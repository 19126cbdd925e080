"""`LocalBatch`: an AWS Batch and CloudWatch Logs endpoint on loopback whose jobs really run,
as local process groups. It ties the state machine, the job runner and the HTTP server together
and owns their life cycle.
"""

from __future__ import annotations

import asyncio
import getpass
import ipaddress
import logging
import math
import re
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import botocore
from aiohttp import web
from botocore.credentials import Credentials

from batchcrew.testing._batch import BatchState
from batchcrew.testing._logs import LogsState
from batchcrew.testing._options import LocalBatchOptions
from batchcrew.testing._runner import JobRunner
from batchcrew.testing._server import ApiRequest, ApiServer
from batchcrew.testing._wire import (
    ACCOUNT_ID,
    ApiError,
    check_request,
    compile_patterns,
    service_model,
    shape_output,
)

logger = logging.getLogger("batchcrew.testing")

#: Dummy credentials: on loopback the emulator accepts any, but botocore refuses to sign
#: without some. With `allow_remote`, the secret is a fresh random one instead.
DUMMY_ACCESS_KEY_ID = "localbatch"
DUMMY_SECRET_ACCESS_KEY = "localbatch"
#: The compute environments behind the queues LocalBatch creates itself: an UNMANAGED one for
#: EC2 queues, a MANAGED Fargate one for Fargate queues.
COMPUTE_ENVIRONMENT = "localbatch"
FARGATE_COMPUTE_ENVIRONMENT = "localbatch-fargate"
#: Made-up roles and network for the resources LocalBatch creates itself (AWS requires them;
#: nothing here checks or uses them). The ids are the placeholders of AWS's documentation.
SERVICE_ROLE = (
    f"arn:aws:iam::{ACCOUNT_ID}:role/aws-service-role/batch.amazonaws.com/AWSServiceRoleForBatch"
)
EXECUTION_ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/ecsTaskExecutionRole"
SUBNETS = ("subnet-0123456789abcdef0",)
SECURITY_GROUPS = ("sg-0123456789abcdef0",)
INSTANCE_ROLE = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/ecsInstanceRole"
#: An EC2 instance id: i- and 8 (older) or 17 hexadecimal digits.
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")

Platform = Literal["EC2", "FARGATE"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def is_loopback(host: str) -> bool:
    """Whether `host` is "localhost" or a loopback address (127.0.0.0/8, ::1). Other names
    are not resolved: a name that points at loopback today may not tomorrow."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LocalBatch:
    """An emulated AWS Batch + CloudWatch Logs that runs each job's command as a local process.

    Use it as an async context manager::

        async with LocalBatch(queues=["q"]) as batch:
            session = aiobotocore.session.get_session()
            async with session.create_client("batch", **batch.client_kwargs()) as client:
                ...

    - `queues`: job queues to create up front, on EC2 (the first is `job_queue`).
    - `fargate_queues`: job queues to create up front on Fargate (a MANAGED compute environment
      of type FARGATE): jobs of Fargate job definitions run there, and only there.
    - `job_definition`: if given, a container job definition of that name is registered up front
      (1 vCPU, 2048 MiB, command `python -c "print('hello from LocalBatch')"`), as
      `job_definition`; submit with `containerOverrides.command` to run something else.
    - `options`: capacity, delays, injected failures and the AWS rules not enforced
      (`LocalBatchOptions`). Every request is checked as AWS checks it unless a rule is named
      in `options.lenient`; that includes the set-up helpers below (`ValueError`).
    - `host`, `port`: where the server listens; port 0 picks a free port. `host` must be a
      loopback address ("127.0.0.1", "::1", "localhost") unless `allow_remote` is True:
      whoever can reach the server can run any command as this user.
    - `allow_remote`: listen on any `host`, and answer only requests signed (SigV4) with the
      credentials of `environment()` and `client_kwargs()`, whose secret is drawn at random.
      Logs a WARNING at start when `host` is not a loopback address.

    Attributes and helpers: `endpoint_url`, `region`, `options`, `allow_remote`, `job_queue`,
    `job_definition`, `environment()`, `client_kwargs()`, `requests` (every `ApiRequest`
    received), `requests_for(operation)`, `describe_job(id)`, `await wait_for_job(id)`,
    `log_messages(id)`, `process_ids()`, `create_queue(name, platform=..., max_vcpus=...)`,
    `register_job_definition(..., platform=...)`, and the failures AWS produces, on demand:
    `set_compute_environment(name, state=..., status=...)`, `reclaim(job_id)` (a Spot host
    reclaimed), `fail_pulls(image)` / `allow_pulls(image)`.

    On exit every job process it started is killed, with its whole process group, and reaped.
    Commands whose first word is `python` or `python3` run with this interpreter
    (`sys.executable`): the container image would have had its own Python; here the running
    environment and its installed packages serve instead.
    """

    def __init__(
        self,
        *,
        queues: Sequence[str] = ("localbatch",),
        fargate_queues: Sequence[str] = (),
        job_definition: str | None = None,
        options: LocalBatchOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
    ) -> None:
        for name, value in (("queues", queues), ("fargate_queues", fargate_queues)):
            if isinstance(value, str):
                raise TypeError(
                    f"{name} must be a sequence of queue names, got the string {value!r}"
                )
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"LocalBatch will not listen on host={host!r}, which is not a loopback address: "
                "it runs any command a caller submits, as your user. Use host='127.0.0.1', or "
                "pass allow_remote=True (batchcrew emulator --allow-remote) if every machine "
                "that can reach it may run commands here; requests must then be signed with "
                "its credentials (environment(), client_kwargs())"
            )
        self.options = options if options is not None else LocalBatchOptions()
        self.requests: list[ApiRequest] = []
        self.allow_remote = allow_remote
        self._host, self._port = host, port
        self._credentials = Credentials(
            DUMMY_ACCESS_KEY_ID,
            secrets.token_urlsafe(30) if allow_remote else DUMMY_SECRET_ACCESS_KEY,
        )
        self._batch = BatchState(
            vcpus=self.options.vcpus,
            memory_mib=self.options.memory_mib,
            clock=_now_ms,
            lenient=self.options.lenient,
        )
        self._logs = LogsState(clock=_now_ms)
        self._server = ApiServer(
            self._batch,
            self._logs,
            self.options,
            self.requests,
            self._credentials if allow_remote else None,
        )
        self._runner = JobRunner(
            self._batch, self._logs, self.options, lambda: self.endpoint_url, _now_ms
        )
        self._web_runner: web.AppRunner | None = None
        self._runner_task: asyncio.Task[None] | None = None
        self._endpoint_url: str | None = None
        self._queue_names = list(queues)
        self._job_definition = job_definition
        self._logs.create_log_group({"logGroupName": self.options.log_group}, self.options.region)
        for name in self._queue_names:
            self.create_queue(name)
        for name in fargate_queues:
            self.create_queue(name, platform="FARGATE")
        if job_definition is not None:
            self.register_job_definition(
                job_definition, command=["python", "-c", "print('hello from LocalBatch')"]
            )

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start serving and running jobs. Raises OSError if the port is taken."""
        if self._web_runner is not None:
            raise RuntimeError("LocalBatch is already started; start it once")
        await anyio.to_thread.run_sync(compile_patterns)
        # In-flight requests get a short grace at close: an emulator should stop fast.
        web_runner = web.AppRunner(
            self._server.application(), access_log=None, shutdown_timeout=0.25
        )
        try:
            await web_runner.setup()
            site = web.TCPSite(web_runner, self._host, self._port)
            await site.start()
        except BaseException:
            await web_runner.cleanup()
            raise
        self._web_runner = web_runner
        host, port = web_runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self._endpoint_url = f"http://{shown}:{port}"
        if not is_loopback(self._host):
            logger.warning(
                "LocalBatch listens on %s, beyond loopback (allow_remote=True): anyone who can "
                "reach port %s and holds its credentials can run any command on this machine "
                "as %s. Requests and job output travel unencrypted (plain HTTP).",
                self._host or "every interface",
                port,
                _user(),
            )
        # The runner lives in a task of its own, so that start and close may be called from
        # different tasks (as pytest-asyncio does with fixtures); close() cancels and awaits it.
        self._runner_task = asyncio.create_task(self._runner.run(), name="LocalBatch jobs")

    async def close(self) -> None:
        """Stop serving, kill every job process group and wait for each process. Idempotent."""
        if self._web_runner is not None:
            web_runner, self._web_runner = self._web_runner, None
            await web_runner.cleanup()
        await self._stop_runner()

    async def _stop_runner(self) -> None:
        task, self._runner_task = self._runner_task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled too: let that through

    # -- how to reach it --------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The URL to give clients as `endpoint_url` (or AWS_ENDPOINT_URL)."""
        if self._endpoint_url is None:
            raise RuntimeError("LocalBatch is not started: use `async with LocalBatch() as ...`")
        return self._endpoint_url

    @property
    def region(self) -> str:
        """The region clients should use by default."""
        return self.options.region

    def environment(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs and the AWS CLI at this emulator."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self._credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self._credentials.secret_key,
        }

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `session.create_client("batch" or "logs", **kwargs)`."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self._credentials.access_key,
            "aws_secret_access_key": self._credentials.secret_key,
        }

    # -- what tests look at -----------------------------------------------------------------

    @property
    def job_queue(self) -> str:
        """The name of the first (EC2) queue created at construction."""
        if not self._queue_names:
            raise AttributeError("this LocalBatch was made with queues=(); it has no job_queue")
        return self._queue_names[0]

    @property
    def job_definition(self) -> str:
        """The name of the job definition registered at construction."""
        if self._job_definition is None:
            raise AttributeError(
                "this LocalBatch was made without job_definition=...; it has no job_definition"
            )
        return self._job_definition

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        """The parameters of every `operation` request received so far, oldest first."""
        return [r.params for r in self.requests if r.operation == operation]

    def describe_job(self, job_id: str) -> dict[str, Any]:
        """The job's JobDetail, as DescribeJobs returns it. Raises KeyError for an unknown id."""
        job = self._batch.jobs.get(job_id)
        if job is None:
            raise KeyError(f"LocalBatch has no job {job_id!r}")
        detail: dict[str, Any] = shape_output(
            self._batch.describe_job(job), service_model("batch").shape_for("JobDetail")
        )
        return detail

    async def wait_for_job(
        self,
        job_id: str,
        statuses: Collection[str] = ("SUCCEEDED", "FAILED"),
        seconds: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until the job has one of `statuses`; return its JobDetail.

        Raises TimeoutError after `seconds`, KeyError for an unknown id.
        """
        with anyio.fail_after(seconds):
            while True:
                detail = self.describe_job(job_id)
                if detail["status"] in statuses:
                    return detail
                await anyio.sleep(0.02)

    def log_messages(self, job_id: str) -> list[str]:
        """Every output line the job wrote, in its log streams (one per attempt), oldest first."""
        job = self._batch.jobs.get(job_id)
        if job is None:
            raise KeyError(f"LocalBatch has no job {job_id!r}")
        names = [a["container"].get("logStreamName") for a in job.attempts]
        if job.status in ("STARTING", "RUNNING"):
            names.append(job.log_stream_name)
        group = self._logs.groups.get(self.options.log_group)
        messages: list[str] = []
        for name in names:
            if group is not None and name in group.streams:
                messages += [event.message for event in group.streams[name].events]
        return messages

    def process_ids(self) -> list[int]:
        """Process ids of the job processes running now; each leads its own process group."""
        return self._runner.process_ids()

    # -- set-up without a client ------------------------------------------------------------

    def create_queue(
        self,
        name: str,
        *,
        priority: int = 1,
        platform: Platform = "EC2",
        max_vcpus: int | None = None,
        security_group_ids: Sequence[str] | None = None,
        subnets: Sequence[str] | None = None,
    ) -> str:
        """Create job queue `name` on `platform` and return its ARN.

        Without `max_vcpus`, `security_group_ids` or `subnets`, an EC2 queue is backed by the
        UNMANAGED compute environment `localbatch`, a Fargate queue by the MANAGED one
        `localbatch-fargate` (computeResources of type FARGATE, with made-up subnets and
        security groups); each is created with its first queue. With any of the three, the
        queue gets a MANAGED compute environment of its own, `<name>-ce` (type EC2, instance
        type optimal, or FARGATE), with those subnets and security groups (made-up ones if not
        given) and maxvCpus `max_vcpus` (default: the emulator's `vcpus`, rounded up): its
        running jobs use at most that many vCPUs. Every environment also draws on the one
        capacity of `options`. Raises ValueError if a name is taken or invalid, `platform` is
        neither "EC2" nor "FARGATE", or `max_vcpus` is not a whole number >= 0.
        """
        for label, ids in (("security_group_ids", security_group_ids), ("subnets", subnets)):
            if isinstance(ids, str):
                raise TypeError(f"{label} must be a sequence of ids, got the string {ids!r}")
        if max_vcpus is not None and not (
            isinstance(max_vcpus, int) and not isinstance(max_vcpus, bool) and max_vcpus >= 0
        ):
            raise ValueError(
                f"max_vcpus must be a whole number of vCPUs >= 0 (maxvCpus is an integer), got "
                f"{max_vcpus!r}"
            )
        if platform not in ("EC2", "FARGATE"):
            raise ValueError(f'platform must be "EC2" or "FARGATE", got {platform!r}')
        own = max_vcpus is not None or security_group_ids is not None or subnets is not None
        resources: dict[str, Any] = {
            "type": platform,
            "maxvCpus": math.ceil(self.options.vcpus) if max_vcpus is None else max_vcpus,
            "subnets": list(SUBNETS if subnets is None else subnets),
            "securityGroupIds": list(
                SECURITY_GROUPS if security_group_ids is None else security_group_ids
            ),
        }
        if own:
            environment = f"{name}-ce"
            if platform == "EC2":
                resources.update(minvCpus=0, instanceTypes=["optimal"], instanceRole=INSTANCE_ROLE)
            params: dict[str, Any] = {
                "computeEnvironmentName": environment,
                "type": "MANAGED",
                "serviceRole": SERVICE_ROLE,
                "computeResources": resources,
            }
        elif platform == "EC2":
            environment = COMPUTE_ENVIRONMENT
            params = {
                "computeEnvironmentName": environment,
                "type": "UNMANAGED",
                "serviceRole": SERVICE_ROLE,
            }
        else:
            environment = FARGATE_COMPUTE_ENVIRONMENT
            params = {
                "computeEnvironmentName": environment,
                "type": "MANAGED",
                "serviceRole": SERVICE_ROLE,
                "computeResources": resources,
            }
        if environment not in self._batch.compute_environments:
            self._call("CreateComputeEnvironment", params)
        queue = {
            "jobQueueName": name,
            "priority": priority,
            "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": environment}],
        }
        return str(self._call("CreateJobQueue", queue)["jobQueueArn"])

    def set_compute_environment(
        self,
        name: str,
        *,
        state: Literal["ENABLED", "DISABLED"] | None = None,
        status: Literal["VALID", "INVALID"] | None = None,
        status_reason: str | None = None,
    ) -> None:
        """Change compute environment `name` (or ARN) as its owner or AWS would.

        - `state`: "DISABLED" stops the scheduler placing jobs there (running ones go on), as
          UpdateComputeEnvironment does; "ENABLED" lets waiting jobs move on at once.
        - `status`: "INVALID" is what AWS shows when an environment is broken (its service
          role, network or ECS cluster): it places no job, and DescribeComputeEnvironments
          gives `status_reason` (default "CLIENT_ERROR - Clusters can not be blank.", as a user
          reported it); "VALID" heals it ("ComputeEnvironment Healthy").
        - `status_reason` alone changes the reason shown.

        Jobs that cannot be placed wait RUNNABLE with the statusReason AWS gives (see
        docs/testing.md). Raises ValueError for an unknown environment or value.
        """
        if state not in (None, "ENABLED", "DISABLED"):
            raise ValueError(f'state must be "ENABLED" or "DISABLED", got {state!r}')
        if status not in (None, "VALID", "INVALID"):
            raise ValueError(f'status must be "VALID" or "INVALID", got {status!r}')
        if state is not None:
            self._call("UpdateComputeEnvironment", {"computeEnvironment": name, "state": state})
        if status is not None or status_reason is not None:
            try:
                self._batch.set_compute_environment_status(name, status, status_reason)
            except ApiError as error:
                raise ValueError(error.message) from None

    def reclaim(self, job_id: str, *, instance_id: str | None = None) -> None:
        """Reclaim the EC2 Spot instance job `job_id` (an array child's id works too) runs on.

        As when EC2 reclaims a Spot instance, the job's container gets SIGTERM, then SIGKILL
        after `options.stop_timeout`; the attempt ends FAILED with statusReason
        "Host EC2 (instance <instance_id>) terminated." and no exit code, and is not
        terminated (isTerminated false): the job's retryStrategy decides whether it runs again
        (`"evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"}]` retries it).
        `instance_id` defaults to a made-up id. Returns at once; wait for the job's status.
        Raises KeyError for an unknown id, ValueError for a job that is not STARTING or
        RUNNING, an array parent, a Fargate job, or an `instance_id` that is not an EC2
        instance id.
        """
        job = self._batch.jobs.get(job_id)
        if job is None:
            raise KeyError(f"LocalBatch has no job {job_id!r}")
        if instance_id is None:
            instance_id = f"i-{secrets.token_hex(9)[:17]}"
        elif not _INSTANCE_ID.fullmatch(instance_id):
            raise ValueError(
                f"instance_id must be an EC2 instance id such as 'i-0123456789abcdef0' (i- and "
                f"8 or 17 hexadecimal digits), got {instance_id!r}"
            )
        self._batch.reclaim(job, instance_id)

    def fail_pulls(self, image: str, message: str | None = None) -> None:
        """Make every pull of `image` fail from now on (until `allow_pulls(image)`).

        A job whose image it is ("python:3.12"; "python" and "docker.io/library/python:latest"
        name the same image) fails at STARTING, its command never run: FAILED, statusReason
        "Task failed to start", no exit code and no log stream, and `container.reason`
        `message` if given, else AWS's text for an image that does not exist: on EC2
        "CannotPullContainerError: Error response from daemon: pull access denied for
        <repository>, repository does not exist or may require 'docker login'"; on Fargate
        "CannotPullContainerError: failed to resolve ref ...", or for an ECR image
        "ResourceInitializationError: unable to pull secrets or registry auth: ..." (the
        registry cannot be reached). Retries apply as on AWS. Raises ValueError for an empty
        image name.
        """
        if not image:
            raise ValueError("image must be an image name such as 'python:3.12', got ''")
        self._batch.fail_pulls(image, message)

    def allow_pulls(self, image: str) -> None:
        """Let pulls of `image` succeed again (undoes `fail_pulls`)."""
        self._batch.allow_pulls(image)

    def register_job_definition(
        self,
        name: str,
        *,
        command: Sequence[str],
        vcpus: float = 1,
        memory_mib: int = 2048,
        environment: Mapping[str, str] | None = None,
        image: str = "localbatch",
        platform: Platform = "EC2",
        execution_role_arn: str | None = None,
    ) -> str:
        """Register a revision of container job definition `name` on `platform`; return its
        ARN.

        The request is checked as RegisterJobDefinition checks it: on EC2 `vcpus` is a whole
        number; on Fargate `vcpus` and `memory_mib` are a pair Fargate offers (the defaults, 1
        vCPU and 2048 MiB, are) and the definition needs an execution role, `execution_role_arn`
        or else a made-up one (`EXECUTION_ROLE`). Raises ValueError with AWS's message for
        values AWS refuses.
        """
        container: dict[str, Any] = {
            "image": image,
            "command": list(command),
            "resourceRequirements": [
                {"type": "VCPU", "value": f"{vcpus:g}"},
                {"type": "MEMORY", "value": str(memory_mib)},
            ],
            "environment": [{"name": k, "value": v} for k, v in (environment or {}).items()],
        }
        if execution_role_arn is not None or platform == "FARGATE":
            container["executionRoleArn"] = execution_role_arn or EXECUTION_ROLE
        params = {
            "jobDefinitionName": name,
            "type": "container",
            "platformCapabilities": [platform],
            "containerProperties": container,
        }
        return str(self._call("RegisterJobDefinition", params)["jobDefinitionArn"])

    def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run a Batch operation as a request would, checked as AWS checks it; an error AWS
        would answer is a ValueError with its message."""
        method = getattr(self._batch, botocore.xform_name(operation))
        try:
            check_request("batch", service_model("batch").operation_model(operation), params)
            result: dict[str, Any] = method(params, self.options.region)
        except ApiError as error:
            raise ValueError(error.message) from None
        return result


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "this user"
