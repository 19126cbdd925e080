"""The launcher contract: start n workers with these settings, end them, report their exits.

A launcher never decides how many workers to run (the controller's scheduler does) and never
blocks the event loop: every call is a coroutine, and a slow backend bounds its own concurrency.
A plugin written outside batchcrew subclasses `Launcher` and needs nothing else from the package.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

logger = logging.getLogger("batchcrew")


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Start `count` workers, numbered 0..count-1, as one launch.

    Each worker must run `command` with `environment` added to its environment, and learn its
    number from `BATCHCREW_WORKER_INDEX` (or, on AWS Batch, `AWS_BATCH_JOB_ARRAY_INDEX`).
    `environment` carries secrets (the worker's keys): pass it through the process environment
    or the job's environment, never the command line. `level` is the resource level (0 = the
    first value of an escalation list such as `memory=[4, 8, 16]`). `controller` is the
    controller's name and `instance` a token unique to this start of it, for naming and tagging
    what the launch creates.
    """

    launch: str
    count: int
    level: int
    command: tuple[str, ...]
    environment: Mapping[str, str]
    controller: str = "controller"
    instance: str = ""


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A launcher saw worker `index` of launch `launch` end; `code` is 0 for a clean exit."""

    launch: str
    index: int
    code: int | None
    reason: str


Report = Callable[[WorkerExit], None]


class Launcher(ABC):
    """Starts and ends workers for a controller. Subclass it to add a backend.

    Override `launch` and `terminate`; override `open` and `close` to hold resources (a client,
    a session) for the launcher's life, `end_worker` to end one worker with a reason, and
    `worker_left` to hear of workers that leave by themselves.
    `levels` says how many resource levels the backend offers for retries after a crash;
    `remote` says whether workers run on other machines (then the controller listens on a
    non-loopback address by default).

    A launcher serves one controller at a time. Once that controller has closed, another may
    start with the same launcher (the joblib backend starts one per `Parallel` call): each
    start opens the launcher again, so state kept for one controller's life is reset in `open`.
    """

    name: str = "launcher"
    levels: int = 1
    remote: bool = False

    def __init__(self) -> None:
        self._task_group: anyio.abc.TaskGroup | None = None
        self._report: Report | None = None
        self.stopping = False
        """Set when the controller starts closing: a launch not yet sent should not be sent."""

    @abstractmethod
    async def launch(self, request: LaunchRequest) -> None:
        """Start the workers of `request`; return once they are started or submitted.

        Raise any exception if they cannot be: the controller counts a failed launch.
        """

    @abstractmethod
    async def terminate(self, launch: str, indexes: Sequence[int] | None = None) -> None:
        """End the workers `indexes` (None: all) of `launch` that are still running."""

    async def end_worker(self, launch: str, index: int, reason: str) -> None:
        """End one worker that will not stop by itself (a task on it ignored an interrupt).

        `reason` says why, for backends that record one. The default calls `terminate`;
        override it where one worker can be ended more precisely or with its reason.
        """
        await self.terminate(launch, [index])

    def worker_left(self, launch: str, index: int) -> None:  # noqa: B027 - optional hook
        """Worker `index` of `launch` said goodbye and is exiting by itself (idle, done, or told
        to stop), so it needs no ending: a backend that ends what is left at close (a job
        queue) can leave it out. Called on the event loop; must not block. Does nothing by
        default."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire what the launcher needs for its life (called at each controller start)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """End every worker still running and release resources (called once per open, at
        the controller's close)."""

    def report(self, exit: WorkerExit) -> None:
        """Tell the controller that a worker ended (call it from `launch` watchers)."""
        if self._report is not None:
            self._report(exit)

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run a background coroutine (a process watcher, a poller) for the launcher's life."""
        if self._task_group is None:
            raise RuntimeError("the launcher is not running: it runs inside a started controller")
        self._task_group.start_soon(function, *args)

    def describe(self) -> str:
        """A short label for logs and results: the launcher's name."""
        return self.name

    async def serve(
        self,
        report: Report,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the launcher inside the controller's task group until cancelled.

        Opens it, gives it a task group for its watchers, and on the way out (however it is left)
        closes it, shielded from cancellation so that no worker is left running.
        """
        if self._report is not None:
            raise RuntimeError(
                f"this {type(self).__name__} already serves a running controller; a launcher "
                "serves one controller at a time: make another launcher"
            )
        self._report = report
        self.stopping = False  # a launcher may serve a new controller once the last one closed
        try:
            await self.open()
            async with anyio.create_task_group() as group:
                self._task_group = group
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.close()
                    group.cancel_scope.cancel()
        finally:
            self._task_group = None
            self._report = None
