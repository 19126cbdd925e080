"""The wire protocol between a controller and its workers: message types and their frames.

No sockets and no asyncio here. A message is one frame, a 14-byte header (magic, version, kind,
how many frames follow, task id) and the kind's body, followed by the parts too large to copy:
task arguments and results travel as pickle protocol 5, and their out-of-band buffers (and any
large pickle) as frames of their own, so a large array crosses the wire without a copy. One
ZeroMQ message may carry several batchcrew messages in a row: tasks sent to a worker together,
results returned together. Metadata is parsed with `struct` and `json`, never with pickle, so a
message is checked before anything in it is unpickled.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import math
import operator
import pickle
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, unique
from types import CodeType, FunctionType, ModuleType
from typing import Any, Final, Literal

import cloudpickle

from batchcrew.errors import ProtocolError

VERSION: Final = 5
MAGIC: Final = b"bc"
_HEADER = struct.Struct(">2sBBHQ")  # magic, version, kind, frames that follow, task id
_TASK_META = struct.Struct(">BI")  # layout, metadata length
# status, seconds, layout, metadata length, peak memory, resident memory, CPU seconds
_RESULT_META = struct.Struct(">BdBIQQd")
_USAGE = struct.Struct(">Qd")  # resident memory, CPU seconds
_LENGTH = struct.Struct(">I")
_INLINE, _APART = 0, 1  # pickles in the first frame, or in frames of their own

Buffer = bytes | memoryview
"""A frame's contents: `bytes`, or a zero-copy view (`zmq.Frame.buffer`, a pickle buffer)."""


@unique  # two kinds given one value by mistake fail at import, not on the wire
class Kind(IntEnum):
    """What a message is. Values below 10 go from worker to controller, the rest the other way."""

    HELLO = 1
    RESULT = 2
    BYE = 3
    READY = 4
    BUSY = 5
    OUTPUT = 6
    RAN = 8
    IDLE = 9
    TASK = 10
    STOP = 11
    CANCEL = 12
    SETUP = 13
    EVERYWHERE = 16
    STAY = 17


# Messages are made and read for every task: plain slotted classes, as the scheduler's
# decisions are (a frozen dataclass costs several times as much to build). Read-only by use.


@dataclass(slots=True)
class Hello:
    """A worker has connected: who it is, and the versions it runs (checked before any task)."""

    pid: int
    host: str
    python: str = ""
    batchcrew: str = ""
    cloudpickle: str = ""
    job: str = ""  # its AWS Batch job (or array child), if it is one
    # Set when a worker that lost its controller reconnects (to a controller restarted on its
    # journal): the tasks it holds, the one it runs first, then those sent ahead. None: a
    # first hello, which a setup answers.
    holding: list[int] | None = None


@dataclass(slots=True)
class Setup:
    """The controller accepts a worker: run `initializer(*initargs)` (pickled; empty: none).

    `authkey`: the controller process's `multiprocessing` authentication key (empty: not
    given), which the worker takes as its own before it unpickles anything, so that the
    proxies of a `multiprocessing.Manager` started by the controller's process connect back
    from tasks, as they do from multiprocessing's own children. Sent only over a connection
    no one else can read (CURVE, or loopback)."""

    initializer: Buffer = b""
    initargs: Buffer = b""
    authkey: Buffer = b""


@dataclass(slots=True)
class Ready:
    """A worker ran its setup: it is ready for tasks; or, with `error`, it failed and exits."""

    error: str | None = None
    trace: str | None = None


@dataclass(slots=True)
class Bye:
    """A worker is leaving on its own (idle, wall time, tasks_max): requeue what it was sent.

    `end`: a task did not stop when interrupted, so the worker exits with that task still on
    its main thread; the controller should have the launcher end it too (and what it started).
    `interrupted`: the worker is being stopped from outside (SIGTERM: its job was terminated,
    its host reclaimed or scaled in), and hands back the task it was running, which did not
    fail: the controller retries it at once, counting an interruption, not a crash.
    """

    reason: str
    end: bool = False
    interrupted: bool = False


@dataclass(slots=True)
class Busy:
    """A worker is alive and still on task `task_id`, and uses `rss` resident bytes and `cpu`
    CPU seconds so far: said every second while a task runs longer than that. `tail`: the last
    line the task wrote to its stdout or stderr, if any (a few hundred characters at most)."""

    task_id: int
    rss: int = 0
    cpu: float = 0.0
    tail: str = ""


