"""The `batchcrew` subcommands for AWS Batch by hand: jobs, status, logs, terminate,
definition register|describe|deregister, and doctor. Thin: parse, call `BatchMonitor`,
`JobDefinition` or `aws.doctor()`, print a rich table (or one JSON document with --json).
Errors come out in the CLI's own words: the flags and commands to use, never the Python
parameters behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from batchcrew.aws.definition import JobDefinition
    from batchcrew.aws.monitor import BatchMonitor

Handler = Callable[[argparse.Namespace], Awaitable[int]]

_STATUSES = ("submitted", "pending", "runnable", "starting", "running", "succeeded", "failed")
_GROUPS = {"active": _STATUSES[:5], "inactive": _STATUSES[5:]}
#: Exit codes: an AWS error, a job not found or not ended, stdout closed; bad arguments (as
#: argparse's), an ambiguous short job id; interrupted (128 + SIGINT).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_UNLIMITED = 100_000  # a width no table reaches: to measure one's natural width
#: A whole AWS Batch job id (a UUID; ":index" for a child of an array job): used as it is,
#: while anything else is the start of one, looked up.
_WHOLE_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}(?::\d+)?")
#: How many matching jobs an "ambiguous id" error lists.
_AMBIGUOUS_SHOWN = 10
_ID_HELP = (
    "job id, or its start as `batchcrew jobs` shows it (the first 8 characters; "
    "START:INDEX for a child of an array job)"
)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `jobs`, `status`, `logs`, `terminate`, `definition` and `doctor` to the `batchcrew`
    parser. Each sets `aws_command`; pass the parsed arguments to `run()`."""
    common = argparse.ArgumentParser(add_help=False)
    aws = common.add_argument_group("AWS (default: the environment and AWS config files)")
    aws.add_argument("--region", help="AWS region, e.g. us-east-1")
    aws.add_argument("--endpoint-url", help="AWS endpoint, e.g. http://127.0.0.1:4566")
    aws.add_argument("--profile", help="AWS profile from ~/.aws/config")
    common.add_argument("--json", action="store_true", help="print one JSON document")

    jobs = subparsers.add_parser(
        "jobs", parents=[common], help="list the AWS Batch jobs of a queue and job definition"
    )
    _queue_arguments(jobs, required=True)
    jobs.add_argument(
        "--status",
        action="append",
        choices=[*_STATUSES, *_GROUPS],
        help="only jobs in this status (repeatable; active, inactive: their groups)",
    )
    jobs.set_defaults(aws_command=_jobs)

    status = subparsers.add_parser(
        "status",
        parents=[common],
        help="show one AWS Batch job",
        description="Show one AWS Batch job, found by id. A short id is looked up among the "
        "jobs of --queue, or of every job queue in the region (--definition: not needed).",
    )
    status.add_argument("id", help=_ID_HELP)
    _queue_arguments(status, required=False)
    status.set_defaults(aws_command=_status)

    logs = subparsers.add_parser(
        "logs", parents=[common], help="print the CloudWatch log of an AWS Batch job"
    )
    logs.add_argument("id", help=_ID_HELP)
    logs.add_argument(
        "--queue", help="job queue name or ARN to look a short id up in (default: every queue)"
    )
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument(
        "--log-group", default="/aws/batch/job", help="log group (default /aws/batch/job)"
    )
    logs.add_argument("--timestamps", action="store_true", help="start lines with their time")
    logs.add_argument(
        "--interval", type=float, default=2.0, help="seconds between checks with --follow"
    )
    logs.set_defaults(aws_command=_logs)

    terminate = subparsers.add_parser(
        "terminate", parents=[common], help="end AWS Batch jobs, queued or running"
    )
    terminate.add_argument(
        "ids", nargs="*", metavar="ID", help="ids of the jobs to end (whole, or short as above)"
    )
    terminate.add_argument(
        "--all", action="store_true", help="end every active job of --queue and --definition"
    )
    _queue_arguments(terminate, required=False)
    terminate.add_argument(
        "--reason", default="terminated by batchcrew monitor", help="reason recorded with AWS"
    )
    terminate.set_defaults(aws_command=_terminate)

    definition = subparsers.add_parser("definition", help="manage an AWS Batch job definition")
    actions = definition.add_subparsers(dest="definition_command", required=True)
    register = actions.add_parser(
        "register", parents=[common], help="register a revision running the batchcrew worker"
    )
    _definition_argument(register)
    register.add_argument("--image", required=True, help="container image with batchcrew")
    register.add_argument("--platform", choices=["EC2", "FARGATE"], default="EC2")
    register.add_argument("--memory", type=float, default=8.0, help="memory (default 8)")
    register.add_argument("--memory-units", choices=["gigabytes", "mebibytes"], default="gigabytes")
    register.add_argument("--cpus", type=float, default=2.0, help="vCPUs (default 2)")
    register.add_argument("--gpus", type=float, default=0.0, help="GPUs (default 0)")
    register.add_argument("--seconds-timeout", type=float, help="time limit of each attempt")
    register.add_argument("--scheduling-priority", type=int, help="0 to 9999 (fair share)")
    register.add_argument(
        "--tag", action="append", type=_key_value, metavar="KEY=VALUE", help="(repeatable)"
    )
    register.add_argument("--propagate-tags", action=argparse.BooleanOptionalAction)
    register.add_argument(
        "--parameter", action="append", type=_key_value, metavar="KEY=VALUE", help="(repeatable)"
    )
    register.add_argument("--job-role-arn", help="IAM role the job's code runs as")
    register.add_argument(
        "--execution-role-arn",
        help="IAM role ECS pulls the image and sends the logs with (needed with --platform "
        "FARGATE)",
    )
    fargate = register.add_argument_group("Fargate (with --platform FARGATE only)")
    fargate.add_argument(
        "--assign-public-ip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give each job a public IP: needed to pull the image in a subnet without a NAT "
        "gateway, such as a default VPC's (AWS's default: no public IP)",
    )
    fargate.add_argument(
        "--platform-version",
        metavar="VERSION",
        help="Fargate platform version, such as LATEST or 1.4.0 (AWS's default: LATEST)",
    )
    register.set_defaults(aws_command=_register)

    describe = actions.add_parser("describe", parents=[common], help="show every revision")
    _definition_argument(describe)
    describe.add_argument("--active", action="store_true", help="only the active revisions")
    describe.set_defaults(aws_command=_describe)

    deregister = actions.add_parser("deregister", parents=[common], help="deregister a revision")
    _definition_argument(deregister)
    deregister.add_argument(
        "--revision", type=int, help="revision to deregister (default: the greatest active)"
    )
    deregister.set_defaults(aws_command=_deregister)

    doctor = subparsers.add_parser(
        "doctor",
        parents=[common],
        help="check a job queue and job definition, then launch one worker to see it work",
        description="Check that --queue and --definition can run batchcrew workers: the "
        "credentials and region, the queue and its compute environments, the definition, the "
        "security groups and the controller's address; then launch one worker for real "
        "(unless --no-launch) and see where it stops. Each problem comes with its fix. Exit "
        "code 0: no problem; 1: problems found; 2: bad arguments.",
    )
    doctor.add_argument("--queue", required=True, help="job queue name or ARN")
    doctor.add_argument(
        "--definition",
        required=True,
        help="job definition: name (its latest active revision), name:revision or ARN",
    )
    doctor.add_argument(
        "--workers", type=int, default=1, help="workers the run will ask for (default 1)"
    )
    doctor.add_argument("--cpus", type=float, help="vCPUs per worker (default: the definition's)")
    doctor.add_argument(
        "--memory", type=float, help="memory per worker (default: the definition's)"
    )
    doctor.add_argument("--memory-units", choices=["gigabytes", "mebibytes"], default="gigabytes")
    doctor.add_argument(
        "--host", help="address the controller listens on (default: this machine's primary one)"
    )
    doctor.add_argument(
        "--port", type=int, default=0, help="port the controller listens on (default 0: any)"
    )
    doctor.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="where the workers dial, if not where the controller listens (a tunnel's far end)",
    )
    doctor.add_argument("--no-launch", action="store_true", help="check only: launch no worker")
    doctor.add_argument(
        "--seconds-launch",
        type=float,
        default=600.0,
        help="how long the launched worker may take to connect (default 600: a new instance "
        "takes minutes)",
    )
    doctor.set_defaults(aws_command=_doctor)


