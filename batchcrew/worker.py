"""The worker process: connect to the controller, run tasks one at a time, report each outcome.

Run as `python -m batchcrew.worker` (or `batchcrew worker`) with its settings in `BATCHCREW_*`
environment variables, as launchers do. It imports little (no polars, no asyncio until a task
needs it) so that it starts fast, and it exits by itself when idle, when its wall time or task
budget is spent, and when it has lost its controller for `seconds_heartbeat`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import inspect
import math
import os
import platform
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TextIO

import zmq
from zmq.utils.monitor import recv_monitor_message

from batchcrew import namespaces, protocol, retrying, seeding, tracing
from batchcrew.errors import ProtocolError, TaskInterrupted
from batchcrew.output import Capture

EXIT_LOST = 3
"""Exit code of a worker that lost its controller, or could not reach it."""

EXIT_STUCK = 4
"""Exit code of a worker whose task did not stop within `seconds_interrupt` of its interruption."""

EXIT_SETUP = 5
"""Exit code of a worker whose initializer raised, or that its controller refused."""

EXIT_TERMINATED = 143
"""Exit code of a worker stopped from outside by SIGTERM (128 + 15, as a shell reports it)."""

#: Why a worker stopped by SIGTERM leaves: what sends it, as a worker's log and the
#: controller's workers table say it.
STOPPED_BY_SIGTERM = (
    "stopped from outside by SIGTERM (its job was terminated, or its host reclaimed or scaled in)"
)


class _Stopping(BaseException):
    """Raised by the SIGTERM handler out of a wait for the controller's next message."""


_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a worker needs, carried by `BATCHCREW_*` environment variables.

    `server_key` is the controller's CURVE public key; `public_key`/`secret_key` are this
    worker's own (all Z85 text). Empty keys mean no encryption (`security="none"`).
    `output_max`: bytes of a task's output kept in its outcome; `output_relay`: 1 to send a
    running task's output to the controller as it comes (with both 0, it is not captured).
    """

    controller: str
    launch: str
    index: int = 0
    seconds_idle: float = math.inf
    seconds_wall: float = math.inf
    tasks_max: float = math.inf
    seconds_heartbeat: float = 10.0
    seconds_connect: float = 60.0
    seconds_reconnect: float = 0.0  # > seconds_heartbeat: how long it waits for a lost controller
    seconds_interrupt: float = 5.0
    max_message_size: int = -1
    output_max: int = 1 << 20
    output_relay: int = 0
    server_key: str = ""
    public_key: str = ""
    secret_key: str = ""
    announce: int = 0  # 1: say where it connects and why it leaves (its own log, remotely)
    ask_idle: int = 0  # 1: ask the controller before leaving idle (it keeps workers_min warm)

    @property
    def identity(self) -> bytes:
        """The ZeroMQ identity the controller issued to this worker."""
        return f"{self.launch}:{self.index}".encode()

    def environment(self) -> dict[str, str]:
        """These settings as environment variables, but for the index, which launchers set
        per worker (`BATCHCREW_WORKER_INDEX`, or AWS Batch's `AWS_BATCH_JOB_ARRAY_INDEX`)."""
        return {
            f"BATCHCREW_{field.name.upper()}": str(getattr(self, field.name))
            for field in fields(self)
            if field.name != "index"
        }

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WorkerSettings:
        """Read settings from the environment. Raises ValueError naming what is missing."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = f"BATCHCREW_{field.name.upper()}"
            if name in environ:
                values[field.name] = environ[name]
        # The index: from a local launcher, else from an AWS Batch array job (plus the
        # offset of its chunk when a launch spans several array jobs), else 0.
        if "BATCHCREW_WORKER_INDEX" in environ:
            values["index"] = environ["BATCHCREW_WORKER_INDEX"]
        elif "AWS_BATCH_JOB_ARRAY_INDEX" in environ:
            try:
                offset = int(environ.get("BATCHCREW_INDEX_OFFSET", "0"))
                values["index"] = offset + int(environ["AWS_BATCH_JOB_ARRAY_INDEX"])
            except ValueError:
                raise ValueError("AWS_BATCH_JOB_ARRAY_INDEX is not a whole number") from None
        return cls.parse(values)

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> WorkerSettings:
        """Build settings from text values, converting numbers. Raises ValueError."""
        for required in ("controller", "launch"):
            if not values.get(required):
                raise ValueError(
                    f"BATCHCREW_{required.upper()} is not set: a worker is started by a "
                    "controller's launcher, which sets it"
                )
        converted: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in values:
                continue
            value = values[field.name]
            try:
                converted[field.name] = _CONVERTERS[str(field.type)](value)
            except (TypeError, ValueError):
                raise ValueError(f"worker setting {field.name}={value!r} is not valid") from None
        return cls(**converted)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {"str": str, "int": int, "float": float}


class _FunctionCache:
    """Unpickled task functions by their pickled bytes, so `map` unpickles its function once."""

    def __init__(self, load: Callable[[bytes], Any], size: int = 32) -> None:
        self._load = load
        self._size = size
        self._functions: dict[bytes, Callable[..., Any]] = {}
        self._last: tuple[bytes, Callable[..., Any]] | None = None

    def get(self, data: protocol.Buffer) -> Callable[..., Any]:
        last = self._last
        if last is not None and last[0] == data:  # the last task's: neither copied nor hashed
            return last[1]
        key = bytes(data)
        function = self._functions.get(key)
        if function is None:
            function = self._load(key)
            if len(self._functions) >= self._size:
                self._functions.pop(next(iter(self._functions)))
            self._functions[key] = function
        self._last = (key, function)
        return function


# Text a worker sends about a task (an error, a traceback, a warning) is cut to these lengths,
# so that a task with a huge message cannot push its report over max_message_size.
_TEXT_MAX = 100_000
_WARNING_MAX = 10_000
_WARNINGS_MAX = 1_000


def _describe(error: BaseException) -> str:
    """`Type: message` for an exception. It never raises: a task's exception may have a
    `__str__` that raises, recurses or returns megabytes, and it must not end the worker."""
    name = _type_name(error)
    try:
        text = _cut(str(error), _TEXT_MAX)
    except BaseException as failure:
        return f"{name} (its message cannot be shown: str() of it raised {_type_name(failure)})"
    return f"{name}: {text}" if text else name


def _trace(error: BaseException) -> str:
    """The formatted traceback of `error`, cut to `_TEXT_MAX`; it never raises.

    The worker's own frames around the task's are left out: the call into the task at the top,
    and at the bottom the signal handler an interruption (a timeout, a cancel) is raised in.
    """
    try:
        shown = traceback.TracebackException.from_exception(error)
        stack = shown.stack
        if any(frame.filename != __file__ for frame in stack):
            while stack and stack[0].filename == __file__:
                del stack[0]
            while stack and stack[-1].filename == __file__:
                del stack[-1]
        return _cut("".join(shown.format()), _TEXT_MAX)
    except BaseException as failure:
        return (
            f"(the traceback of this {_type_name(error)} cannot be shown: formatting it raised "
            f"{_type_name(failure)})"
        )


def _warning_texts(caught: Sequence[warnings.WarningMessage]) -> tuple[str, ...]:
    """`Category: message` for each warning a task issued (the first `_WARNINGS_MAX`); it never
    raises, whatever the warning's message does when made into text."""
    texts = []
    for item in caught[:_WARNINGS_MAX]:
        category = _class_name(item.category)
        try:
            texts.append(f"{category}: {_cut(str(item.message), _WARNING_MAX)}")
        except BaseException as failure:
            texts.append(
                f"{category} (its message cannot be shown: str() of it raised "
                f"{_type_name(failure)})"
            )
    if len(caught) > _WARNINGS_MAX:
        texts.append(f"... and {len(caught) - _WARNINGS_MAX} more warning(s), not kept")
    return tuple(texts)


def _type_name(value: object) -> str:
    return _class_name(type(value))


def _class_name(cls: type) -> str:
    # A class's __name__ can come from its metaclass, which is the task's own code too.
    try:
        return str.__str__(cls.__name__)
    except BaseException:
        return "object"


def _cut(text: str, limit: int) -> str:
    # str() may return a subclass of str whose methods are the task's own: take a plain copy.
    text = str.__str__(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit:,} more characters cut]"