@dataclass(slots=True)
class Output:
    """What running task `task_id` wrote to its stdout and stderr since the last such message
    (raw bytes, in write order): relayed while it runs, when the controller asks for that."""

    task_id: int
    data: Buffer


@dataclass(slots=True)
class Stop:
    """The controller tells a worker to exit."""

    reason: str


@dataclass(slots=True)
class Cancel:
    """The controller tells a worker to interrupt task `task_id` (running or not yet started)."""

    task_id: int
    reason: str


@dataclass(slots=True)
class Everywhere:
    """The controller asks a worker to run `function(*args, **kwargs)` (`arguments` pickled
    together) between tasks, as set-up: call number `call` of `Controller.everywhere`."""

    call: int
    function: Buffer
    arguments: Buffer


@dataclass(slots=True)
class Ran:
    """A worker ran everywhere-call `call` in `seconds`: it returned, or raised `error`."""

    call: int
    seconds: float
    error: str | None = None
    trace: str | None = None


@dataclass(slots=True)
class Idle:
    """A worker has been idle for its `seconds_idle` and asks whether it may leave (only
    asked with `workers_min`: the controller keeps that many warm). The answer is `Stop` (go)
    or `Stay` (its idle clock starts again)."""


@dataclass(slots=True)
class Stay:
    """The controller answers a worker's `Idle`: stay, as one of its warm `workers_min`."""


@dataclass(slots=True)
class Task:
    """A task as the worker receives it: pickled function, pickled arguments, their buffers.

    `timeout`: seconds the task may run on the worker before it is interrupted (None: no limit).
    `seed`: the task's own random seed (None: leave the generators alone). `trace`: the
    OpenTelemetry trace context it runs in (W3C headers), if tracing is on. `attempt`: which
    attempt this is (1, then 2 for the first retry after it raised). `retry_on`: the pickled
    retry policy (an exception type, a tuple of them, or a predicate), sent while attempts
    remain: the worker applies it to what the task raises and says in the outcome whether it
    matched. It travels as a frame of its own, the message's last.
    """

    task_id: int
    function: Buffer
    arguments: Buffer
    buffers: Sequence[Buffer] = ()
    timeout: float | None = None
    seed: int | None = None
    trace: Mapping[str, str] | None = None
    attempt: int = 1
    retry_on: Buffer | None = None


@dataclass(slots=True)
class Outcome:
    """A task's outcome as the worker reports it; `value` stays pickled until someone loads it.

    `memory`: the worker's peak resident bytes while the task ran; `rss` and `cpu`: its
    resident bytes and CPU seconds (the whole process's) when it ended. 0 where not known.
    `retry`: the task raised an exception its `retry_on` matches (only ever with "error").
    `output`: what it wrote to its stdout and stderr (raw bytes, in write order, already cut to
    the controller's `output_max`). `exception`: with "error", the exception itself, pickled
    (empty if it could not be, or it is too large), so that the controller's side can raise
    the task's own exception.
    """

    task_id: int
    status: Literal["success", "error"]
    seconds: float
    error: str | None = None
    trace: str | None = None
    warnings: tuple[str, ...] = ()
    value: Buffer = b""
    buffers: Sequence[Buffer] = field(default=())
    memory: int = 0
    rss: int = 0
    cpu: float = 0.0
    retry: bool = False
    output: Buffer = b""
    exception: Buffer = b""


Message = (
    Hello
    | Ready
    | Busy
    | Output
    | Bye
    | Stop
    | Cancel
    | Setup
    | Task
    | Outcome
    | Everywhere
    | Ran
    | Idle
    | Stay
)

_KINDS: Final = {kind.value: kind for kind in Kind}

_STATUS_CODES: Final = {"success": 0, "error": 1}
_STATUS_NAMES: Final[dict[int, Literal["success", "error"]]] = {0: "success", 1: "error"}


_ZERO_COPY_MIN: Final = 65536


def is_small(frame: Buffer) -> bool:
    """Whether a frame is small enough that copying it beats sending it without a copy."""
    size = len(frame) if isinstance(frame, bytes) else frame.nbytes
    return size < _ZERO_COPY_MIN


