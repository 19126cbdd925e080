"""The `batchcrew` subcommands for AWS Batch by hand: jobs, status, logs, terminate and
definition register|describe|deregister. Thin: parse, call `BatchMonitor` or `JobDefinition`,
print a rich table (or one JSON document with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
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
#: argparse's); interrupted (128 + SIGINT).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_UNLIMITED = 100_000  # a width no table reaches: to measure one's natural width


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `jobs`, `status`, `logs`, `terminate` and `definition` to the `batchcrew` parser.
    Each sets `aws_command`; pass the parsed arguments to `run()`."""
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
        description="Show one AWS Batch job, found by id (--queue, --definition: not needed).",
    )
    status.add_argument("id", help="job id")
    _queue_arguments(status, required=False)
    status.set_defaults(aws_command=_status)

    logs = subparsers.add_parser(
        "logs", parents=[common], help="print the CloudWatch log of an AWS Batch job"
    )
    logs.add_argument("id", help="job id")
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
        "terminate", parents=[common], help="end AWS Batch jobs (CancelJob, then TerminateJob)"
    )
    terminate.add_argument("ids", nargs="*", metavar="ID", help="ids of the jobs to end")
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
    register.add_argument("--execution-role-arn", help="IAM role ECS pulls images with")
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
    except BatchError as error:
        if getattr(args, "debug", False):
            raise
        return _fail(str(error), EXIT_FAILED)
    except ValueError as error:
        if getattr(args, "debug", False):
            raise
        return _fail(str(error), EXIT_USAGE)


def _fail(message: str, code: int) -> int:
    print(f"batchcrew: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _aws(args: argparse.Namespace) -> dict[str, Any]:
    return {"region": args.region, "endpoint_url": args.endpoint_url, "profile": args.profile}


def _monitor(args: argparse.Namespace, log_group: str = "/aws/batch/job") -> BatchMonitor:
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
    frame = await _monitor(args).status(args.id)
    if frame.height == 0:
        return _fail(f"no job {args.id}: check the id and --region", EXIT_FAILED)
    if args.json:
        _print_json(frame.to_dicts())
    else:
        _show_job(frame.row(0, named=True))
    return 0


async def _logs(args: argparse.Namespace) -> int:
    monitor = _monitor(args, args.log_group)
    if not args.follow:
        frame = await monitor.log(args.id)
        if args.json:
            _print_json(frame.to_dicts())
        else:
            _print_lines(frame, timestamps=args.timestamps)
        return 0
    async with monitor:
        async for frame in monitor.follow(args.id, seconds_interval=args.interval):
            if args.json:  # one JSON document per event, as it arrives (JSON Lines)
                for row in frame.to_dicts():
                    print(json.dumps(row, default=_json_value, ensure_ascii=False), flush=True)
            else:
                _print_lines(frame, timestamps=args.timestamps)
        final = await monitor.status(args.id)
    if final.height and not args.json:
        print(f"job {args.id} {final['status'][0]}: {final['reason'][0]}", file=sys.stderr)
    return 0


async def _terminate(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise ValueError("give the ids of the jobs to end, or --all (with --queue, --definition)")
    monitor = _monitor(args)
    if args.all:
        frame = await monitor.terminate(all=True, reason=args.reason)
    else:
        frame = await monitor.terminate(args.ids, reason=args.reason)
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
    )
    _show(frame, args)
    return 0


async def _describe(args: argparse.Namespace) -> int:
    _show(await _definition(args).describe(active=args.active), args)
    return 0


async def _deregister(args: argparse.Namespace) -> int:
    frame = await _definition(args).deregister(args.revision)
    if frame.height == 0 and not args.json:
        print(f"no active revision of {args.definition} to deregister", file=sys.stderr)
        return 0
    _show(frame, args)
    return 0


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
