"""The sans-I/O core: task queue, worker states, assignment, crash accounting and scaling.

`Scheduler` takes events in (a push, a connect, a result, a lost worker, a cancel, the clock)
and gives decisions out (`Assign`, `Launch`, `Complete`, `Fail`, `Interrupt`, `End`, `Stop`,
`Retire`, `Broken`). It never awaits and never touches a socket, so every rule here is tested
with plain function calls.
"""

from __future__ import annotations

import heapq
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
    """Resolve `task` without a worker's outcome: it crashed too often, was cancelled, or ran
    past its timeout on a worker that never answered ("error")."""

    task: int
    status: Literal["crash", "cancel", "error"]
    message: str
    worker: bytes | None = None


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Tell worker `worker` to interrupt task `task` (running, or sent and not yet started)."""

    worker: bytes
    task: int
    reason: str


@dataclass(frozen=True, slots=True)
class End:
    """Have the launcher end worker `worker`: a task on it did not stop when interrupted."""

    worker: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Alarm:
    """Call `tick` at `at` (or sooner): a new deadline came before every other one."""

    at: float


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


Decision = (
    Assign | Launch | Complete | Fail | Interrupt | End | Alarm | Stop | Abandon | Retire | Broken
)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class _Task:
    id: int
    level: int = 0
    crashes: int = 0
    worker: bytes | None = None
    timeout: float | None = None


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
    greeted: bool = False  # said hello: being set up
    connected: bool = False  # set up and ready for tasks
    leaving: bool = False
    assigned: deque[int] = field(default_factory=deque)
    sent: int = 0
    head_since: float = 0.0  # when assigned[0] became the task the worker runs


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
    seconds_interrupt: how long a worker has to report an interrupted task (cancelled, or past
    its timeout) before the launcher ends it.
    """

    workers: int = 1
    tasks_max: float = math.inf
    seconds_launch: float = 60.0
    crashes_max: int = 5
    levels: int = 1
    launch_failures_max: int = 5
    pipeline: int = 4
    seconds_short: float = 0.005
    seconds_interrupt: float = 5.0