def _header(kind: Kind, task_id: int = 0, extra: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, kind, extra, task_id)


def nbytes(part: Buffer) -> int:
    """The size of a frame in bytes."""
    return len(part) if isinstance(part, bytes) else memoryview(part).nbytes


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def encode(message: Message) -> list[Buffer]:
    """Turn a message into the frames that carry it: one frame (header and body), then the
    parts too large to copy (pickle buffers, a large function, arguments or value)."""
    if isinstance(message, Task):
        meta = b""
        retry_on = message.retry_on
        if (
            message.timeout is not None
            or message.seed is not None
            or message.trace
            or message.attempt != 1
            or retry_on is not None
        ):
            options: dict[str, Any] = {}
            if message.timeout is not None:
                options["timeout"] = message.timeout
            if message.seed is not None:
                options["seed"] = message.seed
            if message.trace:
                options["trace"] = dict(message.trace)
            if message.attempt != 1:
                options["attempt"] = message.attempt
            if retry_on is not None:
                options["retry_on"] = True  # the last frame
            meta = _json(options)
        buffers = list(message.buffers)
        if retry_on is not None:
            buffers.append(retry_on)
        if nbytes(message.function) + nbytes(message.arguments) < _ZERO_COPY_MIN:
            first = b"".join(
                (
                    _header(Kind.TASK, message.task_id, len(buffers)),
                    _TASK_META.pack(_INLINE, len(meta)),
                    meta,
                    _LENGTH.pack(nbytes(message.function)),
                    message.function,
                    message.arguments,
                )
            )
            return [first, *buffers]
        first = b"".join(
            (
                _header(Kind.TASK, message.task_id, 2 + len(buffers)),
                _TASK_META.pack(_APART, len(meta)),
                meta,
            )
        )
        return [first, message.function, message.arguments, *buffers]
    if isinstance(message, Outcome):
        extra = b""
        output = message.output
        exception = message.exception
        if (
            message.error is not None
            or message.trace is not None
            or message.warnings
            or len(output)
            or len(exception)
        ):
            details: dict[str, Any] = {
                "error": message.error,
                "trace": message.trace,
                "warnings": message.warnings,
            }
            if message.retry:
                details["retry"] = True
            if len(output):
                details["output"] = nbytes(output)  # its bytes follow the metadata
            if len(exception):
                details["exception"] = nbytes(exception)  # and the exception's, the output's
            extra = _json(details)
        buffers = list(message.buffers)
        inline = nbytes(message.value) < _ZERO_COPY_MIN
        head = b"".join(
            (
                _header(Kind.RESULT, message.task_id, len(buffers) + (0 if inline else 1)),
                _RESULT_META.pack(
                    _STATUS_CODES[message.status],
                    message.seconds,
                    _INLINE if inline else _APART,
                    len(extra),
                    message.memory,
                    message.rss,
                    message.cpu,
                ),
                extra,
                output,
                exception,
            )
        )
        if inline:
            return [head + bytes(message.value), *buffers]
        return [head, message.value, *buffers]
    if isinstance(message, Setup):
        return [
            _header(Kind.SETUP, 0, 3),
            message.initializer,
            message.initargs,
            message.authkey,
        ]
    if isinstance(message, Everywhere):
        return [_header(Kind.EVERYWHERE, message.call, 2), message.function, message.arguments]
    if isinstance(message, Ran):
        ran = {"seconds": message.seconds, "error": message.error, "trace": message.trace}
        return [_header(Kind.RAN, message.call) + _json(ran)]
    if isinstance(message, Idle):
        return [_header(Kind.IDLE)]
    if isinstance(message, Stay):
        return [_header(Kind.STAY)]
    if isinstance(message, Busy):
        usage = _USAGE.pack(message.rss, message.cpu)
        return [_header(Kind.BUSY, message.task_id) + usage + message.tail.encode()]
    if isinstance(message, Output):
        return [_header(Kind.OUTPUT, message.task_id) + message.data]
    if isinstance(message, Hello):
        data: dict[str, Any] = {
            "pid": message.pid,
            "host": message.host,
            "python": message.python,
            "batchcrew": message.batchcrew,
            "cloudpickle": message.cloudpickle,
            "job": message.job,
        }
        if message.holding is not None:
            data["holding"] = message.holding
        return [_header(Kind.HELLO) + _json(data)]
    if isinstance(message, Ready):
        return [_header(Kind.READY) + _json({"error": message.error, "trace": message.trace})]
    if isinstance(message, Bye):
        said: dict[str, Any] = {"reason": message.reason}
        if message.end:
            said["end"] = True
        if message.interrupted:
            said["interrupted"] = True
        return [_header(Kind.BYE) + _json(said)]
    if isinstance(message, Cancel):
        return [_header(Kind.CANCEL, message.task_id) + _json({"reason": message.reason})]
    return [_header(Kind.STOP) + _json({"reason": message.reason})]


