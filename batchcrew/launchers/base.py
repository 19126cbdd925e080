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
from typing import Any, Literal

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


#: Who a worker's end is blamed on: "task" (its process exited, or was killed out of memory)
#: or "infrastructure" (a reclaimed host, a job ended from outside, an agent failure).
Cause = Literal["task", "infrastructure"]


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A launcher saw worker `index` of launch `launch` end; `code` is 0 for a clean exit.

    `cause` says whose doing the end was, where the launcher can tell (a job's status reason):
    only the task's own deaths count against it (`crashes_max`, a bigger level); the
    infrastructure's draw on `interruptions_max`. None: the launcher cannot tell, and the
    death counts as the task's.
    """

    launch: str
    index: int
    code: int | None
    reason: str
    cause: Cause | None = None


@dataclass(frozen=True, slots=True)
class WorkerPending:
    """A launcher saw worker `index` of launch `launch`, which has not connected yet: its job
    waits to start (`running` False), for `reason` (a queue's status reason: no capacity, a
    disabled compute environment), or it runs (`running` True), so it should connect soon.

    Only said of a change. The controller says this, not "did not connect", when the launch
    fails; and workers that ran but never connected, when none of the controller's ever has,
    end its launching at once (they cannot reach it).
    """

    launch: str
    index: int
    running: bool
    reason: str


Report = Callable[[WorkerExit | WorkerPending], None]


class Launcher(ABC):
    """Starts and ends workers for a controller. Subclass it to add a backend.

    Override `launch` and `terminate`; override `open` and `close` to hold resources (a client,
    a session) for the launcher's life, `end_worker` to end one worker with a reason, and
    `worker_left` to hear of workers that leave by themselves.
    `levels` says how many resource levels the backend offers for retries after a crash;
    `remote` says whether workers run on other machines (then the controller listens on a
    non-loopback address by default); `seconds_cause` how long to wait, when a remote worker's
    connection drops, for the launcher to say why (`WorkerExit.cause`).

    A launcher serves one controller at a time. Once that controller has closed, another may
    start with the same launcher (the joblib backend starts one per `Parallel` call): each
    start opens the launcher again, so state kept for one controller's life is reset in `open`.
    """

    name: str = "launcher"
    levels: int = 1
    remote: bool = False
    seconds_cause: float = 0.0
    """How long the controller waits, once a remote worker's connection closed, for this
    launcher's report of why it ended (`report`), before it decides with what it knows: the
    task it ran counts a crash. 0: it does not wait."""

    def __init__(self) -> None:
        self._task_group: anyio.abc.TaskGroup | None = None
        self._report: Report | None = None
        self.stopping = False
        """Set when the controller starts closing: a launch not yet sent should not be sent."""
        self.detached = False
        """Set when the controller closes detached (`aclose(detach=True)`): `close` leaves
        the workers running, for a controller resumed on its journal to take back."""

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

    def launch_record(self, launch: str) -> dict[str, Any]:
        """What a controller's journal keeps of `launch` once it is started, so that a
        controller restarted on that journal can end its workers (`adopt`): job ids, process
        ids. Plain JSON values. Empty by default."""
        return {}

    def adopt(self, launch: str, count: int, record: Mapping[str, Any]) -> None:  # noqa: B027
        """Take `launch` (`count` workers) of an earlier run of this controller back from its
        journal's `record` (see `launch_record`), so that `terminate`, `end_worker` and `close`
        end its workers as if this launcher had started them. Called on the event loop once
        the launcher serves; must not block. Does nothing by default (its workers, if they do
        not come back, leave by themselves within seconds_reconnect)."""

    def worker_lost(self, launch: str, index: int) -> None:  # noqa: B027 - optional hook
        """Worker `index` of `launch` lost its connection, and the controller waits up to
        `seconds_cause` for a report of why: look now (its job's status), if looking costs
        little. Called on the event loop; must not block. Does nothing by default."""

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

    def report(self, event: WorkerExit | WorkerPending) -> None:
        """Tell the controller that a worker ended, or how one not connected yet is doing
        (call it from `launch` watchers and pollers)."""
        if self._report is not None:
            self._report(event)

    def explain_unreachable(self, address: str) -> str:
        """What to check when workers run but none reaches the controller at `address` (a
        "tcp://host:port" URL): said in the LaunchError. Override it where the backend knows
        what usually stands in the way (a security group, a firewall)."""
        return (
            f"the workers ran, but none reached the controller at {address}: check that their "
            "machines can open a TCP connection to that address and port (a firewall, a NAT, "
            "or a host= other machines cannot reach)"
        )

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
        self.detached = False
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
