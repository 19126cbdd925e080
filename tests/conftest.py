"""Fixtures shared by every test: a guard that no test leaves a process behind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psutil
import pytest

import batchcrew as bc

MakeController = Callable[..., Awaitable[bc.Controller]]


@pytest.fixture
async def controller(request: pytest.FixtureRequest) -> AsyncIterator[MakeController]:
    """`await controller(**options)`: a started local controller, closed after the test."""
    made: list[bc.Controller] = []

    async def make(**options: Any) -> bc.Controller:
        options.setdefault("name", request.node.name[:60])
        options.setdefault("workers", 2)
        options.setdefault("seconds_heartbeat", 5.0)
        started = bc.Controller(**options)
        await started.start()
        made.append(started)
        return started

    yield make
    for started in made:
        await started.aclose()


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