def decode_header(frame: Buffer) -> tuple[Kind, int, int]:
    """Read a message's first frame: its kind, task id and the number of frames that follow.
    Raises `ProtocolError`."""
    if len(frame) < _HEADER.size:
        raise ProtocolError(f"first frame of {len(frame)} bytes, shorter than a header")
    magic, version, kind, extra, task_id = _HEADER.unpack_from(frame)
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
    return known, task_id, extra


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
    """Parse the frames of exactly one message (without the ROUTER's identity frame).

    Nothing is unpickled here. Raises `ProtocolError`, and only that, for anything malformed.
    """
    messages = decode_all(frames)
    if len(messages) != 1:
        raise ProtocolError(f"{len(messages)} messages where one was expected")
    return messages[0]


def decode_all(frames: Sequence[Buffer]) -> list[Message]:
    """Parse the frames of one ZeroMQ message, which carries one batchcrew message or several
    in a row (tasks sent together, results returned together).

    Nothing is unpickled here. Raises `ProtocolError`, and only that, for anything malformed:
    then none of the messages is taken.
    """
    if not frames:
        raise ProtocolError("empty message")
    messages: list[Message] = []
    position = 0
    while position < len(frames):
        first = frames[position]
        kind, task_id, extra = decode_header(first)
        following = frames[position + 1 : position + 1 + extra]
        if len(following) != extra:
            raise ProtocolError(f"{kind.name} message announces {extra} more frames than it has")
        body = memoryview(first)[_HEADER.size :]
        messages.append(_decode_body(kind, task_id, body, following))
        position += 1 + extra
    return messages


