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

#: Who a worker's death is blamed on: the task (its process exited or was killed out of
#: memory) or the infrastructure (a reclaimed host, a job ended from outside, SIGTERM, the
#: network). Only the task's own deaths count toward `crashes_max` and climb the levels.
Cause = Literal["task", "infrastructure"]

# ---------------------------------------------------------------------------------------------
# Decisions
#
# Made for every task, so plain slotted classes: a frozen dataclass sets each field through
# object.__setattr__, several times the cost of building it. Nothing changes one once made.


@dataclass(slots=True)
class Assign:
    """Send task `task` to worker `worker`."""

    worker: bytes
    task: int


@dataclass(slots=True)
class Launch:
    """Start `len(identities)` workers at resource `level`, one per identity, as launch `launch`."""

    launch: str
    level: int
    identities: tuple[bytes, ...]


@dataclass(slots=True)
class Complete:
    """Resolve `task` with the outcome that worker `worker` reported for it (after `crashes`
    workers died under it by its own doing, and `interruptions` were lost under it by the
    infrastructure's)."""

    task: int
    worker: bytes
    crashes: int = 0
    interruptions: int = 0


@dataclass(slots=True)
class Fail:
    """Resolve `task` without a worker's outcome: it crashed too often, was cancelled, or ran
    past its timeout on a worker that never answered ("error")."""

    task: int
    status: Literal["crash", "cancel", "error"]
    message: str
    worker: bytes | None = None
    crashes: int = 0  # as in `Complete`: workers that died under it by its own doing
    interruptions: int = 0  # and those lost under it by the infrastructure's


@dataclass(slots=True)
class Interrupt:
    """Tell worker `worker` to interrupt task `task` (running, or sent and not yet started)."""

    worker: bytes
    task: int
    reason: str


@dataclass(slots=True)
class End:
    """Have the launcher end worker `worker`: a task on it did not stop when interrupted."""

    worker: bytes
    reason: str


@dataclass(slots=True)
class Alarm:
    """Call `tick` at `at` (or sooner): a new deadline came before every other one."""

    at: float


@dataclass(slots=True)
class Gone:
    """Worker `worker` is gone (it left, died, was ended or written off) because of `reason`;
    `crashed`: a task was running on it when it died."""

    worker: bytes
    reason: str
    crashed: bool = False


@dataclass(slots=True)
class Stop:
    """Tell a connected worker to exit (the controller is closing)."""

    worker: bytes
    reason: str


@dataclass(slots=True)
class Keep:
    """Tell an idle worker that asked to leave to stay: it is one of the warm `workers_min`."""

    worker: bytes


@dataclass(slots=True)
class Abandon:
    """These launched workers did not connect in time: end them if they are still around."""

    launch: str
    identities: tuple[bytes, ...]
    reason: str


@dataclass(slots=True)
class Retire:
    """Launch `launch` has no live or awaited worker left: forget its keys, free what it holds."""

    launch: str


@dataclass(slots=True)
class Broken:
    """Launching has failed `failures` times in a row, or once `hopeless`ly (its workers ran
    and none of this controller's ever connected): waiting calls must raise instead of hang."""

    failures: int
    reason: str
    hopeless: bool = False


Decision = (
    Assign
    | Launch
    | Complete
    | Fail
    | Interrupt
    | End
    | Alarm
    | Stop
    | Keep
    | Abandon
    | Retire
    | Broken
    | Gone
)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class _Push:
    """What the tasks pushed together share: the record of each task still fresh in the queue.
    A task gets a `_Task` of its own once a worker takes it; a million queued tasks cost one."""

    timeout: float | None


_FRESH = _Push(None)


@dataclass(slots=True)
class _Task:
    id: int
    level: int = 0
    crashes: int = 0  # workers that died under it by its own doing
    interruptions: int = 0  # workers lost under it by the infrastructure's
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
    note: str | None = None  # what the launcher says of its workers not connected yet
    running: bool = False  # the launcher saw one of them run (its job RUNNING)
    rejoin: bool = False  # launched by an earlier run: its workers may come back (`resume`)


@dataclass(slots=True)
class _Worker:
    identity: bytes
    launch: _Launch
    greeted: bool = False  # said hello: being set up
    connected: bool = False  # set up and ready for tasks
    leaving: bool = False
    released: bool = False  # it asked to leave idle, and was let go (see `idle`)
    cut: bool = False  # its connection closed: it gets no task, and is lost soon
    assigned: deque[int] = field(default_factory=deque)
    sent: int = 0
    head_since: float = 0.0  # when assigned[0] became the task the worker runs
    alive_at: float = -math.inf  # when it last said it is still on assigned[0]