def _queue_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--queue", required=required, help="job queue name or ARN")
    parser.add_argument(
        "--definition",
        required=required,
        help="job definition: name (any revision), name:revision or ARN",
    )


def _definition_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--definition", required=True, help="job definition name")


def _key_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# -- running a command ----------------------------------------------------------------------


class _Refused(Exception):
    """A command cannot go on: why, in the CLI's words, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run(args: argparse.Namespace) -> int:
    """Run the subcommand `args` was parsed for; return the exit code. A `BatchError` or a
    bad argument prints one line on stderr (a traceback with --debug)."""
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`batchcrew logs ID | head`): not an error worth a traceback.
        # Point stdout at /dev/null so that Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


async def run_async(args: argparse.Namespace) -> int:
    """`run()` in a running event loop."""
    from batchcrew.errors import BatchError

    handler: Handler = args.aws_command
    try:
        return await handler(args)
    except _Refused as refused:
        return _fail(str(refused), refused.code)
    except BatchError as error:
        if getattr(args, "debug", False):
            raise
        return _fail(in_cli_words(str(error)), EXIT_FAILED)
    except ValueError as error:
        if getattr(args, "debug", False):
            raise
        return _fail(in_cli_words(str(error)), EXIT_USAGE)


def _fail(message: str, code: int) -> int:
    print(f"batchcrew: error: {' '.join(message.split())}", file=sys.stderr)
    return code


#: The flag of each Python parameter that the library's messages may name.
_FLAGS = {
    "job_queue": "--queue",
    "job_definition": "--definition",
    "log_group": "--log-group",
    "seconds_interval": "--interval",
    "region": "--region",
    "endpoint_url": "--endpoint-url",
    "profile": "--profile",
    "reason": "--reason",
    "image": "--image",
    "platform_capabilities": "--platform",
    "memory_units": "--memory-units",
    "memory": "--memory",
    "cpus": "--cpus",
    "gpus": "--gpus",
    "seconds_timeout": "--seconds-timeout",
    "scheduling_priority": "--scheduling-priority",
    "tags": "--tag",
    "parameters": "--parameter",
    "propagate_tags": "--propagate-tags",
    "job_role_arn": "--job-role-arn",
    "execution_role_arn": "--execution-role-arn",
    "assign_public_ip": "--assign-public-ip",
    "platform_version": "--platform-version",
    "revision": "--revision",
    "active": "--active",
    "workers": "--workers",
    "host": "--host",
    "port": "--port",
    "address": "--address",
    "seconds_launch": "--seconds-launch",
}
_NAMES = "|".join(sorted(_FLAGS, key=len, reverse=True))
# Not inside a quoted value or a word: the library quotes the values it shows (repr).
_OUTSIDE = r"(?<![\w\-'\"/.])"
#: `name=value` (Python keyword syntax, as in `cpus=0.5` or `platform_capabilities="FARGATE"`).
_KEYWORD = re.compile(_OUTSIDE + rf"({_NAMES})=(\"[^\"]*\"|'[^']*'|[^\s,;:()]+)?")
#: A parameter named on its own: one with an underscore anywhere, any at the start.
_IDENTIFIER = re.compile(_OUTSIDE + r"([a-z]+(?:_[a-z]+)+)(?![\w(=])")
_SUBJECT = re.compile(rf"^({_NAMES})(?=[ :])")
#: botocore's ValueError for an endpoint_url it cannot use.
_BAD_ENDPOINT = re.compile(r"^Invalid endpoint: (.*)$")
#: What only a Python caller can use, dropped from the CLI's messages.
_PYTHON_ONLY = (
    re.compile(r" or None(?=[,;:.)]| not)"),  # a flag left out is None
    re.compile(r"\s*\(CLI: [^)]*\)"),  # the library's own hint at the CLI, now redundant
    re.compile(r"\.?\s*A task's own limit is seconds_timeout= on push, map or walk\.?"),
)


def in_cli_words(message: str) -> str:
    """A library message as the CLI says it: each Python parameter it names as the flag that
    sets it (`cpus=0.5` as `--cpus 0.5`, `execution_role_arn` as `--execution-role-arn`), and
    without what only a Python caller can use ("or None", `seconds_timeout=` on push)."""
    for pattern in _PYTHON_ONLY:
        message = pattern.sub("", message)

    def keyword(found: re.Match[str]) -> str:
        value = (found[2] or "").strip("\"'")
        return _FLAGS[found[1]] + (f" {value}" if value else "")

    message = _KEYWORD.sub(keyword, message)
    message = _IDENTIFIER.sub(lambda found: _FLAGS.get(found[1], found[1]), message)
    message = _SUBJECT.sub(lambda found: _FLAGS[found[1]], message)
    message = _BAD_ENDPOINT.sub(
        r"--endpoint-url \1 is not a URL: give one such as http://127.0.0.1:4566", message
    )
    return message.replace("region and --endpoint-url", "--region and --endpoint-url")


def _aws(args: argparse.Namespace) -> dict[str, Any]:
    return {"region": args.region, "endpoint_url": args.endpoint_url, "profile": args.profile}


def _monitor(args: argparse.Namespace, log_group: str = "/aws/batch/job") -> BatchMonitor:
    """A monitor of --queue and --definition (where the command has them), reaching AWS as the
    common flags say."""
    from batchcrew.aws.monitor import BatchMonitor

    return BatchMonitor(
        job_queue=getattr(args, "queue", None),
        job_definition=getattr(args, "definition", None),
        log_group=log_group,
        **_aws(args),
    )


def _definition(args: argparse.Namespace) -> JobDefinition:
    from batchcrew.aws.definition import JobDefinition

    return JobDefinition(args.definition, **_aws(args))


async def _job_ids(
    args: argparse.Namespace, monitor: BatchMonitor, given: Sequence[str]
) -> list[str]:
    """The whole job ids of `given`, in order: a whole id as it is, a short one (the start of
    an id, START:INDEX for an array child) looked up with `monitor.find()` among the jobs of
    --queue, or of every job queue in the region. Refuses a short id that matches no job,
    saying where it looked, or several, listing them."""
    wanted = [job_id.strip() for job_id in given]
    if not all(wanted):
        raise _Refused("a job id must not be empty", EXIT_USAGE)
    short = [job_id for job_id in wanted if not _WHOLE_ID.fullmatch(job_id)]
    if not short:
        return wanted
    matches: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in short}
    for row in (await monitor.find(short)).iter_rows(named=True):
        matches[row["short_id"]].append(row)
    missing = [job_id for job_id, rows in matches.items() if not rows]
    if missing:
        raise _Refused(await _not_found(args, monitor, missing), EXIT_FAILED)
    for job_id, rows in matches.items():
        if len(rows) > 1:
            shown = "; ".join(
                f"{row['id']} ({row['name']}, {row['status']}, queue {row['queue']})"
                for row in rows[:_AMBIGUOUS_SHOWN]
            )
            more = len(rows) - _AMBIGUOUS_SHOWN
            raise _Refused(
                f"the job id {job_id} is ambiguous: {len(rows)} jobs start with it: {shown}"
                f"{f'; and {more} more' if more > 0 else ''}. Give more of the id",
                EXIT_USAGE,
            )
    return [matches[job_id][0]["id"] if job_id in matches else job_id for job_id in wanted]


async def _not_found(args: argparse.Namespace, monitor: BatchMonitor, missing: list[str]) -> str:
    """Why no job id starts with `missing`: where the lookup looked, and what to check."""
    from batchcrew.errors import BatchError

    what = f"no job id starts with {missing[0]}"
    if len(missing) > 1:
        what = f"no job ids start with {', '.join(missing)}"
    try:  # only to say where it looked: the queues' ARNs name the region
        queues = (await monitor.job_queues()).to_dicts()
    except BatchError:
        queues = []
    region = args.region or next(
        (queue["arn"].split(":")[3] for queue in queues if queue["arn"]), None
    )
    if region is None:  # no queue to tell: where the AWS configuration points
        import botocore.exceptions
        import botocore.session

        try:
            region = botocore.session.Session(profile=args.profile).get_config_variable("region")
        except botocore.exceptions.BotoCoreError:
            region = None
    where = f"region {region}" if region else "this region"
    queue = getattr(args, "queue", None)
    if queue is not None:
        return (
            f"{what} in job queue {queue} ({where}): check the id, --queue (leave it out to "
            "look in every job queue) and --region"
        )
    if not queues:
        return f"{what}: there is no job queue in {where}; check --region (and --endpoint-url)"
    if len(queues) == 1:
        looked = f"in job queue {queues[0]['name']}, the only one in {where}"
    else:
        names = ", ".join(queue["name"] for queue in queues)
        looked = f"in the {len(queues)} job queues of {where} ({names})"
    return f"{what} {looked}: check the id and --region (AWS keeps ended jobs for about 7 days)"


def _no_job(job_id: str) -> _Refused:
    return _Refused(
        f"no job {job_id}: check the id and --region (AWS keeps ended jobs for about 7 days)",
        EXIT_FAILED,
    )


# -- the commands ---------------------------------------------------------------------------


async def _jobs(args: argparse.Namespace) -> int:
    statuses = [s for given in args.status or _STATUSES for s in _GROUPS.get(given, (given,))]
    frame = await _monitor(args).jobs(statuses)
    if args.json:
        _print_json(frame.to_dicts())
    else:
        _show_jobs(frame)
    return 0


async def _status(args: argparse.Namespace) -> int:
    async with _monitor(args) as monitor:
        (job_id,) = await _job_ids(args, monitor, [args.id])
        frame = await monitor.status(job_id)
    if frame.height == 0:
        raise _no_job(job_id)
    if args.json:
        _print_json(frame.to_dicts())
    else:
        _show_job(frame.row(0, named=True))
    return 0


async def _logs(args: argparse.Namespace) -> int:
    from batchcrew.errors import BatchError

    if args.follow and not (math.isfinite(args.interval) and args.interval > 0):
        raise _Refused(f"--interval must be more than 0 seconds, not {args.interval:g}", EXIT_USAGE)
    async with _monitor(args, args.log_group) as monitor:
        (job_id,) = await _job_ids(args, monitor, [args.id])
        try:
            if not args.follow:
                frame = await monitor.log(job_id)
                if args.json:
                    _print_json(frame.to_dicts())
                else:
                    _print_lines(frame, timestamps=args.timestamps)
                return 0
            async for frame in monitor.follow(job_id, seconds_interval=args.interval):
                if args.json:  # one JSON document per event, as it arrives (JSON Lines)
                    for row in frame.to_dicts():
                        print(json.dumps(row, default=_json_value, ensure_ascii=False), flush=True)
                else:
                    _print_lines(frame, timestamps=args.timestamps)
        except BatchError as error:
            if error.code == "JobNotFound":
                raise _no_job(job_id) from error
            if error.code == "JobNotStarted":
                status = (await monitor.status(job_id))["status"].to_list() or ["unknown"]
                raise _Refused(
                    f"job {job_id} has not started: it has no log stream yet (status "
                    f"{status[0]}); wait until `batchcrew status {job_id}` says running, or "
                    "use --follow, which waits for it",
                    EXIT_FAILED,
                ) from error
            raise
        final = await monitor.status(job_id)
    if final.height and not args.json:
        print(f"job {job_id} {final['status'][0]}: {final['reason'][0]}", file=sys.stderr)
    return 0


async def _terminate(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise _Refused(
            "give the ids of the jobs to end, or --all (with --queue and --definition)", EXIT_USAGE
        )
    if args.all and (args.queue is None or args.definition is None):
        raise _Refused(
            "--all ends every active job of one job queue and job definition: give both --queue "
            "and --definition (`batchcrew jobs --queue Q --definition D --status active` lists "
            "what it would end)",
            EXIT_USAGE,
        )
    if not args.reason.strip():
        raise _Refused("--reason must not be empty: AWS records it with each job", EXIT_USAGE)
    async with _monitor(args) as monitor:
        if args.all:
            frame = await monitor.terminate(all=True, reason=args.reason)
        else:
            ids = await _job_ids(args, monitor, args.ids)
            frame = await monitor.terminate(ids, reason=args.reason)
    _show(frame, args)
    return 0 if frame["ended"].all() else EXIT_FAILED


async def _register(args: argparse.Namespace) -> int:
    frame = await _definition(args).register(
        image=args.image,
        platform_capabilities=args.platform,
        memory_units=args.memory_units,
        memory=args.memory,
        cpus=args.cpus,
        gpus=args.gpus,
        seconds_timeout=args.seconds_timeout,
        scheduling_priority=args.scheduling_priority,
        tags=dict(args.tag) if args.tag else None,
        propagate_tags=args.propagate_tags,
        parameters=dict(args.parameter) if args.parameter else None,
        job_role_arn=args.job_role_arn,
        execution_role_arn=args.execution_role_arn,
        assign_public_ip=args.assign_public_ip,
        platform_version=args.platform_version,
    )
    _show(frame, args)
    return 0


async def _describe(args: argparse.Namespace) -> int:
    frame = await _definition(args).describe(active=args.active)
    if frame.height == 0 and not args.json:
        which = "no active revision" if args.active else "no revision"
        print(
            f"job definition {args.definition} has {which} here: check --definition and --region",
            file=sys.stderr,
        )
        return 0
    _show(frame, args)
    return 0


async def _deregister(args: argparse.Namespace) -> int:
    from batchcrew.errors import BatchError

    try:
        frame = await _definition(args).deregister(args.revision)
    except BatchError as error:
        if error.code != "JobDefinitionNotFound":
            raise
        raise _Refused(
            f"job definition {args.definition} has no revision {args.revision}: "
            f"`batchcrew definition describe --definition {args.definition}` lists the "
            "revisions there are",
            EXIT_FAILED,
        ) from error
    if frame.height == 0 and not args.json:
        print(f"no active revision of {args.definition} to deregister", file=sys.stderr)
        return 0
    _show(frame, args)
    return 0


async def _doctor(args: argparse.Namespace) -> int:
    from batchcrew.aws._doctor import doctor
    from batchcrew.aws.options import BatchOptions

    options = BatchOptions(
        job_definition=args.definition,
        job_queue=args.queue,
        cpus=args.cpus,
        memory=args.memory,
        memory_units=args.memory_units,
        **_aws(args),
    )
    report = await doctor(
        options=options,
        workers=args.workers,
        host=args.host,
        port=args.port,
        address=args.address,
        launch=not args.no_launch,
        seconds_launch=args.seconds_launch,
    )
    rows = [
        {**row, "fix": None if row["fix"] is None else in_cli_words(row["fix"])}
        for row in report.checks.iter_rows(named=True)
    ]
    if args.json:
        _print_json(
            {
                "ok": report.ok,
                "job_queue": report.job_queue,
                "job_definition": report.job_definition,
                "checks": rows,
            }
        )
    else:
        _show_checks(rows, report.problems.height)
    return 0 if report.ok else EXIT_FAILED


# -- output ---------------------------------------------------------------------------------


def _json_value(value: object) -> object:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _print_json(document: object) -> None:
    print(json.dumps(document, default=_json_value, ensure_ascii=False, indent=2))


def _show(frame: pl.DataFrame, args: argparse.Namespace) -> None:
    """The rows as one JSON array of objects with --json, else as a rich table."""
    if args.json:
        _print_json(frame.to_dicts())
        return
    import polars as pl
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    shown = [
        name
        for name, dtype in frame.schema.items()
        if not isinstance(dtype, pl.Struct)
        and not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct))
    ]
    hidden = [name for name in frame.columns if name not in shown]
    table = Table(caption=f"more with --json: {', '.join(hidden)}" if hidden else None)
    for name in shown:
        table.add_column(name, overflow="fold")
    for row in frame.select(shown).iter_rows():
        # Text, not str: AWS values may hold [brackets] that rich would read as markup.
        table.add_row(*(Text(_cell(value)) for value in row))
    Console().print(table)


def _show_checks(rows: list[dict[str, Any]], problems: int) -> None:
    """The doctor's checks, one line each (status, check, what it found), with the fix on the
    line under a problem's. (What each looked at, `subject`, is in --json.)"""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    styles = {"ok": "green", "problem": "bold red", "skipped": "yellow"}
    table = Table(box=None, pad_edge=False, header_style="bold underline")
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("found", overflow="fold", ratio=1)
    for row in rows:
        # Text, not str: AWS values may hold [brackets] that rich would read as markup.
        table.add_row(
            Text(row["status"], style=styles.get(row["status"], "")),
            Text(row["check"]),
            Text(row["found"]),
        )
        if row["fix"]:
            table.add_row("", "", Text(f"fix: {row['fix']}", style="cyan"))
    console = Console()
    console.print(table)
    if problems:
        plural = "s" if problems > 1 else ""
        console.print(
            Text(f"{problems} problem{plural}: fix them, then run batchcrew doctor again")
        )
    else:
        console.print(Text("no problem found", style="green"))


