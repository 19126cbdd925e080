"""The controller: the object users hold. It pushes tasks, and hands back results and tables.

Its life is `async with` (or `await start()` ... `await aclose()`); underneath, one runner task
owns a task group with the dispatcher, the launcher and every background call, so closing by
any path (an exception, a cancellation, a FastAPI shutdown) ends every worker it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import pickle
import socket
import sys
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import polars as pl

from batchcrew import protocol, retrying, scheduling, seeding
from batchcrew.dispatcher import Dispatcher, Network, Resolution, Resume
from batchcrew.errors import (
    BatchcrewError,
    ControllerClosedError,
    JournalError,
    LaunchError,
    SerializationError,
    TaskError,
    TaskTooLargeError,
)
from batchcrew.journal import JournalWriter, Stored
from batchcrew.launchers.base import Launcher
from batchcrew.launchers.inprocess import InProcessLauncher
from batchcrew.launchers.local import LocalLauncher
from batchcrew.output import Relay
from batchcrew.progress import progress_bar
from batchcrew.results import ErrorMode, Result, Status, handle_failures, results_frame
from batchcrew.retrying import Attempts, Jitter, RetryOn
from batchcrew.tracing import Spans
from batchcrew.tracking import Timeline, Tracker
from batchcrew.walking import Budget, Walk
from batchcrew.worker import _describe  # `Type: message` that never raises, as the worker's

logger = logging.getLogger("batchcrew")

_ERROR_MODES = ("raise", "warn", "ignore")
_FUNCTIONS_CACHED = 64  # pickled functions kept by each controller, for those pushed again
_FAILURES_KEPT = 50  # recent failed results, for the dashboard

_Arguments = tuple[bytes, tuple[memoryview, ...]]
"""A task's pickled arguments and their out-of-band buffers (only when it has some)."""

_Fields = tuple[
    Any, Status, str | None, str | None, tuple[str, ...], float | None, str | None, str, str,
    int | None, int, int, str, BaseException | None,
]  # fmt: skip
"""A resolved task's `Result` until someone asks for it: the fields after `name`, in order.
A plain tuple of plain values (numbers, text, None) drops out of the garbage collector's sight,
so a million held results do not lengthen its pauses; the `Result`, and a generated name, are
made only when asked for."""


@dataclass(slots=True)
class _Batch:
    """What the tasks of one `push`, `walk` or `map` share: one copy for all of them."""

    controller: Controller
    function: bytes  # pickled
    timeout: float | None
    seed: int | None  # push(seed=): this task's own; else derived from the controller's
    retries: int = 0  # attempts after the first, for errors that retry_on matches
    retry_on: bytes | None = None  # pickled, for the workers (with retries only)
    pushed: float = field(default_factory=time.time)


class Task:
    """A pushed task. `await task` returns its `Result` and takes it off the controller.

    The task belongs to its controller, not to the coroutine awaiting it: if that coroutine is
    cancelled, the task runs on (cancel it with `cancel()`).
    """

    # Kept small: a million queued tasks are a million of these. The name of an unnamed task,
    # the future and the pickled arguments exist only while needed.
    __slots__ = ("_batch", "_future", "_name", "_payload", "_result", "_watch", "id")

    def __init__(
        self, batch: _Batch, task_id: int, name: str | None, payload: bytes | _Arguments
    ) -> None:
        self._batch = batch
        self._future: asyncio.Future[Result] | None = None
        self._result: Result | _Fields | None = None
        self._watch: _Watch | None = None
        self._payload: bytes | _Arguments | None = payload
        self._name = name
        self.id = task_id

    @property
    def name(self) -> str:
        """The task's name: given at push, or generated ("task-<id>")."""
        return f"task-{self.id}" if self._name is None else self._name

    def done(self) -> bool:
        """Whether the task has resolved."""
        return self._result is not None

    def cancel(self) -> bool:
        """Cancel the task: it resolves "cancel" at once, and if a worker is running it, the
        worker interrupts it; one waiting to be retried is not. Returns False if it had
        already resolved."""
        return self._batch.controller._cancel_ids([self.id]) == 1

    def running(self) -> bool:
        """Whether a worker holds the task now: running it, or about to (the next in its
        pipeline). False while it is queued, waits to be retried, and once it has resolved."""
        if self._result is not None:
            return False
        controller = self._batch.controller
        handed = controller._handed.get(self.id)
        if handed is not None:  # its copy runs on a backup
            holder, copy = handed
            task = holder._tasks.get(copy)
            return task is not None and task.running()
        dispatcher = controller._dispatcher
        return dispatcher is not None and dispatcher.scheduler.held(self.id)

    def __await__(self) -> Generator[Any, None, Result]:
        return self._wait().__await__()

    async def _wait(self) -> Result:
        controller = self._batch.controller
        if self._result is None:
            controller._raise_if_broken()
            future = self._future
            if future is None or future.done():  # first waiter, or an earlier one cancelled
                # The controller's own loop: asyncio.get_running_loop() makes a system call.
                loop = controller._loop
                assert loop is not None  # a task exists only once its controller started
                future = self._future = loop.create_future()
            # Awaited directly, the future wakes this task in one turn of the loop; a
            # cancelled waiter cancels only this future, which the next waiter replaces.
            await future
        return controller._take(self)

    def peek(self) -> Result | None:
        """The task's result if it has resolved (without taking it), else None."""
        return None if self._result is None else self._resolved_result()

    def _resolved_result(self) -> Result:
        held = self._result
        assert held is not None
        if isinstance(held, Result):
            return held
        result = self._result = Result(self.name, *held)
        return result

    def _resolve(self, fields: _Fields) -> None:
        self._result = fields
        self._payload = None
        future = self._future
        if future is not None and not future.done():
            future.set_result(self._resolved_result())
        if self._watch is not None:
            self._watch.resolved(self._resolved_result())  # a map takes every result anyway

    def _fail(self, error: BaseException) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # nobody may be waiting: do not log it as unretrieved
        if self._watch is not None:
            self._watch.fail(error)

    def __repr__(self) -> str:
        state = "resolved" if self._result is not None else "unresolved"
        return f"<Task {self.name!r} {state}>"


