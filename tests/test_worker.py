"""The worker process on its own: settings, goodbyes, and exiting when its controller is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
import zmq

from batchcrew import protocol
from batchcrew.worker import EXIT_LOST, WorkerSettings


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bare ROUTER socket standing in for a controller (security off)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(0)
    context.term()


def start_worker(**settings: object) -> subprocess.Popen[str]:
    parsed = WorkerSettings(**settings)  # type: ignore[arg-type]
    environment = {
        **os.environ,
        **parsed.environment(),
        "BATCHCREW_WORKER_INDEX": str(parsed.index),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "batchcrew.worker"],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )


def receive(sock: zmq.Socket[bytes], within: float = 20.0) -> tuple[bytes, protocol.Message]:
    assert sock.poll(int(within * 1000)), "no message from the worker in time"
    identity, *frames = sock.recv_multipart()
    return identity, protocol.decode(frames)


def finish(process: subprocess.Popen[str], within: float = 30.0) -> tuple[int, str]:
    _, errors = process.communicate(timeout=within)
    return process.returncode, errors


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
    assert isinstance(message, protocol.Ready)
    assert message.pid == process.pid
    _, message = receive(sock)
    assert message == protocol.Bye("idle for seconds_idle=0.3")
    assert finish(process)[0] == 0


def test_a_worker_leaves_once_its_wall_time_is_spent(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_wall=0.3)
    receive(sock)
    _, message = receive(sock)
    assert message == protocol.Bye("seconds_wall=0.3 reached")
    assert finish(process)[0] == 0


def test_a_worker_runs_tasks_in_order_and_stops_when_told(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", index=2)
    identity, _ = receive(sock)
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


def test_a_malformed_task_is_dropped_and_the_worker_carries_on(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, address = router
    process = start_worker(controller=address, launch="L", seconds_idle=5.0)
    identity, _ = receive(sock)
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
