"""Where workers dial: `address=` when it is not where the controller listens (the far end of
an SSH reverse tunnel, a NAT), and the warning for addresses other machines will not reach."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

import batchcrew as bc
from tests.conftest import MakeController
from tests.playing import HandLauncher
from tests.tasks import add

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Forward:
    """A TCP forward from a port of its own to `port` on 127.0.0.1, as the listening end of
    `ssh -R` is: it counts the connections it carries."""

    def __init__(self, port: int) -> None:
        self.port, self.carried = port, 0

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.carried += 1
        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer))


@pytest.fixture
async def forward() -> AsyncIterator[tuple[Forward, int]]:
    """A forward to a free port, listening on another free port (the two, in that order)."""
    forward = Forward(free_port())
    server = await asyncio.start_server(forward._carry, "127.0.0.1", 0)
    try:
        yield forward, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_workers_dial_the_address_given_and_reach_the_controller_through_it(
    controller: MakeController, forward: tuple[Forward, int]
) -> None:
    tunnel, listening = forward
    crew = await controller(
        workers=2, host="127.0.0.1", port=tunnel.port, address=f"127.0.0.1:{listening}"
    )
    assert crew.address == f"tcp://127.0.0.1:{listening}"
    results = [await task for task in await crew.walk(add, range(4), range(4))]
    assert [result.result for result in results] == [0, 2, 4, 6]
    assert tunnel.carried >= 1  # the workers came in through the forward


@pytest.mark.parametrize(
    ("address", "port", "match"),
    [
        ("bastion.internal", 5555, 'address must be "HOST:PORT"'),
        ("bastion.internal:http", 5555, 'address must be "HOST:PORT"'),
        (":5555", 5555, 'address must be "HOST:PORT"'),
        ("bastion.internal:70000", 5555, 'address must be "HOST:PORT"'),
        ("bastion.internal:5555", 0, "needs a fixed port= too"),
    ],
)
def test_an_address_workers_cannot_use_is_refused_saying_what_to_give(
    address: str, port: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        bc.Controller(address=address, port=port)


class RemoteHand(HandLauncher):
    remote = True


@pytest.mark.parametrize(
    ("address", "doubt"),
    [("169.254.10.1", "link-local"), ("172.17.0.2", "Docker's default bridge")],
)
async def test_an_address_remote_workers_will_not_reach_is_warned_of_at_start(
    controller: MakeController, caplog: pytest.LogCaptureFixture, address: str, doubt: str
) -> None:
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="batchcrew"):
        await controller(
            launcher=RemoteHand(), host="127.0.0.1", port=port, address=f"{address}:{port}"
        )
    (warning,) = [record.getMessage() for record in caplog.records if doubt in record.message]
    assert f"tcp://{address}:{port}" in warning
    assert "Give host= an address of this machine that they can reach" in warning


async def test_a_routable_address_draws_no_warning(
    controller: MakeController, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="batchcrew"):
        await controller(
            launcher=RemoteHand(), host="127.0.0.1", port=port, address=f"10.0.3.7:{port}"
        )
    assert not [record for record in caplog.records if "will probably not reach" in record.message]
