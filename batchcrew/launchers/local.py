"""The local launcher: each worker is a child process of the controller's process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
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
        # Workers of an earlier run of the controller (from its journal), by process id: not
        # children of this process, so signalled by pid and watched by polling.
        self._adopted: dict[tuple[str, int], int] = {}
        self._closing = False

    async def open(self) -> None:
        """Begin serving a controller (again): forget the last one's closing."""
        self._closing = False
        self._processes.clear()
        self._adopted.clear()

    def launch_record(self, launch: str) -> dict[str, Any]:
        """The process id of each worker of `launch`, for a restarted controller to end."""
        return {
            "pids": {
                str(index): process.pid
                for (owner, index), process in self._processes.items()
                if owner == launch
            }
        }

    def adopt(self, launch: str, count: int, record: Mapping[str, Any]) -> None:
        """Take back the worker processes of an earlier run's `launch` that still run."""
        for index, pid in (record.get("pids") or {}).items():
            if _is_worker(pid):
                self._adopted[(launch, int(index))] = pid
                self.start_soon(self._watch_adopted, launch, int(index), pid)
            else:
                self.report(_gone(launch, int(index), pid))

    async def _watch_adopted(self, launch: str, index: int, pid: int) -> None:
        """Report an adopted worker's end (not a child: its /proc entry is looked at)."""
        while _is_worker(pid):  # noqa: ASYNC110 - nothing else to wait on
            await anyio.sleep(_SECONDS_WATCH)
        if self._adopted.pop((launch, index), None) is not None and not self._closing:
            self.report(_gone(launch, index, pid))

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
        adopted = [
            self._adopted.pop(key)
            for key in list(self._adopted)
            if key[0] == launch and (indexes is None or key[1] in indexes)
        ]
        await self._end(chosen, adopted)

    async def close(self) -> None:
        """End every worker process this launcher started."""
        self._closing = True
        adopted = list(self._adopted.values())
        self._adopted.clear()
        if self.detached:
            return  # they outlive this process (each leads its own session)
        await self._end(list(self._processes.values()), adopted)

    async def _end(self, processes: list[anyio.abc.Process], adopted: Sequence[int] = ()) -> None:
        adopted = [pid for pid in adopted if _is_worker(pid)]
        for process in processes:
            _signal_group(process, signal.SIGTERM)
            _signal_group(process, signal.SIGCONT)  # a stopped process acts on it once woken
        for pid in adopted:
            _signal_pid(pid, signal.SIGTERM)
            _signal_pid(pid, signal.SIGCONT)
        with anyio.move_on_after(self.seconds_terminate):
            for process in processes:
                await process.wait()
            # Not children: nothing to wait on but their /proc entries.
            while any(_is_worker(pid) for pid in adopted):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        for process in processes:
            if process.returncode is None:
                logger.warning("worker process %d ignored SIGTERM; killing it", process.pid)
                _signal_group(process, signal.SIGKILL)
                await process.wait()
        for pid in adopted:
            if _is_worker(pid):
                logger.warning("worker process %d ignored SIGTERM; killing it", pid)
                _signal_pid(pid, signal.SIGKILL)


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


_SECONDS_WATCH = 0.5  # how often an adopted worker's process is looked at


def _gone(launch: str, index: int, pid: int) -> WorkerExit:
    # Not a child: its exit code is not known. Its controller died under it, so whatever it
    # ran is the infrastructure's loss, not the task's.
    reason = f"the worker process {pid} of the controller's earlier run is gone"
    return WorkerExit(launch, index, 1, reason, "infrastructure")


def _is_worker(pid: int) -> bool:
    """Whether process `pid` runs and is a batchcrew worker (a pid of an earlier run may have
    been given to another program since)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return b"batchcrew.worker" in command and state != b"Z"


def _signal_pid(pid: int, signum: int) -> None:
    """Signal an adopted worker's process group (it leads its own session), else itself."""
    try:
        os.killpg(pid, signum)
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
