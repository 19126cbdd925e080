"""The `batchcrew` command. Thin: it parses arguments and calls the public API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from rich.console import Console


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `batchcrew` command."""
    parser = argparse.ArgumentParser(
        prog="batchcrew", description="Run Python tasks on auto-scaled workers."
    )
    parser.add_argument("--debug", action="store_true", help="log everything, show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="estimate pi with Monte Carlo tasks on local workers")
    demo.add_argument("--tasks", type=int, default=200, help="number of tasks (default 200)")
    demo.add_argument("--draws", type=int, default=100_000, help="darts per task")
    demo.add_argument("--workers", type=int, default=2, help="most workers at once (default 2)")
    demo.add_argument(
        "--aws-batch-emulator",
        action="store_true",
        help="run the workers as AWS Batch jobs on a local emulator (the whole AWS path, offline)",
    )
    demo.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the live dashboard on loopback while the demo runs, and print its URL",
    )
    demo.add_argument(
        "--dashboard-seconds",
        type=float,
        default=5.0,
        metavar="N",
        help="with --dashboard, keep it up N seconds after the demo ends (default 5)",
    )
    demo.add_argument(
        "--timeline",
        metavar="FILE",
        help="draw the run's timeline (a lane per worker, a bar per task) to FILE, such as "
        "run.png or run.svg (needs batchcrew[plot])",
    )

    worker = commands.add_parser("worker", help="run a worker (launchers do this for you)")
    worker.add_argument("--controller", help="address to connect to, e.g. tcp://10.0.0.5:5555")
    worker.add_argument("--launch", help="launch id issued by the controller")
    worker.add_argument("--index", type=int, help="worker number within its launch")

    dockerfile = commands.add_parser(
        "dockerfile",
        help="print a Dockerfile for worker images that match this Python and batchcrew",
        description="Print a Dockerfile for AWS Batch worker images: this Python minor "
        "version, this batchcrew version, and the packages you name at their versions here. "
        "For a batchcrew installed from a clone (pip install -e .), which no package registry "
        "has, write an image context instead: --context DIR, then docker build DIR.",
    )
    dockerfile.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="NAME",
        help="a package the tasks need, pinned to its version here (repeatable; "
        "'name>=1.2' is kept as given)",
    )
    dockerfile.add_argument("--base", help="base image (default: python:<this version>-slim)")
    dockerfile.add_argument(
        "--context",
        metavar="DIR",
        help="write DIR/Dockerfile instead of printing it, with a wheel of this batchcrew "
        "beside it when it is not installed from a package registry (a clone): then run "
        "docker build DIR",
    )

    emulator = commands.add_parser(
        "emulator",
        help="run a local AWS Batch + CloudWatch Logs emulator until Ctrl-C (on loopback only, "
        "unless --allow-remote)",
    )
    journal = commands.add_parser(
        "journal",
        help="show what a controller's journal holds: its summary, then its results",
        description="Show a journal (the file a controller was given as journal=): its summary, "
        "then its newest results, one line each. It may be read while its controller runs. "
        "Every column, and each task's value: batchcrew.Journal(PATH) in Python.",
    )
    journal.add_argument("path", metavar="PATH", help="the journal file")
    journal.add_argument(
        "--failed", action="store_true", help="only the results that are not a success"
    )
    journal.add_argument(
        "--limit",
        type=int,
        default=_JOURNAL_LIMIT,
        metavar="N",
        help=f"show the newest N results at most (default {_JOURNAL_LIMIT}; 0: every one)",
    )

    from batchcrew.testing import _command

    _command.add_arguments(emulator)
    from batchcrew.aws import _commands as aws_commands

    aws_commands.add_commands(commands)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if getattr(args, "aws_command", None) is not None:
        return aws_commands.run(args)
    if args.command == "demo":
        try:
            return asyncio.run(_demo(args))
        except KeyboardInterrupt:  # Ctrl-C: the controller has closed, its workers with it
            return 130
    if args.command == "dockerfile":
        return _dockerfile(args)
    if args.command == "journal":
        return _journal(args)
    if args.command == "worker":
        from batchcrew import worker as worker_module

        forwarded = [
            f"--{name}={value}"
            for name in ("controller", "launch", "index")
            if (value := getattr(args, name)) is not None
        ]
        return worker_module.main(forwarded)
    return _command.run(args)


_JOURNAL_LIMIT = 20  # results `batchcrew journal` shows unless told


