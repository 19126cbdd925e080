"""The concurrent.futures bridge, used from plain synchronous code."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

import batchcrew as bc
from tests.conftest import children


def add(x: int, y: int) -> int:
    return x + y


def fail() -> None:
    raise ValueError("nope")


def test_submit_and_map_from_synchronous_code() -> None:
    with bc.Executor(name="sync", workers=2, seconds_heartbeat=5.0) as executor:
        futures = [executor.submit(add, i, i) for i in range(10)]
        assert [future.result(timeout=30) for future in futures] == [2 * i for i in range(10)]
        assert list(executor.map(add, range(5), range(5), timeout=30)) == [0, 2, 4, 6, 8]
        with pytest.raises(bc.TaskError, match="ValueError: nope") as raised:
            executor.submit(fail).result(timeout=30)
        assert raised.value.result.status == "error"
        assert executor.controller.summary()["tasks"][0] == 16
    assert not children()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(add, 1, 2)
    executor.shutdown()  # idempotent


def test_shutdown_can_cancel_what_is_left() -> None:
    executor = bc.Executor(workers=1, seconds_heartbeat=5.0)
    future = executor.submit(__import__("time").sleep, 30)
    executor.shutdown(cancel_futures=True)
    with pytest.raises(bc.TaskError, match="status cancel"):
        future.result(timeout=30)
    assert isinstance(future, concurrent.futures.Future)
    assert not children()


def started_then_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def test_cancelling_a_future_interrupts_its_task(tmp_path: Path) -> None:
    started = tmp_path / "started"
    with bc.Executor(workers=1, seconds_heartbeat=5.0) as executor:
        future = executor.submit(started_then_sleep, str(started))
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # synchronous code waiting on a file, under a deadline
        assert future.cancel()
        assert executor.submit(os.getpid).result(timeout=30) == int(started.read_text())
        assert executor.controller.counts()["cancel"] == 1


def labelled(value: int, *, name: str, seed: int) -> str:
    return f"{name}:{value}:{seed}"


def test_submit_passes_every_keyword_to_the_function() -> None:
    with bc.Executor(workers=1, seconds_heartbeat=5.0) as executor:
        future = executor.submit(labelled, 1, name="mine", seed=7)
        assert future.result(timeout=30) == "mine:1:7"
