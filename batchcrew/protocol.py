"""The wire protocol between a controller and its workers: message types and their frames.

No sockets and no asyncio here. A message is a list of ZeroMQ frames: a fixed 12-byte header
(magic, version, kind, task id), then the kind's own frames. Metadata is parsed with `struct` and
`json`, never with pickle, so a frame can be checked before anything in it is unpickled; task
arguments and results travel as pickle protocol 5 with out-of-band buffers as extra frames, so a
large array crosses the wire without a copy into one giant bytes object.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import ModuleType
from typing import Any, Final, Literal

import cloudpickle

from batchcrew.errors import ProtocolError

VERSION: Final = 2
MAGIC: Final = b"bc"
_HEADER = struct.Struct(">2sBBQ")
_RESULT_META = struct.Struct(">Bd")

Buffer = bytes | memoryview
"""A frame's contents: `bytes`, or a zero-copy view (`zmq.Frame.buffer`, a pickle buffer)."""


class Kind(IntEnum):
    """What a message is. Values below 10 go from worker to controller, the rest the other way."""

    HELLO = 1
    RESULT = 2
    BYE = 3
    READY = 4
    TASK = 10
    STOP = 11
    CANCEL = 12
    SETUP = 13


@dataclass(frozen=True, slots=True)
class Hello:
    """A worker has connected: who it is, and the versions it runs (checked before any task)."""

    pid: int
    host: str
    python: str = ""
    batchcrew: str = ""
    cloudpickle: str = ""


@dataclass(frozen=True, slots=True)
class Setup:
    """The controller accepts a worker: run `initializer(*initargs)` (pickled; empty: none)."""

    initializer: Buffer = b""
    initargs: Buffer = b""


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker ran its setup: it is ready for tasks; or, with `error`, it failed and exits."""

    error: str | None = None
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class Bye:
    """A worker is leaving on its own (idle, wall time, tasks_max): requeue what it was sent.

    `end`: a task did not stop when interrupted, so the worker exits with that task still on
    its main thread; the controller should have the launcher end it too (and what it started).
    """

    reason: str
    end: bool = False


@dataclass(frozen=True, slots=True)
class Stop:
    """The controller tells a worker to exit."""

    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The controller tells a worker to interrupt task `task_id` (running or not yet started)."""

    task_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the worker receives it: pickled function, pickled arguments, their buffers.

    `timeout`: seconds the task may run on the worker before it is interrupted (None: no limit).
    `seed`: the task's own random seed (None: leave the generators alone).
    """

    task_id: int
    function: Buffer
    arguments: Buffer
    buffers: Sequence[Buffer] = ()
    timeout: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task's outcome as the worker reports it; `value` stays pickled until someone loads it."""

    task_id: int
    status: Literal["success", "error"]
    seconds: float
    error: str | None = None
    trace: str | None = None
    warnings: tuple[str, ...] = ()
    value: Buffer = b""
    buffers: Sequence[Buffer] = field(default=())


Message = Hello | Ready | Bye | Stop | Cancel | Setup | Task | Outcome

_KINDS: Final = {kind.value: kind for kind in Kind}

_STATUS_CODES: Final = {"success": 0, "error": 1}
_STATUS_NAMES: Final[dict[int, Literal["success", "error"]]] = {0: "success", 1: "error"}


_ZERO_COPY_MIN: Final = 65536


def is_small(frame: Buffer) -> bool:
    """Whether a frame is small enough that copying it beats sending it without a copy."""
    size = len(frame) if isinstance(frame, bytes) else frame.nbytes
    return size < _ZERO_COPY_MIN


def _header(kind: Kind, task_id: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, kind, task_id)