class _Usage:
    """The worker process's memory and CPU time, measured around tasks.

    On Linux, /proc/self/status gives the resident size and its high-water mark, which
    writing 5 to /proc/self/clear_refs resets: so a task's peak is its own. Elsewhere (or where
    /proc refuses), `resource` gives the process's lifetime peak only. Each measure is a few
    system calls, which tiny tasks would feel: a task is measured when it runs a millisecond or
    more, and otherwise at most twice a second, sharing the last figures in between.
    """

    def __init__(self) -> None:
        self._status: int | None = None
        self._clear: int | None = None
        with contextlib.suppress(OSError):
            self._status = os.open("/proc/self/status", os.O_RDONLY)
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
        self._last = (0, 0, 0.0)  # the last figures: resident, peak, CPU seconds
        self._reset_at = -math.inf
        self._measuring = True  # the high-water mark was reset for the task under way

    def task_starts(self) -> None:
        """Reset the high-water mark, unless tasks are tiny and it was reset just now."""
        self._measuring = self._measuring or time.monotonic() - self._reset_at >= _SECONDS_USAGE
        if self._measuring:
            self.reset_peak()

    def task_ends(self, seconds: float) -> tuple[int, int, float]:
        """Resident bytes, this task's peak resident bytes, CPU seconds: measured if its
        high-water mark was reset for it or it ran long enough, else the last figures."""
        if self._measuring or seconds >= _SECONDS_MEASURED:
            self._last = self.read()
        # A task that ran this long may well be followed by others like it: measure the next.
        self._measuring = seconds >= _SECONDS_MEASURED
        return self._last

    def reset_peak(self) -> None:
        self._reset_at = time.monotonic()
        if self._clear is not None:
            try:
                os.write(self._clear, b"5")
            except OSError:
                os.close(self._clear)
                self._clear = None

    def read(self) -> tuple[int, int, float]:
        """Resident bytes now, peak resident bytes (since the last reset), CPU seconds."""
        cpu = time.process_time()
        if self._status is not None:
            status = os.pread(self._status, 4096, 0)
            return _kilobytes(status, b"VmRSS:"), _kilobytes(status, b"VmHWM:"), cpu
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return peak, peak, cpu


def _kilobytes(status: bytes, key: bytes) -> int:
    start = status.find(key)
    if start < 0:
        return 0
    end = status.find(b"kB", start)
    return int(status[start + len(key) : end]) * 1024