def _decode_body(
    kind: Kind, task_id: int, body: memoryview, following: Sequence[Buffer]
) -> Message:
    if kind is Kind.TASK:
        if len(body) < _TASK_META.size:
            raise ProtocolError("task metadata is truncated")
        layout, meta_length = _TASK_META.unpack_from(body)
        meta = body[_TASK_META.size : _TASK_META.size + meta_length]
        rest = body[_TASK_META.size + meta_length :]
        if len(meta) != meta_length:
            raise ProtocolError("task metadata is truncated")
        timeout, seed, trace, attempt, retrying = _task_options(meta)
        retry_on: Buffer | None = None
        if retrying:
            if not following:
                raise ProtocolError("task message announces a retry_on frame it does not have")
            retry_on = following[-1]
            following = following[:-1]
        if layout == _INLINE:
            if len(rest) < _LENGTH.size:
                raise ProtocolError("task function length is truncated")
            (function_length,) = _LENGTH.unpack_from(rest)
            function = rest[_LENGTH.size : _LENGTH.size + function_length]
            if len(function) != function_length:
                raise ProtocolError("task function is truncated")
            arguments = rest[_LENGTH.size + function_length :]
            return Task(
                task_id,
                function,
                arguments,
                tuple(following),
                timeout,
                seed,
                trace,
                attempt,
                retry_on,
            )
        if layout != _APART or len(rest) or len(following) < 2:
            raise ProtocolError("task message has its parts neither inline nor apart")
        return Task(
            task_id,
            following[0],
            following[1],
            tuple(following[2:]),
            timeout,
            seed,
            trace,
            attempt,
            retry_on,
        )
    if kind is Kind.RESULT:
        if len(body) < _RESULT_META.size:
            raise ProtocolError("result metadata is truncated")
        code, seconds, layout, extra_length, memory, rss, cpu = _RESULT_META.unpack_from(body)
        status = _STATUS_NAMES.get(code)
        if status is None:
            raise ProtocolError(f"unknown result status code {code}")
        extra = body[_RESULT_META.size : _RESULT_META.size + extra_length]
        if len(extra) != extra_length:
            raise ProtocolError("result metadata is truncated")
        rest = body[_RESULT_META.size + extra_length :]
        error = trace = None
        warnings: tuple[str, ...] = ()
        retry = False
        output: Buffer = b""
        exception: Buffer = b""
        if extra_length:
            details = _json_object(extra)
            error = _field(details, "error", (str, type(None)))
            trace = _field(details, "trace", (str, type(None)))
            listed = _field(details, "warnings", list)
            if not all(isinstance(item, str) for item in listed):
                raise ProtocolError("result warnings must be strings")
            warnings = tuple(listed)
            retry = details.get("retry", False)
            if not isinstance(retry, bool):
                raise ProtocolError("metadata field 'retry' is not a boolean")
            if "output" in details:
                length = _field(details, "output", int)
                if isinstance(length, bool) or not 0 < length <= len(rest):
                    raise ProtocolError(f"result output of {length!r} bytes is not there")
                output, rest = bytes(rest[:length]), rest[length:]
            if "exception" in details:
                length = _field(details, "exception", int)
                if isinstance(length, bool) or not 0 < length <= len(rest):
                    raise ProtocolError(f"result exception of {length!r} bytes is not there")
                exception, rest = bytes(rest[:length]), rest[length:]
        if layout == _INLINE:
            value: Buffer = rest
            buffers = tuple(following)
        elif layout == _APART and not len(rest) and following:
            value, buffers = following[0], tuple(following[1:])
        else:
            raise ProtocolError("result message has its value neither inline nor apart")
        return Outcome(
            task_id,
            status,
            seconds,
            error,
            trace,
            warnings,
            value,
            buffers,
            memory,
            rss,
            cpu,
            retry,
            output,
            exception,
        )
    if kind is Kind.SETUP:
        if len(body) or len(following) != 3:
            raise ProtocolError(
                "setup message needs an initializer frame, an initargs frame and an authkey frame"
            )
        return Setup(following[0], following[1], following[2])
    if kind is Kind.EVERYWHERE:
        if len(body) or len(following) != 2:
            raise ProtocolError("everywhere message needs a function frame and an arguments frame")
        return Everywhere(task_id, following[0], following[1])
    if following:
        raise ProtocolError(f"{kind.name} message has frames it should not have")
    if kind is Kind.BUSY:
        if len(body) < _USAGE.size:
            raise ProtocolError(
                f"a busy message's body is at least {_USAGE.size} bytes, not {len(body)}"
            )
        rss, cpu = _USAGE.unpack_from(body)
        tail = bytes(body[_USAGE.size :]).decode(errors="replace")
        return Busy(task_id, rss, cpu, tail)
    if kind is Kind.OUTPUT:
        return Output(task_id, bytes(body))
    if kind is Kind.IDLE or kind is Kind.STAY:
        if len(body):
            raise ProtocolError(f"{kind.name} message has a body it should not have")
        return Idle() if kind is Kind.IDLE else Stay()
    data = _json_object(body)
    if kind is Kind.HELLO:
        return Hello(
            _field(data, "pid", int),
            _field(data, "host", str),
            _field(data, "python", str),
            _field(data, "batchcrew", str),
            _field(data, "cloudpickle", str),
            _field(data, "job", str),
            _holding(data),
        )
    if kind is Kind.READY:
        return Ready(
            _field(data, "error", (str, type(None))), _field(data, "trace", (str, type(None)))
        )
    if kind is Kind.RAN:
        seconds = _field(data, "seconds", (int, float))
        error, trace = (_field(data, key, (str, type(None))) for key in ("error", "trace"))
        return Ran(task_id, float(seconds), error, trace)
    if kind is Kind.BYE:
        flags = []
        for name in ("end", "interrupted"):
            flag = data.get(name, False)
            if not isinstance(flag, bool):
                raise ProtocolError(f"metadata field {name!r} is not a boolean")
            flags.append(flag)
        return Bye(_field(data, "reason", str), *flags)
    if kind is Kind.CANCEL:
        return Cancel(task_id, _field(data, "reason", str))
    return Stop(_field(data, "reason", str))