class _Signal:
    """Coroutines waiting for something to happen. Telling them costs nothing when none waits,
    so a million resolutions with nobody waiting cost a million checks, not wake-ups."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)


class _Watch:
    """What a `map` waits on: one future for all its tasks, done when its walk has pushed
    them all and every one has resolved, at the first failure when the map stops early, or
    when its walk fails."""

    __slots__ = ("_fed", "_future", "_remaining", "_stop_early", "failure")

    def __init__(self, *, stop_early: bool) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._remaining = 0
        self._fed = False
        self._stop_early = stop_early
        self.failure: Result | None = None

    def add(self, tasks: list[Task]) -> None:
        """Tasks the map's walk pushed."""
        self._remaining += len(tasks)
        for task in tasks:
            task._watch = self
            if task._result is not None:
                self.resolved(task._resolved_result())

    def fed(self, error: BaseException | None) -> None:
        """The map's walk stopped taking: exhausted, or on `error`."""
        if error is not None:
            self.fail(error)
            return
        self._fed = True
        if not self._remaining:
            self._done()

    def resolved(self, result: Result) -> None:
        self._remaining -= 1
        if result.status != "success" and self.failure is None:
            self.failure = result
            if self._stop_early:
                self._done()
        if not self._remaining and self._fed:
            self._done()

    def fail(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)

    def _done(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future


LARGE_TASK = 10 << 20
"""A task pickled larger than this (bytes) is warned about, once per controller."""


class Controller:
    """Pushes Python tasks to auto-scaled workers and collects their results.

    Use it as `async with Controller(...) as controller:`, or call `await start()` and
    `await aclose()`. Options keep crew's meanings: `workers` (most at once), `seconds_idle`
    (a worker exits when idle this long), `seconds_wall` (a worker exits after this long),
    `tasks_max` (a worker exits after this many tasks), `seconds_launch` (a launched worker
    that has not connected by then counts as failed), `crashes_max` (retries of a task whose
    worker died by the task's doing: its process exited, or ran out of memory; each retry
    goes one level up the launcher's `levels`). `interruptions_max` is the separate budget of
    reruns after losses that are the infrastructure's doing (a Spot host reclaimed, a job
    stopped from outside, a worker stopped by SIGTERM): rerun at once, at the same level,
    without counting as crashes. `seconds_timeout` is the default time limit of a task on its
    worker (None: no limit; `push`, `walk` and `map` can set their own), and
    `seconds_interrupt` how long a task has to stop once it is cancelled or timed out before
    its worker is ended. `workers_min` (default 0) is a floor of warm workers: that many are
    launched at start, relaunched when lost, and kept past `seconds_idle` (a worker idle that
    long asks the controller, which lets it go only while more than `workers_min` remain).

    `seconds_wall` and `seconds_timeout` bound cost in two ways. `seconds_wall` is soft (crew's
    meaning): a worker past it takes no new task and leaves once its current task ends, so a
    hanging task keeps it. `seconds_timeout` is hard: a task past it is interrupted, resolves
    "error" (`TimeoutError`), and is not retried. Set both to cap what a worker can cost.

    `retries` is how many more attempts a task that raises gets (default 0: none), for the
    errors that `retry_on` matches: an exception type, a tuple of them, or a predicate of the
    exception (default `Exception`), applied on the worker to the exception itself; `push`,
    `walk` and `map` can set their own. Between attempts the task waits on the controller,
    holding no worker: before retry n, a random time up to `seconds_retry * 2 ** (n - 1)`,
    at most `seconds_retry_max` (with `retry_jitter="none"`, that time exactly). A cancelled
    or timed-out task is never retried; a dead worker's task is rerun under `crashes_max`,
    as the same attempt. See `bc.task_attempt()` and `Result.attempts`.

    `launcher` defaults to `LocalLauncher()`. `host` and `port` are where workers
    connect (port 0: any free port). `address` ("HOST:PORT") is where workers dial instead,
    when that is not where the controller listens: the far end of an SSH reverse tunnel
    (`ssh -R 0.0.0.0:PORT:localhost:PORT bastion`, with `host="127.0.0.1", port=PORT,
    address="bastion.internal:PORT"`), or a NAT's forwarded port. `security="curve"`
    encrypts and authenticates every worker connection; `seconds_heartbeat` bounds how long a
    worker outlives a lost controller and how long a silent connection counts as alive.
    `max_message_size` (bytes) bounds a task's pickled size and a result's.

    A task's output (what it writes to stdout and stderr, a subprocess's included) comes back
    in `Result.output`, its first and last `output_max / 2` bytes if it wrote more than
    `output_max` (default 1 MiB; 0 keeps none); it is also copied to its worker's own log.
    `output_relay=True` has workers send a running task's output as it comes (every 0.2 s),
    written to this process's stderr line by line after the task's name (`[task-3] ...`).
    `memory_max` (bytes; default None: no bound) bounds what the controller holds for its
    unresolved tasks: their pickled arguments (out-of-band buffers included) and about 300
    bytes of bookkeeping each, so that it bounds the controller's memory for many tiny tasks
    too. `walk` and `map` take their next item only while the controller holds less, and
    otherwise wait until tasks resolve; `push` counts toward it but never waits and is never
    refused. The bound can be passed by the last task a walk took (a task larger than
    `memory_max` still goes, once the held bytes fall under it: nothing waits for ever).
    Resolved tasks no longer count: their results are held until taken, and a walk keeps its
    tasks unless `keep=False`.

    The workers' environment: `initializer(*initargs)` runs once on each worker before its
    first task (as in `ProcessPoolExecutor`); if it raises, the worker counts as a failed
    launch. `modules` (your own modules or packages) travel by value with every task, for
    workers where they are not installed. `seed` gives every task its own reproducible random
    seed, derived from `seed` and the task's name: see `bc.task_seed()`. Workers must run the
    controller's Python minor version and batchcrew version; others are refused as failed
    launches.

    `backup`: another controller (of the same `ControllerGroup`) where a task that crashed
    `crashes_max` times here, or lost its workers `interruptions_max` times (a backup on an
    on-demand queue for a controller on Spot), goes on, its result coming back through the
    original task.
    `timeline_max`: how many resolved tasks `timeline()` remembers. `tracer_provider`: the
    OpenTelemetry provider of the tasks' spans (default: the global one, if configured).

    `journal` (a file path) makes the run durable: every task pushed, every result, and where
    the workers are go into that SQLite file as they happen (off the dispatch path). A
    controller started on an existing journal, under the same name, resumes its run: the
    results are there again (`task(name)`, `pop`, `collect`, `results()`); the tasks not
    resolved are queued again under their names; pushing a name that succeeded before
    returns its stored result without running it (`forget(name)` runs it again). It listens
    at the journal's address with its keys, so that the earlier run's workers, which keep
    their running task and wait `seconds_reconnect` (default 300 s with a journal; without
    one, a worker exits once its controller is gone for `seconds_heartbeat`), come back with
    their results and take new work; those that do not come back in time are ended, and
    their tasks run again. A journal serves one live controller at a time (`JournalError`).
    See docs/durable.md.
    """

    def __init__(
        self,
        name: str = "controller",
        workers: int = 1,
        *,
        workers_min: int = 0,
        launcher: Launcher | None = None,
        host: str | None = None,
        port: int = 0,
        address: str | None = None,
        seconds_idle: float = 60.0,
        seconds_wall: float = math.inf,
        tasks_max: float = math.inf,
        seconds_launch: float = 60.0,
        crashes_max: int = 5,
        interruptions_max: int = 5,
        launch_failures_max: int = 5,
        seconds_timeout: float | None = None,
        seconds_interrupt: float = 5.0,
        retries: int = 0,
        retry_on: RetryOn | None = None,
        seconds_retry: float = 1.0,
        seconds_retry_max: float = 60.0,
        retry_jitter: Jitter = "full",
        security: Literal["curve", "none"] = "curve",
        seconds_heartbeat: float = 10.0,
        max_message_size: int = 1 << 30,
        output_max: int = 1 << 20,
        output_relay: bool = False,
        memory_max: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        modules: Iterable[ModuleType] = (),
        seed: int | None = None,
        backup: Controller | None = None,
        timeline_max: int = 10_000,
        tracer_provider: Any = None,
        journal: str | os.PathLike[str] | None = None,
        seconds_reconnect: float | None = None,
    ) -> None:
        _check_name("name", name)
        _check_count("workers", workers, minimum=1)
        _check_count("workers_min", workers_min, minimum=0)
        if workers_min > workers:
            raise ValueError(
                f"workers_min={workers_min} is more than workers={workers}: the controller "
                "keeps at most `workers` workers; raise workers or lower workers_min"
            )
        _check_seconds("seconds_idle", seconds_idle)
        _check_seconds("seconds_wall", seconds_wall)
        _check_seconds("seconds_launch", seconds_launch)
        _check_seconds("seconds_heartbeat", seconds_heartbeat)
        _check_seconds("seconds_interrupt", seconds_interrupt)
        _check_timeout(seconds_timeout)
        if journal is not None and not isinstance(journal, (str, os.PathLike)):
            raise TypeError(f"journal must be a file path, not {type(journal).__name__}")
        if seconds_reconnect is None:
            seconds_reconnect = _SECONDS_RECONNECT if journal is not None else 0.0
        else:
            _check_seconds("seconds_reconnect", seconds_reconnect)
        if not (tasks_max == math.inf or (isinstance(tasks_max, int) and tasks_max >= 1)):
            raise ValueError(
                f"tasks_max must be a whole number >= 1 or math.inf, not {tasks_max!r}"
            )
        _check_count("crashes_max", crashes_max, minimum=0)
        _check_count("interruptions_max", interruptions_max, minimum=0)
        _check_count("launch_failures_max", launch_failures_max, minimum=1)
        _check_count("port", port, minimum=0)
        if port > 65535:
            raise ValueError(f"port must be between 0 and 65535, not {port}")
        dialled = None if address is None else _check_address(address, port)
        if security not in ("curve", "none"):
            raise ValueError(f'security must be "curve" or "none", not {security!r}')
        _check_count("max_message_size", max_message_size, minimum=1)
        _check_count("output_max", output_max, minimum=0)
        if not isinstance(output_relay, bool):
            raise TypeError(f"output_relay must be True or False, not {output_relay!r}")
        _check_count("timeline_max", timeline_max, minimum=0)
        _check_memory_max(memory_max)
        if seed is not None:
            _check_seed(seed)
        self._retries = retrying.check_retries(retries)
        self._attempts = Attempts(
            retrying.check_backoff(seconds_retry, seconds_retry_max, retry_jitter)
        )
        self._seed = seed
        self._modules = _check_modules(modules)
        with protocol.pickling_by_value(self._modules):
            # The policy of pushes that give retries and no retry_on of their own.
            self._retry_on = retrying.dump_retry_on(Exception if retry_on is None else retry_on)
        self._setup = self._pickle_setup(initializer, initargs)
        self._backup: Controller | None = None
        # Tasks of this controller that crashed crashes_max times here and now run on a backup
        # (by id: the backup holding them, and its copy's id); copies this controller runs for
        # another (by the copy's id: the original task, and where it crashed before).
        self._handed: dict[int, tuple[Controller, int]] = {}
        self._adopted: dict[int, tuple[Task, tuple[str, ...]]] = {}
        self.name = name
        self.launcher = launcher if launcher is not None else LocalLauncher()
        if not isinstance(self.launcher, Launcher):
            raise TypeError(f"launcher must be a batchcrew Launcher, not {type(launcher).__name__}")
        if isinstance(self.launcher, InProcessLauncher) and workers != 1:
            raise ValueError(
                f"workers={workers} with the InProcessLauncher, which runs one task at a time "
                "in this process: use workers=1 (or LocalLauncher for parallel workers)"
            )
        if host is None:
            host = _primary_address() if self.launcher.remote else "127.0.0.1"
        if security == "none" and not _is_loopback(host):
            warnings.warn(
                f'security="none" on {host}: anyone who can reach this port can take tasks and '
                'send results; use security="curve" unless the network is yours alone',
                stacklevel=2,
            )
        if not self.launcher.remote and (security == "curve" or _is_loopback(host)):
            # Local workers take this process's multiprocessing key, as its own children
            # would, so that a Manager's proxies connect back from tasks; it travels only
            # encrypted, or over loopback.
            authkey = bytes(multiprocessing.current_process().authkey)
            self._setup = dataclasses.replace(self._setup, authkey=authkey)
        self._settings = scheduling.Settings(
            workers=workers,
            workers_min=workers_min,
            tasks_max=tasks_max,
            seconds_launch=seconds_launch,
            crashes_max=crashes_max,
            interruptions_max=interruptions_max,
            levels=self.launcher.levels,
            launch_failures_max=launch_failures_max,
            seconds_interrupt=seconds_interrupt,
        )
        self._seconds_timeout = seconds_timeout
        self._network = Network(
            host,
            port,
            security,
            seconds_idle,
            seconds_wall,
            seconds_heartbeat,
            max_message_size,
            dialled,
            output_max=output_max,
            output_relay=output_relay,
            seconds_reconnect=seconds_reconnect,
        )
        self._journal_path = None if journal is None else os.fspath(journal)
        self._journal: JournalWriter | None = None
        self._succeeded: set[str] = set()  # names whose success the journal holds
        self._restored: set[str] = set()  # names the journal left unresolved or failed
        self._journal_functions: OrderedDict[bytes, int] = OrderedDict()
        self._function_ids = itertools.count(1)
        self._journal_cancels = True  # a cancel is journaled (not those of the close)
        self._relay = Relay() if output_relay else None
        self._dispatcher: Dispatcher | None = None
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: Literal["new", "running", "closed"] = "new"
        self._error: BaseException | None = None
        self._ids = itertools.count(1)
        self._tasks: dict[int, Task] = {}  # unresolved
        self._resolved: OrderedDict[int, Task] = OrderedDict()  # resolved, not yet taken
        # Tasks named at push, unresolved or not yet taken, the newest by name. Unnamed tasks
        # are found by the id in their generated name, so a million of them need no entry.
        self._named: dict[str, Task] = {}
        self._resolutions = _Signal()  # a task resolved
        self._settled = _Signal()  # nothing is left unresolved
        self._counts = dict.fromkeys(("tasks", "success", "error", "crash", "cancel", "warning"), 0)
        self._seconds = 0.0
        self._warned_large = False  # tasks over LARGE_TASK bytes were warned about
        self._started_at: float | None = None  # time.monotonic() at start
        # Pickled functions, with what each was pickled from (see _pickled_function).
        self._functions: dict[Callable[..., Any], tuple[tuple[Any, ...], bytes]] = {}
        self._timeline = Timeline(timeline_max)
        self._tracer_provider = tracer_provider
        self._spans: Spans | None = None  # OpenTelemetry, when installed and configured
        self._traces: dict[int, dict[str, str]] = {}  # unresolved tasks' trace contexts
        self._failures: deque[Result] = deque(maxlen=_FAILURES_KEPT)
        self._group: anyio.abc.TaskGroup | None = None  # the runner's, once started
        self._budget = None if memory_max is None else Budget(memory_max)
        self._feeding: set[Walk] = set()  # walks still taking from their iterables
        self.backup = backup

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen for workers and start the launcher. Workers launch when tasks arrive (and at
        once, `workers_min` of them)."""
        if self._state != "new":
            raise ControllerClosedError(
                f"controller {self.name!r} was already started; make a new Controller"
            )
        stored = self._open_journal()
        self._state = "running"
        self._started_at = time.monotonic()
        self._dispatcher = Dispatcher(
            self._network,
            self._settings,
            self.launcher,
            self._on_resolved,
            self._on_broken,
            self._payload,
            self.name,
            self._setup,
            None if self._relay is None else self._on_output,
        )
        self._loop = asyncio.get_running_loop()
        if stored is not None:
            self._dispatcher.journal = self._journal
            self._dispatcher.resume = self._restore(stored)
        self._spans = Spans.for_provider(self._tracer_provider)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._runner = asyncio.create_task(self._run(ready), name=f"batchcrew-{self.name}")
        try:
            await asyncio.shield(ready)
        except BaseException as error:
            await self.aclose()
            # The serving task group wraps what failed: raise the launcher's or socket's own
            # error (a port in use, a launcher that cannot open), not a group of one.
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            raise error from None
        if self._journal is not None:
            keys = self._dispatcher._keys
            self._journal.start(
                {
                    "name": self.name,
                    "address": self._dispatcher.address,
                    "instance": self._dispatcher.scheduler.instance,
                    "server_public": None if keys is None else keys.server_public.decode(),
                    "server_secret": None if keys is None else keys.server_secret.decode(),
                }
            )
        logger.info("controller %s listening at %s", self.name, self._dispatcher.address)

    def _open_journal(self) -> Stored | None:
        """Open the journal (locked to this controller) and read what an earlier run left."""
        if self._journal_path is None:
            return None
        journal = JournalWriter(self._journal_path)
        try:
            stored = journal.load()
            owner = stored.meta.get("name")
            if owner is not None and owner != self.name:
                raise JournalError(
                    f"journal {self._journal_path} is controller {owner!r}'s, not "
                    f"{self.name!r}'s: open it with Controller({owner!r}, journal=...), or give "
                    "this controller another journal"
                )
        except BaseException:
            journal.close()
            raise
        self._journal = journal
        return stored

    def _restore(self, stored: Stored) -> Resume:
        """Take up the journal's run: its results held again, its unresolved tasks made again
        (queued, or reserved for the worker that held them), under their ids and names."""
        restored = _Batch(self, b"", None, None)
        for row in stored.results:
            task = Task(restored, row[0], row[1], b"")
            task._payload = None
            task._result = _stored_fields(row)
            self._resolved[task.id] = task
            if task._name is not None:
                self._named[task._name] = task
                if task._result[1] == "success":
                    self._succeeded.add(task._name)
                else:
                    self._restored.add(task._name)
            self._counts["tasks"] += 1
            self._counts[task._result[1]] += 1
        batches: dict[tuple[Any, ...], _Batch] = {}
        by_worker: dict[str, list[tuple[int, float | None]]] = {}
        queued: dict[float | None, list[int]] = {}
        connected = {
            f"{launch.id}:{index}" for launch in stored.launches for index in launch.connected
        }
        for stored_task in stored.tasks:
            key = (
                stored_task.function, stored_task.timeout, stored_task.seed, stored_task.retries,
                stored_task.retry_on,
            )  # fmt: skip
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = _Batch(self, *key, pushed=stored_task.pushed)
            payload: bytes | _Arguments = stored_task.arguments
            if stored_task.buffers is not None:
                buffers = tuple(memoryview(part) for part in pickle.loads(stored_task.buffers))
                payload = (stored_task.arguments, buffers)
            task = Task(batch, stored_task.id, stored_task.name, payload)
            self._tasks[task.id] = task
            if task._name is not None:
                self._named[task._name] = task
                self._restored.add(task._name)
            self._counts["tasks"] += 1
            if self._budget is not None:
                self._budget.charge(payload)
            if stored_task.worker in connected:
                by_worker.setdefault(stored_task.worker, []).append((task.id, batch.timeout))
            else:
                queued.setdefault(batch.timeout, []).append(task.id)
        self._ids = itertools.count(stored.last_id + 1)
        self._function_ids = itertools.count(stored.last_function + 1)
        meta = stored.meta
        keys = None
        if meta.get("server_public") and meta.get("server_secret"):
            keys = (meta["server_public"].encode(), meta["server_secret"].encode())
        address = meta.get("address") or ""
        port = 0
        if address and self._network.port == 0:
            port = int(address.rpartition(":")[2])
        if not (stored.results or stored.tasks or stored.launches):
            return Resume(keys, port, address, [], {}, [], self._network.seconds_reconnect)
        logger.info(
            "controller %s resumes journal %s: %d result(s), %d task(s) to run, %d launch(es) "
            "of its earlier run awaited back",
            self.name,
            self._journal_path,
            len(stored.results),
            len(stored.tasks),
            len(stored.launches),
        )
        return Resume(
            keys,
            port,
            address,
            stored.launches,
            by_worker,
            [(ids, timeout) for timeout, ids in queued.items()],
            self._network.seconds_reconnect,
        )

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._dispatch, group)
                self._group = group
                ready.set_result(None)
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
            elif not isinstance(error, asyncio.CancelledError):
                logger.exception("controller %s stopped on an error", self.name)
                self._error = error
            raise
        finally:
            self._stop()

    async def _dispatch(
        self, group: anyio.abc.TaskGroup, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Run the dispatcher; once it has stopped, what else runs in the controller's task
        group (a dashboard) stops too. (If it fails, the group is cancelled by the error; and
        before it has started, nothing else runs there.)"""
        dispatcher = self._dispatcher
        assert dispatcher is not None
        await dispatcher.run(task_status=task_status)
        group.cancel_scope.cancel()

    async def aclose(self, seconds_grace: float = 5.0, *, detach: bool = False) -> None:
        """Stop every worker and resolve every unresolved task as "cancel". Idempotent.

        Running tasks are interrupted, and workers get `seconds_grace` to exit; the launcher
        ends those still running. It finishes even when the calling task is being cancelled.

        `detach=True` (with a journal only) leaves the workers running instead, with their
        tasks and results: they wait `seconds_reconnect` for a controller resumed on the
        journal (a redeploy's next process, at the same address), which takes them back; if
        none comes, they leave by themselves then. Tasks resolve "cancel" here, and stay
        unresolved in the journal.
        """
        if detach and self._journal_path is None:
            raise ValueError(
                f"controller {self.name!r} has no journal: detach=True leaves workers for a "
                "controller resumed on its journal; give it journal=PATH, or close without detach"
            )
        if self._state == "closed":
            return
        self._state = "closed"
        # Tasks the close cancels stay unresolved in the journal: a resumed run runs them.
        self._journal_cancels = False
        for task_id in self._attempts.stop_all():
            # Waiting to be retried: no attempt follows, and nothing runs to interrupt.
            self._on_resolved(Resolution(task_id, "cancel", None, "the controller closed", None))
        runner, dispatcher = self._runner, self._dispatcher
        with anyio.CancelScope(shield=True):
            if runner is not None and dispatcher is not None and not runner.done():
                if detach:
                    await dispatcher.detach()
                else:
                    await dispatcher.close(seconds_grace)
                with anyio.move_on_after(seconds_grace + 30):
                    await asyncio.wait([runner])
                if not runner.done():
                    runner.cancel()
                    await asyncio.wait([runner])
            if runner is not None and runner.done() and not runner.cancelled():
                error = runner.exception()
                if error is not None and self._error is None:
                    self._error = error
        for holder, copy in list(self._handed.values()):
            holder._cancel_ids([copy])  # tasks of this controller running on its backups
        for task in list(self._tasks.values()):
            # Only if the runner died before resolving them: every task resolves exactly once.
            self._on_resolved(Resolution(task.id, "cancel", None, "the controller closed", None))
        self._stop()
        journal, self._journal = self._journal, None
        if journal is not None:
            if not detach:
                # Its workers are gone: a run resumed from here waits for none of them.
                journal.record("closed", ())
            await asyncio.to_thread(journal.close)

    @property
    def running(self) -> bool:
        """Whether the controller has started and is not closed."""
        return self._state == "running"

    @property
    def host(self) -> str:
        """The address workers dial: 127.0.0.1 for local launchers, else this machine's
        primary address, unless `host=` said otherwise."""
        return self._network.host

    @property
    def address(self) -> str:
        """The address workers connect to, such as tcp://127.0.0.1:40123 (once started)."""
        return self._dispatcher.address if self._dispatcher is not None else ""

    @property
    def backup(self) -> Controller | None:
        """The backup controller: a task that crashed `crashes_max` times here is pushed to it
        (same function, arguments and name), and its result comes back through the original
        task. Set it before start; backups can chain, but never in a cycle."""
        return self._backup

    @backup.setter
    def backup(self, backup: Controller | None) -> None:
        if backup is not None and not isinstance(backup, Controller):
            raise TypeError(f"backup must be a batchcrew Controller, not {type(backup).__name__}")
        if self._state != "new":
            raise ControllerClosedError(
                f"controller {self.name!r} has started: set its backup before start"
            )
        chain = [self.name]
        link = backup
        while link is not None:
            chain.append(link.name)
            if link is self:
                raise ValueError(
                    f"backup cycle: {' -> '.join(repr(name) for name in chain)}; a task that "
                    "crashed everywhere would go round for ever: end the chain with a controller "
                    "without a backup"
                )
            link = link._backup
        self._backup = backup

    @property
    def max_workers(self) -> int:
        """The `workers` option: the most workers running at once."""
        return self._settings.workers

    @property
    def modules(self) -> tuple[ModuleType, ...]:
        """The `modules` option: modules whose code travels by value with every task."""
        return self._modules

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the controller runs on, once started (None before)."""
        return self._loop

    # -- pushing ------------------------------------------------------------------------------

    def push(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        seconds_timeout: float | None = None,
        seed: int | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        **kwargs: Any,
    ) -> Task:
        """Queue `function(*args, **kwargs)` on a worker; return its `Task` at once.

        `name` names the task (default: generated). `seconds_timeout` limits its run time on
        the worker (None: the controller's `seconds_timeout`; `math.inf`: no limit): past it,
        the task is interrupted and resolves "error" with a `TimeoutError` message. `seed`
        gives the task its own random seed (default: derived from the controller's `seed` and
        the task's name). `retries` (None: the controller's) is how many more attempts the
        task gets if it raises an error that `retry_on` matches (None: the controller's; an
        exception type, a tuple of them, or a predicate of the exception), after the
        controller's backoff. These are keywords of `push` itself: to pass a keyword called
        `name`, `seconds_timeout`, `seed`, `retries` or `retry_on` to `function`, bind it
        first, `push(functools.partial(function, name="x"))`.

        The task counts toward the controller's `memory_max`, but `push` never waits for room.

        Raises TypeError if `function` is not callable or `retry_on` is not an exception type,
        a tuple of them or a callable, `SerializationError` if the function, an argument or
        `retry_on` cannot be pickled, `TaskTooLargeError` over `max_message_size`, ValueError
        for a name already held (unresolved, or resolved and its result not taken: take it
        first, so that a second task of that name cannot hide it), a bad timeout, a bad
        `retries`, or a `retry_on` with no retries, `ControllerClosedError` before start or
        after close, and `LaunchError` once launching has failed too often.
        """
        return self._push_all(
            function, [(args, kwargs)], [name], seconds_timeout, seed, retries, retry_on
        )[0]

    def walk(
        self,
        function: Callable[..., Any],
        *iterables: Iterable[Any],
        names: Iterable[str] | None = None,
        seconds_timeout: float | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        keep: bool = True,
    ) -> Walk:
        """Push `function` over zipped `iterables`, like builtin `map`; return a `Walk` at once.

        The iterables may be any (a generator too), and so may `names`. The walk pushes a first
        slice in this call (up to 1,000 tasks or about 10 ms of pickling, but at least the
        controller's `workers`, so that they launch together: one AWS Batch array job), all or
        nothing: a bad item there raises here, as `push` would, and nothing is pushed. It
        takes the rest in the background (a task of the controller's), a slice of a few
        milliseconds at a time, as the controller has room under `memory_max`. `tasks = await
        walk` gives every task once the iterables are exhausted; `async for task in walk`
        gives each as it is pushed; an item that fails later stops the walk there and raises
        from those (see `Walk`). `wait()` and `results()` count a walk still taking as
        unresolved work. `keep=False` lets the walk forget each task `async for` hands out,
        for a walk without end. `seconds_timeout` limits each task's run time, and `retries`
        and `retry_on` retry each task that raises, as in `push`.

        Raises at once what `push` raises for the options (and for a first slice's item), and
        TypeError for iterables that are not iterable.
        """
        if not isinstance(keep, bool):
            raise TypeError(f"keep must be True or False, not {keep!r}")
        return self._walk(function, iterables, names, seconds_timeout, retries, retry_on, keep)

    def _walk(
        self,
        function: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        names: Iterable[str] | None,
        seconds_timeout: float | None,
        retries: int | None,
        retry_on: RetryOn | None,
        keep: bool,
        watch: _Watch | None = None,
    ) -> Walk:
        self._check_running()
        runner, group = self._runner, self._group
        if runner is None or runner.done() or group is None:
            raise ControllerClosedError(f"controller {self.name!r} is closed")
        batch = self._batch(function, seconds_timeout, None, retries, retry_on)
        walk = Walk(
            self,
            batch,
            zip(*iterables, strict=False),
            None if names is None else iter(names),
            keep=keep,
            watch=watch,
        )
        self._feeding.add(walk)
        try:
            more = walk._push_slice(first=True)
        except BaseException:
            self._feeding.discard(walk)
            raise
        if more:
            group.start_soon(walk._feed, name=f"batchcrew-{self.name}-walk")
        else:
            walk._end(walk._failure)
        return walk

    def _walk_ended(self, walk: Walk) -> None:
        """`walk` stopped taking: who waits for all tasks, or for results, looks again."""
        self._feeding.discard(walk)
        self._resolutions.notify()
        if not self._tasks and not self._feeding:
            self._settled.notify()

    def _push_all(
        self,
        function: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        names: list[str | None],
        seconds_timeout: float | None,
        seed: int | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
    ) -> list[Task]:
        """Push every call, all or nothing."""
        dispatcher = self._check_running()
        batch = self._batch(function, seconds_timeout, seed, retries, retry_on)
        taken: set[str] = set()
        if not self._modules:
            prepared = [
                self._prepare(batch, args, kwargs, name, taken)
                for (args, kwargs), name in zip(calls, names, strict=True)
            ]
        else:
            with protocol.pickling_by_value(self._modules):
                prepared = [
                    self._prepare(batch, args, kwargs, name, taken)
                    for (args, kwargs), name in zip(calls, names, strict=True)
                ]
        return self._commit(dispatcher, batch, prepared)

    def _batch(
        self,
        function: Callable[..., Any],
        seconds_timeout: float | None,
        seed: int | None,
        retries: int | None,
        retry_on: RetryOn | None,
    ) -> _Batch:
        """What the tasks of one push or walk share, checked and pickled once. Raises as
        `push` does for the function and the options."""
        _callable(function)
        if seconds_timeout is None:
            seconds_timeout = self._seconds_timeout
        else:
            _check_timeout(seconds_timeout)
        timeout = (
            None if seconds_timeout is None or seconds_timeout == math.inf else seconds_timeout
        )
        if seed is not None:
            _check_seed(seed)
        if retries is None:
            retries = self._retries
        else:
            retrying.check_retries(retries)
        if retry_on is not None and not retries:
            raise ValueError(
                f"retry_on={retry_on!r:.80} has no effect without retries: give retries= too "
                "(how many more attempts after the first), here or on the Controller"
            )
        if not self._modules:
            pickled = self._pickled_function(function)
            policy = self._policy(retries, retry_on)
        else:
            with protocol.pickling_by_value(self._modules):
                pickled = self._pickled_function(function)
                policy = self._policy(retries, retry_on)
        return _Batch(self, pickled, timeout, seed, retries, policy)

    def _policy(self, retries: int, retry_on: RetryOn | None) -> bytes | None:
        """The pickled `retry_on` the workers apply (with retries only)."""
        if not retries:
            return None
        return self._retry_on if retry_on is None else retrying.dump_retry_on(retry_on)

    def _prepare(
        self,
        batch: _Batch,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        taken: set[str],
    ) -> tuple[str | None, bytes | _Arguments | Task]:
        """Check a task's name (against those held, and `taken` by the tasks pushed with it)
        and pickle its arguments, for `_commit`. Raises ValueError for a bad name or one in
        use, `SerializationError`, and `TaskTooLargeError`."""
        label = "" if name is None else f" {name!r}"
        if name is not None:
            _check_name("name", name)
            if name in self._succeeded and name not in taken:
                stored = self._stored_success(name)
                if stored is not None:
                    taken.add(name)
                    return name, stored  # done in an earlier run (or earlier in this one)
            if name in self._restored and name not in taken:
                resumed = self._pushed_again(name)
                if resumed is not None:
                    taken.add(name)
                    return name, resumed
            held = self._held_named(name)
            if held is not None or name in taken:
                # Refused, not replaced: a second task of that name would hide the first
                # one's result from task(name), and nobody could take it any more.
                what = "its result is not taken yet" if held and held._result else "unresolved"
                raise ValueError(
                    f"a task named {name!r} is already held ({what}); names must be unique "
                    f"among the tasks a controller holds: take its result first (await "
                    f"controller.task({name!r}), pop(), collect()), or use another name"
                )
            taken.add(name)
        try:
            arguments, buffers = protocol.dump_arguments(args, kwargs, by_value=bool(self._modules))
        except Exception as error:
            raise SerializationError(
                f"cannot pickle the arguments of task{label} ({_culprit(args, kwargs)}): "
                f"{type(error).__name__}: {error}"
            ) from error
        size = len(batch.function) + len(arguments)
        if buffers:
            size += sum(buffer.nbytes for buffer in buffers)
        limit = self._network.max_message_size
        if size > limit:
            raise TaskTooLargeError(
                f"task{label} is {size} bytes pickled, over max_message_size={limit}; pass "
                "large data by reference (a path, a URL) or raise max_message_size"
            )
        if size > LARGE_TASK and not self._warned_large:
            self._warn_large(label, len(batch.function), size)
        return name, (arguments, tuple(buffers)) if buffers else arguments

    def _commit(
        self,
        dispatcher: Dispatcher,
        batch: _Batch,
        prepared: list[tuple[str | None, bytes | _Arguments | Task]],
    ) -> list[Task]:
        """Make the tasks of prepared calls, count them, and queue them."""
        if self._journal is not None:
            return self._commit_journaled(dispatcher, batch, prepared)
        return self._make(dispatcher, batch, prepared)

    def _make(
        self,
        dispatcher: Dispatcher,
        batch: _Batch,
        prepared: list[tuple[str | None, bytes | _Arguments | Task]],
    ) -> list[Task]:
        tasks: list[Task] = []
        named, unresolved = self._named, self._tasks
        for name, payload in prepared:
            assert not isinstance(payload, Task)
            task_id = next(self._ids)
            if name is None and named:
                generated = f"task-{task_id}"
                if generated in named:  # a user named a task like a generated name
                    while generated in named:
                        generated += "-"
                    name = generated
            task = Task(batch, task_id, name, payload)
            unresolved[task_id] = task
            if name is not None:
                named[name] = task
            tasks.append(task)
        spans = self._spans
        if spans is not None:
            for task in tasks:
                self._traces[task.id] = spans.start(task.id, task.name, self.name)
        self._counts["tasks"] += len(tasks)
        budget = self._budget
        if budget is not None:
            for _, payload in prepared:
                budget.charge(payload)  # type: ignore[arg-type]  # fresh: no Task among them
        if tasks:
            dispatcher.push([task.id for task in tasks], batch.timeout)
        return tasks

    def _commit_journaled(
        self,
        dispatcher: Dispatcher,
        batch: _Batch,
        prepared: list[tuple[str | None, bytes | _Arguments | Task]],
    ) -> list[Task]:
        """`_commit` with a journal: tasks that succeeded before come back as they are (their
        stored results); the others are made, journaled, and queued."""
        journal = self._journal
        assert journal is not None
        fresh = [(name, payload) for name, payload in prepared if not isinstance(payload, Task)]
        made = iter(self._make(dispatcher, batch, fresh) if fresh else ())  # type: ignore[arg-type]
        tasks = [payload if isinstance(payload, Task) else next(made) for _, payload in prepared]
        function = self._journal_functions.get(batch.function)
        if function is None:
            function = next(self._function_ids)
            journal.record("function", (function, batch.function))
            self._journal_functions[batch.function] = function
            if len(self._journal_functions) > _FUNCTIONS_CACHED:
                self._journal_functions.popitem(last=False)
        for task in tasks:
            if task._batch is not batch:
                continue  # stored
            payload = task._payload
            assert payload is not None
            if isinstance(payload, bytes):
                arguments, buffers = payload, None
            else:
                arguments = payload[0]
                buffers = pickle.dumps([bytes(part) for part in payload[1]], protocol=5)
            journal.record(
                "task",
                (
                    task.id, task._name, function, arguments, buffers, batch.timeout, batch.seed,
                    batch.retries, batch.retry_on, batch.pushed,
                ),
            )  # fmt: skip
        return tasks

    def _pushed_again(self, name: str) -> Task | None:
        """The script of a resumed run pushes `name` again, which the journal's run left
        unresolved (resumed at start: that task is returned) or failed (its failure, not
        taken, gives way to the new push, which runs)."""
        self._restored.discard(name)
        held = self._held_named(name)
        if held is None:
            return None
        if held._result is None:
            return held
        status = held._resolved_result().status
        self._take(held)
        if self._journal is not None:
            self._journal.record("drop", (held.id,))
            self._journal.record("drop_result", (held.id,))
        self._counts["tasks"] -= 1
        self._counts[status] -= 1
        return None

    def _stored_success(self, name: str) -> Task | None:
        """The task called `name` that succeeded, here or in an earlier run of the journal:
        held (its result not taken yet), or made again from the journal."""
        held = self._held_named(name)
        if held is not None:
            result = held._result
            if (
                result is not None
                and (result[1] if isinstance(result, tuple) else result.status) == "success"
            ):
                return held
            return None
        journal = self._journal
        row = None if journal is None else journal.stored_result(name)
        if row is None:
            self._succeeded.discard(name)
            return None
        task = Task(_Batch(self, b"", None, None), row[0], name, b"")
        task._payload = None
        task._result = _stored_fields(row)
        self._named[name] = task
        self._resolved[task.id] = task
        return task

    def forget(self, name: str) -> bool:
        """Forget the success of the task called `name` in the journal, so that pushing that
        name again runs it (a journaled controller otherwise returns the stored result).
        Returns whether there was one. Its result, if held and not taken, stays held: take it
        first to push the name again."""
        self._check_running()
        if self._journal is None:
            raise ValueError(
                f"controller {self.name!r} has no journal: only a journal keeps results to forget"
            )
        known = name in self._succeeded
        self._succeeded.discard(name)
        self._journal.record("unpush", (name,))
        self._journal.record("forget", (name,))
        # Committed now, before a push of that name: a batch writes its kinds in a fixed order,
        # where the new result would come before the forgetting.
        self._journal.flush()
        return known

    def _warn_large(self, label: str, function: int, size: int) -> None:
        """Say once per controller that tasks are large: what a function captures (a lambda
        naming a 200 MB array) travels with every task, unseen."""
        self._warned_large = True
        mb = 1 << 20
        part = (
            f"its function {function / mb:.1f} MB (with what it captures: globals, closures, "
            "defaults)"
            if function * 2 >= size
            else f"its arguments {(size - function) / mb:.1f} MB"
        )
        warnings.warn(
            f"{'task' + label if label else 'a task'} is {size / mb:.1f} MB pickled, {part}, "
            "sent with every task like it. If the same data goes with every task, put it on "
            "the workers once, with `await controller.everywhere(load, ...)` or the "
            "initializer, into a global that tasks read; or pass a path or URL (said once per "
            "controller)",
            stacklevel=_caller_level(),
        )

    def _pickled_function(self, function: Callable[..., Any]) -> bytes:
        """The function's pickle. One found by its module and name pickles to a reference
        that never changes, so it is pickled once. One that travels by value (a function of
        `__main__`, a notebook's) is pickled again only when something it is made from may
        have changed (see `protocol.by_value_inputs`); closures, lambdas naming data, and
        functions of `modules` are pickled at every push."""
        inputs: tuple[Any, ...] | None = None
        if self._modules == ():
            if protocol.pickles_by_reference(function):
                inputs = ()
            else:
                inputs = protocol.by_value_inputs(function)
            if inputs is not None:
                try:
                    cached = self._functions.get(function)
                except TypeError:  # an unhashable callable
                    inputs = None
                else:
                    if cached is not None and protocol.same_inputs(cached[0], inputs):
                        return cached[1]
        try:
            pickled = protocol.dump_function(function)
        except Exception as error:
            raise SerializationError(
                f"cannot pickle the function {function!r:.80}: {type(error).__name__}: {error}"
            ) from error
        if inputs is not None:
            if function not in self._functions and len(self._functions) >= _FUNCTIONS_CACHED:
                del self._functions[next(iter(self._functions))]
            self._functions[function] = (inputs, pickled)
        return pickled

    def _payload(self, task_id: int) -> protocol.Task:
        """The message the dispatcher sends for an unresolved task (at each try)."""
        task = self._tasks[task_id]
        batch, payload = task._batch, task._payload
        arguments, buffers = (payload, ()) if isinstance(payload, bytes) else payload  # type: ignore[misc]
        seed = batch.seed
        if seed is None and self._seed is not None:
            seed = seeding.derive(self._seed, task.name)
        trace = self._traces.get(task_id) if self._traces else None
        if batch.retries:
            # Every attempt has the task's seed; retry_on goes along while attempts remain.
            attempt = self._attempts.attempt(task_id)
            retry_on = batch.retry_on if attempt <= batch.retries else None
            return protocol.Task(
                task_id, batch.function, arguments, buffers, batch.timeout, seed, trace, attempt,
                retry_on,
            )  # fmt: skip
        return protocol.Task(
            task_id, batch.function, arguments, buffers, batch.timeout, seed, trace
        )

    def _unresolved_named(self, name: str) -> Task | None:
        """The unresolved task called `name`, if any."""
        task = self._held_named(name)
        return task if task is not None and task._result is None else None

    def _held_named(self, name: str) -> Task | None:
        """The task called `name` that the controller still holds (the newest), if any."""
        task = self._named.get(name)
        if task is not None:
            return task
        if name.startswith("task-") and name[5:].isdigit():
            task_id = int(name[5:])
            task = self._tasks.get(task_id) or self._resolved.get(task_id)
            if task is not None and task._name is None:
                return task
        return None

    def _pickle_setup(
        self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
    ) -> protocol.Setup:
        if initializer is None:
            if initargs:
                raise ValueError("initargs were given without an initializer")
            return protocol.Setup()
        if not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        with protocol.pickling_by_value(self._modules):
            try:
                return protocol.dump_setup(initializer, initargs)
            except Exception as error:
                raise SerializationError(
                    f"cannot pickle the initializer or its initargs: {type(error).__name__}: "
                    f"{error}"
                ) from error

    def _check_running(self) -> Dispatcher:
        if self._state == "new":
            raise ControllerClosedError(
                f"controller {self.name!r} is not started: use `async with controller:` or "
                "`await controller.start()` first"
            )
        if self._state == "closed" or self._dispatcher is None:
            raise ControllerClosedError(f"controller {self.name!r} is closed")
        self._raise_if_broken()
        return self._dispatcher

    # -- results ------------------------------------------------------------------------------

    async def map(
        self,
        function: Callable[..., Any],
        *iterables: Iterable[Any],
        names: Iterable[str] | None = None,
        error: ErrorMode = "raise",
        progress: bool = False,
        seconds_timeout: float | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
    ) -> pl.DataFrame:
        """Run `function` over zipped `iterables` and return every result as a DataFrame, in
        input order.

        The iterables may be any (a generator too): the map takes from them as `walk` does, a
        slice at a time and within `memory_max`. `error`: "raise" raises `TaskError` at the
        first failure, stops taking, and cancels (interrupting) every task of this map still
        unresolved; "warn" warns once all have resolved; "ignore" returns failures as rows. An
        item that cannot be pushed raises as in `walk` (at once if it comes early), and
        cancels the map's tasks. If the coroutine awaiting `map` is cancelled, the map stops
        taking and cancels its unresolved tasks first. `progress=True` shows a live progress
        bar on a terminal (tasks done out of the inputs' `len()`, if they have one; workers
        connected; failures). `seconds_timeout` limits each task's run time, and `retries` and
        `retry_on` retry each task that raises, as in `push`: a task being retried has not
        failed yet, so it stops no map.
        """
        _check_error_mode(error)
        watch = _Watch(stop_early=error == "raise")
        walk = self._walk(
            function, iterables, names, seconds_timeout, retries, retry_on, True, watch
        )
        try:
            with progress_bar(self, _length(iterables)) if progress else contextlib.nullcontext():
                await watch.wait()
        except BaseException:
            # Cancelled, a bad item, or launching broke: what this map started stops costing.
            self._abandon(walk)
            raise
        failure = watch.failure
        if error == "raise" and failure is not None:
            cancelled = self._abandon(walk)
            message = f"task {failure.name!r} of this map failed with status {failure.status}"
            if failure.error:
                message += f": {failure.error}"
            if cancelled:
                message += f"; its other {cancelled} unresolved task(s) were cancelled"
            raise TaskError(message, failure)
        results = [self._take(task) for task in walk._tasks]
        handle_failures(results, error)
        return results_frame(results)

    def _abandon(self, walk: Walk) -> int:
        """Stop `walk` and cancel its unresolved tasks, and take every resolved one's result:
        they belonged to a map that will not return them. Returns how many were cancelled."""
        cancelled = walk.cancel()
        for task in walk._tasks:
            if task._result is not None:
                self._take(task)
        return cancelled

    async def wait(
        self,
        mode: Literal["all", "one"] = "all",
        timeout: float | None = None,  # noqa: ASYNC109 - the pinned API, like crew's wait()
    ) -> bool:
        """Wait until every task is resolved ("all") or a resolved result is waiting ("one").

        A walk (or map) still taking from its iterables counts as unresolved work: "all" waits
        for it to finish and for its tasks too. Returns True when that holds, False after
        `timeout` seconds. "one" with no result waiting and nothing unresolved returns False at
        once: nothing would ever arrive.
        """
        if mode not in ("all", "one"):
            raise ValueError(f'mode must be "all" or "one", not {mode!r}')

        def met() -> bool:
            if mode == "all":
                return not self._tasks and not self._feeding
            return bool(self._resolved)

        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while not met():
                if mode == "one" and not self._tasks and not self._feeding:
                    return False
                self._raise_if_broken()
                if self._state != "running":
                    break
                await (self._settled if mode == "all" else self._resolutions).wait()
        return met()

    def pop(self, error: ErrorMode = "ignore") -> Result | None:
        """One resolved result that nobody has taken yet (oldest first), or None. Never blocks."""
        _check_error_mode(error)
        if not self._resolved:
            return None
        result = self._take(next(iter(self._resolved.values())))  # O(1): an OrderedDict
        handle_failures([result], error)
        return result

    def collect(self, error: ErrorMode = "ignore") -> pl.DataFrame:
        """Every resolved result nobody has taken yet, as a DataFrame, taken off the controller."""
        _check_error_mode(error)
        results = [self._take(task) for task in list(self._resolved.values())]
        handle_failures(results, error)
        return results_frame(results)

    async def results(self) -> AsyncIterator[Result]:
        """Yield results as they resolve (taking them), until nothing is left unresolved and no
        walk is taking from its iterables."""
        while True:
            result = self.pop()
            if result is not None:
                yield result
                continue
            if (not self._tasks and not self._feeding) or self._state != "running":
                return
            self._raise_if_broken()
            await self._resolutions.wait()

    def task(self, name: str) -> Task | None:
        """The task called `name` that the controller still holds: unresolved, or resolved
        and not yet taken (by `await`, `pop`, `collect` or `results`); the newest if several."""
        return self._held_named(name)

    async def everywhere(
        self, function: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> pl.DataFrame:
        """Run `function(*args, **kwargs)` on every worker connected now, and on every worker
        that connects later, before its first task: set-up such as loading a data set or a
        model once per worker, or setting a log level. A module global it sets is seen by the
        tasks that run on that worker after it (see docs/worker-environment.md).

        Waits for the workers of now, each once the tasks already sent to it are done, and
        returns a table with a row per worker: `status` "success", "error" (with `error` and
        `trace`: that worker goes on taking tasks) or "lost" (it left or died first). No
        worker connected: an empty table, and every worker to come runs it. A later worker's
        failure is logged as a warning. A coroutine function is awaited on the worker.

        Raises TypeError if `function` is not callable, `SerializationError` if it or an
        argument cannot be pickled, and `ControllerClosedError` before start or after close.
        """
        dispatcher = self._check_running()
        _callable(function)
        with protocol.pickling_by_value(self._modules):
            try:
                pickled, arguments = protocol.dump_call(function, args, kwargs)
            except Exception as error:
                raise SerializationError(
                    f"cannot pickle everywhere({function!r:.80}) or its arguments: "
                    f"{type(error).__name__}: {error}"
                ) from error
        label = getattr(function, "__qualname__", None) or repr(function)
        call = dispatcher.everywhere(label, pickled, arguments)
        await call.done.wait()
        return call.frame()

    def cancel(self, names: Iterable[str] = (), *, all: bool = False) -> int:
        """Cancel unresolved tasks by name, or `all=True`; return how many were cancelled.

        A cancelled task resolves "cancel" at once. One that a worker is running is interrupted
        there (a plain function by `TaskInterrupted` where Python can raise it, a coroutine by
        cancelling it) and the worker goes on to its next task; if the task has not stopped
        `seconds_interrupt` later, its worker is ended through the launcher.
        """
        if isinstance(names, str):
            names = [names]
        if all:
            return self._cancel_ids(list(self._tasks))
        chosen = [task.id for task in map(self._unresolved_named, names) if task is not None]
        return self._cancel_ids(chosen)

    def _cancel_ids(self, ids: Iterable[int]) -> int:
        dispatcher = self._dispatcher
        if dispatcher is None or self._state != "running":
            return 0
        count = 0
        for task_id in ids:
            handed = self._handed.pop(task_id, None)
            if handed is not None:  # running on a backup: cancel it there
                holder, copy = handed
                holder._cancel_ids([copy])
                count += 1
            elif task_id in self._tasks:
                if self._attempts.stop(task_id):
                    # Waiting out its backoff, it is in no queue and on no worker: no attempt
                    # follows, and it resolves here.
                    why = "cancelled while it waited to be retried"
                    self._on_resolved(Resolution(task_id, "cancel", None, why, None))
                else:
                    dispatcher.cancel(task_id)
                count += 1
        return count

    def workers(self) -> pl.DataFrame:
        """The workers table: one row per worker launched (the live ones, and the last 1,000
        gone): worker, launch, level, state ("launching", "idle", "busy", "leaving", "gone"),
        host, pid, job_id (AWS Batch), launched, connected, ended (UTC times), tasks, seconds
        (busy time), errors, crashes, reason (why it ended), rss (resident bytes, latest
        report), cpu (CPU seconds) and output_tail (the last line its running task wrote,
        reported every second). Kept as running state: cheap to call at any time."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return Tracker().frame(lambda identity: "gone")
        return dispatcher.tracker.frame(dispatcher.scheduler.state_of)

    async def serve_dashboard(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve a live dashboard of this controller over HTTP, from this process, until the
        controller closes; return its URL, such as "http://127.0.0.1:40123/".

        The page updates itself every second: tasks per second, tasks by status, the queue,
        workers by state and the workers table, recent failures and the launcher's errors.
        It is read-only and has no authentication: it listens on loopback unless `host` says
        otherwise (then it logs a WARNING). `port` 0 picks a free port. Each call serves
        another page. It serves even once launching has broken, to show why. To mount it in a
        web app instead, see `batchcrew.dashboard.asgi_app`.

        Raises `ControllerClosedError` before start or after close, OSError if it cannot
        listen on `host`:`port`, and ValueError for a bad `host` or `port`.
        """
        return await self._serve_dashboard([self], host, port)

    async def _serve_dashboard(self, controllers: list[Controller], host: str, port: int) -> str:
        """Serve the dashboard of `controllers` (this one, or those of a group it belongs to)
        as a task of this controller's task group, which ends it when the controller closes."""
        # Imported here: the dashboard and its web server are loaded only by those who ask.
        from batchcrew import dashboard

        runner, group = self._runner, self._group
        if self._state != "running" or runner is None or runner.done() or group is None:
            self._check_running()  # not started, closed, or stopped on an error: say which
            raise ControllerClosedError(f"controller {self.name!r} is starting: await start()")
        # Even once launching has broken: the page shows why.
        url: str = await group.start(dashboard._serve, controllers, host, port)
        return url

    def timeline(self) -> pl.DataFrame:
        """The last `timeline_max` resolved tasks, one row each: name, worker, status, pushed,
        started, ended (UTC times; started is when its code began, from its run time),
        queue_seconds and run_seconds. See `batchcrew.plot.timeline` for a picture."""
        return self._timeline.frame()

    def counts(self) -> dict[str, int]:
        """Counters so far: tasks pushed, success, error, crash, cancel, warning (tasks that
        warned), unresolved, and workers connected now. Cheap: no DataFrame."""
        dispatcher = self._dispatcher
        return {
            **self._counts,
            "unresolved": len(self._tasks),
            "workers": dispatcher.scheduler.connected if dispatcher is not None else 0,
        }

    def summary(self) -> pl.DataFrame:
        """One row: controller, elapsed (wall seconds since it started), task_seconds (the
        tasks' run times added up: with several workers, more than elapsed), tasks (pushed),
        success, error, crash, cancel, warning (tasks that warned), unresolved, workers
        (connected now)."""
        counts = self.counts()
        started = self._started_at
        elapsed = None if started is None else time.monotonic() - started
        return pl.DataFrame(
            {
                "controller": [self.name],
                "elapsed": [elapsed],
                "task_seconds": [self._seconds],
                **{key: [value] for key, value in counts.items()},
            },
            schema_overrides={"elapsed": pl.Float64, "task_seconds": pl.Float64},
        )

    # -- internals ----------------------------------------------------------------------------

    def _on_output(self, output: protocol.Output) -> None:
        """A running task's output, relayed by its worker: onto this process's stderr."""
        task = self._tasks.get(output.task_id)
        if task is not None and self._relay is not None:
            self._relay.write(task.id, task.name, bytes(output.data))

    def _on_resolved(self, resolution: Resolution) -> None:
        if self._relay is not None:
            self._relay.end(resolution.task)  # the end of its last line, if it did not end
        task = self._tasks.get(resolution.task)
        if task is None:
            return
        outcome = resolution.outcome
        if outcome is not None and outcome.retry and self._retry(task, resolution, outcome):
            return
        backup = self._backup
        if resolution.status == "crash" and backup is not None and self._state == "running":
            self._hand_over(task, resolution)
            return
        attempts, crashes, interruptions = 1, resolution.crashes, resolution.interruptions
        if self._attempts.records:  # some task was retried: is this one?
            before = self._attempts.take(task.id)
            if before is not None:
                attempts = before[0]
                crashes += before[1]
                interruptions += before[2]
        adopted = self._adopted.pop(task.id, None)
        if adopted is not None:
            del self._tasks[task.id]
            # A copy run for another controller: its result goes to the original task there,
            # counted there.
            origin, history = adopted
            self._traces.pop(task.id, None)
            fields = self._fields(resolution, attempts, interruptions, history)
            origin._batch.controller._settle(origin, fields, crashes)
            if not self._tasks:
                self._settled.notify()
            return
        self._settle(task, self._fields(resolution, attempts, interruptions), crashes)

    def _retry(self, task: Task, resolution: Resolution, outcome: protocol.Outcome) -> bool:
        """`task` raised an error its `retry_on` matched (its worker said so): if it has
        attempts left, its next one begins once its backoff has passed. Returns whether it
        will be retried (else it resolves "error" now)."""
        batch, loop = task._batch, self._loop
        attempt = self._attempts.attempt(task.id)
        if (
            attempt > batch.retries
            or loop is None
            or self._state != "running"
            or self._error is not None
        ):
            return False
        delay = self._attempts.wait(
            task.id, loop, self._rerun, resolution.crashes, resolution.interruptions
        )
        self._seconds += outcome.seconds  # the attempt's run time was spent all the same
        logger.info(
            "task %r raised on attempt %d of %d (%s): attempt %d in %.3g s",
            task.name,
            attempt,
            batch.retries + 1,
            (outcome.error or "an error")[:200],
            attempt + 1,
            delay,
        )
        return True

    def _rerun(self, task_id: int) -> None:
        """A retried task's backoff has passed: its next attempt goes to the queue."""
        task = self._tasks.get(task_id)
        dispatcher, runner = self._dispatcher, self._runner
        if (
            task is None
            or dispatcher is None
            or runner is None
            or runner.done()
            or self._state != "running"
            or self._error is not None
        ):
            return  # closing, or stopped: the close resolves it "cancel"
        self._attempts.begin(task_id)
        dispatcher.push([task_id], task._batch.timeout)

    def _settle(self, task: Task, fields: _Fields, retries: int = 0) -> None:
        """`task` resolved with the fields of its result: count it, hold it, and wake who
        waits."""
        if self._tasks.pop(task.id, None) is None:
            return  # resolved already (cancelled while a backup ran it)
        budget = self._budget
        if budget is not None:
            payload = task._payload
            assert payload is not None
            budget.release(payload)
        self._handed.pop(task.id, None)
        _, status, _, _, warnings, seconds, worker, _, _, _, _, _, _, _ = fields
        self._counts[status] += 1
        if warnings:
            self._counts["warning"] += 1
        if seconds is not None:
            self._seconds += seconds
        self._resolved[task.id] = task
        if self._journal is not None and (status != "cancel" or self._journal_cancels):
            self._journal_result(task, fields)
        name = task._name  # None: generated from its id, made only if the timeline is read
        self._timeline.add(
            task.id if name is None else name, worker, status, task._batch.pushed, seconds
        )
        task._resolve(fields)
        if status != "success":
            self._failures.append(task._resolved_result())
        if self._spans is not None:
            self._traces.pop(task.id, None)
            self._spans.end(task.id, task._resolved_result(), retries)
        self._resolutions.notify()
        if not self._tasks:
            self._settled.notify()

    def _journal_result(self, task: Task, fields: _Fields) -> None:
        assert self._journal is not None
        value = fields[0]
        if value is None:
            pickled = None
        else:
            try:
                pickled = pickle.dumps(value, protocol=5)
            except Exception:
                try:
                    pickled = protocol.dump_value(value)[0]
                except Exception as error:  # kept here; a resumed run reads it as an error
                    pickled = pickle.dumps(_Unpicklable(_describe(error)))
        exception = fields[13]
        self._journal.record(
            "result",
            (
                task.id, task._name, fields[1], pickled, fields[2], fields[3],
                json.dumps(fields[4]) if fields[4] else "[]", fields[5], fields[6], fields[7],
                fields[8], fields[9], fields[10], fields[11], fields[12],
                None if exception is None else protocol.dump_exception(exception), time.time(),
            ),
        )  # fmt: skip
        if fields[1] == "success" and task._name is not None:
            self._succeeded.add(task._name)

    def _hand_over(self, task: Task, resolution: Resolution) -> None:
        """`task` crashed crashes_max times here: run it on the backup, whose result comes back
        through the original task (which stays unresolved, here or where it came from)."""
        backup = self._backup
        assert backup is not None
        message = resolution.message or "it crashed"
        del self._tasks[task.id]
        origin, history = self._adopted.pop(task.id, (task, ()))
        if task is origin:
            self._tasks[task.id] = task  # the user's task: unresolved until the backup says
        history = (*history, f"on controller {self.name!r}: {message}")
        owner = origin._batch.controller
        try:
            copy = backup._adopt(origin, task, history, resolution)
        except BatchcrewError as error:
            reason = f"{message}; its backup controller {backup.name!r} could not take it: {error}"
            attempts, _, interruptions = self._attempts.take(task.id) or (1, 0, 0)
            fields: _Fields = (
                None, "crash", reason, None, (), None, None, self.launcher.describe(), self.name,
                None, attempts, interruptions + resolution.interruptions, "", None,
            )  # fmt: skip
            owner._settle(origin, fields)
            return
        owner._handed[origin.id] = (backup, copy.id)
        logger.warning(
            "task %r on controller %s: %s; it moves to its backup %s",
            origin.name,
            self.name,
            message,
            backup.name,
        )

    def _adopt(
        self, origin: Task, task: Task, history: tuple[str, ...], resolution: Resolution
    ) -> Task:
        """Run a copy of another controller's task here (its backup), on the attempt it was
        on there; return the copy."""
        dispatcher = self._check_running()
        batch = task._batch
        seed = batch.seed
        holder = batch.controller  # where it crashed
        owner = origin._batch.controller
        if seed is None and owner._seed is not None:
            seed = seeding.derive(owner._seed, origin.name)  # the same draws as there
        payload = task._payload
        assert payload is not None
        copy = Task(
            _Batch(self, batch.function, batch.timeout, seed, batch.retries, batch.retry_on),
            next(self._ids),
            origin.name,
            payload,
        )
        self._tasks[copy.id] = copy
        trace = owner._traces.get(origin.id)
        if trace is not None:
            self._traces[copy.id] = trace  # the copy runs in the original's trace
        self._adopted[copy.id] = (origin, history)
        holder._attempts.carry(
            task.id, self._attempts, copy.id, resolution.crashes, resolution.interruptions
        )
        dispatcher.push([copy.id], batch.timeout)
        return copy

    def _fields(
        self,
        resolution: Resolution,
        attempts: int = 1,
        interruptions: int = 0,
        history: tuple[str, ...] = (),
    ) -> _Fields:
        """The fields of the `Result` of a task resolved here (after its name), after
        `attempts` attempts and `interruptions` workers taken from under it."""
        outcome = resolution.outcome
        worker = resolution.worker
        launcher = self.launcher.describe()
        if outcome is None:
            message = resolution.message
            if history and resolution.status == "crash":
                message = f"on controller {self.name!r}: {message} (before: {'; '.join(history)})"
            return (
                None, resolution.status, message, None, (), None, worker, launcher, self.name,
                None, attempts, interruptions, "", None,
            )  # fmt: skip
        value = exception = None
        status, message, trace = outcome.status, outcome.error, outcome.trace
        if history and status != "success":
            message = f"on controller {self.name!r}: {message} (before: {'; '.join(history)})"
        if status == "success":
            try:
                value = protocol.load(outcome.value, outcome.buffers)
            except BaseException as error:
                # Unpickling runs whatever the value's class says, SystemExit included: none
                # of it may escape into the dispatcher (this runs in its callback).
                status = "error"
                message = f"the result cannot be unpickled here: {_describe(error)}"
        elif len(outcome.exception):
            exception = _rebuilt(outcome.exception, trace)
        printed = outcome.output
        output = bytes(printed).decode(errors="replace") if len(printed) else ""
        return (
            value, status, message, trace, outcome.warnings, outcome.seconds, worker, launcher,
            self.name, outcome.memory or None, attempts, interruptions, output, exception,
        )  # fmt: skip

    def _on_broken(self, broken: scheduling.Broken) -> None:
        if broken.hopeless:
            # Launching again would fail the same way: its workers ran, and none connected.
            self._error = LaunchError(
                f"controller {self.name!r} stopped launching workers: {broken.reason}"
            )
        else:
            self._error = LaunchError(
                f"controller {self.name!r} could not launch workers: {broken.failures} launches "
                f"in a row failed; the last because {broken.reason}. Check the launcher's "
                "settings (and, for AWS Batch, launcher.errors())."
            )
        self._stop()

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error

    def _take(self, task: Task) -> Result:
        """Hand a resolved task's result out: the controller holds it no more."""
        self._resolved.pop(task.id, None)
        if task._name is not None and self._named.get(task._name) is task:
            del self._named[task._name]
        return task._resolved_result()

    def _stop(self) -> None:
        # Waiters of unresolved tasks must not hang: a broken launcher or a dead runner
        # raises in them. (A clean close resolves every task as "cancel" instead.)
        if self._error is not None:
            for task in self._tasks.values():
                task._fail(self._error)
        for walk in list(self._feeding):
            walk._end(self._error or walk._closed())
        self._resolutions.notify()
        self._settled.notify()

    def __repr__(self) -> str:
        return f"<Controller {self.name!r} {self._state}, {len(self._tasks)} unresolved>"


_SECONDS_RECONNECT = 300.0  # with a journal, how long workers wait for a restarted controller


class _Unpicklable:
    """What the journal keeps of a result that cannot be pickled again."""

    def __init__(self, why: str) -> None:
        self.why = why


def _stored_fields(row: tuple[Any, ...]) -> _Fields:
    """A result's fields from its row in the journal (see batchcrew.journal)."""
    (_, _, status, pickled, error, trace, warned, seconds, worker, launcher, controller,
     memory, attempts, interruptions, output, exception) = row  # fmt: skip
    value = None
    if pickled is not None:
        try:
            value = protocol.load(pickled)
        except BaseException as failure:
            status, error = (
                "error",
                f"the stored result cannot be unpickled here: {_describe(failure)}",
            )
        if isinstance(value, _Unpicklable):
            status, error, value = "error", f"the result could not be journaled: {value.why}", None
    return (
        value, status, error, trace, tuple(json.loads(warned)), seconds, worker, launcher,
        controller, memory, attempts, interruptions, output,
        None if exception is None else _rebuilt(exception, trace),
    )  # fmt: skip


def _rebuilt(data: protocol.Buffer, trace: str | None) -> BaseException | None:
    """A task's exception, as its worker pickled it, rebuilt here with the worker's traceback
    as its `__cause__` (as `ProcessPoolExecutor` does); None if it does not unpickle here."""
    error = protocol.load_exception(data)
    if error is not None and trace:
        from concurrent.futures.process import _RemoteTraceback

        error.__cause__ = _RemoteTraceback(trace)  # type: ignore[arg-type]  # (it takes the text)
    return error


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many calls zipped `iterables` make, if each has a `len()` (else None)."""
    try:
        return min((len(iterable) for iterable in iterables), default=0)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_error_mode(error: str) -> None:
    if error not in _ERROR_MODES:
        raise ValueError(f'error must be "raise", "warn" or "ignore", not {error!r}')


def _caller_level() -> int:
    """The `stacklevel` of a warning issued by the caller of this function that names the
    first frame outside batchcrew: the user's line, whichever public method led there."""
    package = os.path.dirname(__file__) + os.sep
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _callable(function: Any) -> Callable[..., Any]:
    if not callable(function):
        raise TypeError(f"a task must be callable, not {type(function).__name__}: {function!r:.80}")
    return function  # type: ignore[no-any-return]


def _culprit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    # Name the first argument that does not pickle, so the user knows what to fix.
    for position, value in enumerate(args):
        try:
            protocol.dump_arguments((value,), {})
        except Exception:
            return f"argument {position}: {type(value).__name__}"
    for key, value in kwargs.items():
        try:
            protocol.dump_arguments((value,), {})
        except Exception:
            return f"argument {key}=: {type(value).__name__}"
    return "the arguments"


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")


def _check_count(what: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, not {value!r}")


def _check_modules(modules: Iterable[ModuleType]) -> tuple[ModuleType, ...]:
    if isinstance(modules, ModuleType):
        modules = [modules]
    checked = tuple(modules)
    for module in checked:
        if not isinstance(module, ModuleType):
            raise TypeError(
                f"modules must hold modules (import analysis; modules=[analysis]), not "
                f"{type(module).__name__}: {module!r:.60}"
            )
    return checked


def _check_address(address: object, port: int) -> str:
    """`address=` as the tcp:// address workers dial. Raises TypeError or ValueError."""
    if not isinstance(address, str):
        raise TypeError(f'address must be a string "HOST:PORT", not {type(address).__name__}')
    text = address.removeprefix("tcp://")
    host, colon, digits = text.rpartition(":")
    if not (colon and host and digits.isdigit() and 0 < int(digits) <= 65535):
        raise ValueError(
            f'address must be "HOST:PORT" (where workers dial, such as '
            f'"bastion.internal:5555"), not {address!r}'
        )
    if port == 0:
        raise ValueError(
            f"address={address!r} needs a fixed port= too: whatever forwards {address} to this "
            "machine (an SSH reverse tunnel, a NAT) forwards to one port"
        )
    return f"tcp://{text}"


def _check_memory_max(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            "memory_max must be a whole number of bytes >= 1 (such as 2 << 30 for 2 GiB), or "
            f"None for no bound, not {value!r}"
        )


def _check_seed(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seed must be a whole number >= 0, or None, not {value!r}")


def _check_timeout(value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
    ):
        raise ValueError(
            f"seconds_timeout must be a positive number of seconds, math.inf or None, not {value!r}"
        )


def _check_seconds(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _primary_address() -> str:
    """This machine's primary non-loopback IPv4 address (the one its default route uses)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel picks a route
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
