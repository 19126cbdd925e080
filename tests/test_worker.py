"""The worker process on its own: settings, goodbyes, and exiting when its controller is gone."""

from __future__ import annotations

import asyncio
import os
import platform
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
import zmq

import batchcrew as bc
from batchcrew import protocol
from batchcrew.testing.pytest_plugin import MakeController
from batchcrew.worker import (
    EXIT_LOST,
    EXIT_SETUP,
    EXIT_STUCK,
    EXIT_TERMINATED,
    STOPPED_BY_SIGTERM,
    WorkerSettings,
)
from tests.output_tasks import write, write_every_way, write_then_sleep


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bare ROUTER socket standing in for a controller (security off)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    _UNREAD.pop(id(sock), None)
    sock.close(0)
    context.term()


def start_worker(*, one_log: bool = False, **settings: object) -> subprocess.Popen[str]:
    """A worker process; what it writes to its stderr is read by `finish`, with `one_log` its
    stdout too (one pipe behind both, as a log file or a remote worker's log stream has)."""
    parsed = WorkerSettings(**settings)  # type: ignore[arg-type]
    environment = {
        **os.environ,
        **parsed.environment(),
        "BATCHCREW_WORKER_INDEX": str(parsed.index),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "batchcrew.worker"],
        env=environment,
        stdout=subprocess.PIPE if one_log else None,
        stderr=subprocess.STDOUT if one_log else subprocess.PIPE,
        text=True,
    )


_UNREAD: dict[int, list[tuple[bytes, protocol.Message]]] = {}


def receive(sock: zmq.Socket[bytes], within: float = 20.0) -> tuple[bytes, protocol.Message]:
    """The next message from a worker (one ZeroMQ message may carry several)."""
    unread = _UNREAD.setdefault(id(sock), [])
    if not unread:
        assert sock.poll(int(within * 1000)), "no message from the worker in time"
        identity, *frames = sock.recv_multipart()
        unread.extend((identity, message) for message in protocol.decode_all(frames))
    return unread.pop(0)


def set_up(
    sock: zmq.Socket[bytes], setup: protocol.Setup | None = None
) -> tuple[bytes, protocol.Message, protocol.Message]:
    """Play the controller's side of the handshake: hello in, setup out, ready in. Returns
    the worker's identity, its hello and its ready."""
    identity, hello = receive(sock)
    sock.send_multipart([identity, *protocol.encode(setup or protocol.Setup())])
    _, ready = receive(sock)
    return identity, hello, ready


def greet(sock: zmq.Socket[bytes], setup: protocol.Setup | None = None) -> bytes:
    """The handshake, which must succeed; the worker's identity."""
    identity, hello, ready = set_up(sock, setup)
    assert isinstance(hello, protocol.Hello)
    assert ready == protocol.Ready()
    return identity


def finish(process: subprocess.Popen[str], within: float = 30.0) -> tuple[int, str]:
    output, errors = process.communicate(timeout=within)
    return process.returncode, errors if output is None else output


