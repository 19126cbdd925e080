"""CURVE and bad input: rogue peers, forged and malformed frames, a worker fed by an impostor.

Every peer here is a real ZeroMQ socket or process. Where the test itself plays a worker, it
uses a launcher written against the public contract that starts nothing and hands the test the
keys a real launch would carry.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import zmq

import batchcrew as bc
from batchcrew import protocol
from batchcrew.worker import EXIT_LOST
from tests.conftest import MakeController, RecordingLauncher
from tests.playing import (
    HandLauncher,
    dealer,
    hello,
    join,
    receive,
    reply,
    run_task,
    stranger_keys,
)


def add(x: int, y: int) -> int:
    return x + y


# -- rogue peers -----------------------------------------------------------------------------


async def test_rogue_peers_never_get_a_task_and_the_real_workers_lose_nothing(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew")
    launcher = RecordingLauncher()
    crew = await controller(workers=2, launcher=launcher, tasks_max=10)
    await crew.map(add, range(4), range(4))
    issued = launcher.requests[0].environment
    server_key = issued["BATCHCREW_SERVER_KEY"]
    rogues = [
        dealer(context, crew.address, b"plain:0"),  # no keys at all
        dealer(context, crew.address, b"stranger:0", stranger_keys(server_key)),  # never issued
    ]
    for rogue in rogues:
        rogue.send_multipart(hello())
    frame = await crew.map(add, range(50), range(50))  # tasks_max=10: launches retire keys
    assert frame["result"].to_list() == [2 * i for i in range(50)]
    assert crew.summary()["tasks"][0] == 54
    # A retired key: the first launch's workers left after tasks_max, so its key is refused.
    retired = dealer(context, crew.address, f"{launcher.requests[0].launch}:0".encode(), issued)
    retired.send_multipart(hello())
    rogues.append(retired)
    frame = await crew.map(add, range(20), range(20))
    assert frame["status"].to_list() == ["success"] * 20
    for rogue in rogues:
        assert not rogue.poll(0), "a rogue peer received something"
    with anyio.fail_after(10):
        while caplog.text.count("refused a") < 2:
            await anyio.sleep(0.01)
    assert "its key was not issued by this controller, or it was retired" in caplog.text


async def test_a_retired_launch_key_is_refused(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew")
    launcher = RecordingLauncher()
    crew = await controller(workers=1, launcher=launcher, tasks_max=1)
    await crew.push(add, 1, 1)  # the worker exits after one task, so its launch retires
    first = launcher.requests[0]
    with anyio.fail_after(20):
        while crew.counts()["workers"] > 0:
            await anyio.sleep(0.01)
    refusals = caplog.text.count("refused a")
    replay = dealer(context, crew.address, f"{first.launch}:0".encode(), dict(first.environment))
    replay.send_multipart(hello())
    with anyio.fail_after(10):
        while caplog.text.count("refused a") == refusals:
            await anyio.sleep(0.01)
    assert (await crew.push(add, 2, 2)).result == 4
    assert not replay.poll(0)


# -- malformed and forged frames from an authenticated peer ----------------------------------


async def test_malformed_and_forged_frames_change_nothing(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew")
    launcher = HandLauncher()
    crew = await controller(workers=1, launcher=launcher)
    first = crew.push(add, 1, 2)
    request = await launcher.requests.get()
    identity = f"{request.launch}:0".encode()
    worker = dealer(context, crew.address, identity, dict(request.environment))
    await join(worker)
    task = await receive(worker)
    assert isinstance(task, protocol.Task)
    header = struct.Struct(">2sBBHQ")
    junk = [
        [b"garbage"],
        [header.pack(b"bc", protocol.VERSION, protocol.Kind.RESULT, 0, task.task_id)],  # cut
        [header.pack(b"bc", 9, protocol.Kind.RESULT, 0, task.task_id) + b"\0" * 14],  # v9
        [header.pack(b"bc", protocol.VERSION, 77, 0, 0) + b"{}"],  # unknown kind
        reply(protocol.Task(task.task_id + 1000, b"", b""), "forged"),  # never assigned
        hello(),  # a second hello
        [bytes(f) for f in protocol.encode(protocol.Task(5, b"x", b"y"))],  # wrong direction
    ]
    for frames in junk:
        worker.send_multipart(frames)
    second = crew.push(add, 3, 4)
    worker.send_multipart(reply(task, run_task(task)))
    assert (await first).result == 3
    task = await receive(worker)
    worker.send_multipart(reply(task, run_task(task)))
    assert (await second).result == 7
    summary = crew.counts()
    assert (summary["success"], summary["error"], summary["crash"]) == (2, 0, 0)
    for expected in (
        "malformed message",
        "protocol version 9",
        "unknown message kind 77",
        "which was not running it",
        "second hello",
    ):
        assert expected in caplog.text


async def test_a_result_for_a_cancelled_task_is_dropped(
    controller: MakeController, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    launcher = HandLauncher()
    crew = await controller(workers=1, launcher=launcher)
    doomed = crew.push(add, 1, 2, name="doomed")
    request = await launcher.requests.get()
    worker = dealer(
        context, crew.address, f"{request.launch}:0".encode(), dict(request.environment)
    )
    await join(worker)
    task = await receive(worker)
    assert crew.cancel(names=["doomed"]) == 1
    assert (await doomed).status == "cancel"
    assert await receive(worker) == protocol.Cancel(task.task_id, "cancelled")
    worker.send_multipart(reply(task, "too late"))
    after = crew.push(add, 5, 5)
    task = await receive(worker)  # the worker is free again once its result came
    worker.send_multipart(reply(task, run_task(task)))
    assert (await after).result == 10
    assert crew.counts()["cancel"] == 1
    assert crew.collect().height == 0


async def test_a_key_cannot_pose_as_another_launchs_worker(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew")
    launcher = HandLauncher()
    crew = await controller(workers=2, launcher=launcher)
    crew.walk(add, [1], [1])
    first = await launcher.requests.get()
    crew.walk(add, [2], [2])
    second = await launcher.requests.get()
    impostor = dealer(context, crew.address, f"{second.launch}:0".encode(), dict(first.environment))
    impostor.send_multipart(hello())
    with anyio.fail_after(10):
        while "issued to another launch" not in caplog.text:
            await anyio.sleep(0.01)
    assert not impostor.poll(0)
    assert crew.counts()["workers"] == 0


# -- the worker checks the controller --------------------------------------------------------


async def test_a_worker_refuses_a_controller_whose_key_does_not_match(
    controller: MakeController, tmp_path: Path
) -> None:
    launcher = HandLauncher()
    crew = await controller(workers=1, launcher=launcher)
    marker = tmp_path / "ran"
    task = crew.push(lambda: marker.touch())
    request = await launcher.requests.get()
    wrong = zmq.curve_keypair()[0].decode()
    environment = {
        **os.environ,
        **request.environment,
        "BATCHCREW_SERVER_KEY": wrong,
        "BATCHCREW_SECONDS_CONNECT": "2",
        "BATCHCREW_WORKER_INDEX": "0",
    }
    done = await anyio.run_process(
        [sys.executable, "-m", "batchcrew.worker"], env=environment, check=False
    )
    assert done.returncode == EXIT_LOST
    errors = done.stderr.decode()
    assert "could not connect to the controller" in errors
    assert "does not match BATCHCREW_SERVER_KEY" in errors
    assert not marker.exists()
    assert not task.done()


def test_an_impostor_listening_on_the_port_feeds_the_worker_nothing(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    impostor = context.socket(zmq.ROUTER)  # a CURVE server with keys of its own
    _, secret = zmq.curve_keypair()
    impostor.setsockopt(zmq.CURVE_SERVER, 1)
    impostor.setsockopt(zmq.CURVE_SECRETKEY, secret)
    port = impostor.bind_to_random_port("tcp://127.0.0.1")
    expected_server = zmq.curve_keypair()[0].decode()  # the key the worker was given
    client_public, client_secret = zmq.curve_keypair()
    environment = {
        **os.environ,
        "BATCHCREW_CONTROLLER": f"tcp://127.0.0.1:{port}",
        "BATCHCREW_LAUNCH": "victim",
        "BATCHCREW_SERVER_KEY": expected_server,
        "BATCHCREW_PUBLIC_KEY": client_public.decode(),
        "BATCHCREW_SECRET_KEY": client_secret.decode(),
        "BATCHCREW_SECONDS_CONNECT": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "batchcrew.worker"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == EXIT_LOST
    assert not impostor.poll(0)  # not even a hello got through
    impostor.close(0)


# -- limits and settings ---------------------------------------------------------------------


async def test_a_result_over_max_message_size_resolves_as_an_error(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1, max_message_size=100_000)
    result = await crew.push(bytes, 200_000)
    assert result.status == "error"
    assert result.error is not None
    assert "over the controller's max_message_size=100000" in result.error
    assert (await crew.push(bytes, 10)).result == bytes(10)


def test_security_none_warns_off_loopback() -> None:
    with pytest.warns(UserWarning, match='security="none" on 0.0.0.0'):
        bc.Controller(host="0.0.0.0", security="none")


async def test_security_none_works_on_loopback(controller: MakeController) -> None:
    crew = await controller(security="none")
    assert (await crew.push(add, 2, 3)).result == 5


async def test_a_flood_from_an_unknown_peer_changes_nothing(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew")
    crew = await controller(workers=1, security="none")
    assert (await crew.push(add, 1, 1)).result == 2
    stranger = dealer(context, crew.address, b"stranger:0")
    for _ in range(500):
        stranger.send_multipart(hello())
    with anyio.fail_after(20):
        while crew._dispatcher is not None and crew._dispatcher.dropped < 500:
            await anyio.sleep(0.01)
    assert caplog.text.count("unknown peer") == 100
    assert (await crew.push(add, 2, 2)).result == 4
    assert crew.counts()["workers"] == 1
    assert not stranger.poll(0)


async def test_refused_handshakes_are_counted_and_only_the_first_are_warnings(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="batchcrew")
    launcher = RecordingLauncher()
    crew = await controller(workers=1, launcher=launcher)
    assert (await crew.push(add, 1, 1)).result == 2
    server_key = launcher.requests[0].environment["BATCHCREW_SERVER_KEY"]
    strangers = []
    for index in range(60):
        stranger = context.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.setsockopt(zmq.RECONNECT_IVL, -1)  # one handshake each: the count is exact
        keys = stranger_keys(server_key)
        stranger.setsockopt(zmq.CURVE_SERVERKEY, keys["BATCHCREW_SERVER_KEY"].encode())
        stranger.setsockopt(zmq.CURVE_PUBLICKEY, keys["BATCHCREW_PUBLIC_KEY"].encode())
        stranger.setsockopt(zmq.CURVE_SECRETKEY, keys["BATCHCREW_SECRET_KEY"].encode())
        stranger.setsockopt(zmq.IDENTITY, f"stranger:{index}".encode())
        stranger.connect(crew.address)
        stranger.send_multipart(hello())
        strangers.append(stranger)
    assert crew._dispatcher is not None
    zap = crew._dispatcher._zap
    assert zap is not None
    with anyio.fail_after(20):
        while zap.refused < 60:
            await anyio.sleep(0.01)
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused a CURVE")]
    assert len(refusals) == zap.refused == 60
    levels = [record.levelno for record in refusals]
    assert levels == [logging.WARNING] * 20 + [logging.DEBUG] * 40
    assert "further ones are counted and logged at DEBUG" in refusals[19].getMessage()
    assert (await crew.push(add, 2, 2)).result == 4  # the real worker lost nothing
    assert crew.counts()["workers"] == 1
    assert not any(stranger.poll(0) for stranger in strangers)
