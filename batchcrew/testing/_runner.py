"""Runs emulated Batch jobs as local process groups: start-up delay, image pulls that fail,
output lines to CloudWatch Logs, memory limits, timeouts, termination and reclaimed hosts.
The asyncio shell around `BatchState`, whose decisions it carries out; every process it starts
is killed and reaped before `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio

from batchcrew.testing._batch import (
    EXITED,
    FAILED_TO_START,
    OUT_OF_MEMORY,
    TIMED_OUT,
    BatchState,
    Job,
    Outcome,
)
from batchcrew.testing._logs import LogsState, LogStream, split_message
from batchcrew.testing._options import LocalBatchOptions

logger = logging.getLogger("batchcrew.testing")

StopCause = Literal["terminate", "reclaim", "timeout", "oom"]

_MIB = 1024 * 1024
#: How long to wait for a job's output pipes to close once its process group is dead (a
#: descendant that left the group with setsid may keep them open).
_DRAIN_SECONDS = 1.0
#: How long closing the emulator waits for a killed process to be reaped.
_REAP_SECONDS = 5.0


@dataclass(eq=False)
class _Attempt:
    """One attempt of a job on its way through STARTING and RUNNING."""

    job: Job
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # exited, or asked to stop
    stop_cause: StopCause | None = None
    process: asyncio.subprocess.Process | None = None

    def stop(self, cause: StopCause) -> None:
        if self.stop_cause is None:
            self.stop_cause = cause
        self.wake.set()


def kill_group(pid: int, signum: int) -> None:
    """Send `signum` to the process group led by `pid`, if it still has members."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def exit_code(returncode: int) -> int:
    """A process's exit status as Docker reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _process_stats() -> Iterator[tuple[bytes, int, int]]:
    """(state, process group, resident pages) of every process, from /proc (Linux)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue  # the process ended while we looked
        # Fields after the command name, which may itself contain spaces and parentheses:
        # state(3) ppid(4) pgrp(5) ... rss(24), counted from 1.
        fields = data[data.rindex(b")") + 2 :].split()
        yield fields[0], int(fields[2]), int(fields[21])