def _journal(args: argparse.Namespace) -> int:
    """`batchcrew journal PATH`: the journal's summary, a field per line, then its newest
    results (its failures, with --failed), a line each."""
    import polars as pl
    from rich.table import Table
    from rich.text import Text

    from batchcrew.errors import JournalError
    from batchcrew.journal_view import Journal

    if args.limit < 0:
        print("batchcrew: error: --limit must be 0 (every result) or more", file=sys.stderr)
        return 2
    try:
        with Journal(args.path) as journal:
            summary = journal.summary()
            results = journal.failed() if args.failed else journal.results()
    except JournalError as refused:
        if args.debug:
            raise
        print(f"batchcrew: error: {refused}", file=sys.stderr)
        return 2
    console = Console()
    fields = Table(box=None, show_header=False, pad_edge=False)
    fields.add_column("field", style="bold", no_wrap=True)
    fields.add_column("value", overflow="fold")
    for name, value in summary.row(0, named=True).items():
        # Text, not str: names and errors may hold [brackets] that rich would read as markup.
        fields.add_row(name, Text(_journal_cell(value)))
    console.print(fields)
    console.print()
    total = results.height
    if total == 0:
        console.print("no failed task" if args.failed else "no task has resolved yet")
        return 0
    results = results.sort("resolved", maintain_order=True)  # as they resolved, newest last
    caption = "times UTC; each task's output and value: batchcrew.Journal(PATH) in Python"
    if 0 < args.limit < total:
        results = results.tail(args.limit)
        caption = f"the newest {args.limit} of {total}, more with --limit N; {caption}"
    table = Table(box=None, pad_edge=False, header_style="bold underline", caption=caption)
    table.add_column("name", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", no_wrap=True, justify="right")
    table.add_column("seconds", no_wrap=True, justify="right")
    table.add_column("worker", overflow="fold")
    table.add_column("resolved", no_wrap=True)
    # The error gives way first when the terminal is narrow: its lines are cut, not wrapped.
    table.add_column("error", min_width=8)
    columns = ["name", "status", "attempts", "seconds", "worker", "resolved", "error"]
    for row in results.with_columns(pl.col("seconds").round(3)).select(columns).iter_rows():
        *cells, error = (_journal_cell(value, "%m-%d %H:%M:%S") for value in row)
        table.add_row(*map(Text, cells), Text(error, no_wrap=True, overflow="ellipsis"))
    console.print(table)
    return 0


def _journal_cell(value: object, moment: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A value as `batchcrew journal` shows it: a time in the `moment` format, a text's
    first line (an error's), nothing for null."""
    import datetime

    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.strftime(moment)
    if isinstance(value, str):
        return value.splitlines()[0] if value else ""  # an error's first line
    return str(value)


def _dockerfile(args: argparse.Namespace) -> int:
    from batchcrew import __version__
    from batchcrew.aws import image
    from batchcrew.errors import BatchcrewError

    def fail(message: str, code: int) -> int:
        print(f"batchcrew: error: {message}", file=sys.stderr)
        return code

    if args.context is None:
        source = image._installed_source()
        if source is not None:
            return fail(
                f"this batchcrew is {source}, and no package registry has it, so an image "
                f"cannot pip install batchcrew=={__version__}: pass --context DIR to "
                "write DIR/Dockerfile with a wheel of this batchcrew beside it, then run "
                "docker build DIR",
                2,
            )
        try:
            print(image.worker_dockerfile(args.package, base=args.base), end="")
        except ValueError as error:
            return fail(str(error), 2)
        return 0
    try:
        written = image.worker_context(args.context, args.package, base=args.base)
    except ValueError as error:
        return fail(str(error), 2)
    except (BatchcrewError, OSError) as error:
        return fail(str(error), 1)
    print(
        f"wrote {' and '.join(str(path) for path in written)}; build the image with: "
        f"docker build -t IMAGE {args.context}"
    )
    return 0


def _timeline_problem(path: str) -> str | None:
    """Why the timeline cannot be drawn to `path`, said before the run rather than after."""
    import importlib.util
    import os

    if importlib.util.find_spec("matplotlib") is None:
        return 'drawing it needs matplotlib: pip install "batchcrew[plot]"'
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        return f"{path!r} needs a picture suffix: one of {', '.join(sorted(formats))}"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder!r} does not exist"
    return None


async def _demo(args: argparse.Namespace) -> int:
    from batchcrew.controller import Controller
    from batchcrew.demo import run_demo

    console = Console()
    for name in ("tasks", "draws", "workers"):
        if getattr(args, name) < 1:
            console.print(f"[red]--{name} must be at least 1")
            return 2
    if not args.dashboard_seconds >= 0:
        console.print("[red]--dashboard-seconds must be 0 or more")
        return 2
    if args.timeline is not None:
        problem = _timeline_problem(args.timeline)
        if problem is not None:
            console.print(f"[red]--timeline: {problem}", highlight=False, soft_wrap=True)
            return 2
    watch = {
        "dashboard": args.dashboard,
        "dashboard_seconds": args.dashboard_seconds,
        "timeline": args.timeline,
    }
    if not args.aws_batch_emulator:
        async with Controller(name="demo", workers=args.workers) as controller:
            await run_demo(controller, args.tasks, args.draws, console, **watch)
        return 0
    import os

    from batchcrew import aws
    from batchcrew.testing import LocalBatch

    async with LocalBatch(queues=["demo"], job_definition="demo") as batch:
        os.environ.update(batch.environment())  # how any AWS SDK would find it
        console.print(f"AWS Batch emulator at {batch.endpoint_url} (queue and definition 'demo')")
        options = aws.BatchOptions(
            job_definition="demo", job_queue="demo", cpus=1, memory=512, memory_units="mebibytes"
        )
        controller = aws.batch_controller(name="demo", workers=args.workers, options=options)
        async with controller:
            await run_demo(controller, args.tasks, args.draws, console, **watch)
        jobs = batch.requests_for("SubmitJob")
        sizes = [job.get("arrayProperties", {}).get("size", 1) for job in jobs]
        console.print(
            f"{len(jobs)} SubmitJob call(s) launched {sum(sizes)} worker(s); every job ended "
            "when the controller closed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