def encode(message: Message) -> list[Buffer]:
    """Turn a message into the frames that carry it."""
    if isinstance(message, Task):
        meta = b""
        if message.timeout is not None or message.seed is not None:
            options: dict[str, Any] = {}
            if message.timeout is not None:
                options["timeout"] = message.timeout
            if message.seed is not None:
                options["seed"] = message.seed
            meta = json.dumps(options).encode()
        return [
            _header(Kind.TASK, message.task_id),
            meta,
            message.function,
            message.arguments,
            *message.buffers,
        ]
    if isinstance(message, Outcome):
        meta = _RESULT_META.pack(_STATUS_CODES[message.status], message.seconds)
        if message.error is not None or message.trace is not None or message.warnings:
            extra = {"error": message.error, "trace": message.trace, "warnings": message.warnings}
            meta += json.dumps(extra).encode()
        return [_header(Kind.RESULT, message.task_id), meta, message.value, *message.buffers]
    if isinstance(message, Hello):
        hello = {
            "pid": message.pid,
            "host": message.host,
            "python": message.python,
            "batchcrew": message.batchcrew,
            "cloudpickle": message.cloudpickle,
        }
        return [_header(Kind.HELLO), json.dumps(hello).encode()]
    if isinstance(message, Ready):
        ready = {"error": message.error, "trace": message.trace}
        return [_header(Kind.READY), json.dumps(ready).encode()]
    if isinstance(message, Setup):
        return [_header(Kind.SETUP), message.initializer, message.initargs]
    if isinstance(message, Bye):
        data: dict[str, Any] = {"reason": message.reason}
        if message.end:
            data["end"] = True
        return [_header(Kind.BYE), json.dumps(data).encode()]
    if isinstance(message, Cancel):
        return [
            _header(Kind.CANCEL, message.task_id),
            json.dumps({"reason": message.reason}).encode(),
        ]
    return [_header(Kind.STOP), json.dumps({"reason": message.reason}).encode()]


def decode_header(frame: Buffer) -> tuple[Kind, int]:
    """Read a header frame: the message's kind and task id. Raises `ProtocolError`."""
    if len(frame) != _HEADER.size:
        raise ProtocolError(f"header frame of {len(frame)} bytes, expected {_HEADER.size}")
    magic, version, kind, task_id = _HEADER.unpack(frame)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a batchcrew frame")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version}, but this batchcrew speaks version {VERSION}: "
            "run the same batchcrew version on the controller and the workers"
        )
    known = _KINDS.get(kind)
    if known is None:
        raise ProtocolError(f"unknown message kind {kind}")
    return known, task_id


def _json_object(frame: Buffer) -> dict[str, Any]:
    try:
        value = json.loads(bytes(frame))
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"metadata is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ProtocolError("metadata is not a JSON object")
    return value


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise ProtocolError(f"metadata field {name!r} is missing or of the wrong type")
    return value


