"""The asyncio shell around the scheduler: it owns the ROUTER socket and carries decisions out.

Frames in become scheduler events; decisions out become frames, launcher calls and resolved
tasks. The socket is a plain (non-asyncio) pyzmq socket drained in batches whenever its file
descriptor signals, which is what lets one event loop keep up with many fast workers. Launcher
calls run as background tasks, so dispatch never waits on a launch or a termination.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import math
import platform
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import anyio
import anyio.abc
import cloudpickle
import zmq
from zmq.utils.monitor import parse_monitor_message

from batchcrew import __version__, protocol, scheduling
from batchcrew.errors import ProtocolError
from batchcrew.everywhere import Call, Calls
from batchcrew.journal import JournalWriter, StoredLaunch
from batchcrew.launchers.base import Launcher, LaunchRequest, WorkerExit, WorkerPending
from batchcrew.security import Keys, ZapHandler
from batchcrew.tracking import Tracker
from batchcrew.worker import WorkerSettings

logger = logging.getLogger("batchcrew")

WORKER_COMMAND = ("python", "-m", "batchcrew.worker")
_BATCH = 256  # messages handled before other tasks get a turn
_SECONDS_BATCH = 0.002  # or this long: a flood of results never holds the loop for longer
_DROPS_LOGGED = 100  # messages from unknown peers, and late ones, logged; the rest at DEBUG
_SECONDS_CALLS_MAX = 120.0  # at close, the longest wait for launch calls under way
_SECONDS_EXIT_REPORT = 1.0  # after a local worker disconnects, the wait for its exit report
_HEARTBEATS_LINGER = 3  # a remote worker written off and not reported gone by then is ended
_PEEKED = 8  # messages of a drain after which it reads to the end instead of asking first
# Plain ints: pyzmq's flag enums cost more to combine than the send itself.
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


@dataclass(slots=True)
class Resolution:
    """How a task resolved, as the controller needs it to build a `Result`."""

    task: int
    status: Literal["success", "error", "crash", "cancel"]
    outcome: protocol.Outcome | None
    message: str | None
    worker: str | None  # its name, shared by the results of one worker
    crashes: int = 0  # workers that died under it before, by its own doing
    interruptions: int = 0  # workers lost under it before, not by its doing (a reclaimed host)


@dataclass(frozen=True, slots=True)
class Network:
    """Where the controller listens and how its workers are told to behave."""

    host: str
    port: int
    security: Literal["curve", "none"]
    seconds_idle: float
    seconds_wall: float
    seconds_heartbeat: float
    max_message_size: int
    address: str | None = None  # where workers dial, if not host:port (a tunnel, a NAT)
    output_max: int = 1 << 20  # bytes of a task's output kept in its result
    output_relay: bool = False  # workers send a running task's output as it comes
    seconds_reconnect: float = 0.0  # a worker that lost the controller waits this long for it


@dataclass(slots=True)
class Resume:
    """What a controller restarted on its journal takes up from the earlier run: its CURVE
    server keys and port (so that that run's workers can come back), its launches, the tasks
    its workers held (by identity, in order, with their timeouts), and the tasks to queue."""

    keys: tuple[bytes, bytes] | None
    port: int
    address: str  # where that run's workers dial
    launches: list[StoredLaunch]
    held: dict[str, list[tuple[int, float | None]]]
    queued: list[tuple[list[int], float | None]]
    seconds_reconnect: float


class Dispatcher:
    """Runs one controller's socket, scheduler and launcher inside a task group."""

    def __init__(
        self,
        network: Network,
        settings: scheduling.Settings,
        launcher: Launcher,
        resolve: Callable[[Resolution], None],
        broken: Callable[[scheduling.Broken], None],
        payload: Callable[[int], protocol.Task],
        controller: str = "controller",
        setup: protocol.Setup | None = None,
        output: Callable[[protocol.Output], None] | None = None,
    ) -> None:
        self.network = network
        self.controller = controller
        self._setup = protocol.encode(setup or protocol.Setup())
        self._mismatches: set[str] = set()  # cloudpickle versions already warned about
        self._setup_failures: set[tuple[str, str | None]] = set()  # initializer errors logged
        self.scheduler = scheduling.Scheduler(settings)
        self.launcher = launcher
        self.address = ""
        self._resolve = resolve
        self._broken = broken
        self._payload = payload
        self._output = output  # where running tasks' relayed output goes
        self._fds: dict[int, bytes] = {}  # socket descriptor -> the worker connected on it
        self._owed: dict[int, int] = {}  # disconnects still to come for descriptors reused
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._keys: Keys | None = None
        self._zap: ZapHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_scheduled = False  # a drain is due on the loop's next turn
        self._side_ready = False  # the monitor or ZAP socket signalled
        self._fault: asyncio.Future[None] | None = None  # a drain that failed: the run fails
        # Frames for each worker, sent together when the batch of events that made them ends:
        # several tasks for one worker go out as one message.
        self._outbox: dict[bytes, list[protocol.Buffer]] = {}
        self._draining = False
        self._changed = asyncio.Event()  # workers, launches or deadlines changed
        self._group: anyio.abc.TaskGroup | None = None
        self._launch_calls: anyio.abc.TaskGroup | None = None
        self._pending_calls: deque[tuple[Callable[..., Coroutine[Any, Any, None]], tuple[Any, ...]]]
        self._pending_calls = deque()
        self._calls_ready = asyncio.Event()
        self._in_flight = 0
        self._clock_at = math.inf  # when the clock task next calls tick
        self.dropped = 0
        """Messages dropped because they came from a peer this controller does not know."""
        self.tracker = Tracker()
        self.calls = Calls()
        """`Controller.everywhere` calls, for the workers of the moment and those to come."""
        """Records of the workers, launches and launcher errors, for tables and metrics."""
        self._lingering: dict[bytes, asyncio.TimerHandle] = {}  # remote workers written off
        self.late = 0
        """Messages dropped because they came from a worker of this controller written off
        earlier (its process was reported dead, its connection closed, or it did not connect
        in time)."""
        # Every identity this controller issues starts with its launch ids' prefix.
        self._own_prefix = f"{self.scheduler.instance}-".encode()
        self.journal: JournalWriter | None = None
        self.resume: Resume | None = None  # set before `run` to take up a journal's run
        self.rejoined = 0
        """Workers of the earlier run (of this controller's journal) that came back."""

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Bind, start the launcher, and serve until cancelled; then close everything."""
        loop = self._loop = asyncio.get_running_loop()
        self._fault = loop.create_future()
        self._bind()
        resumed = self._resume_before_reading()
        router, monitor = self._router, self._monitor
        assert router is not None
        assert monitor is not None
        fds = [_option(router, zmq.FD), _option(monitor, zmq.FD)]
        if self._zap is not None:
            fds.append(self._zap.fileno())
        try:
            loop.add_reader(fds[0], self._on_signalled)
            for fd in fds[1:]:
                loop.add_reader(fd, self._on_side_readable)
            async with anyio.create_task_group() as group:
                self._group = group
                await group.start(self.launcher.serve, self._on_report)
                async with anyio.create_task_group() as calls:
                    self._launch_calls = calls
                    group.start_soon(self._watch_faults)
                    group.start_soon(self._clock)
                    self._resume_after_serving(resumed)
                    self._apply(self.scheduler.start(time.monotonic()))  # warm workers_min
                    task_status.started()
                    while True:  # start the calls that loop callbacks asked for
                        await self._calls_ready.wait()
                        self._calls_ready.clear()
                        while self._pending_calls:
                            calls.start_soon(self._call, *self._pending_calls.popleft())
        finally:
            self.calls.close("the controller closed before this worker answered")
            for fd in fds:
                loop.remove_reader(fd)
            self._unbind()

    def _bind(self) -> None:
        network = self.network
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._context = context
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, network.max_message_size)
        heartbeat_ms = max(1, int(network.seconds_heartbeat * 1000))
        router.setsockopt(zmq.HEARTBEAT_IVL, max(1, heartbeat_ms // 4))
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms)
        resume = self.resume
        if network.security == "curve":
            if resume is not None and resume.keys is not None:
                self._keys = Keys(*resume.keys)  # that run's workers check this key
            else:
                self._keys = Keys.generate()
            self._zap = ZapHandler(context, self._keys)
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self._keys.server_secret)
            router.setsockopt(zmq.ZAP_DOMAIN, b"batchcrew")
        self._router = router
        self._monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        host = f"[{network.host}]" if ":" in network.host else network.host
        port = network.port or (resume.port if resume is not None else 0)
        if port:
            try:
                router.bind(f"tcp://{host}:{port}")
            except zmq.ZMQError as error:
                if network.port or error.errno != errno.EADDRINUSE:
                    raise
                logger.warning(
                    "port %d of this controller's earlier run (in its journal) is in use: "
                    "listening on another, so that run's workers cannot come back (they are "
                    "ended, and their tasks run again)",
                    port,
                )
                port = router.bind_to_random_port(f"tcp://{host}")
        else:
            port = router.bind_to_random_port(f"tcp://{host}")
        self.address = network.address or f"tcp://{host}:{port}"
        if self.launcher.remote:
            dialled = self.address.removeprefix("tcp://").rpartition(":")[0]
            doubt = unlikely_reachable(dialled)
            if doubt is not None:
                logger.warning(
                    "workers of launcher %s will dial %s, %s: they will probably not reach "
                    "it. Give host= an address of this machine that they can reach (its "
                    "address in their network; address= for the far end of a tunnel or a "
                    "NAT), or run the controller where they are",
                    self.launcher.describe(),
                    self.address,
                    doubt,
                )

    def _resume_before_reading(self) -> list[scheduling.Decision]:
        """Take up the journal's run before any worker is heard: its workers are awaited back
        (if they can find this controller where they left it), its tasks queued."""
        resume = self.resume
        if resume is None:
            return []
        now = time.monotonic()
        decisions: list[scheduling.Decision] = []
        same = resume.address == self.address
        for launch in resume.launches:
            self.tracker.launched(
                launch.id,
                launch.level,
                [f"{launch.id}:{index}".encode() for index in range(launch.count)],
            )
            if not same:
                continue  # ended once the launcher serves (see _resume_after_serving)
            if self._keys is not None and launch.public_key:
                self._keys.readmit(launch.id, launch.public_key.encode())
            gone = set(launch.gone)
            held: dict[int, list[tuple[int, float | None]]] = {}
            for index in launch.connected:
                reserved = resume.held.get(f"{launch.id}:{index}")
                if reserved:
                    held[index] = reserved
            indexes = [index for index in range(launch.count) if index not in gone]
            # Workers that are still there reconnect within a second or so of this bind.
            holdoff = now + min(resume.seconds_reconnect, self.network.seconds_heartbeat)
            self.scheduler.resume(
                launch.id, launch.level, indexes, now + resume.seconds_reconnect, held, holdoff
            )
        if not same:
            # Nobody comes back: what they held is queued again.
            for reserved in resume.held.values():
                for task, timeout in reserved:
                    resume.queued.append(([task], timeout))
        for ids, timeout in resume.queued:
            decisions += self.scheduler.push_many(ids, now, timeout)
        return decisions

    def _resume_after_serving(self, decisions: list[scheduling.Decision]) -> None:
        """The launcher serves: it takes the earlier run's launches back (to end them), and
        the decisions made while resuming are carried out."""
        resume = self.resume
        if resume is None:
            return
        same = resume.address == self.address
        ended: list[tuple[str, list[int]]] = []
        for launch in resume.launches:
            self.launcher.adopt(launch.id, launch.count, launch.record)
            if not same:
                ended.append((launch.id, list(range(launch.count))))
                if self.journal is not None:
                    self.journal.record("retire", (launch.id,))  # not to be awaited again
        if ended:
            logger.warning(
                "this controller listens at %s, its earlier run at %s: that run's %d "
                "launch(es) are ended, and their tasks run again",
                self.address,
                resume.address,
                len(ended),
            )
            self._background(self._terminate, ended)
        self._apply(decisions)
        self._notify()

    def _unbind(self) -> None:
        if self._router is not None:
            self._router.disable_monitor()
            self._router.close(0)
        if self._monitor is not None:
            self._monitor.close(0)
        if self._zap is not None:
            self._zap.close()
        if self._context is not None:
            self._context.term()
        self._router = self._monitor = self._zap = self._context = None
        for lingering in self._lingering.values():
            lingering.cancel()  # the launcher ends whatever is left as it closes
        self._lingering.clear()

    async def detach(self) -> None:
        """Stop serving but leave the workers running, with their tasks: they wait
        seconds_reconnect for a controller resumed on the journal. Launch calls under way
        finish first, so that the journal knows every job to take back."""
        self.launcher.stopping = True
        self.launcher.detached = True
        with anyio.move_on_after(_SECONDS_CALLS_MAX):
            while self._in_flight:
                await self._changed.wait()
        if self._group is not None:
            self._group.cancel_scope.cancel()

    async def close(self, seconds_grace: float) -> None:
        """Stop the workers and cancel (interrupting) every unresolved task; let launch calls
        finish and workers leave (within `seconds_grace`); then cancel the serving task group,
        and the launcher ends whatever is left."""
        self.launcher.stopping = True
        self._apply(self.scheduler.close())
        for task in self.scheduler.unresolved_tasks():
            self._apply(self.scheduler.cancel(task, time.monotonic()), "the controller closed")
        # A launch call cut off mid-request could leave a job behind that nobody ends, so
        # calls under way finish (launchers skip those not yet sent); the cap is a backstop.
        with anyio.move_on_after(_SECONDS_CALLS_MAX):
            while self._in_flight:
                await self._changed.wait()
        with anyio.move_on_after(seconds_grace):
            while self.scheduler.connected:
                await self._changed.wait()
        if self._group is not None:
            self._group.cancel_scope.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- pushing and cancelling ---------------------------------------------------------------

    def push(self, tasks: Iterable[int], timeout: float | None = None) -> None:
        """Queue tasks; they go out at once to workers with room, and launches cover the rest.
        `timeout`: seconds each may run on a worker (None: no limit). What a task sends is
        asked of `payload` each time it goes out."""
        self._apply(self.scheduler.push_many(tasks, time.monotonic(), timeout))

    def everywhere(self, label: str, function: bytes, arguments: bytes) -> Call:
        """Send a `Controller.everywhere` call to every ready worker now; record it for every
        worker that becomes ready later. Its `done` is set once those of now have answered."""
        workers = self.scheduler.ready_workers()
        call = self.calls.add(label, function, arguments, workers, self.tracker.name)
        for worker in workers:
            self._post(worker, list(call.frames))
        self._flush()
        return call

    def cancel(self, task: int, why: str = "cancelled") -> None:
        """Cancel an unresolved task; a worker running it is told to interrupt it."""
        self._apply(self.scheduler.cancel(task, time.monotonic()), why)

    # -- decisions out ------------------------------------------------------------------------

    def _apply(self, decisions: Sequence[scheduling.Decision], why: str = "") -> None:
        abandoned: list[tuple[str, list[int]]] = []  # ended before any launch that replaces them
        for decision in decisions:
            if isinstance(decision, scheduling.Assign):
                self._post(decision.worker, self._task_frames(decision.task))
                if self.journal is not None:
                    self.journal.record("held", (decision.worker.decode(), decision.task))
            elif isinstance(decision, scheduling.Fail):
                message = why if why and decision.status == "cancel" else decision.message
                self._resolve(
                    Resolution(
                        decision.task,
                        decision.status,
                        None,
                        message,
                        None if decision.worker is None else self.tracker.name(decision.worker),
                        decision.crashes,
                        decision.interruptions,
                    )
                )
            elif isinstance(decision, scheduling.Interrupt):
                self._post(
                    decision.worker,
                    protocol.encode(protocol.Cancel(decision.task, why or decision.reason)),
                )
            elif isinstance(decision, scheduling.End):
                logger.warning("ending worker %s: %s", _name(decision.worker), decision.reason)
                self._background(self._end_worker, decision.worker, decision.reason)
            elif isinstance(decision, scheduling.Alarm):
                if decision.at < self._clock_at:
                    self._notify()
            elif isinstance(decision, scheduling.Launch):
                self._start_launch(decision, abandoned)
                abandoned = []
            elif isinstance(decision, scheduling.Stop):
                self._post(decision.worker, protocol.encode(protocol.Stop(decision.reason)))
            elif isinstance(decision, scheduling.Abandon):
                logger.warning("launch %s: %s", decision.launch, decision.reason)
                abandoned.append(
                    (decision.launch, [_index(identity) for identity in decision.identities])
                )
            elif isinstance(decision, scheduling.Gone):
                self.tracker.gone(decision.worker, decision.reason, crashed=decision.crashed)
                if self.journal is not None:
                    self._record_worker(decision.worker, "gone")
                self.calls.gone(decision.worker, decision.reason)
            elif isinstance(decision, scheduling.Keep):
                self._post(decision.worker, list(_STAY))
            elif isinstance(decision, scheduling.Retire):
                if self._keys is not None:
                    self._keys.retire(decision.launch)
                if self.journal is not None:
                    self.journal.record("retire", (decision.launch,))
            elif isinstance(decision, scheduling.Broken):
                if decision.hopeless:
                    logger.error("launching stopped: %s", decision.reason)
                else:
                    logger.error(
                        "launching failed %d times in a row; last: %s",
                        decision.failures,
                        decision.reason,
                    )
                self._broken(decision)
            # Complete is handled where the outcome is in hand: see _on_result.
        if abandoned:
            self._background(self._terminate, abandoned)
        if not self._draining:
            self._flush()

    def _record_worker(self, identity: bytes, state: str) -> None:
        assert self.journal is not None
        name = identity.decode()
        self.journal.record("worker", (name, name.rpartition(":")[0], state))

    def _task_frames(self, task: int) -> list[protocol.Buffer]:
        return protocol.encode(self._payload(task))

    def _post(self, worker: bytes, frames: list[protocol.Buffer]) -> None:
        """Queue frames for a worker, to go out with the others made by the same events."""
        box = self._outbox.get(worker)
        if box is None:
            self._outbox[worker] = frames
        else:
            box.extend(frames)

    def _flush(self) -> None:
        """Send what the outbox holds: one message per worker."""
        while self._outbox:
            outbox, self._outbox = self._outbox, {}
            for worker, frames in outbox.items():
                self._send(worker, frames)

    def _send(self, worker: bytes, frames: list[protocol.Buffer]) -> None:
        router = self._router
        if router is None:
            return
        try:
            router.send(worker, _SNDMORE)
            for frame in frames[:-1]:
                router.send(frame, _SNDMORE, copy=protocol.is_small(frame))
            router.send(frames[-1], 0, copy=protocol.is_small(frames[-1]))
        except zmq.ZMQError as error:
            if error.errno != errno.EHOSTUNREACH:
                raise
            # ROUTER_MANDATORY: the peer has no connection any more, so it is gone.
            self._apply(
                self.scheduler.lost(
                    worker, time.monotonic(), clean=False, reason="its connection was gone"
                )
            )
        # A send may consume the descriptor's edge: if a message waits, read it soon.
        if _readable(router):
            self._schedule_read()

    def _start_launch(
        self, decision: scheduling.Launch, abandoned: list[tuple[str, list[int]]]
    ) -> None:
        settings = WorkerSettings(
            controller=self.address,
            launch=decision.launch,
            seconds_idle=self.network.seconds_idle,
            seconds_wall=self.network.seconds_wall,
            tasks_max=self.scheduler.settings.tasks_max,
            seconds_heartbeat=self.network.seconds_heartbeat,
            seconds_connect=self.scheduler.settings.seconds_launch,
            seconds_reconnect=self.network.seconds_reconnect,
            seconds_interrupt=self.scheduler.settings.seconds_interrupt,
            max_message_size=self.network.max_message_size,
            output_max=self.network.output_max,
            output_relay=int(self.network.output_relay),
            # A remote worker's output goes to a log of its own (CloudWatch, a SLURM file),
            # where it says where it connects and why it leaves; a local one's, here.
            announce=int(self.launcher.remote),
            ask_idle=int(self.scheduler.settings.workers_min > 0),
        )
        environment = settings.environment()
        if self._keys is not None:
            environment.update(self._keys.issue(decision.launch))
        if self.journal is not None:
            # Before the launch goes out: a restart must know its workers' key.
            public = environment.get("BATCHCREW_PUBLIC_KEY")
            self.journal.record(
                "launch",
                (
                    decision.launch,
                    decision.level,
                    len(decision.identities),
                    public,
                    None,
                    time.time(),
                ),
            )
        request = LaunchRequest(
            decision.launch,
            len(decision.identities),
            decision.level,
            WORKER_COMMAND,
            environment,
            self.controller,
            self.scheduler.instance,
        )
        self.tracker.launched(decision.launch, decision.level, decision.identities)
        logger.info(
            "launching %d worker(s) at level %d (launch %s)",
            request.count,
            request.level,
            request.launch,
        )
        self._background(self._launch, request, abandoned)
        self._notify()

    def _background(self, function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        # Decisions are carried out in loop callbacks too, where no task can be started: the
        # serving task starts the call on the loop's next turn.
        if self._launch_calls is None:
            return
        self._in_flight += 1
        self._pending_calls.append((function, args))
        self._calls_ready.set()

    async def _call(
        self, function: Callable[..., Coroutine[Any, Any, None]], args: tuple[Any, ...]
    ) -> None:
        try:
            await function(*args)
        finally:
            self._in_flight -= 1
            self._notify()

    async def _launch(self, request: LaunchRequest, abandoned: list[tuple[str, list[int]]]) -> None:
        # Workers written off are ended before their replacements go out, so a slow
        # backend never runs (and bills) both.
        await self._terminate(abandoned)
        try:
            await self.launcher.launch(request)
            if self.journal is not None:
                record = self.launcher.launch_record(request.launch)
                self.journal.record("record", (json.dumps(record), request.launch))
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            logger.error("launch %s failed: %s", request.launch, reason)
            self.tracker.launch_failed(request.launch, reason)
            self._apply(self.scheduler.launch_failed(request.launch, time.monotonic(), reason))

    async def _end_worker(self, identity: bytes, reason: str) -> None:
        launch, index = identity.decode().rsplit(":", 1)
        try:
            await self.launcher.end_worker(launch, int(index), f"batchcrew: {reason}")
        except Exception as error:
            why = f"{type(error).__name__}: {error}"
            logger.error("ending worker %s failed: %s", _name(identity), why)
            self.tracker.error(f"ending worker {_name(identity)}", why)

    async def _terminate(self, abandoned: list[tuple[str, list[int]]]) -> None:
        async def end(launch: str, indexes: list[int]) -> None:
            try:
                await self.launcher.terminate(launch, indexes)
            except Exception as error:
                logger.error("ending launch %s failed: %s: %s", launch, type(error).__name__, error)
                self.tracker.error(f"ending launch {launch}", f"{type(error).__name__}: {error}")

        async with anyio.create_task_group() as group:
            for launch, indexes in abandoned:
                group.start_soon(end, launch, indexes)

    # -- events in ----------------------------------------------------------------------------

    async def _watch_faults(self) -> None:
        # Messages are read in loop callbacks (one turn of the loop sooner than a task could):
        # a fault there must still fail the run, not vanish into the loop's log.
        assert self._fault is not None
        await self._fault

    def _on_signalled(self) -> None:
        """The socket's descriptor signalled: read what waits, unless a read is due anyway.
        Under a flood the descriptor signals again while a read that stopped at its bound has
        the rest scheduled: reading both in one turn of the loop would double that turn."""
        if not self._read_scheduled:
            self._on_readable()

    def _on_readable(self) -> None:
        """Read what waits (the descriptor signalled, or a read was scheduled)."""
        self._read_scheduled = False
        router = self._router
        if router is None:
            return
        try:
            self._drain(router)
            if self._side_ready:
                self._side_ready = False
                self._drain_side()
        except BaseException as error:
            if self._fault is not None and not self._fault.done():
                self._fault.set_exception(error)  # raised by _watch_faults, failing the run
            else:
                raise

    def _schedule_read(self) -> None:
        if not self._read_scheduled and self._loop is not None:
            self._read_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_side_readable(self) -> None:
        self._side_ready = True
        self._schedule_read()

    def _drain(self, router: zmq.Socket[bytes]) -> int:
        """Handle up to _BATCH messages (or _SECONDS_BATCH of them); what they make for workers
        goes out at the end."""
        handled = 0
        self._draining = True
        until = time.perf_counter() + _SECONDS_BATCH
        try:
            while handled < _BATCH and (handled < 8 or time.perf_counter() < until):
                try:
                    frame = router.recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    return handled  # read to the end: the descriptor signals the next one
                frames = [frame]
                while frame.more:
                    frame = router.recv(0, copy=False)
                    frames.append(frame)
                handled += 1
                self._on_frames(frames)
                # Asking whether another message waits costs less than the exception that
                # ends a read with nothing to read: ask while the batch is small (a lone
                # result), and under a flood read on until the end.
                if handled < _PEEKED and not _readable(router):
                    return handled
        finally:
            self._draining = False
            self._flush()
        self._schedule_read()  # stopped early: the rest on the loop's next turn
        return handled

    def _drain_side(self) -> None:
        """Answer authentication requests and read disconnects (after the messages before
        them: a worker's last frames come before its disconnect)."""
        if self._zap is not None:
            self._zap.serve()
        monitor = self._monitor
        while monitor is not None:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            self._on_disconnect(int(event["value"]))

    def _on_frames(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        if not self.scheduler.knows(identity):
            if identity.startswith(self._own_prefix):
                self._drop_late(identity, frames)
                return
            # Counted, and logged at WARNING only for the first few: a flood of foreign frames
            # neither fills the log nor grows any state.
            self.dropped += 1
            level = logging.WARNING if self.dropped <= _DROPS_LOGGED else logging.DEBUG
            logger.log(level, "dropped a message from unknown peer %r", identity[:64])
            return
        try:
            messages = protocol.decode_all([frame.buffer for frame in frames[1:]])
        except ProtocolError as error:
            if self.scheduler.awaits(identity):
                # A worker still being let in that cannot even say hello in this protocol.
                self._refuse(
                    identity,
                    f"its hello did not parse ({error}); it runs another batchcrew version, "
                    f"or is no batchcrew worker: build the worker image with batchcrew "
                    f"{__version__}",
                )
                return
            logger.warning("dropped a malformed message from worker %s: %s", _name(identity), error)
            return
        now = time.monotonic()
        for message in messages:
            if isinstance(message, protocol.Outcome):
                self._on_result(identity, message, now)
            elif isinstance(message, protocol.Hello):
                if message.holding is not None:
                    self._on_rejoin(identity, message, frames[1], now)
                else:
                    self._on_hello(identity, message, frames[1])
            elif isinstance(message, protocol.Ready):
                self._on_ready(identity, message, now)
            elif isinstance(message, protocol.Busy):
                self.scheduler.busy(identity, message.task_id, now)
                self.tracker.busy(identity, message)
            elif isinstance(message, protocol.Ran):
                self.calls.ran(identity, self.tracker.name(identity), message)
            elif isinstance(message, protocol.Idle):
                self._apply(self.scheduler.idle(identity))
            elif isinstance(message, protocol.Output):
                self.tracker.output(identity, message)
                if self._output is not None:
                    self._output(message)
            elif isinstance(message, protocol.Bye):
                # A SIGTERM while the controller closes is its own launcher ending workers.
                stopped = message.interrupted and not self.launcher.stopping
                log = logger.warning if message.end or stopped else logger.info
                log("worker %s left: %s", _name(identity), message.reason)
                self._forget_fd(identity)
                if not message.end and not message.interrupted:
                    # It exits by itself: its job ends as it does, with nothing to end. (One
                    # stopped from outside is still watched: its job's end says by whom.)
                    launch, index = identity.decode().rsplit(":", 1)
                    self.launcher.worker_left(launch, int(index))
                if message.interrupted:
                    # Stopped from outside (SIGTERM), it handed its task back: the task did
                    # not fail, so it runs again at once, counting an interruption.
                    decisions = self.scheduler.lost(
                        identity, now, clean=False, reason=message.reason, cause="infrastructure"
                    )
                else:
                    decisions = self.scheduler.lost(
                        identity, now, clean=True, reason=message.reason, end=message.end
                    )
                self._apply(decisions)
                self._notify()
            else:
                logger.warning(
                    "dropped a %s message from worker %s", type(message).__name__, identity
                )

    def _drop_late(self, identity: bytes, frames: list[zmq.Frame]) -> None:
        """A frame from a worker this controller launched and has written off: a result that
        was on its way when the worker was lost, or one sent once a cut link came back. Its
        task went back to the queue (or resolved) when the worker was written off, so the
        task may have run twice; it resolves once all the same. The worker is told to leave
        (it would otherwise wait for tasks that never come). Counted; the first few logged, a
        result at WARNING (its task may have run twice), another message at INFO."""
        self.late += 1
        try:
            kind, task, _ = protocol.decode_header(frames[1].buffer)
        except (IndexError, ProtocolError):
            kind, task = None, 0
        if kind is not protocol.Kind.BYE:
            self._send(identity, _LEAVE)
        level = logging.WARNING if self.late <= _DROPS_LOGGED else logging.DEBUG
        if kind is protocol.Kind.RESULT:
            what = (
                f"the result of task {task} from worker {_name(identity)}, written off earlier: "
                "that task was retried on another worker (or resolved without this result), "
                "so it may have run twice; it resolves once (execution is at-least-once, "
                "resolution exactly-once)"
            )
        else:
            # A goodbye, a hello: nothing ran twice for it.
            level = min(level, logging.INFO)
            what = f"a message from worker {_name(identity)}, written off earlier"
        logger.log(
            level,
            "dropped %s%s",
            what,
            f" (late message {_DROPS_LOGGED}: further ones are counted and logged at DEBUG)"
            if self.late == _DROPS_LOGGED
            else "",
        )

    def _on_hello(self, identity: bytes, hello: protocol.Hello, frame: zmq.Frame) -> None:
        if self._keys is not None and frame.get("User-Id") != self.scheduler.launch_of(identity):
            # ZAP named the launch whose key this connection holds: it must be the launch the
            # worker claims, so that one launch's key cannot pose as another launch's worker.
            logger.warning(
                "dropped a hello from %s: its key was issued to another launch", _name(identity)
            )
            return
        if not self.scheduler.greeted(identity):
            logger.warning("dropped a second hello from worker %s", _name(identity))
            return
        refusal = _version_refusal(hello)
        if refusal is not None:
            self._refuse(identity, refusal)
            return
        if (
            hello.cloudpickle != cloudpickle.__version__
            and hello.cloudpickle not in self._mismatches
        ):
            self._mismatches.add(hello.cloudpickle)
            logger.warning(
                "worker %s runs cloudpickle %s, this controller %s: tasks usually still travel, "
                "but pin the same version in the worker image to be sure",
                _name(identity),
                hello.cloudpickle,
                cloudpickle.__version__,
            )
        self._watch_fd(identity, frame, time.monotonic())
        self.tracker.hello(identity, hello)
        logger.info(
            "worker %s connected (pid %d on %s, Python %s)",
            _name(identity),
            hello.pid,
            hello.host,
            hello.python,
        )
        self._send(identity, self._setup)

    def _on_rejoin(
        self, identity: bytes, hello: protocol.Hello, frame: zmq.Frame, now: float
    ) -> None:
        """A worker of the earlier run of this controller's journal is back, with the tasks
        it holds: it goes on with them (their results are taken, not rerun), then with new
        ones."""
        assert hello.holding is not None
        if self._keys is not None and frame.get("User-Id") != self.scheduler.launch_of(identity):
            logger.warning(
                "dropped a hello from %s: its key was issued to another launch", _name(identity)
            )
            return
        decisions = self.scheduler.rejoined(identity, hello.holding, now)
        if decisions is None:
            logger.warning(
                "dropped a hello again from worker %s, not awaited back", _name(identity)
            )
            return
        self.rejoined += 1
        self._watch_fd(identity, frame, now)
        self.tracker.hello(identity, hello)
        logger.info(
            "worker %s of the earlier run is back (pid %d on %s), holding %d task(s)",
            _name(identity),
            hello.pid,
            hello.host,
            len(hello.holding),
        )
        if self.journal is not None:
            self._record_worker(identity, "connected")
        self._apply(decisions)
        self._notify()

    def _refuse(self, identity: bytes, reason: str) -> None:
        """Turn away a worker that cannot work with this controller: it counts as a failed
        launch (so a wrong image ends in LaunchError), and the launcher ends it."""
        logger.error("refused worker %s: %s", _name(identity), reason)
        self._send(identity, protocol.encode(protocol.Stop(reason)))
        self._forget_fd(identity)
        self._apply(
            self.scheduler.lost(identity, time.monotonic(), clean=False, reason=reason, end=True)
        )
        self._notify()

    def _on_ready(self, identity: bytes, ready: protocol.Ready, now: float) -> None:
        if ready.error is not None:
            reason = f"its initializer raised {ready.error}"
            failure = (ready.error, ready.trace)
            if failure not in self._setup_failures:
                # One traceback per distinct failure: every worker of every launch fails the
                # same way, and the LaunchError that follows names it again.
                self._setup_failures.add(failure)
                logger.error("worker %s: %s\n%s", _name(identity), reason, ready.trace or "")
            else:
                logger.info("worker %s: %s (the same error again)", _name(identity), reason)
            self._forget_fd(identity)
            self._apply(self.scheduler.lost(identity, now, clean=False, reason=reason))
            self._notify()
            return
        decisions = self.scheduler.connected_worker(identity, now)
        if decisions is None:
            logger.warning("dropped a ready from worker %s, which is not awaited", _name(identity))
            return
        logger.debug("worker %s is set up and ready", _name(identity))
        if self.journal is not None:
            self._record_worker(identity, "connected")
        later = self.calls.for_new_worker()
        if later:  # everywhere() calls made so far: set-up, before its first task
            self._send(identity, list(later))
        self._apply(decisions)
        self._notify()

    def _watch_fd(self, identity: bytes, frame: zmq.Frame, now: float) -> None:
        """Map the connection's descriptor to the worker, so that its disconnect is noticed."""
        fd = frame.get(zmq.SRCFD)
        previous = self._fds.get(fd)
        if previous is not None and previous != identity:
            # The descriptor was reused, so the previous worker's connection is gone and its
            # disconnect event, still on its way, must not be taken for this worker's.
            self._owed[fd] = self._owed.get(fd, 0) + 1
            self._apply(
                self.scheduler.lost(previous, now, clean=False, reason="its connection closed")
            )
        self._fds[fd] = identity

    def _on_result(self, identity: bytes, outcome: protocol.Outcome, now: float) -> None:
        decisions = self.scheduler.result(identity, outcome.task_id, outcome.seconds, now)
        if decisions is None:
            logger.warning(
                "dropped a result for task %d from worker %s, which was not running it",
                outcome.task_id,
                _name(identity),
            )
            return
        worker = self.tracker.outcome(identity, outcome)
        for decision in decisions:
            if isinstance(decision, scheduling.Complete):
                self._resolve(
                    Resolution(
                        decision.task,
                        outcome.status,
                        outcome,
                        None,
                        worker,
                        decision.crashes,
                        decision.interruptions,
                    )
                )
            else:
                self._apply((decision,))

    def _on_disconnect(self, fd: int) -> None:
        owed = self._owed.get(fd, 0)
        if owed:
            self._owed[fd] = owed - 1
            return
        identity = self._fds.pop(fd, None)
        if identity is None or not self.scheduler.knows(identity):
            return
        # Its last frames (a result, a goodbye) reached the socket before its disconnect was
        # signalled, but may not have been read yet: read them first.
        if self._router is not None:
            self._drain(self._router)
        if not self.scheduler.knows(identity):
            return
        wait = self.launcher.seconds_cause if self.launcher.remote else _SECONDS_EXIT_REPORT
        if wait <= 0 or self._loop is None:
            self._disconnected(identity)
            return
        # A local worker's connection closes as its process ends, a moment before the launcher
        # reaps it and reports its exit code or signal; a remote one's job says why it ended
        # (a reclaimed host, an out-of-memory kill) once its launcher looks. Wait that long,
        # bounded, so that the loss is blamed where it belongs: the task, or the
        # infrastructure. Meanwhile the worker gets no task.
        self.scheduler.cut(identity)
        if self.launcher.remote:
            launch, index = identity.decode().rsplit(":", 1)
            self.launcher.worker_lost(launch, int(index))
        self._loop.call_later(wait, self._exit_report_late, identity)

    def _exit_report_late(self, identity: bytes) -> None:
        # Still known: no exit report came in time (a frozen process, a worker that closed
        # its socket and lingers). Written off as a lost connection, unless the run is over.
        if self._router is not None and self.scheduler.knows(identity):
            self._disconnected(identity)

    def _disconnected(self, identity: bytes) -> None:
        logger.warning("worker %s disconnected", _name(identity))
        reason = "its connection closed (its process or machine died, or the network failed)"
        self._apply(self.scheduler.lost(identity, time.monotonic(), clean=False, reason=reason))
        self._notify()
        if self.launcher.remote and self._loop is not None:
            # Cut off by the network, it leaves by itself within about a heartbeat; hung (its
            # machine stalled, its process stopped), it never would, and its job would bill
            # on. Unless its exit is reported by then, the launcher ends it.
            self._lingering[identity] = self._loop.call_later(
                _HEARTBEATS_LINGER * self.network.seconds_heartbeat, self._end_lingering, identity
            )

    def _end_lingering(self, identity: bytes) -> None:
        if self._lingering.pop(identity, None) is not None and self._router is not None:
            beats = f"{_HEARTBEATS_LINGER} x seconds_heartbeat"
            reason = f"written off, and not gone {beats} later (hung, or cut off)"
            logger.warning("ending worker %s: %s", _name(identity), reason)
            self._background(self._end_worker, identity, reason)

    def _forget_fd(self, identity: bytes) -> None:
        for fd, owner in list(self._fds.items()):
            if owner == identity:
                del self._fds[fd]

    def _on_report(self, report: WorkerExit | WorkerPending) -> None:
        if isinstance(report, WorkerPending):
            self._on_pending(report)
        else:
            self._on_exit(report)

    def _on_pending(self, pending: WorkerPending) -> None:
        identity = f"{pending.launch}:{pending.index}".encode()
        if pending.running:
            note = self.launcher.explain_unreachable(self.address)
        else:
            note = pending.reason
        self.scheduler.pending(identity, note, running=pending.running)

    def _on_exit(self, exit: WorkerExit) -> None:
        identity = f"{exit.launch}:{exit.index}".encode()
        lingering = self._lingering.pop(identity, None)
        if lingering is not None:
            lingering.cancel()  # written off, and gone now: nothing to end
        if not self.scheduler.knows(identity):
            # Gone already (it said goodbye, or was written off): the launcher says now why
            # its job ended (a reclaimed host, say), which the workers table shows.
            if exit.cause == "infrastructure":
                self.tracker.explain(identity, exit.reason)
            return
        # Its last frames (a result, a goodbye) may still wait in the socket: read them first.
        if self._router is not None:
            self._drain(self._router)
            self._drain_side()
        if not self.scheduler.knows(identity):
            return
        logger.warning("worker %s ended: %s", _name(identity), exit.reason)
        self._forget_fd(identity)
        now = time.monotonic()
        self._apply(
            self.scheduler.lost(
                identity,
                now,
                clean=exit.code == 0,
                reason=exit.reason,
                cause=exit.cause or "task",
            )
        )
        self._notify()

    async def _clock(self) -> None:
        while True:
            changed = self._changed
            deadline = self.scheduler.next_deadline()
            self._clock_at = math.inf if deadline is None else deadline
            delay = self._clock_at - time.monotonic()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await changed.wait()
                    continue
            self._clock_at = -math.inf  # ticking now: alarms raised meanwhile need no wake-up
            self._apply(self.scheduler.tick(time.monotonic()))


_STAY = protocol.encode(protocol.Stay())

_LEAVE = protocol.encode(
    protocol.Stop("this worker was written off earlier (lost too long): its tasks went elsewhere")
)


#: Docker's default bridge network: an address in it belongs to a container (or to the
#: machine's side of the bridge), which machines outside that Docker host cannot reach.
_DOCKER_BRIDGE = ipaddress.ip_network("172.17.0.0/16")


def unlikely_reachable(host: str) -> str | None:
    """Why workers on other machines will probably not reach a controller listening on
    `host`, or None when nothing says so: a link-local address (169.254.0.0/16, fe80::/10)
    is only good on its own link, and one of Docker's default bridge is a container's."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None  # a name: where it points is not known here
    if address.is_link_local:
        return "a link-local address, reachable only from its own network link"
    if address.version == 4 and address in _DOCKER_BRIDGE:
        return (
            "an address of Docker's default bridge network (a container's), which machines "
            "outside this Docker host do not reach"
        )
    return None


def _version_refusal(hello: protocol.Hello) -> str | None:
    """Why a worker with these versions cannot run this controller's tasks, if it cannot:
    pickled code is only sure to load on the same Python minor version and batchcrew."""
    python = ".".join(platform.python_version_tuple()[:2])
    theirs = ".".join(hello.python.split(".")[:2])
    if theirs == python and hello.batchcrew == __version__:
        return None
    return (
        f"the worker runs Python {hello.python} with batchcrew {hello.batchcrew}, but this "
        f"controller runs Python {platform.python_version()} with batchcrew {__version__}: "
        f"build the worker image (or environment) with Python {python} and batchcrew "
        f"{__version__}"
    )


def _option(sock: zmq.Socket[bytes], option: int) -> int:
    return cast(int, sock.getsockopt(option))


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message waits (asking also rearms the socket's descriptor)."""
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


def _index(identity: bytes) -> int:
    return int(identity.rsplit(b":", 1)[1])


def _name(identity: bytes) -> str:
    return identity.decode(errors="replace")