def _show_jobs(frame: pl.DataFrame) -> None:
    """One line per job, what a person scans (name, short id, status, reason, start, run time),
    as wide as the terminal: names and reasons are cut with an ellipsis, never wrapped."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    now = datetime.datetime.now(datetime.UTC)
    table = Table(
        box=None,
        pad_edge=False,
        header_style="bold underline",
        caption="ids shortened; times UTC; full ids and every field: --json",
    )
    table.add_column("name", ratio=2, min_width=8, no_wrap=True, overflow="ellipsis")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", ratio=3, min_width=8, no_wrap=True, overflow="ellipsis")
    table.add_column("started", no_wrap=True)
    table.add_column("run time", no_wrap=True, justify="right")
    for job in frame.iter_rows(named=True):
        started: datetime.datetime | None = job["started"]
        cells = (
            job["name"] or "",
            _short_id(job["id"] or ""),
            job["status"] or "",
            job["reason"] or "",
            started.strftime("%m-%d %H:%M") if started is not None else "",
            _run_time(started, job["stopped"], job["status"], now),
        )
        # Text, not str: AWS values may hold [brackets] that rich would read as markup.
        table.add_row(*(Text(cell) for cell in cells))
    console = Console()
    # Ratios share out the width only in an expanded table; expand it only when its natural
    # width (measured without the terminal's limit) is too much, so a short list stays narrow.
    natural = console.measure(table, options=console.options.update_width(_UNLIMITED)).maximum
    table.expand = natural > console.width
    console.print(table)


def _show_job(job: dict[str, Any]) -> None:
    """One job, a field per line, long values folded within the terminal's width."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    now = datetime.datetime.now(datetime.UTC)
    fields = {
        **job,
        "run time": _run_time(job["started"], job["stopped"], job["status"], now),
    }
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in fields.items():
        text = _cell(value) + (" UTC" if isinstance(value, datetime.datetime) else "")
        table.add_row(name, Text(text))
    Console().print(table)