def rss_by_process_group() -> dict[int, int]:
    """Resident memory in bytes, summed per process group."""
    page = os.sysconf("SC_PAGE_SIZE")
    totals: dict[int, int] = {}
    for _, group, rss_pages in _process_stats():
        totals[group] = totals.get(group, 0) + rss_pages * page
    return totals


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process remains in process group `pgid`."""
    return any(group == pgid and state != b"Z" for state, group, _ in _process_stats())


async def _wait_group_gone(pgid: int) -> None:
    """Wait until process group `pgid` has no live process: SIGKILL takes effect
    asynchronously, and no process of a job may outlive it. Nothing signals the moment, so
    /proc is polled."""
    for _ in range(int(_REAP_SECONDS / 0.005)):
        if not group_alive(pgid):
            return
        await anyio.sleep(0.005)


def _cannot_start(program: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        problem = "executable file not found in $PATH"
    elif isinstance(error, PermissionError):
        problem = "permission denied"
    else:
        problem = error.strerror or str(error)
    return (
        "CannotStartContainerError: Error response from daemon: failed to create task for "
        "container: failed to create shim task: OCI runtime create failed: runc create failed: "
        f'unable to start container process: exec: "{program}": {problem}: unknown'
    )


class JobRunner:
    """Starts the jobs `BatchState.schedule` hands out and reports how their attempts end.

    `run()` is the runner's life: it returns only when cancelled, after killing every process
    group it started and waiting for each process.
    """

    def __init__(
        self,
        state: BatchState,
        logs: LogsState,
        options: LocalBatchOptions,
        endpoint_url: Callable[[], str],
        clock: Callable[[], int],
    ) -> None:
        self._state = state
        self._logs = logs
        self._options = options
        self._endpoint_url = endpoint_url
        self._clock = clock
        self._wake = asyncio.Event()
        self._attempts: dict[str, _Attempt] = {}
        self._has_proc = Path("/proc/self/stat").exists()  # /proc: Linux only
        state.on_change = self._wake.set

    def process_ids(self) -> list[int]:
        """Process ids of the job processes running now (each leads its own process group)."""
        return [
            a.process.pid
            for a in self._attempts.values()
            if a.process is not None and a.process.returncode is None
        ]

    async def run(self) -> None:
        """Carry out the scheduler's decisions until cancelled."""
        if not self._has_proc:
            logger.warning(
                "LocalBatch: no /proc on this system; job memory limits are not enforced"
            )
        self._wake.set()
        async with anyio.create_task_group() as tasks:
            if self._has_proc:
                tasks.start_soon(self._watch_memory)
            while True:
                await self._wake.wait()
                self._wake.clear()
                for job in self._state.schedule():
                    attempt = _Attempt(job)
                    self._attempts[job.job_id] = attempt
                    tasks.start_soon(self._run_attempt, attempt, name=f"job {job.job_id}")
                for attempt in self._attempts.values():
                    if attempt.job.kill_reason is not None:
                        attempt.stop("terminate")
                    elif attempt.job.host_reason is not None:
                        attempt.stop("reclaim")

    async def _run_attempt(self, attempt: _Attempt) -> None:
        outcome: Outcome | None = None
        try:
            outcome = await self._attempt(attempt)
        except Exception as error:
            # A bug of the emulator fails the job, never the emulator.
            logger.exception("LocalBatch failed to run job %s", attempt.job.job_id)
            outcome = Outcome(None, FAILED_TO_START, f"LocalBatch internal error: {error!r}")
        finally:
            del self._attempts[attempt.job.job_id]
            process = attempt.process
            if process is not None:
                # Normally the group is already dead; on cancellation (the emulator closing)
                # this is where every process of the job is killed and reaped.
                with anyio.CancelScope(shield=True):
                    kill_group(process.pid, signal.SIGKILL)
                    with anyio.move_on_after(_REAP_SECONDS):
                        await process.wait()
                        await self._drain(process)
                        if self._has_proc:
                            await _wait_group_gone(process.pid)
            if outcome is not None:
                self._state.attempt_finished(attempt.job, outcome)

    async def _attempt(self, attempt: _Attempt) -> Outcome:
        job = attempt.job
        if self._options.startup_delay > 0:
            with anyio.move_on_after(self._options.startup_delay):
                await attempt.wake.wait()
        if attempt.stop_cause is not None:
            return Outcome(None, job.kill_reason or job.host_reason or FAILED_TO_START)
        # The image is pulled in STARTING, before anything of the job runs.
        pull_error = self._state.pull_error(job)
        if pull_error is not None:
            return Outcome(None, FAILED_TO_START, pull_error)
        argv = list(job.command)
        if not argv:
            reason = (
                "CannotStartContainerError: no command given in the job definition or overrides"
            )
            return Outcome(None, FAILED_TO_START, reason)
        if argv[0] in ("python", "python3"):
            # The image would have its own python; the emulator's own interpreter (and the
            # packages of its environment) stands in for it.
            argv[0] = sys.executable
        try:
            # Shielded: a cancellation arriving mid-spawn must not leave a process unrecorded.
            with anyio.CancelScope(shield=True):
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self._environment(job),
                    start_new_session=True,  # its own process group: kills take the whole tree
                )
                attempt.process = process
        except OSError as error:
            return Outcome(None, FAILED_TO_START, _cannot_start(argv[0], error))
        stream_name = f"{job.definition.name}/default/{uuid.uuid4().hex}"
        stream = self._logs.ensure_stream(self._options.log_group, stream_name, job.region)
        self._state.attempt_running(job, stream_name)
        assert process.stdout is not None
        assert process.stderr is not None
        async with anyio.create_task_group() as pumps:
            pumps.start_soon(self._copy_lines, process.stdout, stream)
            pumps.start_soon(self._copy_lines, process.stderr, stream)
            code = await self._supervise(attempt, process)
            pumps.cancel_scope.deadline = anyio.current_time() + _DRAIN_SECONDS
        if attempt.stop_cause == "oom":
            return Outcome(137, OUT_OF_MEMORY, OUT_OF_MEMORY)
        if attempt.stop_cause == "timeout":
            return Outcome(code, TIMED_OUT)
        if attempt.stop_cause == "terminate":
            return Outcome(code, job.kill_reason or EXITED)
        if attempt.stop_cause == "reclaim":
            # The host is gone: Batch reports no exit code for the attempt, whatever the
            # container did with its SIGTERM.
            return Outcome(None, job.host_reason or EXITED)
        return Outcome(code, EXITED)

    async def _supervise(self, attempt: _Attempt, process: asyncio.subprocess.Process) -> int:
        """Wait until the process exits, stopping it on timeout or request; then kill what is
        left of its group (a container's processes all end with its main process)."""

        async def wait_exit() -> None:
            await process.wait()
            attempt.wake.set()

        timeout = attempt.job.timeout_seconds
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait_exit)
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await attempt.wake.wait()
            if process.returncode is None:
                attempt.stop("timeout")  # keeps an earlier cause
                if attempt.stop_cause != "oom":  # OOM has already sent SIGKILL
                    await self._terminate(process)
        kill_group(process.pid, signal.SIGKILL)
        assert process.returncode is not None
        return exit_code(process.returncode)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """Stop the container as ECS does: SIGTERM the group, then SIGKILL it if the process
        outlives the stop timeout (docker stop, with ECS_CONTAINER_STOP_TIMEOUT)."""
        kill_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(self._options.stop_timeout):
            await process.wait()
        kill_group(process.pid, signal.SIGKILL)
        await process.wait()

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process) -> None:
        """Read the pipes to their end so their transports close (no ResourceWarning)."""
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                with anyio.move_on_after(_DRAIN_SECONDS):
                    while await pipe.read(65536):
                        pass

    async def _copy_lines(self, reader: asyncio.StreamReader, stream: LogStream) -> None:
        """Each line the job writes becomes one log event, as the awslogs driver sends it."""
        pending = b""
        while chunk := await reader.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._log(stream, line)
        if pending:
            self._log(stream, pending)

    def _log(self, stream: LogStream, line: bytes) -> None:
        text = line.decode(errors="replace")
        if not text:
            return  # CloudWatch rejects empty messages; the awslogs driver drops them
        now = self._clock()
        for piece in split_message(text):
            self._logs.append(stream, piece, now)

    def _environment(self, job: Job) -> dict[str, str]:
        """The job's environment: this process's, then what ECS adds, then the job's own
        variables, then the AWS_BATCH_* variables Batch reserves."""
        env = dict(os.environ)
        # `python` run through a shell finds the emulator's interpreter first, as argv[0] does.
        env["PATH"] = os.pathsep.join(
            [os.path.dirname(sys.executable), env.get("PATH", os.defpath)]
        )
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = job.region
        # Calls the job makes to Batch or Logs reach this emulator, other services stay as set.
        env["AWS_ENDPOINT_URL_BATCH"] = self._endpoint_url()
        env["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"] = self._endpoint_url()
        for pair in job.container.get("environment", []):
            env[pair["name"]] = pair["value"]
        env["AWS_BATCH_JOB_ID"] = job.job_id
        env["AWS_BATCH_JOB_ATTEMPT"] = str(job.attempt_number)
        env["AWS_BATCH_JQ_NAME"] = job.queue.name
        # The compute environment the scheduler placed this attempt in.
        placed = job.compute_environment
        env["AWS_BATCH_CE_NAME"] = placed.name if placed is not None else ""
        if job.array_index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(job.array_index)
        return env

    async def _watch_memory(self) -> None:
        """SIGKILL any job whose process group's resident memory exceeds its MEMORY."""
        while True:
            await anyio.sleep(self._options.memory_poll_interval)
            limited = [
                a
                for a in self._attempts.values()
                if a.job.memory_mib is not None
                and a.process is not None
                and a.process.returncode is None
                and a.stop_cause is None
            ]
            if not limited:
                continue
            usage = rss_by_process_group()
            for attempt in limited:
                assert attempt.process is not None
                assert attempt.job.memory_mib is not None
                if usage.get(attempt.process.pid, 0) > attempt.job.memory_mib * _MIB:
                    kill_group(attempt.process.pid, signal.SIGKILL)
                    attempt.stop("oom")