def decode(frames: Sequence[Buffer]) -> Message:
    """Parse the frames of one message (without the ROUTER's identity frame).

    Nothing is unpickled here. Raises `ProtocolError`, and only that, for anything malformed.
    """
    if not frames:
        raise ProtocolError("empty message")
    kind, task_id = decode_header(frames[0])
    body = frames[1:]
    if kind is Kind.TASK:
        if len(body) < 3:
            raise ProtocolError(
                "task message needs a metadata frame, a function frame and an arguments frame"
            )
        timeout = seed = None
        if len(body[0]):
            options = _json_object(body[0])
            if "timeout" in options:
                timeout = _field(options, "timeout", (int, float))
                if isinstance(timeout, bool) or not 0 < timeout < math.inf:
                    raise ProtocolError(f"task timeout {timeout!r} is not a positive number")
            if "seed" in options:
                seed = _field(options, "seed", int)
                if isinstance(seed, bool) or seed < 0:
                    raise ProtocolError(f"task seed {seed!r} is not a whole number >= 0")
        return Task(task_id, body[1], body[2], tuple(body[3:]), timeout, seed)
    if kind is Kind.RESULT:
        if len(body) < 2:
            raise ProtocolError("result message needs a metadata frame and a value frame")
        meta = body[0]
        if len(meta) < _RESULT_META.size:
            raise ProtocolError("result metadata is truncated")
        code, seconds = _RESULT_META.unpack_from(meta)
        status = _STATUS_NAMES.get(code)
        if status is None:
            raise ProtocolError(f"unknown result status code {code}")
        error = trace = None
        warnings: tuple[str, ...] = ()
        if len(meta) > _RESULT_META.size:
            extra = _json_object(memoryview(meta)[_RESULT_META.size :])
            error = _field(extra, "error", (str, type(None)))
            trace = _field(extra, "trace", (str, type(None)))
            listed = _field(extra, "warnings", list)
            if not all(isinstance(item, str) for item in listed):
                raise ProtocolError("result warnings must be strings")
            warnings = tuple(listed)
        return Outcome(task_id, status, seconds, error, trace, warnings, body[1], tuple(body[2:]))
    if kind is Kind.SETUP:
        if len(body) != 2:
            raise ProtocolError("setup message needs an initializer frame and an initargs frame")
        return Setup(body[0], body[1])
    if len(body) != 1:
        raise ProtocolError(f"{kind.name} message needs exactly one metadata frame")
    data = _json_object(body[0])
    if kind is Kind.HELLO:
        return Hello(
            _field(data, "pid", int),
            _field(data, "host", str),
            _field(data, "python", str),
            _field(data, "batchcrew", str),
            _field(data, "cloudpickle", str),
        )
    if kind is Kind.READY:
        return Ready(
            _field(data, "error", (str, type(None))), _field(data, "trace", (str, type(None)))
        )
    if kind is Kind.BYE:
        end = data.get("end", False)
        if not isinstance(end, bool):
            raise ProtocolError("metadata field 'end' is not a boolean")
        return Bye(_field(data, "reason", str), end)
    if kind is Kind.CANCEL:
        return Cancel(task_id, _field(data, "reason", str))
    return Stop(_field(data, "reason", str))


_BY_VALUE_LOCK = threading.Lock()


@contextlib.contextmanager
def pickling_by_value(modules: Sequence[ModuleType]) -> Iterator[None]:
    """While inside, cloudpickle pickles what `modules` define by value, not by reference, so
    it unpickles on workers where they are not installed.

    cloudpickle keeps that choice in one process-wide registry: the lock keeps two controllers
    (on two threads) from seeing each other's modules, and a module registered before is left
    registered.
    """
    if not modules:
        yield
        return
    with _BY_VALUE_LOCK:
        registered = set(cloudpickle.list_registry_pickle_by_value())
        added = [module for module in modules if module.__name__ not in registered]
        for module in added:
            cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)


def dump_setup(initializer: Callable[..., Any], initargs: tuple[Any, ...]) -> Setup:
    """Pickle a controller's worker initializer and its arguments (cloudpickle, in one frame
    each: they travel once per worker)."""
    return Setup(
        cloudpickle.dumps(initializer, protocol=5), cloudpickle.dumps(initargs, protocol=5)
    )


def dump_function(function: Callable[..., Any]) -> bytes:
    """Pickle a task's function with cloudpickle, so lambdas and closures travel too."""
    return cloudpickle.dumps(function, protocol=5)  # type: ignore[no-any-return]


def dump_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, by_value: bool = False
) -> tuple[bytes, list[memoryview]]:
    """Pickle a task's arguments; large contiguous buffers come back separately, uncopied.

    Plain pickle first (several times faster for small values), cloudpickle for what it cannot
    do (lambdas, local classes among the arguments). `by_value`: cloudpickle only, so that
    objects of modules registered by `pickling_by_value` travel by value too.
    """
    return dump_value((args, kwargs), by_value=by_value)


def dump_value(value: Any, *, by_value: bool = False) -> tuple[bytes, list[memoryview]]:
    """Pickle a task's return value: plain pickle first (fast), cloudpickle for the rest."""
    buffers: list[pickle.PickleBuffer] = []
    if not by_value:
        try:
            data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            return data, [buffer.raw() for buffer in buffers]
        except (pickle.PicklingError, TypeError, AttributeError):
            buffers = []
    data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return data, [buffer.raw() for buffer in buffers]


def load(data: Buffer, buffers: Sequence[Buffer] = ()) -> Any:
    """Unpickle what `dump_*` made. Only ever call it on frames from an authenticated peer."""
    return pickle.loads(data, buffers=buffers)