@dataclass(frozen=True, slots=True)
class Settings:
    """The scheduling rules of one controller (crew's meanings).

    workers: most workers at once. tasks_max: a worker exits after this many tasks.
    seconds_launch: a launched worker that has not connected by then counts as failed.
    crashes_max: a task whose worker dies under it is retried this many times, then resolves
    "crash". levels: how many resource levels the launcher offers (escalation after a crash).
    launch_failures_max: consecutive failed launches before waiting calls raise LaunchError.
    interruptions_max: a task whose worker is lost by the infrastructure's doing (a reclaimed
    Spot host, a job stopped from outside, SIGTERM) is retried this many times, at the same
    level and without counting a crash, then resolves "crash" (and moves to a backup).
    pipeline: tasks in flight per worker when tasks are short (hides the round trip).
    seconds_short: a mean task time under this counts as short.
    seconds_interrupt: how long a worker has to report an interrupted task (cancelled, or past
    its timeout) before the launcher ends it.
    workers_min: workers kept warm: launched at start, relaunched when lost, and not let go
    when idle (workers then ask before they leave idle: see `Scheduler.idle`).
    """

    workers: int = 1
    workers_min: int = 0
    tasks_max: float = math.inf
    seconds_launch: float = 60.0
    crashes_max: int = 5
    levels: int = 1
    launch_failures_max: int = 5
    interruptions_max: int = 5
    pipeline: int = 4
    seconds_short: float = 0.005
    seconds_interrupt: float = 5.0


