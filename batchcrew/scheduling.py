"""The sans-I/O core: task queue, worker states, assignment, crash accounting and scaling.

`Scheduler` takes events in (a push, a connect, a result, a lost worker, the clock) and gives
decisions out (`Assign`, `Launch`, `Complete`, `Fail`, `Stop`, `Retire`, `Broken`). It never
awaits and never touches a socket, so every rule here is tested with plain function calls.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

# ---------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True, slots=True)
class Assign:
    """Send task `task` to worker `worker`."""

    worker: bytes
    task: int


@dataclass(frozen=True, slots=True)
class Launch:
    """Start `len(identities)` workers at resource `level`, one per identity, as launch `launch`."""

    launch: str
    level: int
    identities: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Complete:
    """Resolve `task` with the outcome that worker `worker` reported for it."""

    task: int
    worker: bytes


@dataclass(frozen=True, slots=True)
class Fail:
    """Resolve `task` without a worker's outcome: it crashed too often, or was cancelled."""

    task: int
    status: Literal["crash", "cancel"]
    message: str
    worker: bytes | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """Tell a connected worker to exit (the controller is closing)."""

    worker: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Abandon:
    """These launched workers did not connect in time: end them if they are still around."""

    launch: str
    identities: tuple[bytes, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Retire:
    """Launch `launch` has no live or awaited worker left: forget its keys, free what it holds."""

    launch: str


@dataclass(frozen=True, slots=True)
class Broken:
    """Launching has failed `failures` times in a row: waiting calls must raise instead of hang."""

    failures: int
    reason: str


Decision = Assign | Launch | Complete | Fail | Stop | Abandon | Retire | Broken


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class _Task:
    id: int
    level: int = 0
    crashes: int = 0
    worker: bytes | None = None
    cancelled: bool = False


@dataclass(slots=True)
class _Launch:
    id: str
    level: int
    deadline: float
    waiting: set[bytes]
    live: set[bytes] = field(default_factory=set)
    connected_any: bool = False


@dataclass(slots=True)
class _Worker:
    identity: bytes
    launch: _Launch
    connected: bool = False
    leaving: bool = False
    assigned: deque[int] = field(default_factory=deque)
    sent: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    """The scheduling rules of one controller (crew's meanings).

    workers: most workers at once. tasks_max: a worker exits after this many tasks.
    seconds_launch: a launched worker that has not connected by then counts as failed.
    crashes_max: a task whose worker dies under it is retried this many times, then resolves
    "crash". levels: how many resource levels the launcher offers (escalation after a crash).
    launch_failures_max: consecutive failed launches before waiting calls raise LaunchError.
    pipeline: tasks in flight per worker when tasks are short (hides the round trip).
    seconds_short: a mean task time under this counts as short.
    """

    workers: int = 1
    tasks_max: float = math.inf
    seconds_launch: float = 60.0
    crashes_max: int = 5
    levels: int = 1
    launch_failures_max: int = 5
    pipeline: int = 4
    seconds_short: float = 0.005


def plan_launches(
    workers: float, demand: Mapping[int, int], supply: Mapping[int, int]
) -> dict[int, int]:
    """How many workers to launch at each level, given unresolved tasks and workers by level.

    A worker at a level can run tasks of that level and below, so surplus at a higher level
    covers demand below it. The total, supply included, never exceeds `workers`; when the cap
    binds, higher levels launch first. Every escalated task comes from a worker that died and
    so freed a slot, which this order hands to the escalated task first.
    """
    room = workers - sum(supply.values())
    launches: dict[int, int] = {}
    surplus = 0
    for level in sorted(set(demand) | set(supply), reverse=True):
        available = supply.get(level, 0) + surplus
        need = demand.get(level, 0)
        if available >= need:
            surplus = available - need
            continue
        surplus = 0
        count = int(min(need - available, room))
        if count > 0:
            launches[level] = count
            room -= count
    return launches


class Scheduler:
    """The controller's state machine. Every method is an event; each returns decisions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tasks: dict[int, _Task] = {}
        self._demand = [0] * settings.levels  # unresolved tasks by level
        self._cancelled: dict[int, _Task] = {}  # cancelled while a worker runs them
        self._queues: list[deque[int]] = [deque() for _ in range(settings.levels)]
        self._workers: dict[bytes, _Worker] = {}
        self._idle: dict[bytes, _Worker] = {}  # connected, nothing assigned, not leaving
        self._launches: dict[str, _Launch] = {}
        self._failures = 0
        self._broken: Broken | None = None
        self._closing = False
        self._seconds_mean: float | None = None
        self.instance = secrets.token_hex(8)
        """A token unique to this scheduler, the prefix of its launch ids."""
        self._launch_ids = (f"{self.instance}-{n}" for n in itertools.count())

    # -- views --------------------------------------------------------------------------------

    @property
    def unresolved(self) -> int:
        """Tasks pushed and not yet resolved."""
        return len(self._tasks)

    @property
    def connected(self) -> int:
        """Workers connected now."""
        return sum(1 for worker in self._workers.values() if worker.connected)

    @property
    def idle_connected(self) -> int:
        """Connected workers with no task sent to them (ready to leave at once when told)."""
        return sum(1 for w in self._workers.values() if w.connected and not w.assigned)

    @property
    def launching(self) -> int:
        """Workers launched that have not connected yet."""
        return sum(len(launch.waiting) for launch in self._launches.values())

    @property
    def broken(self) -> Broken | None:
        """Set once launching has failed too often in a row."""
        return self._broken

    def knows(self, identity: bytes) -> bool:
        """Whether `identity` is a worker this scheduler launched and has not written off."""
        return identity in self._workers

    def launch_of(self, identity: bytes) -> str | None:
        """The launch a known worker belongs to."""
        worker = self._workers.get(identity)
        return worker.launch.id if worker else None

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (the earliest launch deadline), if ever."""
        deadlines = [launch.deadline for launch in self._launches.values() if launch.waiting]
        return min(deadlines) if deadlines else None

    def pipeline_depth(self) -> int:
        """Tasks in flight per worker: more than one only while tasks are known to be short."""
        mean = self._seconds_mean
        if mean is not None and mean < self.settings.seconds_short:
            return self.settings.pipeline
        return 1

    # -- events -------------------------------------------------------------------------------

    def push(self, task: int, now: float) -> list[Decision]:
        """A task was pushed."""
        return self.push_many((task,), now)

    def push_many(self, tasks: Iterable[int], now: float) -> list[Decision]:
        """Tasks were pushed together: one scaling decision for all (one launch of n)."""
        queue = self._queues[0]
        for task in tasks:
            self._tasks[task] = _Task(task)
            self._demand[0] += 1
            queue.append(task)
        decisions: list[Decision] = []
        self._dispatch(decisions)
        self._scale(now, decisions)
        return decisions

    def cancel(self, task: int, now: float) -> list[Decision]:
        """Cancel an unresolved task: it resolves "cancel" now; a running one is let finish."""
        record = self._tasks.pop(task, None)
        if record is None:
            return []
        self._demand[record.level] -= 1
        decisions: list[Decision] = [Fail(task, "cancel", "cancelled", record.worker)]
        if record.worker is None:
            self._queues[record.level].remove(task)
        else:
            self._cancelled[task] = record  # its result is dropped when it comes
        return decisions

    def connected_worker(self, identity: bytes, now: float) -> list[Decision] | None:
        """A worker said hello. None if it is not one this scheduler is waiting for."""
        worker = self._workers.get(identity)
        if worker is None or worker.connected:
            return None
        worker.connected = True
        launch = worker.launch
        launch.waiting.discard(identity)
        launch.live.add(identity)
        launch.connected_any = True
        self._failures = 0
        if self._closing:
            worker.leaving = True
            return [Stop(identity, "the controller is closing")]
        decisions: list[Decision] = []
        self._idle[identity] = worker
        self._dispatch(decisions)
        self._scale(now, decisions)
        return decisions

    def result(
        self, identity: bytes, task: int, seconds: float, now: float
    ) -> list[Decision] | None:
        """A worker reported the outcome of a task. None (drop it) if the report is not valid.

        Valid means: the worker is connected and `task` is the oldest task sent to it (a worker
        runs its tasks in order). A result for a task cancelled meanwhile is valid but yields no
        `Complete`: that task already resolved "cancel".
        """
        worker = self._workers.get(identity)
        if worker is None or not worker.assigned or worker.assigned[0] != task:
            return None
        worker.assigned.popleft()
        mean = self._seconds_mean
        self._seconds_mean = seconds if mean is None else 0.8 * mean + 0.2 * seconds
        decisions: list[Decision] = []
        if self._cancelled.pop(task, None) is None:
            self._demand[self._tasks.pop(task).level] -= 1
            decisions.append(Complete(task, identity))
        if not worker.assigned and not worker.leaving:
            self._idle[identity] = worker
        self._dispatch(decisions, first=worker)
        self._scale(now, decisions)
        return decisions

    def lost(self, identity: bytes, now: float, *, clean: bool, reason: str) -> list[Decision]:
        """A worker is gone: it said goodbye (`clean`), or its connection or process died.

        If it died, the task it was running counts a crash: retried one level up, at most
        `crashes_max` times, then resolved "crash". Tasks it had not started go back to the front
        of the queue uncounted. A launch none of whose workers ever connected is a failed launch.
        """
        worker = self._workers.pop(identity, None)
        if worker is None:
            return []
        self._idle.pop(identity, None)
        clean = clean or worker.leaving
        launch = worker.launch
        launch.waiting.discard(identity)
        launch.live.discard(identity)
        decisions: list[Decision] = []
        if not worker.connected and not launch.connected_any and not launch.waiting:
            self._launch_failed(reason, decisions)
        requeue: list[_Task] = []
        for position, task in enumerate(worker.assigned):
            if self._cancelled.pop(task, None) is not None:
                continue
            record = self._tasks[task]
            record.worker = None
            if position == 0 and not clean:
                record.crashes += 1
                self._demand[record.level] -= 1
                if record.crashes > self.settings.crashes_max:
                    del self._tasks[task]
                    message = (
                        f"the worker running this task died {record.crashes} time(s), the last "
                        f"time because {reason}; crashes_max={self.settings.crashes_max}"
                    )
                    decisions.append(Fail(task, "crash", message, identity))
                    continue
                record.level = min(record.crashes, self.settings.levels - 1)
                self._demand[record.level] += 1
            requeue.append(record)
        for record in reversed(requeue):
            self._queues[record.level].appendleft(record.id)
        self._retire_if_done(launch, decisions)
        self._dispatch(decisions)
        self._scale(now, decisions)
        return decisions

    def launch_failed(self, launch_id: str, now: float, reason: str) -> list[Decision]:
        """The launcher could not start launch `launch_id`."""
        launch = self._launches.get(launch_id)
        if launch is None:
            return []
        for identity in launch.waiting:
            del self._workers[identity]
        launch.waiting.clear()
        decisions: list[Decision] = []
        self._launch_failed(reason, decisions)
        self._retire_if_done(launch, decisions)
        self._scale(now, decisions)
        return decisions

    def tick(self, now: float) -> list[Decision]:
        """The clock moved: write off launched workers that did not connect within time."""
        decisions: list[Decision] = []
        for launch in list(self._launches.values()):
            if not launch.waiting or launch.deadline > now:
                continue
            reason = (
                "launched workers did not connect within "
                f"seconds_launch={self.settings.seconds_launch:g}"
            )
            for identity in launch.waiting:
                del self._workers[identity]
            decisions.append(Abandon(launch.id, tuple(sorted(launch.waiting)), reason))
            launch.waiting.clear()
            if not launch.connected_any:
                self._launch_failed(reason, decisions)
            self._retire_if_done(launch, decisions)
        self._scale(now, decisions)
        return decisions

    def close(self) -> list[Decision]:
        """The controller is closing: launch nothing more; stop every connected worker."""
        self._closing = True
        self._idle.clear()
        decisions: list[Decision] = []
        for worker in self._workers.values():
            if worker.connected and not worker.leaving:
                worker.leaving = True
                decisions.append(Stop(worker.identity, "the controller is closing"))
        return decisions

    def unresolved_tasks(self) -> list[int]:
        """Every unresolved task id, oldest first."""
        return list(self._tasks)

    def _retire_if_done(self, launch: _Launch, decisions: list[Decision]) -> None:
        if not launch.waiting and not launch.live and launch.id in self._launches:
            del self._launches[launch.id]
            decisions.append(Retire(launch.id))

    def _take(self, level: int) -> int | None:
        # Exact level first, then lower levels: a bigger worker may run smaller tasks.
        for queue_level in range(level, -1, -1):
            queue = self._queues[queue_level]
            if queue:
                return queue.popleft()
        return None

    def _give(self, worker: _Worker, depth: int, decisions: list[Decision]) -> bool:
        """Fill `worker` up to `depth` tasks in flight. False once no task is left to give."""
        if worker.leaving or not worker.connected:
            return True
        count = min(depth - len(worker.assigned), self.settings.tasks_max - worker.sent)
        level = worker.launch.level
        while count > 0:
            task = self._take(level)
            if task is None:
                return any(self._queues)
            self._tasks[task].worker = worker.identity
            worker.assigned.append(task)
            worker.sent += 1
            self._idle.pop(worker.identity, None)
            decisions.append(Assign(worker.identity, task))
            count -= 1
        return True

    def _dispatch(self, decisions: list[Decision], first: _Worker | None = None) -> None:
        if not any(self._queues):
            return
        # Idle workers first, one task each, so that no worker waits while another holds two.
        for worker in list(self._idle.values()):
            if not self._give(worker, 1, decisions):
                return
        depth = self.pipeline_depth()
        if first is not None and not self._give(first, depth, decisions):
            return
        if depth > 1:
            for worker in list(self._workers.values()):
                if not self._give(worker, depth, decisions):
                    return

    def _launch_failed(self, reason: str, decisions: list[Decision]) -> None:
        self._failures += 1
        if self._broken is None and self._failures >= self.settings.launch_failures_max:
            self._broken = Broken(self._failures, reason)
            decisions.append(self._broken)

    def _scale(self, now: float, decisions: list[Decision]) -> None:
        if self._closing or self._broken is not None:
            return
        if self.settings.levels == 1 and len(self._workers) >= min(
            self.settings.workers, len(self._tasks)
        ):
            return  # the common case, decided without a pass over the workers
        demand = {level: count for level, count in enumerate(self._demand) if count}
        supply: dict[int, int] = {}
        for worker in self._workers.values():
            supply[worker.launch.level] = supply.get(worker.launch.level, 0) + 1
        plan = plan_launches(self.settings.workers, demand, supply)
        deadline = now + self.settings.seconds_launch
        for level, count in sorted(plan.items(), reverse=True):
            launch = _Launch(next(self._launch_ids), level, deadline, set())
            identities = tuple(f"{launch.id}:{index}".encode() for index in range(count))
            for identity in identities:
                self._workers[identity] = _Worker(identity, launch)
            launch.waiting.update(identities)
            self._launches[launch.id] = launch
            decisions.append(Launch(launch.id, level, identities))
