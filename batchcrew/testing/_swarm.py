"""A swarm: many workers per process, for testing a controller at scale on one machine.

Each swarm worker is a real DEALER socket with its own identity, the launch's CURVE keys and
the real protocol (hello, setup, tasks, results, goodbye), so the controller sees exactly what
it sees from a thousand Batch jobs; only the task running is shared: one process runs the tasks
of all its workers, one at a time, with the worker's own `Runner`. Tasks are not interrupted
(a cancel is acknowledged when the task ends), so a swarm suits short tasks.

    SwarmLauncher(workers_per_process=250)   # 1,000 workers: 4 processes
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Sequence

import anyio
import anyio.abc
import cloudpickle
import zmq

from batchcrew import __version__, protocol
from batchcrew.errors import ProtocolError
from batchcrew.launchers.base import Launcher, LaunchRequest, WorkerExit, logger
from batchcrew.worker import Runner, WorkerSettings, _socket

_SECONDS_IDLE_CHECK = 0.5
_FIRST = "BATCHCREW_SWARM_FIRST"
_NICE = "BATCHCREW_SWARM_NICE"
_COUNT = "BATCHCREW_SWARM_COUNT"


class SwarmLauncher(Launcher):
    """Start a launch's workers `workers_per_process` to a process (`python -m
    batchcrew.testing._swarm`), each worker a socket of its own.

    Ending one worker ends the process that holds it, and with it that process's other
    workers: the controller sees them lost and, if tasks wait, launches replacements.
    """

    name = "swarm"

    def __init__(self, *, workers_per_process: int = 250, python: str = sys.executable) -> None:
        super().__init__()
        if isinstance(workers_per_process, bool) or not (
            isinstance(workers_per_process, int) and workers_per_process >= 1
        ):
            raise ValueError(
                f"workers_per_process must be a whole number >= 1, not {workers_per_process!r}"
            )
        self.workers_per_process = workers_per_process
        self.python = python
        self._processes: dict[tuple[str, int], tuple[anyio.abc.Process, int]] = {}
        self._closing = False

    async def launch(self, request: LaunchRequest) -> None:
        """Start ceil(count / workers_per_process) processes for the workers of `request`."""
        for first in range(0, request.count, self.workers_per_process):
            count = min(self.workers_per_process, request.count - first)
            environment = {
                **os.environ,
                **request.environment,
                _FIRST: str(first),
                _COUNT: str(count),
            }
            process = await anyio.open_process(
                [self.python, "-m", "batchcrew.testing._swarm"],
                env=environment,
                stdin=None,
                stdout=None,
                stderr=None,
                start_new_session=True,
            )
            self._processes[(request.launch, first)] = (process, count)
            self.start_soon(self._watch, request.launch, first, count, process)

    async def _watch(self, launch: str, first: int, count: int, process: anyio.abc.Process) -> None:
        code = await process.wait()
        self._processes.pop((launch, first), None)
        if self._closing:
            return
        reason = f"its swarm process {process.pid} exited with code {code}"
        for index in range(first, first + count):
            self.report(WorkerExit(launch, index, code, reason))

    async def terminate(self, launch: str, indexes: Sequence[int] | None = None) -> None:
        """End the processes that hold the chosen workers of `launch`."""
        chosen = [
            process
            for (owner, first), (process, count) in list(self._processes.items())
            if owner == launch
            and (indexes is None or any(first <= index < first + count for index in indexes))
        ]
        await _end(chosen)

    async def close(self) -> None:
        """End every swarm process."""
        self._closing = True
        await _end([process for process, _ in self._processes.values()])


async def _end(processes: list[anyio.abc.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    with anyio.move_on_after(5):
        for process in processes:
            await process.wait()
    for process in processes:
        if process.returncode is None:
            logger.warning("swarm process %d ignored SIGTERM; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


@dataclasses.dataclass
class _Member:
    """One worker of the swarm: its socket and clock."""

    sock: zmq.Socket[bytes]
    settings: WorkerSettings
    last: float
    ready: bool = False


def serve(settings: WorkerSettings, first: int, count: int) -> None:
    """Run `count` workers, numbered from `first`, until every one has left."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    hello = protocol.encode(
        protocol.Hello(
            os.getpid(),
            socket.gethostname(),
            platform.python_version(),
            __version__,
            cloudpickle.__version__,
        )
    )
    runner = Runner()
    poller = zmq.Poller()
    members: dict[zmq.Socket[bytes], _Member] = {}
    now = time.monotonic()
    for index in range(first, first + count):
        member_settings = dataclasses.replace(settings, index=index)
        sock = _socket(context, member_settings)
        sock.connect(settings.controller)
        sock.send_multipart(hello)
        poller.register(sock, zmq.POLLIN)
        members[sock] = _Member(sock, member_settings, now)
    check_idle = now + _SECONDS_IDLE_CHECK
    try:
        while members:
            for sock, _ in poller.poll(int(_SECONDS_IDLE_CHECK * 1000)):
                member = members[sock]
                member.last = time.monotonic()
                if _serve_member(member, runner):
                    poller.unregister(sock)
                    del members[sock]
                    sock.close(linger=2000)
            now = time.monotonic()
            if now < check_idle:
                continue
            check_idle = now + _SECONDS_IDLE_CHECK
            for sock, member in list(members.items()):
                if now - member.last >= settings.seconds_idle:
                    reason = f"idle for seconds_idle={settings.seconds_idle:g}"
                    sock.send_multipart(protocol.encode(protocol.Bye(reason)))
                    poller.unregister(sock)
                    del members[sock]
                    sock.close(linger=2000)
    finally:
        for sock in members:
            sock.close(0)
        runner.close()
        context.term()


def _serve_member(member: _Member, runner: Runner) -> bool:
    """Handle what one worker's socket holds; True once that worker leaves."""
    out: list[protocol.Buffer] = []
    leaving = False
    while True:
        try:
            frames = member.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        try:
            messages = protocol.decode_all([frame.buffer for frame in frames])
        except ProtocolError:
            continue
        for message in messages:
            if isinstance(message, protocol.Setup):
                ready = runner.set_up(message)
                out += protocol.encode(ready)
                leaving = leaving or ready.error is not None
                member.ready = ready.error is None
            elif isinstance(message, protocol.Task) and member.ready and not leaving:
                out += protocol.encode(runner.run(message))
            elif isinstance(message, protocol.Stop):
                out += protocol.encode(protocol.Bye(f"stopped by the controller: {message.reason}"))
                leaving = True
    if out:
        member.sock.send_multipart(out, copy=False)
    return leaving


def main() -> int:
    """Entry point of `python -m batchcrew.testing._swarm` (a SwarmLauncher starts it)."""
    try:
        settings = WorkerSettings.from_environment(os.environ)
        first, count = int(os.environ[_FIRST]), int(os.environ[_COUNT])
    except (KeyError, ValueError) as error:
        print(f"batchcrew swarm: {error}", file=sys.stderr)
        return 2
    if not math.isfinite(settings.seconds_idle):
        settings = dataclasses.replace(settings, seconds_idle=3600.0)
    # The swarm stands in for workers on other machines: on this one it must not take the
    # controller's CPU, or a measurement of the controller measures the swarm instead.
    os.nice(int(os.environ.get(_NICE, "10")))
    serve(settings, first, count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