_SECONDS_REPORT = 1.0  # beyond seconds_interrupt, for a worker's own report to arrive


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
        self._detached: dict[int, _Task] = {}  # resolved while a worker holds them (cancelled)
        # (when, order, worker, task, kind): a worker's head task that must be reported by then.
        self._deadlines: list[tuple[float, int, bytes, int, str]] = []
        self._order = itertools.count()
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

    def awaits(self, identity: bytes) -> bool:
        """Whether `identity` is a launched worker this scheduler still waits to be ready."""
        worker = self._workers.get(identity)
        return worker is not None and not worker.connected

    def launch_of(self, identity: bytes) -> str | None:
        """The launch a known worker belongs to."""
        worker = self._workers.get(identity)
        return worker.launch.id if worker else None

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do, if ever: a launch's connect deadline, or an
        interrupted or timed task's report deadline."""
        deadlines = [launch.deadline for launch in self._launches.values() if launch.waiting]
        heap = self._deadlines
        while heap and not self._still_head(heap[0][2], heap[0][3]):
            heapq.heappop(heap)
        if heap:
            deadlines.append(heap[0][0])
        return min(deadlines) if deadlines else None

    def pipeline_depth(self) -> int:
        """Tasks in flight per worker: more than one only while tasks are known to be short."""
        mean = self._seconds_mean
        if mean is not None and mean < self.settings.seconds_short:
            return self.settings.pipeline
        return 1

    # -- events -------------------------------------------------------------------------------

    def push(self, task: int, now: float, timeout: float | None = None) -> list[Decision]:
        """A task was pushed. `timeout`: seconds it may run on a worker (None: no limit)."""
        return self.push_many((task,), now, timeout)

    def push_many(
        self, tasks: Iterable[int], now: float, timeout: float | None = None
    ) -> list[Decision]:
        """Tasks were pushed together: one scaling decision for all (one launch of n)."""
        queue = self._queues[0]
        for task in tasks:
            self._tasks[task] = _Task(task, timeout=timeout)
            self._demand[0] += 1
            queue.append(task)
        decisions: list[Decision] = []
        self._dispatch(decisions, now)
        self._scale(now, decisions)
        return decisions

    def cancel(self, task: int, now: float) -> list[Decision]:
        """Cancel an unresolved task: it resolves "cancel" now, and a worker that holds it is
        told to interrupt it; one that does not report it within `seconds_interrupt` is ended."""
        record = self._tasks.pop(task, None)
        if record is None:
            return []
        self._demand[record.level] -= 1
        decisions: list[Decision] = [Fail(task, "cancel", "cancelled", record.worker)]
        if record.worker is None:
            self._queues[record.level].remove(task)
            return decisions
        self._detached[task] = record  # its result is dropped when it comes
        decisions.append(Interrupt(record.worker, task, "cancelled"))
        worker = self._workers[record.worker]
        if worker.assigned[0] == task:
            self._expect(worker, task, now + self._grace(), "cancel", decisions)
        return decisions

    def greeted(self, identity: bytes) -> bool:
        """A worker said hello (its setup follows). False if it is not awaited, or said it
        before. It counts as launched until it is ready: `seconds_launch` covers its setup."""
        worker = self._workers.get(identity)
        if worker is None or worker.greeted or worker.connected:
            return False
        worker.greeted = True
        return True

    def connected_worker(self, identity: bytes, now: float) -> list[Decision] | None:
        """A worker is set up and ready for tasks. None if it is not one this scheduler is
        waiting for."""
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
        self._dispatch(decisions, now)
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
        if self._detached.pop(task, None) is None:
            self._demand[self._tasks.pop(task).level] -= 1
            decisions.append(Complete(task, identity))
        if worker.assigned:
            self._became_head(worker, now, decisions)
        elif not worker.leaving:
            self._idle[identity] = worker
        self._dispatch(decisions, now, first=worker)
        self._scale(now, decisions)
        return decisions

    def lost(
        self, identity: bytes, now: float, *, clean: bool, reason: str, end: bool = False
    ) -> list[Decision]:
        """A worker is gone: it said goodbye (`clean`), or its connection or process died.

        If it died, the task it was running counts a crash: retried one level up, at most
        `crashes_max` times, then resolved "crash"; but a task past its timeout resolves as
        timed out instead. Tasks it had not started go back to the front of the queue
        uncounted. A launch none of whose workers ever connected is a failed launch. `end`: the
        worker left with a task that would not stop, so the launcher must end it too.
        """
        worker = self._workers.pop(identity, None)
        if worker is None:
            return []
        self._idle.pop(identity, None)
        decisions: list[Decision] = [End(identity, reason)] if end else []
        timed = not clean or end  # whether a head task past its timeout counts as timed out
        clean = clean or worker.leaving
        launch = worker.launch
        launch.waiting.discard(identity)
        launch.live.discard(identity)
        if not worker.connected and not launch.connected_any and not launch.waiting:
            self._launch_failed(reason, decisions)
        requeue: list[_Task] = []
        for position, task in enumerate(worker.assigned):
            if self._detached.pop(task, None) is not None:
                continue
            record = self._tasks[task]
            record.worker = None
            timeout = record.timeout
            if (
                position == 0
                and timed
                and timeout is not None
                and now - worker.head_since >= timeout
            ):
                del self._tasks[task]
                self._demand[record.level] -= 1
                message = (
                    f"TimeoutError: the task ran longer than its seconds_timeout={timeout:g}, "
                    f"and its worker was lost because {reason}"
                )
                decisions.append(Fail(task, "error", message, identity))
                continue
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
        self._dispatch(decisions, now)
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
        """The clock moved: write off launched workers that did not connect within time, and
        end workers that did not report an interrupted or timed-out task within time."""
        decisions: list[Decision] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, identity, task, kind = heapq.heappop(heap)
            if self._still_head(identity, task):
                decisions += self._overdue(identity, task, kind, now)
        for launch in list(self._launches.values()):
            if not launch.waiting or launch.deadline > now:
                continue
            reason = (
                "launched workers did not connect within "
                f"seconds_launch={self.settings.seconds_launch:g} (or did not finish their "
                "setup: the controller's initializer)"
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

    def _grace(self) -> float:
        # The worker ends itself seconds_interrupt after it interrupts a task; the controller
        # waits a little longer, for that worker's own report to arrive.
        return self.settings.seconds_interrupt + _SECONDS_REPORT

    def _expect(
        self, worker: _Worker, task: int, when: float, kind: str, decisions: list[Decision]
    ) -> None:
        heap = self._deadlines
        heapq.heappush(heap, (when, next(self._order), worker.identity, task, kind))
        if heap[0][0] == when:
            decisions.append(Alarm(when))

    def _still_head(self, identity: bytes, task: int) -> bool:
        worker = self._workers.get(identity)
        return worker is not None and bool(worker.assigned) and worker.assigned[0] == task

    def _became_head(self, worker: _Worker, now: float, decisions: list[Decision]) -> None:
        """`worker.assigned[0]` is now the task the worker runs: start its clocks."""
        worker.head_since = now
        task = worker.assigned[0]
        if task in self._detached:
            self._expect(worker, task, now + self._grace(), "cancel", decisions)
            return
        timeout = self._tasks[task].timeout
        if timeout is not None:
            self._expect(worker, task, now + timeout + self._grace(), "timeout", decisions)

    def _overdue(self, identity: bytes, task: int, kind: str, now: float) -> list[Decision]:
        """Worker `identity` did not report its head task in time: end it."""
        grace = f"seconds_interrupt={self.settings.seconds_interrupt:g}"
        if kind == "cancel":
            if task not in self._detached:
                return []
            reason = f"it did not stop its cancelled task {task} within {grace}"
            return self.lost(identity, now, clean=True, reason=reason, end=True)
        record = self._tasks.get(task)
        if record is None or record.timeout is None:
            return []
        del self._tasks[task]
        self._demand[record.level] -= 1
        self._detached[task] = record
        message = (
            f"TimeoutError: the task ran longer than its seconds_timeout={record.timeout:g}, and "
            f"its worker did not stop it within {grace} after that: the worker was ended"
        )
        reason = f"it did not stop task {task} within {grace} of its seconds_timeout"
        return [
            Fail(task, "error", message, identity),
            *self.lost(identity, now, clean=True, reason=reason, end=True),
        ]

    def _take(self, level: int) -> int | None:
        # Exact level first, then lower levels: a bigger worker may run smaller tasks.
        for queue_level in range(level, -1, -1):
            queue = self._queues[queue_level]
            if queue:
                return queue.popleft()
        return None

    def _give(self, worker: _Worker, depth: int, decisions: list[Decision], now: float) -> bool:
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
            if len(worker.assigned) == 1:
                self._became_head(worker, now, decisions)
            worker.sent += 1
            self._idle.pop(worker.identity, None)
            decisions.append(Assign(worker.identity, task))
            count -= 1
        return True

    def _dispatch(
        self, decisions: list[Decision], now: float, first: _Worker | None = None
    ) -> None:
        if not any(self._queues):
            return
        # Idle workers first, one task each, so that no worker waits while another holds two.
        for worker in list(self._idle.values()):
            if not self._give(worker, 1, decisions, now):
                return
        depth = self.pipeline_depth()
        if first is not None and not self._give(first, depth, decisions, now):
            return
        if depth > 1:
            for worker in list(self._workers.values()):
                if not self._give(worker, depth, decisions, now):
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