class _Channel:
    """The worker's one socket and who may use it.

    ZeroMQ sockets are not thread-safe, so the lock hands the socket over: the main thread holds
    it, but for while a task runs, when the watcher may take it to read a cancel. What is read
    but not handled yet (tasks sent ahead, a stop) waits in `pending`; `cancelled` holds ids of
    pending tasks cancelled before they started; `unsent` holds results kept back to go out
    together. Only the lock's holder touches any of them.
    """

    def __init__(self, sock: zmq.Socket[bytes], log: TextIO) -> None:
        self.sock = sock
        self.log = log  # the worker's own messages go there (never into a task's output)
        self.lock = threading.Lock()
        self.lock.acquire()  # the main thread's, from the start
        self.pending: deque[protocol.Message] = deque()
        self.cancelled: set[int] = set()
        self.unsent: list[protocol.Buffer] = []
        self.unsent_since = 0.0
        self._main_holds = True
        self._timeout = -1  # the socket's RCVTIMEO, in milliseconds
        self.receiving = False  # the main thread waits in a read: SIGTERM may break it off
        # The connection came back after a loss (a controller restarted on its journal): the
        # next holder of the socket says hello again, with the tasks it holds.
        self.rejoin_due = False
        self.hello: Callable[[list[int]], protocol.Hello] | None = None
        self.read_max = 3600.0  # seconds a read waits at most (less: rejoin_due is seen soon)
        self.stopping = False  # SIGTERM came: the next read is not begun
        self.wake_read, self._wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)

    def lend(self) -> None:
        """The main thread is about to run a task: the watcher may take the socket."""
        self._main_holds = False
        self.lock.release()

    def reclaim(self) -> None:
        """The main thread wants the socket back (asking the watcher if it has it)."""
        if self._main_holds:
            return
        if not self.lock.acquire(blocking=False):
            os.write(self._wake_write, b"\0")
            self.lock.acquire()
        self._main_holds = True

    def drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_read, 64):
                pass

    def waiting(self) -> bool:
        """Whether a task sent ahead is already here (read with the one before it). The
        socket itself is not asked: every question to ZeroMQ costs system calls."""
        return bool(self.pending)

    def receive(self, timeout: float) -> protocol.Message | None:
        """The next message, waiting up to `timeout` seconds; None if none came. Results kept
        back go out before any wait. A malformed message is reported on stderr and skipped."""
        if self.pending:
            return self.pending.popleft()
        self.flush()
        if self.rejoin_due:
            self.rejoin([])
        sock = self.sock
        # One blocking read with a time limit: fewer system calls than asking whether a
        # message waits and then polling for one.
        milliseconds = int(min(timeout, self.read_max) * 1000) + 1
        if milliseconds != self._timeout:
            sock.setsockopt(zmq.RCVTIMEO, milliseconds)
            self._timeout = milliseconds
        self.receiving = True
        try:
            if self.stopping:
                # SIGTERM came just before this read (the handler runs between bytecodes of
                # this thread, so it either saw `receiving` or set `stopping` before this).
                raise _Stopping
            frame = sock.recv(copy=False)
        except zmq.Again:
            return None
        finally:
            self.receiving = False
        self.pending.extend(_decode(sock, frame, self.log))
        return self.pending.popleft() if self.pending else None

    def read_waiting(self, on_cancel: Callable[[protocol.Cancel], None]) -> None:
        """Read every message waiting, without blocking: a cancel goes to `on_cancel`, the rest
        to `pending` (the watcher's side, while it holds the socket)."""
        sock = self.sock
        while True:
            try:
                frame = sock.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            for message in _decode(sock, frame, self.log):
                if isinstance(message, protocol.Cancel):
                    on_cancel(message)
                else:
                    self.pending.append(message)

    def rejoin(self, running: list[int]) -> None:
        """Say hello to the controller again, with the tasks this worker holds: `running`
        (the task it runs, if any) and those sent ahead of it."""
        self.rejoin_due = False
        if self.hello is None:
            return
        ahead = [message.task_id for message in self.pending if isinstance(message, protocol.Task)]
        self.send(protocol.encode(self.hello(running + ahead)))

    def mark_cancelled(self, task_id: int) -> None:
        """A cancel for a task not running: skip it if it is waiting; else it is done."""
        if any(isinstance(m, protocol.Task) and m.task_id == task_id for m in self.pending):
            self.cancelled.add(task_id)

    def send_later(self, frames: list[protocol.Buffer]) -> None:
        """Keep a result back to go out with the next ones (fewer, larger messages)."""
        if not self.unsent:
            self.unsent_since = time.monotonic()
        self.unsent.extend(frames)

    def flush(self) -> None:
        """Send the results kept back, as one message."""
        if self.unsent:
            frames, self.unsent = self.unsent, []
            self.send(frames)

    def send(self, frames: list[protocol.Buffer]) -> None:
        last = len(frames) - 1
        for position, part in enumerate(frames):
            self.sock.send(part, _SNDMORE if position < last else 0, copy=protocol.is_small(part))

    def close(self) -> None:
        os.close(self.wake_read)
        os.close(self._wake_write)


def _decode(sock: zmq.Socket[bytes], frame: zmq.Frame, log: TextIO) -> list[protocol.Message]:
    frames = [frame]
    while frame.more:
        frame = sock.recv(copy=False)
        frames.append(frame)
    try:
        return protocol.decode_all([part.buffer for part in frames])
    except ProtocolError as error:
        print(f"batchcrew worker: dropped a malformed message: {error}", file=log)
        return []


class _Warnings:
    """Records every warning a task issues (the "always" action: none is skipped as a repeat),
    under the warning filters the worker started with, whatever an earlier task did to them.

    `warnings.catch_warnings` around each task would do it, but entering and leaving it costs
    more than a tiny task's own work (it copies the filters, and Python drops its caches of them
    on the way in and out). So it is entered once and stays entered while tasks leave the filter
    list and `warnings.showwarning` as they found them (the "always" filter at the head decides
    for every warning whatever follows it), and it is entered afresh after a task that changed
    them.
    """

    def __init__(self) -> None:
        self._context: warnings.catch_warnings[list[warnings.WarningMessage]] | None = None
        self._caught: list[warnings.WarningMessage] = []
        self._filters: Sequence[Any] = ()
        self._length = 0
        self._head: Any = None
        self._show: Any = None

    def start(self) -> None:
        """A task starts: from here on, its warnings are recorded."""
        if not self._intact():
            self.close()
            context = warnings.catch_warnings(record=True)
            caught = context.__enter__()
            warnings.simplefilter("always")
            self._context, self._caught = context, caught
            self._filters = filters = warnings.filters
            self._length, self._head = len(filters), filters[0]
            self._show = warnings.showwarning
        self._caught.clear()  # the worker's own, between tasks, are not the task's

    def take(self) -> list[warnings.WarningMessage]:
        """The warnings recorded since `start`."""
        taken = self._caught[:]
        self._caught.clear()
        return taken

    def close(self) -> None:
        """Put the filters and `showwarning` back as they were before the first task."""
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def _intact(self) -> bool:
        filters = warnings.filters
        return (
            self._context is not None
            and filters is self._filters
            and len(filters) == self._length
            and filters[0] is self._head
            and warnings.showwarning is self._show
        )


