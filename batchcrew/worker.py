"""The worker process: connect to the controller, run tasks one at a time, report each outcome.

Run as `python -m batchcrew.worker` (or `batchcrew worker`) with its settings in `BATCHCREW_*`
environment variables, as launchers do. It imports little (no polars, no asyncio until a task
needs it) so that it starts fast, and it exits by itself when idle, when its wall time or task
budget is spent, and when it has lost its controller for `seconds_heartbeat`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from batchcrew import protocol
from batchcrew.errors import ProtocolError

EXIT_LOST = 3
"""Exit code of a worker that lost its controller, or could not reach it."""

_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a worker needs, carried by `BATCHCREW_*` environment variables.

    `server_key` is the controller's CURVE public key; `public_key`/`secret_key` are this
    worker's own (all Z85 text). Empty keys mean no encryption (`security="none"`).
    """

    controller: str
    launch: str
    index: int = 0
    seconds_idle: float = math.inf
    seconds_wall: float = math.inf
    tasks_max: float = math.inf
    seconds_heartbeat: float = 10.0
    seconds_connect: float = 60.0
    max_message_size: int = -1
    server_key: str = ""
    public_key: str = ""
    secret_key: str = ""

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

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._functions: dict[bytes, Callable[..., Any]] = {}

    def get(self, data: bytes) -> Callable[..., Any]:
        function = self._functions.get(data)
        if function is None:
            function = protocol.load(data)
            if len(self._functions) >= self._size:
                self._functions.pop(next(iter(self._functions)))
            self._functions[data] = function
        return function


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Runner:
    """Runs one task: unpickle it, call it (awaiting a coroutine on a loop kept for the worker's
    life), capture warnings, run time and any exception, and pickle the outcome."""

    def __init__(self) -> None:
        self._functions = _FunctionCache()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, task: protocol.Task) -> protocol.Outcome:
        start = time.perf_counter()
        try:
            function = self._functions.get(bytes(task.function))
            args, kwargs = protocol.load(task.arguments, task.buffers)
        except BaseException as error:
            return protocol.Outcome(
                task.task_id,
                "error",
                time.perf_counter() - start,
                error=f"the task could not be unpickled on the worker: {_describe(error)}",
                trace=traceback.format_exc(),
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            failure: BaseException | None = None
            try:
                value = function(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = self._await(value)
            except BaseException as error:
                value, failure = None, error
        seconds = time.perf_counter() - start
        messages = tuple(f"{item.category.__name__}: {item.message}" for item in caught)
        if failure is not None:
            return protocol.Outcome(
                task.task_id,
                "error",
                seconds,
                error=_describe(failure),
                trace="".join(traceback.format_exception(failure)),
                warnings=messages,
            )
        try:
            data, buffers = protocol.dump_value(value)
        except BaseException as error:
            return protocol.Outcome(
                task.task_id,
                "error",
                seconds,
                error=f"the task's result cannot be pickled: {_describe(error)}",
                trace=traceback.format_exc(),
                warnings=messages,
            )
        return protocol.Outcome(
            task.task_id, "success", seconds, warnings=messages, value=data, buffers=buffers
        )

    def _await(self, awaitable: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()

        async def wrap() -> Any:
            return await awaitable

        return self._loop.run_until_complete(wrap())

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


class _Watchdog(threading.Thread):
    """Ends the process when the connection to the controller is gone for too long.

    It reads the socket's monitor events, which libzmq's I/O thread produces (with ZMTP
    heartbeats) even while a task holds the GIL-free main thread busy, so a worker running a
    long task still exits once its controller is gone.
    """

    def __init__(self, monitor: zmq.Socket[bytes], settings: WorkerSettings) -> None:
        super().__init__(name="batchcrew-watchdog", daemon=True)
        self._monitor = monitor
        self._settings = settings
        self._stopping = threading.Event()

    def run(self) -> None:
        settings = self._settings
        connected = False
        ever_connected = False
        lost_at = time.monotonic()
        failure = ""
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        while not self._stopping.is_set():
            if poller.poll(200):
                try:
                    event = recv_monitor_message(self._monitor)
                except zmq.ZMQError:
                    return
                kind = event["event"]
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    connected = ever_connected = True
                elif kind == zmq.EVENT_DISCONNECTED:
                    if connected:
                        lost_at = time.monotonic()
                    connected = False
                elif kind == zmq.EVENT_MONITOR_STOPPED:
                    return
                elif kind in _HANDSHAKE_FAILURES:
                    failure = _HANDSHAKE_FAILURES[zmq.Event(kind)]
            if connected:
                continue
            limit = settings.seconds_heartbeat if ever_connected else settings.seconds_connect
            if time.monotonic() - lost_at > limit:
                what = "lost its connection to" if ever_connected else "could not connect to"
                message = (
                    f"batchcrew worker {settings.identity.decode()}: {what} the controller at "
                    f"{settings.controller} for {limit:g} s"
                )
                if failure:
                    message += f" ({failure})"
                print(message + "; exiting", file=sys.stderr, flush=True)
                os._exit(EXIT_LOST)

    def stop(self) -> None:
        self._stopping.set()


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


def serve(settings: WorkerSettings) -> str:
    """Connect, run tasks until it is time to go, and return why the worker exits."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(context, settings)
    monitor = sock.get_monitor_socket()
    watchdog = _Watchdog(monitor, settings)
    watchdog.start()
    runner = Runner()
    try:
        sock.connect(settings.controller)
        sock.send_multipart(protocol.encode(protocol.Ready(os.getpid(), socket.gethostname())))
        reason = _loop(sock, runner, settings)
        sock.send_multipart(protocol.encode(protocol.Bye(reason)))
        return reason
    finally:
        watchdog.stop()
        watchdog.join()
        runner.close()
        sock.disable_monitor()
        sock.close()  # lingers so that the goodbye reaches the controller
        monitor.close(0)
        context.term()


def _loop(sock: zmq.Socket[bytes], runner: Runner, settings: WorkerSettings) -> str:
    started = last = time.monotonic()
    done = 0
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        try:
            frame = sock.recv(_NOBLOCK, copy=False)
        except zmq.Again:
            # Nothing waiting: check the clocks, then sleep until a message or a deadline.
            now = time.monotonic()
            wall = settings.seconds_wall - (now - started)
            idle = settings.seconds_idle - (now - last)
            if wall <= 0:
                return f"seconds_wall={settings.seconds_wall:g} reached"
            if idle <= 0:
                return f"idle for seconds_idle={settings.seconds_idle:g}"
            poller.poll(int(min(wall, idle, 3600.0) * 1000) + 1)
            continue
        frames = [frame]
        while frame.more:
            frame = sock.recv(copy=False)
            frames.append(frame)
        try:
            message = protocol.decode([frame.buffer for frame in frames])
        except ProtocolError as error:
            print(f"batchcrew worker: dropped a malformed message: {error}", file=sys.stderr)
            continue
        if isinstance(message, protocol.Stop):
            return f"stopped by the controller: {message.reason}"
        if not isinstance(message, protocol.Task):
            continue
        outcome = runner.run(message)
        out = protocol.encode(outcome)
        size = sum(memoryview(part).nbytes for part in out)
        if 0 < settings.max_message_size < size:
            outcome = protocol.Outcome(
                outcome.task_id,
                "error",
                outcome.seconds,
                error=f"the task's result is {size} bytes pickled, over the controller's "
                f"max_message_size={settings.max_message_size}; return large data by "
                "reference (a path, a URL) or raise max_message_size",
                warnings=outcome.warnings,
            )
            out = protocol.encode(outcome)
        last_frame = len(out) - 1
        for position, part in enumerate(out):
            sock.send(part, _SNDMORE if position < last_frame else 0, copy=protocol.is_small(part))
        done += 1
        last = time.monotonic()
        if done >= settings.tasks_max:
            return f"tasks_max={settings.tasks_max:g} reached"


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
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
