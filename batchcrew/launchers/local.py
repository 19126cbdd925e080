"""The local launcher: each worker is a child process of the controller's process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from batchcrew.launchers.base import Launcher, LaunchRequest, WorkerExit, logger


class LocalLauncher(Launcher):
    """Start workers as local processes (`python -m batchcrew.worker`).

    `log_dir`: write each worker's stdout and stderr to `<log_dir>/<launch>-<index>.log`
    instead of the controller's own. `python`: the interpreter to run (default: this one).
    `prefix`: words run before the worker's command, a program that runs the rest of the
    command line as its own (`("nice", "-n", "10")`, `("taskset", "-c", "1")`, or
    `("ip", "netns", "exec", "other")` for a worker in another network namespace).
    `seconds_terminate`: how long a worker gets to exit after SIGTERM before SIGKILL.
    """

    name = "local"

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
        prefix: Sequence[str] = (),
        seconds_terminate: float = 2.0,
    ) -> None:
        super().__init__()
        if isinstance(prefix, str) or not all(isinstance(word, str) for word in prefix):
            raise TypeError(
                f"prefix must be a sequence of strings such as ('nice', '-n', '10'), not {prefix!r}"
            )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.python = python
        self.prefix = tuple(prefix)
        self.seconds_terminate = seconds_terminate
        self._processes: dict[tuple[str, int], anyio.abc.Process] = {}
        self._closing = False

    async def open(self) -> None:
        """Begin serving a controller (again): forget the last one's closing."""
        self._closing = False
        self._processes.clear()

    async def launch(self, request: LaunchRequest) -> None:
        """Start one process per worker of `request`."""
        worker = (self.python, *request.command[1:]) if request.command else (self.python,)
        command = (*self.prefix, *worker)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(request.count):
            environment = {
                **os.environ,
                **request.environment,
                "BATCHCREW_WORKER_INDEX": str(index),
            }
            output: IO[Any] | None = None
            if self.log_dir is not None:
                output = (self.log_dir / f"{request.launch}-{index}.log").open("ab")
            try:
                process = await anyio.open_process(
                    command,
                    env=environment,
                    stdin=None,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,
                )
            finally:
                if output is not None:
                    output.close()  # the child holds its own descriptor
            self._processes[(request.launch, index)] = process
            self.start_soon(self._watch, request.launch, index, process)

    async def _watch(self, launch: str, index: int, process: anyio.abc.Process) -> None:
        code = await process.wait()
        self._processes.pop((launch, index), None)
        if not self._closing:
            self.report(WorkerExit(launch, index, code, _how_it_ended(process.pid, code)))

    async def terminate(self, launch: str, indexes: Sequence[int] | None = None) -> None:
        """SIGTERM the chosen workers, then SIGKILL those still alive after the grace period."""
        chosen = [
            process
            for (owner, index), process in list(self._processes.items())
            if owner == launch and (indexes is None or index in indexes)
        ]
        await self._end(chosen)

    async def close(self) -> None:
        """End every worker process this launcher started."""
        self._closing = True
        await self._end(list(self._processes.values()))

    async def _end(self, processes: list[anyio.abc.Process]) -> None:
        for process in processes:
            _signal_group(process, signal.SIGTERM)
            _signal_group(process, signal.SIGCONT)  # a stopped process acts on it once woken
        with anyio.move_on_after(self.seconds_terminate):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                logger.warning("worker process %d ignored SIGTERM; killing it", process.pid)
                _signal_group(process, signal.SIGKILL)
                await process.wait()


def _how_it_ended(pid: int, code: int) -> str:
    if code >= 0:
        return f"the worker process {pid} exited with code {code}"
    try:
        name = f"{signal.Signals(-code).name}, signal {-code}"
    except ValueError:
        name = f"signal {-code}"
    return f"the worker process {pid} was killed by {name}"


def _signal_group(process: anyio.abc.Process, signum: int) -> None:
    # Each worker leads its own session, so the signal also reaches what its tasks started.
    if process.returncode is not None:
        return  # reaped: its pid may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
