"""`batchcrew emulator`: run `LocalBatch` as a standalone server until Ctrl-C.

The CLI module wires `add_arguments` and `run` into its parser; both stay importable without
starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys

from batchcrew.testing._localbatch import LocalBatch, is_loopback
from batchcrew.testing._options import LocalBatchOptions, PerOperation
from batchcrew.testing._rules import RULES


def _per_operation(values: list[str] | None, flag: str) -> PerOperation:
    """`--flag 0.5` sets the default, `--flag SubmitJob=2` one operation; repeatable."""
    if not values:
        return 0.0
    mapping: dict[str, float] = {}
    for value in values:
        operation, _, number = value.rpartition("=")
        try:
            mapping[operation or "*"] = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes SECONDS_OR_RATE or OPERATION=SECONDS_OR_RATE, got {value!r}"
            ) from None
    return mapping


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to `parser`."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any but loopback needs --allow-remote)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host beyond loopback: anyone who can reach the port and holds the "
        "printed credentials can run any command here, as you; only signed requests are answered",
    )
    parser.add_argument("--port", type=int, default=4566, help="port to listen on (0: any free)")
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help="create this job queue on EC2 (repeatable; default: one queue named 'localbatch')",
    )
    parser.add_argument(
        "--fargate-queue",
        action="append",
        dest="fargate_queues",
        metavar="NAME",
        help="create this job queue on Fargate, for jobs of Fargate job definitions (repeatable)",
    )
    parser.add_argument(
        "--job-definition",
        metavar="NAME",
        help="register a container job definition of this name (1 vCPU, 2048 MiB)",
    )
    parser.add_argument("--vcpus", type=float, default=256.0, help="vCPUs jobs may use at once")
    parser.add_argument("--memory-mib", type=int, default=1024 * 1024, help="MiB jobs may use")
    parser.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds each job spends in STARTING"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds between SIGTERM and SIGKILL when a running job is stopped (default 30, "
        "ECS's ECS_CONTAINER_STOP_TIMEOUT)",
    )
    parser.add_argument(
        "--latency",
        action="append",
        metavar="[OPERATION=]SECONDS",
        help="delay of every API call, or of one operation (repeatable)",
    )
    parser.add_argument(
        "--throttle-rate",
        action="append",
        metavar="[OPERATION=]P",
        help="probability that a call is throttled, for all or one operation (repeatable)",
    )
    parser.add_argument(
        "--fault-rate",
        action="append",
        metavar="[OPERATION=]P",
        help="probability that a call fails with a server error (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the throttle/fault draws")
    parser.add_argument("--region", default="us-east-1", help="default region")
    parser.add_argument("--log-group", default="/aws/batch/job", help="log group of job output")
    parser.add_argument(
        "--lenient",
        action="append",
        metavar="RULE",
        choices=sorted(RULES),
        help="do not enforce this AWS rule (repeatable), e.g. timeout_minimum to accept job "
        "timeouts under 60 seconds; by default every request is checked as AWS checks it. "
        "Rules: " + ", ".join(sorted(RULES)),
    )


def _options(args: argparse.Namespace) -> LocalBatchOptions:
    return LocalBatchOptions(
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
        startup_delay=args.startup_delay,
        stop_timeout=args.stop_timeout,
        latency=_per_operation(args.latency, "--latency"),
        throttle_rate=_per_operation(args.throttle_rate, "--throttle-rate"),
        fault_rate=_per_operation(args.fault_rate, "--fault-rate"),
        seed=args.seed,
        region=args.region,
        log_group=args.log_group,
        lenient=frozenset(args.lenient or ()),
    )


async def _serve(args: argparse.Namespace, options: LocalBatchOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    queues = args.queues or ["localbatch"]
    fargate_queues = args.fargate_queues or []
    batch = LocalBatch(
        queues=queues,
        fargate_queues=fargate_queues,
        job_definition=args.job_definition,
        options=options,
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
    )
    async with batch:
        print(f"LocalBatch (AWS Batch + CloudWatch Logs) listening on {batch.endpoint_url}")
        if args.allow_remote:
            print(
                "Remote access allowed: only requests signed with the credentials below are "
                "answered. From another machine, use this machine's address in AWS_ENDPOINT_URL."
            )
        fargate = f"; Fargate queues: {', '.join(fargate_queues)}" if fargate_queues else ""
        print(
            f"queues: {', '.join(queues)}{fargate}; capacity: {options.vcpus:g} vCPUs, "
            f"{options.memory_mib} MiB"
        )
        if options.lenient:
            print(f"AWS rules not enforced: {', '.join(sorted(options.lenient))}")
        print("Point AWS SDKs and the AWS CLI at it with:")
        for name, value in batch.environment().items():
            print(f"  export {name}={shlex.quote(value)}")
        print("Press Ctrl-C to stop (running jobs are killed).", flush=True)
        await stop.wait()
        print("Stopping LocalBatch: killing running jobs...", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT or SIGTERM; return the exit status (0 after a clean stop,
    1 if it cannot listen, 2 for invalid options or a --host beyond loopback without
    --allow-remote)."""
    if not args.allow_remote and not is_loopback(args.host):
        print(
            f"batchcrew emulator: --host {args.host} is not a loopback address, and the "
            "emulator runs any command a caller submits, as you. Use --host 127.0.0.1, or add "
            "--allow-remote if every machine that can reach the port may run commands here "
            "(requests must then be signed with the credentials it prints).",
            file=sys.stderr,
        )
        return 2
    try:
        options = _options(args)
        asyncio.run(_serve(args, options))
    except (ValueError, argparse.ArgumentTypeError) as error:
        print(f"batchcrew emulator: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"batchcrew emulator: cannot listen on {args.host}:{args.port}: {error}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the emulator from `python -m batchcrew.testing._command` (the CLI wires the rest)."""
    parser = argparse.ArgumentParser(prog="batchcrew emulator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
