"""Playing a controller's workers by hand: a launcher that starts nothing, and DEALER sockets
that speak the protocol with the keys a real launch would carry."""

from __future__ import annotations

import asyncio
import os
import platform

import anyio
import cloudpickle
import zmq

import batchcrew as bc
from batchcrew import protocol


class HandLauncher(bc.Launcher):
    """Starts nothing: each request waits in `requests` for the test to play its workers."""

    name = "hand"

    def __init__(self) -> None:
        super().__init__()
        self.requests: asyncio.Queue[bc.LaunchRequest] = asyncio.Queue()

    async def launch(self, request: bc.LaunchRequest) -> None:
        await self.requests.put(request)

    async def terminate(self, launch: str, indexes: object = None) -> None:
        return None


def dealer(
    context: zmq.Context[zmq.Socket[bytes]],
    address: str,
    identity: bytes,
    keys: dict[str, str] | None = None,
) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    if keys:
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys["BATCHCREW_SERVER_KEY"].encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys["BATCHCREW_PUBLIC_KEY"].encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys["BATCHCREW_SECRET_KEY"].encode())
    sock.connect(address)
    return sock


def stranger_keys(server_key: str) -> dict[str, str]:
    public, secret = zmq.curve_keypair()
    return {
        "BATCHCREW_SERVER_KEY": server_key,
        "BATCHCREW_PUBLIC_KEY": public.decode(),
        "BATCHCREW_SECRET_KEY": secret.decode(),
    }


def hello(batchcrew: str = bc.__version__, python: str = platform.python_version()) -> list[bytes]:
    message = protocol.Hello(os.getpid(), "test", python, batchcrew, cloudpickle.__version__)
    return [bytes(f) for f in protocol.encode(message)]


async def join(sock: zmq.Socket[bytes]) -> None:
    """Play a worker's side of the handshake: hello out, setup in, ready out."""
    sock.send_multipart(hello())
    assert isinstance(await receive(sock), protocol.Setup)
    sock.send_multipart([bytes(f) for f in protocol.encode(protocol.Ready())])


_UNREAD: dict[int, list[protocol.Message]] = {}


async def receive(sock: zmq.Socket[bytes], within: float = 10.0) -> protocol.Message:
    """The next message the controller sent this socket (one ZeroMQ message may carry
    several, such as tasks sent together)."""
    unread = _UNREAD.setdefault(id(sock), [])
    if not unread:
        with anyio.fail_after(within):
            while not sock.poll(0):
                await anyio.sleep(0.005)
        unread.extend(protocol.decode_all(sock.recv_multipart()))
    return unread.pop(0)


def reply(task: protocol.Message, value: object) -> list[bytes]:
    assert isinstance(task, protocol.Task)
    data, buffers = protocol.dump_value(value)
    outcome = protocol.Outcome(task.task_id, "success", 0.001, value=data, buffers=buffers)
    return [bytes(f) for f in protocol.encode(outcome)]


def run_task(task: protocol.Message) -> object:
    assert isinstance(task, protocol.Task)
    function = protocol.load(task.function)
    args, kwargs = protocol.load(task.arguments, task.buffers)
    return function(*args, **kwargs)