def _short_id(job_id: str) -> str:
    """The first 8 characters of a job id, as git shortens commits (an array child keeps its
    ":index")."""
    parent, colon, index = job_id.partition(":")
    return parent[:8] + colon + index


def _run_time(
    started: datetime.datetime | None,
    stopped: datetime.datetime | None,
    status: str | None,
    now: datetime.datetime,
) -> str:
    """How long the job ran ("42s", "3m05s", "2h07m", "1d04h"), or runs so far; "" if it never
    started."""
    if started is None:
        return ""
    end = stopped if stopped is not None else (now if status == "running" else None)
    if end is None:
        return ""
    seconds = max(0, int((end - started).total_seconds()))
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days}d{hour:02d}h"
    if hours:
        return f"{hours}h{minute:02d}m"
    if minutes:
        return f"{minutes}m{second:02d}s"
    return f"{second}s"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ", ".join(_cell(item) for item in value)
    return str(value)


def _print_lines(frame: pl.DataFrame, *, timestamps: bool) -> None:
    for message, timestamp in zip(frame["message"], frame["timestamp"], strict=True):
        prefix = f"{timestamp.isoformat()} " if timestamps and timestamp is not None else ""
        sys.stdout.write(f"{prefix}{message}\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """These subcommands on their own (`python -m batchcrew.aws._commands ...`), as the
    `batchcrew` command runs them."""
    parser = argparse.ArgumentParser(prog="batchcrew", description="AWS Batch by hand.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