def test_a_worker_without_settings_says_what_is_missing() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCREW_")}
    done = subprocess.run(
        [sys.executable, "-m", "batchcrew.worker"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "BATCHCREW_CONTROLLER is not set" in done.stderr


def test_settings_round_trip_through_the_environment() -> None:
    settings = WorkerSettings(
        controller="tcp://10.0.0.1:5555", launch="abc-1", seconds_idle=5.0, tasks_max=3
    )
    environment = {**settings.environment(), "AWS_BATCH_JOB_ARRAY_INDEX": "7"}
    parsed = WorkerSettings.from_environment(environment)
    assert parsed.index == 7
    assert parsed.identity == b"abc-1:7"
    assert parsed.seconds_idle == 5.0
    assert parsed.tasks_max == 3
    with pytest.raises(ValueError, match="seconds_idle='soon' is not valid"):
        WorkerSettings.from_environment({**environment, "BATCHCREW_SECONDS_IDLE": "soon"})


def test_an_idle_worker_says_goodbye_and_exits(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_idle=0.3)
    identity, message = receive(sock)
    assert identity == b"L:0"
    assert isinstance(message, protocol.Hello)
    assert message.pid == process.pid
    assert message.batchcrew == bc.__version__
    assert message.python == platform.python_version()
    sock.send_multipart([identity, *protocol.encode(protocol.Setup())])
    assert receive(sock)[1] == protocol.Ready()
    _, message = receive(sock)
    assert message == protocol.Bye("idle for seconds_idle=0.3")
    assert finish(process)[0] == 0


def test_a_worker_leaves_once_its_wall_time_is_spent(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_wall=0.3)
    greet(sock)
    _, message = receive(sock)
    assert message == protocol.Bye("seconds_wall=0.3 reached")
    assert finish(process)[0] == 0


def test_a_worker_runs_tasks_in_order_and_stops_when_told(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", index=2)
    identity = greet(sock)
    assert identity == b"L:2"
    function = protocol.dump_function(lambda x: x * 10)
    for task_id in (5, 6):
        arguments, buffers = protocol.dump_arguments((task_id,), {})
        frames = protocol.encode(protocol.Task(task_id, function, arguments, tuple(buffers)))
        sock.send_multipart([identity, *frames])
    for task_id in (5, 6):
        _, outcome = receive(sock)
        assert isinstance(outcome, protocol.Outcome)
        assert outcome.task_id == task_id
        assert protocol.load(outcome.value, outcome.buffers) == task_id * 10
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done here"))])
    _, message = receive(sock)
    assert message == protocol.Bye("stopped by the controller: done here")
    assert finish(process)[0] == 0


def leave_a_thread_running() -> int:
    """Start a non-daemon thread that never ends: Python's exit waits for such threads."""
    import threading
    import time

    threading.Thread(target=time.sleep, args=(3600,), name="never ends").start()
    return 1


def test_a_worker_that_said_goodbye_exits_even_if_a_task_left_a_thread_running(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    """The controller does not end the job of a worker that said goodbye: its process must
    end by itself, whatever a task left behind."""
    sock, address = router
    process = start_worker(controller=address, launch="L", tasks_max=1)
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, leave_a_thread_running)])
    assert outcome(sock).status == "success"
    _, message = receive(sock)
    assert message == protocol.Bye("tasks_max=1 reached")
    code, _ = finish(process, within=20)  # the exit watchdog fires after 5 s
    assert code == 0


def test_a_malformed_task_is_dropped_and_the_worker_carries_on(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_idle=5.0)
    identity = greet(sock)
    sock.send_multipart([identity, b"garbage"])
    function = protocol.dump_function(len)
    arguments, _ = protocol.dump_arguments(("abc",), {})
    sock.send_multipart([identity, *protocol.encode(protocol.Task(1, function, arguments))])
    _, outcome = receive(sock)
    assert isinstance(outcome, protocol.Outcome)
    assert protocol.load(outcome.value) == 3
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("bye"))])
    code, errors = finish(process)
    assert code == 0
    assert "dropped a malformed message" in errors


def test_a_worker_exits_once_its_controller_is_gone(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_heartbeat=1.0)
    receive(sock)
    sock.close(0)  # the controller vanishes
    code, errors = finish(process)
    assert code == EXIT_LOST
    assert "lost its connection to the controller" in errors


def test_a_worker_that_cannot_connect_gives_up(tmp_path: Path) -> None:
    with socket_port() as port:
        process = start_worker(
            controller=f"tcp://127.0.0.1:{port}", launch="L", seconds_connect=1.0
        )
        code, errors = finish(process)
    assert code == EXIT_LOST
    assert "could not connect to the controller" in errors


