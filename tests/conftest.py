"""Fixtures shared by every test: a guard that no test leaves a process behind."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psutil
import pytest
import zmq

import batchcrew as bc
from batchcrew.dispatcher import Resolution
from batchcrew.testing.pytest_plugin import MakeController, _close_controllers
from tests.netns import Host, other_hosts

__all__ = ["MakeController", "RecordingLauncher", "children", "watch_resolutions"]

# The `pytester` fixture, for tests of the pytest plugin that run a test file of their own.
pytest_plugins = ["pytester"]


class RecordingLauncher(bc.LocalLauncher):
    """A launcher plugin written against the public contract: it records each request, and
    each worker exit it reports (`time.monotonic()` and how), written-off workers' included."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.requests: list[bc.LaunchRequest] = []
        self.exits: list[tuple[float, bc.WorkerExit]] = []

    async def launch(self, request: bc.LaunchRequest) -> None:
        self.requests.append(request)
        await super().launch(request)

    def report(self, exit: bc.WorkerExit) -> None:
        self.exits.append((time.monotonic(), exit))
        super().report(exit)


def watch_resolutions(crew: bc.Controller) -> Counter[int]:
    """Count, by task id, every resolution the started controller's dispatcher hands it (the
    controller would absorb a second one silently, so this is where a double shows): a spy
    that passes each one on."""
    dispatcher = crew._dispatcher
    assert dispatcher is not None
    counts: Counter[int] = Counter()
    resolve = dispatcher._resolve

    def spy(resolution: Resolution) -> None:
        counts[resolution.task] += 1
        resolve(resolution)

    dispatcher._resolve = spy
    return counts


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context for sockets that play workers by hand, destroyed after the test."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
async def hosts(request: pytest.FixtureRequest) -> AsyncIterator[list[Host]]:
    """Two other hosts for workers: network namespaces joined to the test's by veth pairs
    (tests/netns.py), removed after the test. Skips the test where they cannot be made.

    The test's controllers close first, whatever order the test names the fixtures in: their
    workers must still hear the controller tell them to leave."""
    with other_hosts(2) as made:
        try:
            yield made
        finally:
            await _close_controllers(request)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server in a thread of this process, shared by the tests that compare against it;
    its jobs run without Docker (moto marks them SUCCEEDED at once)."""
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    saved = default_user_config.get("batch")
    default_user_config["batch"] = {"use_docker": False}
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if saved is None:
            default_user_config.pop("batch", None)
        else:
            default_user_config["batch"] = saved


def children() -> list[psutil.Process]:
    """Live child processes of this test process (zombies already reaped do not count)."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a worker or job process running after it ends."""
    before = {child.pid for child in children()}
    yield
    deadline = time.monotonic() + 10.0
    while True:
        left = [child for child in children() if child.pid not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # a synchronous teardown: no event loop runs here any more
    if left:
        commands = []
        for child in left:
            try:
                commands.append(" ".join(child.cmdline())[:120])
                child.kill()
            except psutil.NoSuchProcess:
                continue
        pytest.fail(f"the test left {len(left)} process(es) running: {commands}")