def _holding(data: dict[str, Any]) -> list[int] | None:
    holding = data.get("holding")
    if holding is None:
        return None
    if not isinstance(holding, list) or not all(type(task) is int and task > 0 for task in holding):
        raise ProtocolError(f"HELLO message's holding is not a list of task ids: {holding!r:.80}")
    return holding


def _task_options(
    meta: memoryview,
) -> tuple[float | None, int | None, dict[str, str] | None, int, bool]:
    if not len(meta):
        return None, None, None, 1, False
    options = _json_object(meta)
    timeout = seed = trace = None
    attempt, retrying = 1, False
    if "timeout" in options:
        timeout = _field(options, "timeout", (int, float))
        if isinstance(timeout, bool) or not 0 < timeout < math.inf:
            raise ProtocolError(f"task timeout {timeout!r} is not a positive number")
    if "seed" in options:
        seed = _field(options, "seed", int)
        if isinstance(seed, bool) or seed < 0:
            raise ProtocolError(f"task seed {seed!r} is not a whole number >= 0")
    if "trace" in options:
        trace = _field(options, "trace", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in trace.items()):
            raise ProtocolError("task trace context must map strings to strings")
    if "attempt" in options:
        attempt = _field(options, "attempt", int)
        if isinstance(attempt, bool) or attempt < 1:
            raise ProtocolError(f"task attempt {attempt!r} is not a whole number >= 1")
    if "retry_on" in options:
        retrying = options["retry_on"]
        if retrying is not True:
            raise ProtocolError("task option 'retry_on' must be true (its frame is the last)")
    return timeout, seed, trace, attempt, retrying


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


def dump_call(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bytes, bytes]:
    """Pickle a call made once per worker (`Controller.everywhere`): the function and its
    arguments, cloudpickle, one frame each."""
    return (
        cloudpickle.dumps(function, protocol=5),
        cloudpickle.dumps((args, kwargs), protocol=5),
    )


def pickles_by_reference(function: Callable[..., Any]) -> bool:
    """Whether cloudpickle pickles `function` as a reference (module and name) that any
    process importing that module resolves: a module-level function or class, not one of
    `__main__`, nor of a module registered to travel by value."""
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return False
    if module_name == "__main__" or module_name in cloudpickle.list_registry_pickle_by_value():
        return False
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is function


_ATOMS: Final = (type(None), bool, int, float, complex, str, bytes)
_ABSENT: Final = object()


def by_value_inputs(function: Any) -> tuple[Any, ...] | None:
    """Everything cloudpickle's by-value pickle of `function` is made from, when that can be
    shown not to change behind its back; else None.

    A function of `__main__` (or of a module pickled by value) is pickled whole: its code, its
    defaults and annotations, and the current values of the globals it names. Its pickle can be
    reused while every one of these objects is the same one (compare with `same_inputs`) and
    none can change in place: a plain function, no closure and no attributes, and every default,
    annotation and global it names a plain value (None, a number, text), a module, or a
    function or class found by its module and name. Anything else (a global list, a closure, a
    lambda naming a notebook's data frame) is pickled again at every push.
    """
    if not isinstance(function, FunctionType) or function.__closure__ is not None:
        return None
    if function.__dict__:
        return None
    try:
        annotations = function.__annotations__  # evaluated here on Python 3.14: may raise
    except Exception:
        return None
    defaults = function.__defaults__
    keywords = function.__kwdefaults__
    found: list[Any] = [
        function.__code__, defaults, function.__name__, function.__qualname__,
        function.__module__, function.__doc__,
    ]  # fmt: skip
    # Dictionaries can change in place: what they hold now is compared, not the dictionary.
    for mapping in (keywords, annotations):
        if mapping:
            if not all(map(_unchanging, mapping.values())):
                return None
            found += [*mapping, *mapping.values()]
    if defaults and not all(map(_unchanging, defaults)):
        return None
    namespace = function.__globals__
    for name in _global_names(function.__code__):
        value = namespace.get(name, _ABSENT)
        if value is not _ABSENT and not _unchanging(value):
            return None
        found.append(value)
    return tuple(found)


def _unchanging(value: Any) -> bool:
    """Whether `value` pickles the same for as long as it is the same object: a plain value,
    or something pickled as a reference to where it is defined."""
    return (
        type(value) in _ATOMS
        or (isinstance(value, ModuleType) and _imported(value))
        or (isinstance(value, FunctionType | type) and pickles_by_reference(value))
    )