_SECONDS_REPORT = 1.0  # beyond seconds_interrupt, for a worker's own report to arrive
_SECONDS_SILENT = 3.0  # a worker on a timed or interrupted task says it is alive every second


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
    """The controller's state machine. Every method is an event; each returns decisions.

    Every event costs the same however many workers, launches and queued tasks there are
    (amortized; a heap's log where deadlines are involved): counts, idle workers and workers
    with room for another task are kept per level as running state, never found by a pass.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        levels = range(settings.levels)
        self._tasks: dict[int, _Task | _Push] = {}  # unresolved
        self._detached: dict[int, _Task] = {}  # resolved while a worker holds them (cancelled)
        # Records of completed tasks, for tasks taken next: at most as many as were ever on
        # workers at once. A record made for each task taken would live through young
        # garbage collections while its task runs, be promoted, and bring on full collections
        # (a pause of tens of milliseconds with many tasks held) in the middle of a run.
        self._spare: list[_Task] = []
        self._queues: list[deque[int]] = [deque() for _ in levels]  # may hold resolved ids
        self._queued = [0] * settings.levels  # unresolved tasks waiting in each queue
        self._demand = [0] * settings.levels  # unresolved tasks by level
        self._supply = [0] * settings.levels  # workers (launched or connected) by level
        self._workers: dict[bytes, _Worker] = {}
        # Connected workers that can take a task, by level: with nothing assigned, and with
        # some assigned but room for more (pipelining). The most recently freed is used first,
        # so that workers beyond what the load needs stay idle and leave.
        self._idle: list[dict[bytes, _Worker]] = [{} for _ in levels]
        self._room: list[dict[bytes, _Worker]] = [{} for _ in levels]
        self._connected = 0
        self._released = 0  # connected workers let go idle, not yet gone
        self._launching = 0
        self._launches: dict[str, _Launch] = {}
        self._launch_deadlines: list[tuple[float, int, str]] = []  # may hold stale entries
        # (when, order, worker, task, since, kind): a worker's head task (its head since
        # `since`) that must be reported by then.
        self._deadlines: list[tuple[float, int, bytes, int, float, str]] = []
        self._order = itertools.count()
        self._failures = 0
        self._failed_total = 0
        self._connected_ever = False  # a worker of this scheduler has connected, once
        self._broken: Broken | None = None
        self._closing = False
        self._seconds_mean: float | None = None
        # Resuming a journal's run: workers of that run awaited back (`resume`), and until
        # when queued tasks wait for them to say what they hold (one of them may be running a
        # task the journal did not see handed over), rather than go to another worker.
        self._rejoining = 0
        self._rejoining_at = [0] * settings.levels  # and by level
        self._holdoff = -math.inf
        self.instance = secrets.token_hex(8)
        """A token unique to this scheduler, the prefix of its launch ids."""
        self._launch_ids = (f"{self.instance}-{n}" for n in itertools.count())

    # -- views --------------------------------------------------------------------------------

    @property
    def unresolved(self) -> int:
        """Tasks pushed and not yet resolved."""
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """Unresolved tasks waiting in the queue (not sent to any worker)."""
        return sum(self._queued)

    @property
    def connected(self) -> int:
        """Workers connected and ready now."""
        return self._connected

    @property
    def launching(self) -> int:
        """Workers launched that are not ready yet."""
        return self._launching

    @property
    def broken(self) -> Broken | None:
        """Set once launching has failed too often in a row."""
        return self._broken

    def knows(self, identity: bytes) -> bool:
        """Whether `identity` is a worker this scheduler launched and has not written off."""
        return identity in self._workers

    @property
    def failed_launches(self) -> int:
        """Launches that failed so far (in a row or not)."""
        return self._failed_total

    def state_of(self, identity: bytes) -> str:
        """A known worker's state: "launching" (not ready yet), "idle", "busy" or "leaving";
        "gone" for one this scheduler no longer knows."""
        worker = self._workers.get(identity)
        if worker is None:
            return "gone"
        if not worker.connected:
            return "launching"
        if worker.leaving:
            return "leaving"
        return "busy" if worker.assigned else "idle"

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
        launches = self._launch_deadlines
        while launches and not self._still_waiting(launches[0][2]):
            heapq.heappop(launches)
        heap = self._deadlines
        while heap and not self._still_head(heap[0][2], heap[0][3], heap[0][4]):
            heapq.heappop(heap)
        found = [entries[0][0] for entries in (launches, heap) if entries]
        if self._rejoining and self._holdoff != -math.inf:
            found.append(self._holdoff)
        return min(found) if found else None

    def pipeline_depth(self) -> int:
        """Tasks in flight per worker: more than one only while tasks are known to be short."""
        mean = self._seconds_mean
        if mean is not None and mean < self.settings.seconds_short:
            return self.settings.pipeline
        return 1

    def ready_workers(self) -> list[bytes]:
        """Every worker connected and ready now, and not leaving (a pass over them all: for
        rare calls, such as `Controller.everywhere`)."""
        return [w.identity for w in self._workers.values() if w.connected and not w.leaving]

    def held(self, task: int) -> bool:
        """Whether a worker holds the unresolved `task`: running it, or next in its pipeline
        (as `ProcessPoolExecutor` counts a call in its call queue as running)."""
        entry = self._tasks.get(task)
        return entry is not None and not isinstance(entry, _Push) and entry.worker is not None

    def unresolved_tasks(self) -> list[int]:
        """Every unresolved task id, oldest first."""
        return list(self._tasks)

    # -- events -------------------------------------------------------------------------------

    def resume(
        self,
        launch_id: str,
        level: int,
        indexes: Iterable[int],
        deadline: float,
        held: Mapping[int, list[tuple[int, float | None]]],
        holdoff: float = -math.inf,
    ) -> None:
        """A launch of this controller's earlier run, from its journal: its workers `indexes`
        may connect again until `deadline` (seconds_reconnect). `held`: by index, the tasks
        (with their timeouts) a worker held when that run stopped. They stay reserved for it,
        in order, until it comes back (`rejoined`) or the deadline passes (then they run
        elsewhere, counting an interruption). A worker of it that never connected in that run
        may still connect for the first time: it is then set up as any launched worker. Until
        `holdoff`, no queued task is handed out while any of them may still come back."""
        launch = _Launch(launch_id, level, deadline, set(), connected_any=True, rejoin=True)
        for index in indexes:
            identity = f"{launch_id}:{index}".encode()
            worker = self._workers[identity] = _Worker(identity, launch)
            launch.waiting.add(identity)
            for task, timeout in held.get(index, ()):
                self._tasks[task] = _Task(task, worker=identity, timeout=timeout)
                self._demand[0] += 1
                worker.assigned.append(task)
                worker.sent += 1
        count = len(launch.waiting)
        self._supply[level] += count
        self._launching += count
        self._rejoining += count
        self._rejoining_at[level] += count
        self._holdoff = max(self._holdoff, holdoff)
        self._launches[launch_id] = launch
        heapq.heappush(self._launch_deadlines, (deadline, next(self._order), launch_id))

    def rejoined(self, identity: bytes, holding: list[int], now: float) -> list[Decision] | None:
        """A worker of an earlier run came back, holding `holding` (the task it runs first,
        then those sent ahead). It keeps those still unresolved, as its own; those reserved for
        it that it does not hold had their results lost on the way, and run again; those
        resolved meanwhile it is told to drop. None if it is not a worker awaited back."""
        worker = self._workers.get(identity)
        if worker is None or worker.connected or not worker.launch.rejoin:
            return None
        decisions: list[Decision] = []
        kept: deque[int] = deque()
        for task in holding:
            entry = self._tasks.get(task)
            if entry is not None and not isinstance(entry, _Push) and entry.worker == identity:
                kept.append(task)
            elif entry is not None and (isinstance(entry, _Push) or entry.worker is None):
                # Queued here (its hand-over to this worker was not recorded in time): taken
                # out of the queue, where its id is now skipped.
                level = 0 if isinstance(entry, _Push) else entry.level
                self._queued[level] -= 1
                if isinstance(entry, _Push):
                    entry = self._tasks[task] = _Task(task, timeout=entry.timeout)
                entry.worker = identity
                kept.append(task)
            elif entry is None and task not in self._detached:
                # Resolved without it (or unknown here): it runs for nothing, so it is
                # interrupted, and its result dropped when it comes.
                self._detached[task] = _Task(task, worker=identity)
                kept.append(task)
                decisions.append(Interrupt(identity, task, "it resolved while its worker was away"))
        held = set(kept)
        lost = [task for task in worker.assigned if task not in held]
        worker.assigned = kept
        self._requeue(lost)
        worker.connected = True
        self._connected += 1
        self._launching -= 1
        self._rejoining -= 1
        self._rejoining_at[worker.launch.level] -= 1
        launch = worker.launch
        launch.waiting.discard(identity)
        launch.live.add(identity)
        self._connected_ever = True
        if self._closing:
            worker.leaving = True
            decisions.append(Stop(identity, "the controller is closing"))
            return decisions
        if worker.assigned:
            self._became_head(worker, now, decisions)
        self._place(worker)
        self._dispatch(decisions, now)
        self._scale(now, decisions)
        return decisions

    def _claim(self, worker: _Worker, task: int) -> bool:
        """A worker of an earlier run, back and not yet saying what it holds, reports `task`:
        make it the head of what it holds, if that can be. Tasks reserved for it before that
        one had their results lost on the way (it runs them in order), and run again. One
        not reserved for it (its hand-over was not journaled in time) is taken from the
        queue. False if another worker holds it, or it resolved."""
        if task in worker.assigned:
            lost = []
            while worker.assigned[0] != task:
                lost.append(worker.assigned.popleft())
            self._requeue(lost)
            return True
        entry = self._tasks.get(task)
        if entry is None or not (isinstance(entry, _Push) or entry.worker is None):
            return False
        self._requeue(list(worker.assigned))
        level = 0 if isinstance(entry, _Push) else entry.level
        self._queued[level] -= 1  # its id stays in the queue, skipped there
        if isinstance(entry, _Push):
            entry = self._tasks[task] = _Task(task, timeout=entry.timeout)
        entry.worker = worker.identity
        worker.assigned = deque([task])
        return True

    def _requeue(self, tasks: list[int]) -> None:
        """Tasks a worker was sent but did not run (as far as anyone will know) go back to the
        front of the queue, uncounted."""
        for task in reversed(tasks):
            record = self._tasks.get(task)
            if not isinstance(record, _Task):
                self._detached.pop(task, None)
                continue
            record.worker = None
            self._queues[record.level].appendleft(task)
            self._queued[record.level] += 1

    def push(self, task: int, now: float, timeout: float | None = None) -> list[Decision]:
        """A task was pushed. `timeout`: seconds it may run on a worker (None: no limit)."""
        return self.push_many((task,), now, timeout)

    def push_many(
        self, tasks: Iterable[int], now: float, timeout: float | None = None
    ) -> list[Decision]:
        """Tasks were pushed together: one scaling decision for all (one launch of n)."""
        shared = _FRESH if timeout is None else _Push(timeout)
        before = len(self._tasks)
        queue = self._queues[0]
        for task in tasks:
            self._tasks[task] = shared
            queue.append(task)
        count = len(self._tasks) - before
        self._queued[0] += count
        self._demand[0] += count
        decisions: list[Decision] = []
        self._dispatch(decisions, now)
        self._scale(now, decisions)
        return decisions

    def cancel(self, task: int, now: float) -> list[Decision]:
        """Cancel an unresolved task: it resolves "cancel" now, and a worker that holds it is
        told to interrupt it; one that does not report it within `seconds_interrupt` is ended."""
        entry = self._tasks.pop(task, None)
        if entry is None:
            return []
        if isinstance(entry, _Push) or entry.worker is None:
            # Queued: its id stays in the queue, skipped when it comes up.
            level = 0 if isinstance(entry, _Push) else entry.level
            self._queued[level] -= 1
            self._demand[level] -= 1
            self._compact(level)
            return [Fail(task, "cancel", "cancelled", None)]
        self._demand[entry.level] -= 1
        decisions: list[Decision] = [Fail(task, "cancel", "cancelled", entry.worker)]
        self._detached[task] = entry  # its result is dropped when it comes
        decisions.append(Interrupt(entry.worker, task, "cancelled"))
        worker = self._workers[entry.worker]
        if worker.assigned[0] == task:
            self._expect(worker, task, now + self._grace(), "cancel", decisions)
        return decisions

    def start(self, now: float) -> list[Decision]:
        """The controller has started: launch its warm `workers_min`."""
        decisions: list[Decision] = []
        self._scale(now, decisions)
        return decisions

    def idle(self, identity: bytes) -> list[Decision]:
        """A worker idle for its `seconds_idle` asks whether it may leave: `Stop` if more than
        `workers_min` workers would still be connected, else `Keep`. Nothing if it has a task
        now (one was sent as it asked: it runs it, and its idle clock starts again)."""
        worker = self._workers.get(identity)
        if worker is None or not worker.connected or worker.leaving or worker.assigned:
            return []
        if self._connected - self._released <= self.settings.workers_min:
            return [Keep(identity)]
        worker.leaving = worker.released = True
        self._released += 1
        self._place(worker)  # out of the pools: it gets no task now
        return [Stop(identity, f"idle, beyond workers_min={self.settings.workers_min}")]

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
        self._connected += 1
        launch = worker.launch
        if launch.rejoin:
            self._rejoining -= 1
            self._rejoining_at[launch.level] -= 1
        launch.waiting.discard(identity)
        self._launching -= 1
        launch.live.add(identity)
        launch.connected_any = True
        self._connected_ever = True
        self._failures = 0
        if self._closing:
            worker.leaving = True
            return [Stop(identity, "the controller is closing")]
        decisions: list[Decision] = []
        self._idle[launch.level][identity] = worker
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
        if worker is None:
            return None
        if (not worker.assigned or worker.assigned[0] != task) and (
            worker.connected or not worker.launch.rejoin or not self._claim(worker, task)
        ):
            return None
        worker.assigned.popleft()
        mean = self._seconds_mean
        self._seconds_mean = seconds if mean is None else 0.8 * mean + 0.2 * seconds
        decisions: list[Decision] = []
        if self._detached.pop(task, None) is None:
            entry = self._tasks.pop(task)
            assert isinstance(entry, _Task)
            self._demand[entry.level] -= 1
            decisions.append(Complete(task, identity, entry.crashes, entry.interruptions))
            self._spare.append(entry)
        if worker.assigned:
            self._became_head(worker, now, decisions)
        if worker.connected:
            self._place(worker)
        self._dispatch(decisions, now)
        self._scale(now, decisions)
        return decisions

    def busy(self, identity: bytes, task: int, now: float) -> None:
        """A worker says it is alive and still on `task` (a timed or interrupted task): the
        controller does not end it for silence while it keeps saying so."""
        worker = self._workers.get(identity)
        if worker is not None and worker.assigned and worker.assigned[0] == task:
            worker.alive_at = now

    def lost(
        self,
        identity: bytes,
        now: float,
        *,
        clean: bool,
        reason: str,
        end: bool = False,
        cause: Cause = "task",
    ) -> list[Decision]:
        """A worker is gone: it said goodbye (`clean`), or its connection or process died.

        If it died by the task's doing (`cause="task"`), the task it was running counts a
        crash: retried one level up, at most `crashes_max` times, then resolved "crash". If
        the infrastructure lost it (`cause="infrastructure"`: a reclaimed host, a job stopped
        from outside, SIGTERM), the task counts an interruption instead: retried at once at
        the same level, at most `interruptions_max` times, then resolved "crash". A task past
        its timeout resolves as timed out instead. Tasks it had not started go back to the
        front of the queue uncounted. A launch none of whose workers ever connected is a failed
        launch. `end`: the worker left with a task that would not stop, so the launcher must
        end it too.
        """
        worker = self._workers.pop(identity, None)
        if worker is None:
            return []
        launch = worker.launch
        self._supply[launch.level] -= 1
        self._idle[launch.level].pop(identity, None)
        self._room[launch.level].pop(identity, None)
        if worker.connected:
            self._connected -= 1
        else:
            self._launching -= 1
            if launch.rejoin:
                self._rejoining -= 1
                self._rejoining_at[launch.level] -= 1
        if worker.released:
            self._released -= 1
        decisions: list[Decision] = [End(identity, reason)] if end else []
        crashed = not (clean or worker.leaving) and bool(worker.assigned) and cause == "task"
        decisions.append(Gone(identity, reason, crashed))
        timed = not clean or end  # whether a head task past its timeout counts as timed out
        clean = clean or worker.leaving
        launch.waiting.discard(identity)
        launch.live.discard(identity)
        if not worker.connected and not launch.connected_any and not launch.waiting:
            self._launch_failed(reason, decisions)
        requeue: list[_Task] = []
        for position, task in enumerate(worker.assigned):
            if self._detached.pop(task, None) is not None:
                continue
            record = self._tasks[task]
            assert isinstance(record, _Task)
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
            if position == 0 and not clean and cause == "infrastructure":
                record.interruptions += 1
                if record.interruptions > self.settings.interruptions_max:
                    del self._tasks[task]
                    self._demand[record.level] -= 1
                    message = (
                        f"the worker running this task was lost {record.interruptions} time(s) "
                        f"by no doing of its own, the last time because {reason}; "
                        f"interruptions_max={self.settings.interruptions_max}"
                    )
                    decisions.append(
                        Fail(task, "crash", message, identity, record.crashes, record.interruptions)
                    )
                    continue
            elif position == 0 and not clean:
                record.crashes += 1
                self._demand[record.level] -= 1
                if record.crashes > self.settings.crashes_max:
                    del self._tasks[task]
                    message = (
                        f"the worker running this task died {record.crashes} time(s), the last "
                        f"time because {reason}; crashes_max={self.settings.crashes_max}"
                    )
                    decisions.append(
                        Fail(task, "crash", message, identity, record.crashes, record.interruptions)
                    )
                    continue
                record.level = min(record.crashes, self.settings.levels - 1)
                self._demand[record.level] += 1
            requeue.append(record)
        for record in reversed(requeue):
            self._queues[record.level].appendleft(record.id)
            self._queued[record.level] += 1
        self._retire_if_done(launch, decisions)
        self._dispatch(decisions, now)
        self._scale(now, decisions)
        return decisions

    def pending(self, identity: bytes, note: str, *, running: bool) -> None:
        """The launcher says how a launched worker that has not connected is doing (its job
        waits RUNNABLE, for this reason; or it runs): if it does not connect in time, its
        launch fails with `note` as the reason, and, having run, as hopeless when no worker of
        this controller ever connected."""
        worker = self._workers.get(identity)
        if worker is None or worker.connected:
            return
        launch = worker.launch
        launch.note = note
        launch.running = launch.running or running

    def cut(self, identity: bytes) -> None:
        """A worker's connection closed, and the report of how its process ended is on its
        way (`lost` follows): until then, it is sent no task, which could never arrive."""
        worker = self._workers.get(identity)
        if worker is not None:
            worker.cut = True
            self._idle[worker.launch.level].pop(identity, None)
            self._room[worker.launch.level].pop(identity, None)

    def launch_failed(self, launch_id: str, now: float, reason: str) -> list[Decision]:
        """The launcher could not start launch `launch_id`."""
        launch = self._launches.get(launch_id)
        if launch is None:
            return []
        decisions: list[Decision] = []
        self._write_off(launch, reason, decisions)
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
            _, _, identity, task, since, kind = heapq.heappop(heap)
            if self._still_head(identity, task, since):
                decisions += self._overdue(identity, task, kind, now)
        launches = self._launch_deadlines
        while launches and launches[0][0] <= now:
            _, _, launch_id = heapq.heappop(launches)
            if not self._still_waiting(launch_id):
                continue
            launch = self._launches[launch_id]
            if launch.rejoin:
                reason = (
                    "a worker of this controller's earlier run, which did not come back within "
                    "seconds_reconnect"
                )
                identities = tuple(sorted(launch.waiting))
                for identity in identities:
                    decisions += self.lost(
                        identity, now, clean=False, reason=reason, cause="infrastructure"
                    )
                decisions.append(Abandon(launch.id, identities, reason))
                continue
            within = f"seconds_launch={self.settings.seconds_launch:g}"
            if launch.note is not None and not launch.running:
                reason = f"launched workers did not start within {within}: {launch.note}"
            elif launch.note is not None:
                reason = f"launched workers did not connect within {within}: {launch.note}"
            else:
                reason = (
                    f"launched workers did not connect within {within} (or did not finish "
                    "their setup: the controller's initializer)"
                )
            identities = tuple(sorted(launch.waiting))
            self._write_off(launch, reason, decisions)
            decisions.append(Abandon(launch.id, identities, reason))
            if not launch.connected_any:
                # Workers that ran but could not connect, when none ever has, cannot reach
                # the controller: launching more would only bill more of them.
                hopeless = launch.running and not self._connected_ever
                self._launch_failed(reason, decisions, hopeless=hopeless)
            self._retire_if_done(launch, decisions)
        if self._rejoining and now >= self._holdoff:
            self._holdoff = -math.inf  # waited long enough for the resumed run's workers
            self._dispatch(decisions, now)
        self._scale(now, decisions)
        return decisions

    def close(self) -> list[Decision]:
        """The controller is closing: launch nothing more; stop every connected worker."""
        self._closing = True
        for pool in (*self._idle, *self._room):
            pool.clear()
        decisions: list[Decision] = []
        for worker in self._workers.values():
            if worker.connected and not worker.leaving:
                worker.leaving = True
                decisions.append(Stop(worker.identity, "the controller is closing"))
        return decisions

    # -- internals ----------------------------------------------------------------------------

    def _still_waiting(self, launch_id: str) -> bool:
        launch = self._launches.get(launch_id)
        return launch is not None and bool(launch.waiting)

    def _write_off(self, launch: _Launch, reason: str, decisions: list[Decision]) -> None:
        """Forget the launched workers of `launch` that never got ready."""
        for identity in launch.waiting:
            worker = self._workers.pop(identity)
            self._supply[launch.level] -= 1
            self._launching -= 1
            assert not worker.assigned
            decisions.append(Gone(identity, reason))
        launch.waiting.clear()

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
        entry = (when, next(self._order), worker.identity, task, worker.head_since, kind)
        heapq.heappush(heap, entry)
        if heap[0][0] == when:
            decisions.append(Alarm(when))

    def _still_head(self, identity: bytes, task: int, since: float) -> bool:
        worker = self._workers.get(identity)
        return (
            worker is not None
            and bool(worker.assigned)
            and worker.assigned[0] == task
            and worker.head_since == since
        )

    def _became_head(self, worker: _Worker, now: float, decisions: list[Decision]) -> None:
        """`worker.assigned[0]` is now the task the worker runs: start its clocks."""
        worker.head_since = now
        worker.alive_at = -math.inf
        task = worker.assigned[0]
        if task in self._detached:
            self._expect(worker, task, now + self._grace(), "cancel", decisions)
            return
        timeout = self._tasks[task].timeout
        if timeout is not None:
            self._expect(worker, task, now + timeout + self._grace(), "timeout", decisions)

    def _overdue(self, identity: bytes, task: int, kind: str, now: float) -> list[Decision]:
        """Worker `identity` did not report its head task in time: end it, unless it keeps
        saying it is alive (then its own clocks will end the task, and it reports)."""
        worker = self._workers[identity]
        if now < worker.alive_at + _SECONDS_SILENT:
            decisions: list[Decision] = []
            self._expect(worker, task, worker.alive_at + _SECONDS_SILENT, kind, decisions)
            return decisions
        grace = f"seconds_interrupt={self.settings.seconds_interrupt:g}"
        if kind == "cancel":
            if task not in self._detached:
                return []
            reason = f"it did not stop its cancelled task {task} within {grace}"
            return self.lost(identity, now, clean=True, reason=reason, end=True)
        record = self._tasks.get(task)
        if not isinstance(record, _Task) or record.timeout is None:
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

    def _compact(self, level: int) -> None:
        """Drop cancelled ids from a queue once they outnumber the live ones (amortized O(1))."""
        queue = self._queues[level]
        if len(queue) > 64 and len(queue) > 2 * self._queued[level]:
            tasks = self._tasks
            self._queues[level] = deque(task for task in queue if task in tasks)

    def _take(self, level: int) -> _Task | None:
        """The next queued task a worker at `level` can run: its own level first, then lower
        levels (a bigger worker may run smaller tasks)."""
        tasks = self._tasks
        for queue_level in range(level, -1, -1):
            if not self._queued[queue_level]:
                continue
            queue = self._queues[queue_level]
            while True:
                task = queue.popleft()
                entry = tasks.get(task)
                if entry is None:
                    continue  # cancelled while queued
                if not isinstance(entry, _Push) and entry.worker is not None:
                    continue  # taken out of the queue by a worker that came back (`rejoined`)
                self._queued[queue_level] -= 1
                if isinstance(entry, _Push):
                    timeout = entry.timeout
                    if self._spare:
                        entry = self._spare.pop()
                        entry.id, entry.level, entry.crashes, entry.interruptions = task, 0, 0, 0
                        entry.worker, entry.timeout = None, timeout
                    else:
                        entry = _Task(task, timeout=timeout)
                    tasks[task] = entry
                return entry
        return None

    def _place(self, worker: _Worker) -> None:
        """Put a connected worker in the pool that says what it can take now."""
        identity, level = worker.identity, worker.launch.level
        self._idle[level].pop(identity, None)
        self._room[level].pop(identity, None)
        if worker.leaving or worker.cut or worker.sent >= self.settings.tasks_max:
            return
        if not worker.assigned:
            self._idle[level][identity] = worker
        elif len(worker.assigned) < self.settings.pipeline:
            self._room[level][identity] = worker

    def _give(self, worker: _Worker, count: int, decisions: list[Decision], now: float) -> None:
        """Send `worker` up to `count` more tasks, while any it can run are queued."""
        count = int(min(count, self.settings.tasks_max - worker.sent))
        level = worker.launch.level
        for _ in range(count):
            record = self._take(level)
            if record is None:
                break
            record.worker = worker.identity
            worker.assigned.append(record.id)
            if len(worker.assigned) == 1:
                self._became_head(worker, now, decisions)
            worker.sent += 1
            decisions.append(Assign(worker.identity, record.id))
        self._place(worker)

    def _queued_up_to(self, level: int) -> bool:
        return any(self._queued[: level + 1])

    def _dispatch(self, decisions: list[Decision], now: float) -> None:
        if not any(self._queued):
            return
        if self._rejoining and now < self._holdoff:
            return  # workers of a resumed run may hold some of these: see `resume`
        # Idle workers first, one task each, so that no worker waits while another holds two;
        # bigger workers first, so that escalated tasks find them.
        for level in range(self.settings.levels - 1, -1, -1):
            idle = self._idle[level]
            while idle and self._queued_up_to(level):
                self._give(idle.popitem()[1], 1, decisions, now)
        depth = self.pipeline_depth()
        if depth == 1 or not any(self._queued):
            return
        for level in range(self.settings.levels - 1, -1, -1):
            for pool in (self._idle[level], self._room[level]):
                while pool and self._queued_up_to(level):
                    worker = pool.popitem()[1]
                    self._give(worker, depth - len(worker.assigned), decisions, now)

    def _launch_failed(
        self, reason: str, decisions: list[Decision], *, hopeless: bool = False
    ) -> None:
        """A launch failed; `hopeless`: another would fail the same way (its workers ran, and
        no worker of this controller ever reached it), so waiting calls raise at once."""
        self._failures += 1
        self._failed_total += 1
        if hopeless:
            self._failures = max(self._failures, self.settings.launch_failures_max)
        if self._broken is None and self._failures >= self.settings.launch_failures_max:
            self._broken = Broken(self._failures, reason, hopeless)
            decisions.append(self._broken)

    def _scale(self, now: float, decisions: list[Decision]) -> None:
        if self._closing or self._broken is not None:
            return
        workers = len(self._workers)
        have = self._supply
        if self._rejoining and now >= self._holdoff:
            # Workers of a resumed run not back by now may never come: the tasks launch new
            # ones (those that come back later are welcome all the same, over `workers`).
            workers -= self._rejoining
            have = [count - away for count, away in zip(have, self._rejoining_at, strict=True)]
        if workers >= self.settings.workers:
            return  # no room to launch anything
        floor = self.settings.workers_min
        if self.settings.levels == 1 and workers >= len(self._tasks) and workers >= floor:
            return  # the common case: every task has a worker
        demand = {level: count for level, count in enumerate(self._demand) if count}
        supply = {level: count for level, count in enumerate(have) if count}
        plan = plan_launches(self.settings.workers, demand, supply)
        short = floor - workers - sum(plan.values())
        if short > 0:  # warm workers, at the first level, beyond what the tasks need
            plan[0] = plan.get(0, 0) + short
        deadline = now + self.settings.seconds_launch
        for level, count in sorted(plan.items(), reverse=True):
            launch = _Launch(next(self._launch_ids), level, deadline, set())
            identities = tuple(f"{launch.id}:{index}".encode() for index in range(count))
            for identity in identities:
                self._workers[identity] = _Worker(identity, launch)
            launch.waiting.update(identities)
            self._supply[level] += count
            self._launching += count
            self._launches[launch.id] = launch
            heapq.heappush(self._launch_deadlines, (deadline, next(self._order), launch.id))
            decisions.append(Launch(launch.id, level, identities))