@dataclass(slots=True)
class _Running:
    """The task on the main thread now, as the watcher sees it."""

    task_id: int
    received: float  # time.monotonic(), when the worker took it up (to load it)
    timeout: float | None
    started: float | None = None  # when its own code began: its time limit counts from here
    done: bool = False  # its code has returned: no clock runs any more
    pinged: float = 0.0  # when the worker last told the controller it is still on it
    interrupt: str | None = None  # "cancel" or "timeout", once it was interrupted
    interrupted_at: float = 0.0
    raised: bool = False  # the interruption was raised in it
    relayed: float = 0.0  # when its output was last relayed to the controller
    coroutine: asyncio.Task[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    gave_up: bool = False  # in-process: the watcher said it ignored its interruption


class Runner:
    """Runs one task: unpickle it, call it (awaiting a coroutine on a loop kept for the worker's
    life), capture warnings, output, run time and any exception, and pickle the outcome.

    While the task runs, `running` describes it and the channel is lent to the watcher, which
    may interrupt it: a plain function by SIGINT on the main thread (raising `TaskInterrupted`
    where Python can), a coroutine by cancelling it.
    """

    def __init__(
        self, channel: _Channel | None = None, output: Capture | None = None, *, live: bool = False
    ) -> None:
        # By-value functions of one module share one namespace here, as imported ones do.
        self.namespaces = namespaces.Namespaces(live=live)
        load = self.namespaces.load
        self._functions = _FunctionCache(load)
        self._policies = _FunctionCache(load, 8)  # tasks' retry_on, unpickled when one raises
        self._warnings = _Warnings()
        self.usage = _Usage()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel = channel
        self.output = output  # the process's stdout and stderr, if they are captured
        self.running: _Running | None = None
        self._interruptible = False  # the main thread is inside the task's own code
        self.draining: str | None = None  # why it leaves, once SIGTERM came
        self.handed_back: int | None = None  # the task SIGTERM interrupted: not to be reported

    def on_terminate(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler: the container is being stopped from outside (TerminateJob, a
        reclaimed Spot host, a scale-in; ECS sends SIGKILL after its stop timeout, 30 s by
        default). The running task is interrupted and handed back to the controller, which
        runs it elsewhere; a wait for the next message is broken off; the worker then says
        why it goes, and goes."""
        if self.draining is not None:
            return
        self.draining = STOPPED_BY_SIGTERM
        running = self.running
        if running is not None and not running.done:
            self.handed_back = running.task_id
            if running.interrupt is None:
                running.interrupt = "stopping"
                running.interrupted_at = time.monotonic()
            coroutine, loop = running.coroutine, running.loop
            if coroutine is not None and loop is not None:
                loop.call_soon_threadsafe(coroutine.cancel)
            elif self._interruptible and not running.raised:
                running.raised = True
                raise TaskInterrupted(_interrupt_message(running))
            return
        channel = self._channel
        if channel is not None:
            channel.stopping = True
            if channel.receiving:
                raise _Stopping  # nothing half sent or half read: safe to leave from here

    @property
    def interruptible(self) -> bool:
        """Whether the task thread is inside the task's own code now."""
        return self._interruptible

    def on_signal(self, signum: int, frame: Any) -> None:
        """The SIGINT handler: raise the interruption in the task, and only there."""
        running = self.running
        if running is None or running.interrupt is None or running.raised:
            return
        if not self._interruptible or running.coroutine is not None:
            return
        running.raised = True
        raise TaskInterrupted(_interrupt_message(running))

    def set_up(self, setup: protocol.Setup) -> protocol.Ready:
        """Take the controller's multiprocessing authkey, if it sent it; run its initializer,
        if any, once, before any task."""
        if len(setup.authkey):
            # As multiprocessing's own children do: a Manager's proxies, unpickled from a task
            # or the initializer's arguments, authenticate to the manager with this key.
            from multiprocessing import process

            process.current_process().authkey = bytes(setup.authkey)
        if not len(setup.initializer):
            return protocol.Ready()
        try:
            initializer = self.namespaces.load(setup.initializer)
            initargs = self.namespaces.load(setup.initargs)
            value = initializer(*initargs)
            if inspect.isawaitable(value):
                self._await(value, None)
        except BaseException as error:
            return protocol.Ready(_describe(error), _trace(error))
        return protocol.Ready()

    def everywhere(self, call: protocol.Everywhere) -> protocol.Ran:
        """Run a `Controller.everywhere` call: set-up, between tasks, not interruptible."""
        start = time.perf_counter()
        try:
            function = self.namespaces.load(call.function)
            args, kwargs = self.namespaces.load(call.arguments)
            value = function(*args, **kwargs)
            if inspect.isawaitable(value):
                self._await(value, None)
        except BaseException as error:
            seconds = time.perf_counter() - start
            return protocol.Ran(call.call, seconds, _describe(error), _trace(error))
        return protocol.Ran(call.call, time.perf_counter() - start)

    def run(self, task: protocol.Task) -> protocol.Outcome:
        running = _Running(task.task_id, time.monotonic(), task.timeout)
        self.usage.task_starts()
        output = self.output
        if output is not None:
            output.begin()  # what loading it prints (an import) is its output too
        self.running = running
        channel = self._channel
        if channel is not None:
            # From here on the watcher may take the socket: loading the task (imports, large
            # arguments) can take long too, and it says so to the controller meanwhile.
            channel.lend()
        try:
            outcome = self._run(task, running)
        finally:
            running.done = True
            self.running = None
            if channel is not None:
                channel.reclaim()
        if output is not None and output.relay and channel is not None:
            rest = output.take_unrelayed()  # written since the watcher last relayed
            if rest:
                channel.send(protocol.encode(protocol.Output(task.task_id, rest)))
        return outcome

    def _run(self, task: protocol.Task, running: _Running) -> protocol.Outcome:
        start = time.perf_counter()
        try:
            function = self._functions.get(task.function)
            args, kwargs = self.namespaces.load(task.arguments, task.buffers)
        except BaseException as error:
            return protocol.Outcome(
                task.task_id,
                "error",
                time.perf_counter() - start,
                error=f"the task could not be unpickled on the worker: {_describe(error)}",
                trace=_trace(error),
                exception=protocol.dump_exception(error),
                output=b"" if self.output is None else self.output.end(),
            )
        self._warnings.start()
        failure: BaseException | None = None
        seeding.begin(task.seed, task.attempt)
        running.started = time.monotonic()  # its time limit counts from here
        try:
            # The SIGINT handler raises only between these two flags: an interruption
            # that lands in the worker's own bookkeeping is dropped, not raised there.
            self._interruptible = True
            if running.interrupt is not None:
                raise TaskInterrupted(f"{_interrupt_message(running)} while it loaded")
            # (None, the commonest return, is not awaitable: not asking saves time.)
            if task.trace is None:
                value = function(*args, **kwargs)
                if value is not None and inspect.isawaitable(value):
                    value = self._await(value, running)
            else:
                with tracing.joined(task.trace):  # in the trace of whoever pushed it
                    value = function(*args, **kwargs)
                    if value is not None and inspect.isawaitable(value):
                        value = self._await(value, running)
            self._interruptible = False
        except BaseException as error:
            self._interruptible = False
            value, failure = None, error
        retry, note = False, ""
        if failure is not None and task.retry_on is not None and running.interrupt is None:
            retry, note = self._retries(task.retry_on, failure)
        running.done = True
        seeding.end()
        seconds = time.perf_counter() - start
        rss, peak, cpu = self.usage.task_ends(seconds)
        output = b"" if self.output is None else self.output.end()
        # From here on, everything that turns the task's exception, result or warnings into
        # text or bytes is guarded: nothing a task raises, returns or warns ends its worker.
        messages = _warning_texts(self._warnings.take())
        if running.interrupt is not None:
            # Interrupted: however the task ended (it may have caught the interruption and
            # returned), it resolves as cancelled or timed out.
            trace = None if failure is None else _trace(failure)
            return protocol.Outcome(
                task.task_id,
                "error",
                seconds,
                error=_interrupt_message(running),
                trace=trace,
                warnings=messages,
                memory=peak,
                rss=rss,
                cpu=cpu,
                output=output,
            )
        if failure is not None:
            return protocol.Outcome(
                task.task_id,
                "error",
                seconds,
                error=_describe(failure) + note,
                trace=_trace(failure),
                exception=protocol.dump_exception(failure),
                warnings=messages,
                memory=peak,
                rss=rss,
                cpu=cpu,
                retry=retry,
                output=output,
            )
        try:
            data, buffers = protocol.dump_value(value)
        except BaseException as error:
            return protocol.Outcome(
                task.task_id,
                "error",
                seconds,
                error=f"the task's result cannot be pickled: {_describe(error)}",
                trace=_trace(error),
                exception=protocol.dump_exception(error),
                warnings=messages,
                memory=peak,
                rss=rss,
                cpu=cpu,
                output=output,
            )
        return protocol.Outcome(
            task.task_id,
            "success",
            seconds,
            warnings=messages,
            value=data,
            buffers=buffers,
            memory=peak,
            rss=rss,
            cpu=cpu,
            output=output,
        )

    def _retries(self, retry_on: protocol.Buffer, error: BaseException) -> tuple[bool, str]:
        """Whether the task's `retry_on` retries `error`, which it raised; and, when that
        cannot be told, a note for its error message (it is then not retried)."""
        # retry_on is applied here, on the worker, not on the controller: here the exception
        # itself is at hand (isinstance against the real classes and their hierarchy; a
        # predicate reading its attributes, an HTTP status or an errno), where the controller
        # would have only its text.
        try:
            policy = self._policies.get(retry_on)
        except BaseException as failure:
            note = f" (not retried: its retry_on cannot be unpickled here: {_describe(failure)})"
            return False, note
        try:
            # A predicate is the task's own code: interruptible, and within its time limit.
            self._interruptible = True
            try:
                return retrying.matches(policy, error), ""
            finally:
                self._interruptible = False
        except BaseException as failure:
            return False, f" (not retried: its retry_on raised {_describe(failure)})"

    def _await(self, awaitable: Any, running: _Running | None) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()

        async def wrap() -> Any:
            return await awaitable

        coroutine = self._loop.create_task(wrap())
        if running is not None:
            running.loop = self._loop
            running.coroutine = coroutine
            if running.interrupt is not None:  # interrupted before the watcher saw this task
                coroutine.cancel()
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        self._warnings.close()
        if self._loop is not None:
            self._loop.close()


def _interrupt_message(running: _Running) -> str:
    if running.interrupt == "stopping":
        return (
            "the worker is being stopped (SIGTERM) and hands the task back to the controller, "
            "which runs it again elsewhere"
        )
    if running.interrupt == "timeout":
        return (
            f"TimeoutError: the task ran longer than its seconds_timeout={running.timeout:g} "
            "and was interrupted"
        )
    return "the task was cancelled and interrupted"


class _Watcher(threading.Thread):
    """The worker's second thread: it never runs user code.

    It ends the process when the connection to the controller is gone for too long: it reads
    the socket's monitor events, which libzmq's I/O thread produces (with ZMTP heartbeats) even
    while a task keeps the main thread busy. And it keeps the running task's clocks: a task that
    runs past `_LONG` has its socket watched here for a cancel; one past its timeout, or
    cancelled, is interrupted; one still running `seconds_interrupt` after that ends the worker.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        monitor: zmq.Socket[bytes],
        channel: _Channel,
        runner: Runner,
        settings: WorkerSettings,
        task_thread: int | None,
        in_process: bool = False,
    ) -> None:
        super().__init__(name="batchcrew-watcher", daemon=True)
        # In the controller's own process (the in-process launcher), the worker must never
        # end the process: it interrupts its task thread by an asynchronous exception instead
        # of SIGINT, and gives up on a task, or on its controller, without exiting.
        self._in_process = in_process
        self._context = context
        self._monitor = monitor
        self._channel = channel
        self._runner = runner
        self._settings = settings
        self._stopping = threading.Event()
        self._holding = False
        self._task_thread = task_thread  # where SIGINT interrupts a task; None: it cannot

    def run(self) -> None:
        try:
            self._watch()
        except BaseException:
            # A fault here would leave the main thread waiting for the socket forever.
            log = self._channel.log
            traceback.print_exc(file=log)
            if self._in_process:
                print("batchcrew worker: its watcher thread failed", file=log, flush=True)
                return
            print("batchcrew worker: its watcher thread failed; exiting", file=log, flush=True)
            os._exit(EXIT_LOST)

    def _watch(self) -> None:
        settings = self._settings
        channel = self._channel
        connected = False
        ever_connected = False
        lost_at = time.monotonic()
        failure = ""
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(channel.wake_read, zmq.POLLIN)
        output = self._runner.output
        while not self._stopping.is_set():
            events = dict(poller.poll(int(_TICK * 1000)))
            if output is not None:
                output.follow()  # what tasks write reaches the worker's log as they write it
            while self._monitor in events:
                try:
                    event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    return
                kind = event["event"]
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    if ever_connected and not connected and settings.seconds_reconnect > 0:
                        # Back after a loss: to a controller restarted on its journal, which
                        # takes this worker back once it says what it holds.
                        channel.rejoin_due = True
                        print(
                            f"batchcrew worker {settings.identity.decode()}: connected again to "
                            f"{settings.controller}",
                            file=channel.log,
                            flush=True,
                        )
                    connected = ever_connected = True
                elif kind == zmq.EVENT_DISCONNECTED:
                    if connected:
                        lost_at = time.monotonic()
                    connected = False
                elif kind == zmq.EVENT_MONITOR_STOPPED:
                    return
                elif kind in _HANDSHAKE_FAILURES:
                    failure = _HANDSHAKE_FAILURES[zmq.Event(kind)]
            self._keep_clocks(poller, channel.wake_read in events)
            if connected:
                continue
            limit = (
                max(settings.seconds_heartbeat, settings.seconds_reconnect)
                if ever_connected
                else settings.seconds_connect
            )
            if time.monotonic() - lost_at > limit:
                what = "lost its connection to" if ever_connected else "could not connect to"
                message = (
                    f"batchcrew worker {settings.identity.decode()}: {what} the controller at "
                    f"{settings.controller} for {limit:g} s"
                )
                if failure:
                    message += f" ({failure})"
                if self._in_process:
                    print(message, file=channel.log, flush=True)
                    return
                print(message + "; exiting", file=channel.log, flush=True)
                os._exit(EXIT_LOST)

    def _keep_clocks(self, poller: zmq.Poller, woken: bool) -> None:
        channel = self._channel
        running = self._runner.running
        now = time.monotonic()
        if self._holding and (woken or running is None):
            self._give_back(poller)  # the main thread wants its socket
            return
        if running is None:
            if woken:
                channel.drain_wake()
            return
        long_running = now - running.received >= _LONG
        if not self._holding and long_running and channel.lock.acquire(blocking=False):
            channel.drain_wake()
            poller.register(channel.sock, zmq.POLLIN)
            self._holding = True
            channel.flush()  # results kept back for company: this task is not short
        if self._holding:
            if channel.rejoin_due:
                channel.rejoin([running.task_id])
            channel.read_waiting(lambda cancel: self._on_cancel(cancel, running))
        if running.done:
            return
        started = running.started
        if (
            running.interrupt is None
            and running.timeout is not None
            and started is not None
            and now - started >= running.timeout
        ):
            self._interrupt(running, "timeout")
        if (
            running.interrupt is not None
            and now - running.interrupted_at >= self._settings.seconds_interrupt
            and self._runner.running is running
            and not running.done
        ):
            self._give_up(running)
        output = self._runner.output
        if (
            self._holding
            and output is not None
            and output.relay
            and now - running.relayed >= _SECONDS_RELAY
        ):
            running.relayed = now
            data = output.relay_since()
            if data:
                channel.send(protocol.encode(protocol.Output(running.task_id, data)))
        if self._holding and now - max(running.pinged, running.received) >= _SECONDS_BUSY:
            # Every second of a long task: the controller shows how much memory and CPU time
            # it takes (and the last line it wrote), and ends this worker if it falls silent
            # while a timed or interrupted task runs (frozen, or a task holding the GIL in C
            # code keeps this thread out).
            running.pinged = now
            rss, _, cpu = self._runner.usage.read()
            tail = "" if output is None else output.tail()
            channel.send(protocol.encode(protocol.Busy(running.task_id, rss, cpu, tail)))

    def _give_back(self, poller: zmq.Poller) -> None:
        poller.unregister(self._channel.sock)
        self._channel.drain_wake()
        self._holding = False
        self._channel.lock.release()

    def _on_cancel(self, cancel: protocol.Cancel, running: _Running) -> None:
        if cancel.task_id == running.task_id:
            if running.interrupt is None:
                self._interrupt(running, "cancel")
        else:
            self._channel.mark_cancelled(cancel.task_id)

    def _interrupt(self, running: _Running, why: str) -> None:
        running.interrupted_at = time.monotonic()
        running.interrupt = why
        coroutine, loop = running.coroutine, running.loop
        if coroutine is not None and loop is not None:
            loop.call_soon_threadsafe(coroutine.cancel)
        elif self._task_thread is not None and self._in_process:
            if self._runner.interruptible and not running.raised:
                # Python checks for it between bytecodes: not inside C code, as for SIGINT.
                running.raised = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._task_thread), ctypes.py_object(TaskInterrupted)
                )
        elif self._task_thread is not None:
            signal.pthread_kill(self._task_thread, signal.SIGINT)

    def _give_up(self, running: _Running) -> None:
        """The task ignored its interruption: report that, and end the process under it."""
        channel = self._channel
        reason = (
            f"task {running.task_id} did not stop within seconds_interrupt="
            f"{self._settings.seconds_interrupt:g} after it was interrupted"
        )
        if self._in_process:
            if not running.gave_up:
                running.gave_up = True
                print(
                    f"batchcrew worker: {reason}; an in-process worker cannot be ended: it "
                    "goes on when the task returns",
                    file=channel.log,
                    flush=True,
                )
            return
        print(f"batchcrew worker: {reason}; exiting", file=channel.log, flush=True)
        # Stopped from outside, it hands the task back (it did not fail); else the launcher
        # must end what the task left.
        stopping = self._runner.draining is not None
        code = EXIT_TERMINATED if stopping else EXIT_STUCK
        goodbye = (
            protocol.Bye(f"{STOPPED_BY_SIGTERM}; {reason}", interrupted=True)
            if stopping
            else protocol.Bye(reason, end=True)
        )
        # Whatever happens below, the process ends soon: the task holds the main thread.
        threading.Timer(_SECONDS_FLUSH + 1.0, os._exit, (code,)).start()
        if self._holding or channel.lock.acquire(timeout=1.0):
            channel.flush()
            if running.interrupt == "timeout":
                output = self._runner.output
                outcome = protocol.Outcome(
                    running.task_id,
                    "error",
                    time.monotonic() - (running.started or running.received),
                    error=f"{_interrupt_message(running)}, but did not stop: its worker was ended",
                    output=b"" if output is None else output.so_far(),
                )
                channel.send(protocol.encode(outcome))
            channel.send(protocol.encode(goodbye))
            # Closing everything and ending the context flushes what was just sent.
            channel.sock.disable_monitor()
            channel.sock.close(linger=int(_SECONDS_FLUSH * 1000))
            self._monitor.close(0)
            self._context.term()
        os._exit(code)

    def stop(self) -> None:
        self._stopping.set()


_TICK = 0.05  # how often the watcher looks at the clocks
_SECONDS_REJOIN = 0.25  # with seconds_reconnect, how soon an idle worker sees it is back
_SECONDS_BUSY = 1.0  # how often a worker on a long task says it is alive, and what it uses
_SECONDS_RELAY = 0.2  # with output_relay, how often a long task's new output is sent
_RELAY_MAX = 1 << 16  # and the most bytes sent at a time
_SECONDS_MEASURED = 0.001  # a task this long has its memory and CPU time measured
_SECONDS_USAGE = 0.5  # shorter tasks share figures this old at most
_UNSENT_MAX = 16  # results kept back at most, to go out together
_SECONDS_UNSENT = 0.002  # and for at most this long
_SECONDS_FLUSH = 2.0  # how long a worker that gives up waits for its last words to leave
_SECONDS_EXIT = 5.0  # after its goodbye, the longest a worker's process may take to end
_LONG = 0.05  # a task running this long has its socket watched for a cancel


_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: (
        "the controller refused this worker's key: it was never issued, or it was retired"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "the encryption handshake failed: the controller's key does not match "
        "BATCHCREW_SERVER_KEY, or the peer is not a batchcrew controller"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: (
        "the encryption handshake failed: the controller's key does not match "
        "BATCHCREW_SERVER_KEY, or the peer is not a batchcrew controller"
    ),
}


def _socket(context: zmq.Context[zmq.Socket[bytes]], settings: WorkerSettings) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, settings.identity)
    sock.setsockopt(zmq.LINGER, 2000)
    heartbeat_ms = max(1, int(settings.seconds_heartbeat * 1000))
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, heartbeat_ms // 4))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, heartbeat_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, settings.max_message_size)
    if settings.server_key:
        # The worker checks the controller's key before it runs anything: a different
        # process listening on that port cannot complete the handshake.
        sock.setsockopt(zmq.CURVE_SERVERKEY, settings.server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, settings.public_key.encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, settings.secret_key.encode())
    return sock


class SetupError(Exception):
    """The controller refused this worker, or its initializer raised: it must exit.

    `trace`: the initializer's traceback, which the controller is sent too."""

    def __init__(self, message: str, trace: str | None = None) -> None:
        super().__init__(message)
        self.trace = trace


def serve(
    settings: WorkerSettings, output: Capture | None = None, *, in_process: bool = False
) -> str:
    """Connect, set up, run tasks until it is time to go, and return why the worker exits.

    `output`: the process's stdout and stderr, captured (only the worker process's entry
    point takes them over): each outcome then carries its task's output, and the worker's own
    messages go to `output.log`. None: not captured (every outcome's output is empty), and
    its messages go to `sys.stderr`.

    Raises `SetupError` if the controller refuses this worker (another Python or batchcrew
    version) or the initializer raises. Call it on the main thread: a plain-function task is
    interrupted by SIGINT there, and SIGTERM stops the worker, which hands its running task
    back to the controller (the reason it returns is then `STOPPED_BY_SIGTERM`).

    `in_process`: the worker runs on a thread of the controller's own process (the in-process
    launcher): its functions see that process's live module globals, a task is interrupted by
    an asynchronous exception, and nothing it does ends the process.
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(context, settings)
    monitor = sock.get_monitor_socket()
    channel = _Channel(sock, sys.stderr if output is None else output.log)
    runner = Runner(channel, output, live=in_process)
    on_main = threading.current_thread() is threading.main_thread() and not in_process
    previous = signal.signal(signal.SIGINT, runner.on_signal) if on_main else None
    previous_term = signal.signal(signal.SIGTERM, runner.on_terminate) if on_main else None
    task_thread = threading.get_ident() if on_main or in_process else None
    watcher = _Watcher(context, monitor, channel, runner, settings, task_thread, in_process)
    watcher.start()
    name = settings.identity.decode()
    if settings.announce:
        # The first line of a remote worker's log (CloudWatch, a SLURM output file): where it
        # dials, so that one that cannot get there says where it tried.
        print(f"batchcrew worker {name}: connecting to {settings.controller}", file=channel.log)
    try:
        sock.connect(settings.controller)
        try:
            _set_up(channel, runner, settings)
        except _Stopping:
            reason = f"{STOPPED_BY_SIGTERM} before it was set up"
        else:
            try:
                reason = _loop(channel, runner, settings)
            except _Stopping:
                reason = STOPPED_BY_SIGTERM
            channel.flush()  # before the goodbye, which hands back what has not run
            goodbye = protocol.Bye(reason, interrupted=runner.draining is not None)
            channel.send(protocol.encode(goodbye))
        if settings.announce:
            print(f"batchcrew worker {name}: leaving: {reason}", file=channel.log, flush=True)
        return reason
    finally:
        watcher.stop()
        watcher.join()
        if on_main:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
        runner.close()
        channel.close()
        sock.disable_monitor()
        sock.close()  # lingers so that the goodbye reaches the controller
        monitor.close(0)
        context.term()


def _set_up(channel: _Channel, runner: Runner, settings: WorkerSettings) -> None:
    """Say hello with this worker's versions; run the setup the controller answers with."""
    import cloudpickle

    from batchcrew import __version__

    def hello(holding: list[int] | None) -> protocol.Hello:
        return protocol.Hello(
            os.getpid(),
            socket.gethostname(),
            platform.python_version(),
            __version__,
            cloudpickle.__version__,
            os.environ.get("AWS_BATCH_JOB_ID", ""),
            holding,
        )

    channel.send(protocol.encode(hello(None)))
    deadline = time.monotonic() + settings.seconds_connect
    while True:
        message = channel.receive(max(0.0, deadline - time.monotonic()))
        if message is None:
            raise SetupError(
                f"the controller at {settings.controller} did not answer its hello within "
                f"{settings.seconds_connect:g} s"
            )
        if isinstance(message, protocol.Stop):
            raise SetupError(f"the controller refused this worker: {message.reason}")
        if isinstance(message, protocol.Setup):
            break
    ready = runner.set_up(message)
    channel.send(protocol.encode(ready))
    if settings.seconds_reconnect > 0:
        channel.hello = hello
        channel.read_max = _SECONDS_REJOIN
    if ready.error is not None:
        raise SetupError(f"its initializer raised {ready.error}", ready.trace)


def _loop(channel: _Channel, runner: Runner, settings: WorkerSettings) -> str:
    started = last = now = time.monotonic()
    done = 0
    asked = False  # it asked the controller whether it may leave idle, and waits to hear
    while True:
        if runner.draining is not None:
            return runner.draining  # SIGTERM came while it was busy elsewhere
        wall = settings.seconds_wall - (now - started)
        idle = settings.seconds_idle - (now - last)
        message = channel.receive(max(0.0, min(wall, idle)))
        now = time.monotonic()
        if type(message) is protocol.Task:
            pass  # the common case, first (it is handled below the rest)
        elif message is None:
            # Nothing came: check the clocks.
            if now - started >= settings.seconds_wall:
                return f"seconds_wall={settings.seconds_wall:g} reached"
            if now - last >= settings.seconds_idle:
                if not settings.ask_idle:
                    return f"idle for seconds_idle={settings.seconds_idle:g}"
                # One of the controller's warm workers_min may have to stay: ask, and wait
                # another seconds_idle for the answer (no answer: ask again).
                asked = True
                last = now
                channel.send(protocol.encode(protocol.Idle()))
            continue
        elif isinstance(message, protocol.Stop):
            if asked:
                return f"idle for seconds_idle={settings.seconds_idle:g}"
            return f"stopped by the controller: {message.reason}"
        elif isinstance(message, protocol.Stay):
            asked = False
            last = now
            continue
        elif isinstance(message, protocol.Cancel):
            channel.mark_cancelled(message.task_id)
            continue
        elif isinstance(message, protocol.Everywhere):
            channel.flush()  # results kept back go first, as they came first
            channel.send(protocol.encode(runner.everywhere(message)))
            last = now = time.monotonic()
            continue
        else:
            continue
        asked = False
        if now - started >= settings.seconds_wall:
            # Soft wall time: no new task once it is spent. The goodbye hands this task and
            # any sent ahead back to the controller, which requeues them.
            return f"seconds_wall={settings.seconds_wall:g} reached"
        if message.task_id in channel.cancelled:
            channel.cancelled.discard(message.task_id)
            outcome = protocol.Outcome(
                message.task_id, "error", 0.0, error="the task was cancelled before it started"
            )
        else:
            outcome = runner.run(message)
            if runner.handed_back == message.task_id:
                # Interrupted by SIGTERM: the goodbye hands it back, to run elsewhere.
                return STOPPED_BY_SIGTERM
        out = protocol.encode(outcome)
        limit = settings.max_message_size
        if limit > 0:
            size = protocol.nbytes(out[0]) if len(out) == 1 else sum(map(protocol.nbytes, out))
            if size > limit:
                out = protocol.encode(_within(outcome, size, limit, runner.output))
        # Results of short tasks go back together while more tasks wait here: one message
        # instead of several, and the controller answers with the next tasks together.
        if not channel.unsent and not channel.waiting():
            channel.send(out)  # alone: straight out
        elif not protocol.is_small(out[0]):
            # Large (its output, say): alone, after those kept back, so that together they
            # cannot pass max_message_size.
            channel.flush()
            channel.send(out)
        else:
            channel.send_later(out)
            if (
                len(out) > 1
                or len(channel.unsent) >= _UNSENT_MAX
                or time.monotonic() - channel.unsent_since >= _SECONDS_UNSENT
                or not channel.waiting()
            ):
                channel.flush()
        done += 1
        last = now = time.monotonic()
        if done >= settings.tasks_max:
            return f"tasks_max={settings.tasks_max:g} reached"


_NOTE_ROOM = 200  # bytes left for the note in an output cut to fit max_message_size


def _within(
    outcome: protocol.Outcome, size: int, limit: int, output: Capture | None
) -> protocol.Outcome:
    """An outcome of `size` bytes, over max_message_size `limit`, made to fit: its output cut
    if that is enough, else an error saying that its result is too large (with what output
    still fits)."""
    printed = protocol.nbytes(outcome.output)
    why = f"max_message_size={limit}"
    if output is not None and printed and size - printed + _NOTE_ROOM <= limit:
        kept = output.again(limit - (size - printed) - _NOTE_ROOM, why)
        return dataclasses.replace(outcome, output=kept)
    failed = protocol.Outcome(
        outcome.task_id,
        "error",
        outcome.seconds,
        error=f"the task's result is {size - printed} bytes pickled, over the controller's "
        f"max_message_size={limit}; return large data by reference (a path, a URL) or raise "
        "max_message_size",
        warnings=outcome.warnings,
    )
    if output is not None and printed:
        bare = sum(map(protocol.nbytes, protocol.encode(failed)))
        failed.output = output.again(limit - bare - _NOTE_ROOM, why)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m batchcrew.worker`: settings from the environment."""
    parser = argparse.ArgumentParser(
        prog="python -m batchcrew.worker",
        description="A batchcrew worker. Launchers start it with BATCHCREW_* environment "
        "variables; the flags below override them.",
    )
    parser.add_argument("--controller", help="address to connect to, e.g. tcp://10.0.0.5:5555")
    parser.add_argument("--launch", help="launch id issued by the controller")
    parser.add_argument("--index", type=int, help="worker number within its launch")
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    for name, variable in (
        ("controller", "BATCHCREW_CONTROLLER"),
        ("launch", "BATCHCREW_LAUNCH"),
        ("index", "BATCHCREW_WORKER_INDEX"),
    ):
        value = getattr(args, name)
        if value is not None:
            environ[variable] = str(value)
    try:
        settings = WorkerSettings.from_environment(environ)
    except ValueError as error:
        print(f"batchcrew worker: {error}", file=sys.stderr)
        return 2
    output = _capture(settings)
    try:
        reason = serve(settings, output)
    except SetupError as error:
        log = sys.stderr if output is None else output.log
        said = f"batchcrew worker {settings.identity.decode()}: {error}"
        if error.trace and settings.announce:  # a log of its own (remote): the whole story
            said += f"\n{error.trace}"
        elif error.trace:  # the controller's terminal: it logs the traceback, once
            said += " (the controller logs its traceback)"
        print(said, file=log)
        _exit_soon(EXIT_SETUP)
        return EXIT_SETUP
    finally:
        if output is not None:
            output.close()
    code = EXIT_TERMINATED if reason.startswith(STOPPED_BY_SIGTERM) else 0
    _exit_soon(code)
    return code


def _capture(settings: WorkerSettings) -> Capture | None:
    """Take the process's stdout and stderr over, so that each task's output travels with
    its outcome; None if the controller asks for no output, or they cannot be taken over."""
    if settings.output_max <= 0 and not settings.output_relay:
        return None
    relay_max = _RELAY_MAX
    if settings.max_message_size > 0:  # an Output message must get through too
        relay_max = max(0, min(relay_max, settings.max_message_size - 1024))
    try:
        return Capture(
            max(0, settings.output_max), relay=bool(settings.output_relay), relay_max=relay_max
        )
    except OSError as error:
        name = settings.identity.decode()
        print(f"batchcrew worker {name}: task output is not captured: {error}", file=sys.stderr)
        return None


def _exit_soon(code: int) -> None:
    """Make sure the process ends within `_SECONDS_EXIT` of saying goodbye: the controller
    trusts a worker that said goodbye to be gone (it does not end its job), and a thread a
    task left running (a non-daemon thread, an atexit hook that waits) would otherwise hold the
    interpreter, and its machine, forever."""

    def leave() -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(_SECONDS_EXIT, leave)
    timer.daemon = True  # it must not itself keep the interpreter alive
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