@functools.lru_cache(maxsize=256)
def _global_names(code: CodeType) -> tuple[str, ...]:
    """The names `code` and the code nested in it (lambdas, inner functions) may look up as
    globals: those that cloudpickle captures."""
    names: list[str] = []
    codes = [code]
    while codes:
        found = codes.pop()
        names += found.co_names
        codes += [const for const in found.co_consts if isinstance(const, CodeType)]
    return tuple(names)


def _imported(module: ModuleType) -> bool:
    """Whether cloudpickle pickles `module` as a reference (an import on the worker)."""
    name = module.__name__
    return (
        name != "__main__"
        and sys.modules.get(name) is module
        and name not in cloudpickle.list_registry_pickle_by_value()
    )


def same_inputs(these: tuple[Any, ...], those: tuple[Any, ...]) -> bool:
    """Whether two `by_value_inputs` are made of the very same objects."""
    return len(these) == len(those) and all(map(operator.is_, these, those))


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
    if not args and not kwargs:
        return _NO_ARGUMENTS, []
    return dump_value((args, kwargs), by_value=by_value)


_NO_ARGUMENTS: Final = pickle.dumps(((), {}), protocol=5)


def dump_value(value: Any, *, by_value: bool = False) -> tuple[bytes, list[memoryview]]:
    """Pickle a task's return value: plain pickle first (fast), cloudpickle for the rest."""
    if type(value) in _ATOMS:  # None, a number, text: nothing out of band, nothing of __main__
        return pickle.dumps(value, protocol=5), []
    buffers: list[pickle.PickleBuffer] = []
    if not by_value:
        try:
            data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except (pickle.PicklingError, TypeError, AttributeError):
            buffers = []
        else:
            # Plain pickle refers to what `__main__` defines by name, which means another
            # module in another process: such values need cloudpickle's by-value copy.
            if b"__main__" not in data:
                return data, [buffer.raw() for buffer in buffers]
            buffers = []
    data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return data, [buffer.raw() for buffer in buffers]


#: The most bytes an exception takes pickled in an outcome; a larger one travels as text only.
EXCEPTION_MAX: Final = 1 << 20


def dump_exception(error: BaseException) -> bytes:
    """`error` pickled for the controller's side, to raise it there: its type and arguments
    (and attributes), not its traceback nor the exceptions chained to it, which pickle leaves
    out. b"" if it cannot be pickled (its `__reduce__` is the task's own code, which may raise
    anything) or takes more than `EXCEPTION_MAX` bytes. It never raises.

    A class that came from the controller by value (one of its script's, or of a module sent
    by value) goes back by name, to be found there: `except MyError:` in the script then
    catches it. Only a class made inside a function travels by value (cloudpickle)."""
    try:
        file = io.BytesIO()
        _ExceptionPickler(file, protocol=5).dump(error)
        data = file.getvalue()
    except BaseException:
        try:
            data = cloudpickle.dumps(error, protocol=5)
        except BaseException:
            return b""
    return data if len(data) <= EXCEPTION_MAX else b""


class _ExceptionPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and "<locals>" not in obj.__qualname__ and not _found(obj):
            return _named_class, (obj.__module__, obj.__qualname__)
        return NotImplemented


def _found(cls: type) -> bool:
    """Whether `cls` is what its module and name lead to in this process (so plain pickle
    refers to it by name)."""
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def _named_class(module: str, qualname: str) -> type:
    """The class `module.qualname` of this process (unpickling an exception `dump_exception`
    sent by name)."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not isinstance(found, type):
        raise TypeError(f"{module}.{qualname} is not a class here")
    return found


def load_exception(data: Buffer) -> BaseException | None:
    """The exception `dump_exception` pickled, rebuilt here; None if it does not unpickle
    here (a class this side cannot import), or unpickles to anything but an exception. Its
    unpickling may run anything (`SystemExit` included): none of it escapes."""
    try:
        error = pickle.loads(data)
    except BaseException:
        return None
    return error if isinstance(error, BaseException) else None


def load(data: Buffer, buffers: Sequence[Buffer] = ()) -> Any:
    """Unpickle what `dump_*` made. Only ever call it on frames from an authenticated peer."""
    return pickle.loads(data, buffers=buffers)