class socket_port:
    """A TCP port that nothing listens on, held reserved while in use."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return int(self._socket.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


async def test_no_worker_outlives_a_killed_controller(tmp_path: Path) -> None:
    """A controller process dies by SIGKILL mid-task; its worker exits within the heartbeat."""
    pid_file = tmp_path / "worker.pid"
    script = textwrap.dedent(
        f"""
        import asyncio, os, time
        import batchcrew as bc

        def hang(path):
            open(path, "w").write(str(os.getpid()))
            time.sleep(600)

        async def main():
            async with bc.Controller(workers=1, seconds_heartbeat=1.0) as crew:
                await crew.push(hang, {str(pid_file)!r})

        asyncio.run(main())
        """
    )
    controller = subprocess.Popen([sys.executable, "-c", script])
    try:
        with anyio.fail_after(30):
            while not pid_file.exists() or not pid_file.read_text():
                await anyio.sleep(0.02)
        worker = int(pid_file.read_text())
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=10)
        with anyio.fail_after(15):
            while psutil.pid_exists(worker) and psutil.Process(worker).status() != "zombie":
                await anyio.sleep(0.05)
    finally:
        controller.kill()
        controller.wait(timeout=10)


# -- interrupting a running task -------------------------------------------------------------


def sleep_long() -> None:
    time.sleep(600)


async def sleep_long_async() -> None:
    await asyncio.sleep(600)


def ignore_interrupts() -> None:
    while True:
        try:
            time.sleep(600)
        except KeyboardInterrupt:
            continue


def triple(x: int) -> int:
    return 3 * x


def task(task_id: int, function: object, *args: object, timeout: float | None = None) -> list:
    arguments, buffers = protocol.dump_arguments(args, {})
    message = protocol.Task(
        task_id, protocol.dump_function(function), arguments, tuple(buffers), timeout
    )
    return [bytes(frame) for frame in protocol.encode(message)]


def cancel(task_id: int) -> list[bytes]:
    return [bytes(frame) for frame in protocol.encode(protocol.Cancel(task_id, "cancelled"))]


def outcome(sock: zmq.Socket[bytes]) -> protocol.Outcome:
    """The next outcome; a busy message first (a task that ran over a second: an import on a
    loaded machine) is skipped."""
    _, message = receive(sock)
    while isinstance(message, protocol.Busy):
        _, message = receive(sock)
    assert isinstance(message, protocol.Outcome), message
    return message


@pytest.mark.parametrize("function", [sleep_long, sleep_long_async])
def test_a_cancel_interrupts_the_running_task_and_the_worker_goes_on(
    router: tuple[zmq.Socket[bytes], str], function: object
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, function)])
    sock.send_multipart([identity, *cancel(1)])
    interrupted = outcome(sock)
    assert interrupted.task_id == 1
    assert interrupted.status == "error"
    assert interrupted.error == "the task was cancelled and interrupted"
    # Interrupted in its code (a coroutine: cancelled), or before it began, while it loaded.
    expected = ("TaskInterrupted",) if function is sleep_long else ("CancelledError", "loaded")
    assert interrupted.trace is not None
    assert any(word in interrupted.trace for word in expected)
    sock.send_multipart([identity, *task(2, triple, 5)])
    assert protocol.load(outcome(sock).value) == 15  # the same process, still serving
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    assert finish(process)[0] == 0


def test_a_task_past_its_timeout_is_interrupted_and_reported_as_a_timeout(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, sleep_long, timeout=0.2)])
    timed_out = outcome(sock)
    assert timed_out.status == "error"
    assert timed_out.error is not None
    assert timed_out.error.startswith("TimeoutError")
    assert "seconds_timeout=0.2" in timed_out.error
    assert 0.2 <= timed_out.seconds < 600
    sock.send_multipart([identity, *task(2, triple, 2)])
    assert protocol.load(outcome(sock).value) == 6
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    assert finish(process)[0] == 0


def test_a_task_cancelled_before_it_starts_is_skipped(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, sleep_long)])
    sock.send_multipart([identity, *task(2, triple, 1)])  # sent ahead, behind task 1
    sock.send_multipart([identity, *cancel(2)])
    sock.send_multipart([identity, *cancel(1)])
    first, second = outcome(sock), outcome(sock)
    assert (first.task_id, first.error) == (1, "the task was cancelled and interrupted")
    assert (second.task_id, second.error) == (2, "the task was cancelled before it started")
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    assert finish(process)[0] == 0


def test_a_task_that_ignores_its_interruption_ends_its_worker(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_interrupt=0.5)
    identity = greet(sock)
    # The timeout must not fire before the task is inside its `try`: an interruption raised
    # as the function is entered is not ignored. 1 s leaves room for a loaded machine's stall.
    sock.send_multipart([identity, *task(1, ignore_interrupts, timeout=1.0)])
    _, timed_out = receive(sock)
    while isinstance(timed_out, protocol.Busy):  # a task running a while says so
        _, timed_out = receive(sock)
    assert isinstance(timed_out, protocol.Outcome), timed_out
    assert timed_out.error is not None
    assert timed_out.error.startswith("TimeoutError")
    assert "its worker was ended" in timed_out.error
    _, goodbye = receive(sock)
    assert isinstance(goodbye, protocol.Bye)
    assert goodbye.end
    assert "did not stop within seconds_interrupt=0.5" in goodbye.reason
    code, errors = finish(process)
    assert code == EXIT_STUCK
    assert "did not stop" in errors


def test_wall_time_is_soft_a_running_task_finishes_and_no_new_one_starts(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_wall=0.2)
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, time.sleep, 0.4)])  # runs past the wall
    sock.send_multipart([identity, *task(2, triple, 1)])
    assert outcome(sock).status == "success"
    _, goodbye = receive(sock)
    assert goodbye == protocol.Bye("seconds_wall=0.2 reached")  # task 2 goes back unstarted
    assert finish(process)[0] == 0


# -- setting up: the handshake and the initializer -------------------------------------------

LOADED: list[str] = []


def load(value: str) -> None:
    LOADED.append(value)


def loaded() -> list[str]:
    return LOADED


def broken_initializer() -> None:
    raise RuntimeError("no model file")


def test_the_initializer_runs_once_before_any_task_and_tasks_see_what_it_set(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    identity = greet(sock, protocol.dump_setup(load, ("model",)))
    for task_id in (1, 2):
        sock.send_multipart([identity, *task(task_id, loaded)])
        assert protocol.load(outcome(sock).value) == ["model"]  # once, not once per task
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    assert finish(process)[0] == 0


def test_an_initializer_that_raises_is_reported_and_the_worker_exits(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    _, _, ready = set_up(sock, protocol.dump_setup(broken_initializer, ()))
    assert isinstance(ready, protocol.Ready)
    assert ready.error == "RuntimeError: no model file"
    assert ready.trace is not None
    assert "broken_initializer" in ready.trace
    code, errors = finish(process)
    assert code == EXIT_SETUP
    assert "its initializer raised RuntimeError: no model file" in errors


def test_a_worker_the_controller_refuses_exits_and_says_why(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    identity, _ = receive(sock)
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("wrong Python"))])
    code, errors = finish(process)
    assert code == EXIT_SETUP
    assert "the controller refused this worker: wrong Python" in errors


# -- seeds -----------------------------------------------------------------------------------


def draws() -> tuple[float, float, int | None]:
    import random

    import numpy as np

    return random.random(), float(np.random.random()), bc.task_seed()


def test_a_seeded_task_seeds_random_and_numpy_and_sees_its_seed(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    import random

    import numpy as np

    sock, address = router
    process = start_worker(controller=address, launch="L")
    identity = greet(sock)
    seed = 2**100 + 7
    arguments, _ = protocol.dump_arguments((), {})
    function = protocol.dump_function(draws)
    for task_id in (1, 2):
        message = protocol.Task(task_id, function, arguments, seed=seed)
        sock.send_multipart([identity, *protocol.encode(message)])
        first, second, seen = protocol.load(outcome(sock).value)
        assert seen == seed
        assert first == random.Random(seed).random()
        np.random.seed([(seed >> shift) & 0xFFFFFFFF for shift in range(0, 128, 32)])
        assert second == np.random.random()
    sock.send_multipart([identity, *task(3, draws)])  # no seed: left alone, and none to see
    assert protocol.load(outcome(sock).value)[2] is None
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    assert finish(process)[0] == 0


def test_task_seed_outside_a_task_says_where_it_works() -> None:
    with pytest.raises(bc.BatchcrewError, match="only inside a task running on a batchcrew"):
        bc.task_seed()


# -- nothing a task raises, returns or warns ends its worker ---------------------------------


class Unprintable(Exception):
    """An exception whose message cannot be shown: its __str__ raises another of its kind."""

    def __str__(self) -> str:
        raise Unprintable()


class Recursive(Exception):
    def __str__(self) -> str:
        return str(self)


class UnpicklableResult:
    def __reduce__(self) -> tuple[object, ...]:
        raise Unprintable()


class UnprintableWarning(UserWarning):
    def __str__(self) -> str:
        raise Unprintable()


class UnprintableMessage:
    """A warning message that is no Warning: warnings.warn takes it, and str() of it raises."""

    def __str__(self) -> str:
        raise Unprintable()

    def __hash__(self) -> int:
        return 0


class Lying(str):
    """A str() result whose own methods raise."""

    def __len__(self) -> int:
        raise Unprintable()


class LyingMessage(Exception):
    def __str__(self) -> str:
        return Lying("a message that lies about its length")


def raise_unprintable() -> None:
    raise Unprintable()


def return_unpicklable() -> UnpicklableResult:
    return UnpicklableResult()


def warn_unprintable() -> None:
    warnings.warn(UnprintableWarning(), stacklevel=1)


def raise_recursive() -> None:
    raise Recursive()


def raise_huge() -> None:
    raise ValueError("x" * 10_000_000)


def raise_lying() -> None:
    raise LyingMessage()


def warn_unprintable_message() -> int:
    warnings.warn(UnprintableMessage(), stacklevel=1)  # type: ignore[call-overload]
    return 7


def warn_a_lot() -> int:
    for number in range(5000):
        warnings.warn(f"warning {number}", stacklevel=1)
    return 8


def pid() -> int:
    return os.getpid()


async def test_no_exception_result_or_warning_of_a_task_ends_its_worker(
    controller: MakeController,
) -> None:
    # crashes_max=0: a task that ended its worker would resolve "crash" at once.
    crew = await controller(workers=1, crashes_max=0)
    first = await crew.push(pid)
    cases = {
        raise_unprintable: "Unprintable (its message cannot be shown: str() of it raised "
        "Unprintable)",
        return_unpicklable: "the task's result cannot be pickled: Unprintable (its message "
        "cannot be shown: str() of it raised Unprintable)",
        warn_unprintable: "Unprintable (its message cannot be shown: str() of it raised "
        "Unprintable)",
        raise_recursive: "Recursive (its message cannot be shown: str() of it raised "
        "RecursionError)",
        raise_lying: "LyingMessage: a message that lies about its length",
    }
    for function, error in cases.items():
        result = await crew.push(function)
        assert (result.status, result.error) == ("error", error), function.__name__
        assert result.trace, function.__name__
        assert result.worker == first.worker
    huge = await crew.push(raise_huge)
    assert huge.status == "error"
    assert huge.error is not None
    assert huge.error.startswith("ValueError: xxx")
    assert huge.error.endswith("... [9,900,000 more characters cut]")
    assert huge.trace is not None
    assert len(huge.trace) < 200_000
    # A warning that cannot be shown is named as such; the task's result stands.
    warned = await crew.push(warn_unprintable_message)
    assert (warned.status, warned.result) == ("success", 7)
    assert warned.warnings == (
        "UserWarning (its message cannot be shown: str() of it raised Unprintable)",
    )
    many = await crew.push(warn_a_lot)
    assert (many.status, many.result) == ("success", 8)
    assert len(many.warnings) == 1001
    assert many.warnings[-1] == "... and 4000 more warning(s), not kept"
    last = await crew.push(pid)
    assert (last.result, last.worker) == (first.result, first.worker)  # the same process
    assert crew.summary()["crash"][0] == 0


def test_an_initializer_raising_an_unprintable_exception_is_reported_clearly(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    _, _, ready = set_up(sock, protocol.dump_setup(raise_unprintable, ()))
    assert isinstance(ready, protocol.Ready)
    message = "Unprintable (its message cannot be shown: str() of it raised Unprintable)"
    assert ready.error == message
    assert ready.trace is not None
    assert "raise_unprintable" in ready.trace
    code, errors = finish(process)
    assert code == EXIT_SETUP
    assert f"its initializer raised {message}" in errors


# -- stopped from outside: SIGTERM ------------------------------------------------------------


def announce_then_sleep(started: str) -> None:
    Path(started).write_text(str(os.getpid()))
    time.sleep(600)


async def announce_then_sleep_async(started: str) -> None:
    Path(started).write_text(str(os.getpid()))
    await asyncio.sleep(600)


def announce_then_ignore_interrupts(started: str) -> None:
    Path(started).write_text(str(os.getpid()))
    ignore_interrupts()


def wait_for_file(path: Path, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.01)


def test_sigterm_while_idle_says_why_and_exits(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L")
    greet(sock)
    process.send_signal(signal.SIGTERM)
    _, message = receive(sock)
    assert message == protocol.Bye(STOPPED_BY_SIGTERM, interrupted=True)
    assert finish(process)[0] == EXIT_TERMINATED


@pytest.mark.parametrize("function", [announce_then_sleep, announce_then_sleep_async])
def test_sigterm_hands_the_running_task_back_at_once(
    router: tuple[zmq.Socket[bytes], str], tmp_path: Path, function: object
) -> None:
    """ECS sends SIGTERM when it stops a container (TerminateJob, a Spot reclaim): the task
    did not fail, so the worker reports no outcome for it and says it hands it back."""
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_interrupt=30.0)
    identity = greet(sock)
    started = tmp_path / "started"
    sock.send_multipart([identity, *task(1, function, str(started))])
    wait_for_file(started)
    process.send_signal(signal.SIGTERM)
    _, message = receive(sock)  # no outcome first: the goodbye
    assert message == protocol.Bye(STOPPED_BY_SIGTERM, interrupted=True)
    assert finish(process, within=10)[0] == EXIT_TERMINATED  # long before seconds_interrupt


def test_a_task_ignoring_sigterm_still_leaves_within_seconds_interrupt(
    router: tuple[zmq.Socket[bytes], str], tmp_path: Path
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_interrupt=0.5)
    identity = greet(sock)
    started = tmp_path / "started"
    sock.send_multipart([identity, *task(1, announce_then_ignore_interrupts, str(started))])
    wait_for_file(started)
    process.send_signal(signal.SIGTERM)
    _, message = receive(sock)
    while isinstance(message, protocol.Busy):  # the task ran over a second: a loaded machine
        _, message = receive(sock)
    assert isinstance(message, protocol.Bye), message
    assert message.interrupted  # handed back, not failed: ECS's SIGKILL would come next
    assert message.reason.startswith(STOPPED_BY_SIGTERM)
    assert "did not stop within seconds_interrupt=0.5" in message.reason
    assert finish(process)[0] == EXIT_TERMINATED


def test_a_remote_worker_says_where_it_connects_and_why_it_leaves(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_idle=0.3, announce=1)
    greet(sock)
    code, errors = finish(process)
    assert code == 0
    lines = errors.splitlines()
    assert lines[0] == f"batchcrew worker L:0: connecting to {address}"
    assert lines[-1] == "batchcrew worker L:0: leaving: idle for seconds_idle=0.3"


def test_sigterm_before_the_controller_answers_says_where_it_was_dialling(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    """The controller's TerminateJob of a worker that never got through (a security group
    that drops its connection): its log says where it tried, and why it left."""
    sock, address = router
    process = start_worker(controller=address, launch="L", announce=1, seconds_connect=600.0)
    receive(sock)  # its hello, left unanswered
    process.send_signal(signal.SIGTERM)
    code, errors = finish(process)
    assert code == EXIT_TERMINATED
    lines = errors.splitlines()
    assert lines[0] == f"batchcrew worker L:0: connecting to {address}"
    assert lines[-1] == f"batchcrew worker L:0: leaving: {STOPPED_BY_SIGTERM} before it was set up"


# -- task output --------------------------------------------------------------------------------


def next_but_busy(sock: zmq.Socket[bytes]) -> protocol.Message:
    """The next message that is not a busy message (a task running a while sends those)."""
    _, message = receive(sock)
    while isinstance(message, protocol.Busy):
        _, message = receive(sock)
    return message


def test_the_workers_own_messages_go_to_its_log_and_never_into_a_tasks_output(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", announce=1, one_log=True)
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, write_every_way, "one")])
    first = outcome(sock)
    assert bytes(first.output) == b"print one\nstderr one\nfd one\necho one\nno newline"
    sock.send_multipart([identity, b"garbage"])  # the worker says so in its log, between tasks
    sock.send_multipart([identity, *task(2, write, "two\n")])
    assert bytes(outcome(sock).output) == b"two\n"
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    code, errors = finish(process)
    assert code == 0
    lines = errors.splitlines()
    assert lines[0] == f"batchcrew worker L:0: connecting to {address}"
    assert lines[-1] == "batchcrew worker L:0: leaving: stopped by the controller: done"
    # The log still shows what the tasks wrote (each task's output ends a line there), on
    # its stdout and its stderr.
    assert "\n".join(lines[1:-1]) == (
        "print one\nstderr one\nfd one\necho one\nno newline\n"
        "batchcrew worker: dropped a malformed message: first frame of 7 bytes, shorter than a "
        "header\n"
        "two"
    )


def test_a_cancelled_task_reports_what_it_wrote_which_was_relayed_as_it_came(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", output_relay=1)
    identity = greet(sock)
    sock.send_multipart([identity, *task(1, write_then_sleep, "started", 600.0)])
    assert next_but_busy(sock) == protocol.Output(1, b"started\n")
    sock.send_multipart([identity, *cancel(1)])
    interrupted = next_but_busy(sock)
    assert isinstance(interrupted, protocol.Outcome)
    assert interrupted.error == "the task was cancelled and interrupted"
    assert bytes(interrupted.output) == b"started\n"
    sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
    assert finish(process)[0] == 0


def test_with_relay_on_a_worker_whose_log_is_a_terminal_leaves_task_output_to_the_relay(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    """A local worker shares the controller's terminal, where the relay prints each line after
    its task's name: printed there by the worker too, every line would show twice."""
    sock, address = router
    terminal, worker_side = pty.openpty()
    settings = WorkerSettings(controller=address, launch="L", announce=1, output_relay=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "batchcrew.worker"],
        env={**os.environ, **settings.environment(), "BATCHCREW_WORKER_INDEX": "0"},
        stderr=worker_side,
    )
    os.close(worker_side)
    try:
        identity = greet(sock)
        sock.send_multipart([identity, *task(1, write, "for the relay\n")])
        assert next_but_busy(sock) == protocol.Output(1, b"for the relay\n")
        assert bytes(outcome(sock).output) == b"for the relay\n"
        sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
        assert process.wait(timeout=30) == 0
        shown = b""
        while select.select([terminal], [], [], 1.0)[0]:
            try:
                data = os.read(terminal, 65536)
            except OSError:  # the worker's side is closed: all of it was read
                break
            if not data:
                break
            shown += data
    finally:
        os.close(terminal)
    assert b"connecting to" in shown  # its own messages still go there
    assert b"for the relay" not in shown
