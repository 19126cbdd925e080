"""Durable runs: a controller SIGKILLed mid-run and started again on its journal loses no task
and no result, and takes its running workers back (real processes, real sockets; on the local
launcher and on AWS Batch through the LocalBatch emulator)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

import batchcrew as bc
from batchcrew.aws.monitor import BatchMonitor
from batchcrew.journal import JournalWriter
from batchcrew.testing import LocalBatch

APP = Path(__file__).with_name("durable_app.py")
TASKS = 500
WORKERS = 4


async def _lines(path: Path, at_least: int, within: float) -> list[str]:
    with anyio.fail_after(within):
        while True:
            lines = path.read_text().split() if path.exists() else []
            if len(lines) >= at_least:
                return lines
            await anyio.sleep(0.02)


async def _killed_and_resumed(tmp_path: Path, launcher: str, environment: dict[str, str]) -> None:
    journal, out = tmp_path / "run.journal", tmp_path / "done.txt"
    command = [sys.executable, str(APP), str(journal), str(out), launcher]
    env = {**os.environ, **environment}
    # Its output goes to a file: the workers, which outlive it, write their logs there too.
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await _lines(out, 150, within=90)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = Counter(out.read_text().split())
    with (tmp_path / "second.log").open("wb") as log:
        second = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                command, env=env, stdout=subprocess.PIPE, stderr=log, timeout=150
            )
        )
    said = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, said[-3000:]
    report = json.loads(second.stdout.decode().strip().splitlines()[-1])
    assert report["statuses"] == {"success": TASKS}
    assert report["names"] == TASKS
    # Every worker of the first run came back, with what it was running.
    assert report["rejoined"] == WORKERS, said[-3000:]
    runs = Counter(out.read_text().split())
    assert set(runs) == {f"t{i}" for i in range(TASKS)}
    # Ran twice: only a task whose result was on its way (on the wire, or not yet committed
    # to the journal) when the first run died; at most one per worker.
    twice = {name: count for name, count in runs.items() if count > 1}
    assert sum(count - 1 for count in twice.values()) <= WORKERS, twice
    assert all(before[name] for name in twice), (twice, {n: before[n] for n in twice})
    # Every task resolved exactly once, in the journal too.
    with sqlite3.connect(journal) as connection:
        rows = connection.execute("SELECT name, status FROM results").fetchall()
    assert sorted(rows) == sorted((f"t{i}", "success") for i in range(TASKS))


@pytest.mark.timeout(240)
async def test_a_run_killed_and_started_again_resumes_on_local_workers(tmp_path: Path) -> None:
    await _killed_and_resumed(tmp_path, "local", {})


@pytest.mark.timeout(240)
async def test_a_run_killed_and_started_again_resumes_on_aws_batch(
    tmp_path: Path, local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {
        **local_batch.environment(),
        "BATCHCREW_TEST_JOB_QUEUE": local_batch.job_queue,
        "BATCHCREW_TEST_JOB_DEFINITION": local_batch.job_definition,
    }
    await _killed_and_resumed(tmp_path, "batch", environment)
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    async with BatchMonitor(local_batch.job_queue, local_batch.job_definition) as monitor:
        assert (await monitor.active()).height == 0


async def test_a_second_controller_on_a_live_journal_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "run.journal"
    async with bc.Controller("first", journal=journal):
        second = bc.Controller("second", journal=journal)
        with pytest.raises(bc.JournalError, match=rf"{journal}.*process {os.getpid()}"):
            await second.start()
    async with bc.Controller("first", journal=journal):
        pass  # free once the first has closed


async def test_a_journal_of_another_controller_is_refused_by_name(tmp_path: Path) -> None:
    journal = tmp_path / "run.journal"
    async with bc.Controller("mine", journal=journal):
        pass
    with pytest.raises(bc.JournalError, match=r"controller 'mine'.*Controller\('mine'"):
        await bc.Controller("yours", journal=journal).start()


async def test_a_journal_cut_in_the_middle_of_a_write_opens(tmp_path: Path) -> None:
    journal = tmp_path / "run.journal"
    async with bc.Controller("cut", journal=journal, workers=2) as controller:
        for i in range(20):
            controller.push(abs, -i, name=f"t{i}")
        await controller.wait()
        controller._journal.flush()  # type: ignore[union-attr]
        # The journal as a kill -9 in the middle of a commit leaves it: the WAL cut short.
        copy = tmp_path / "copy.journal"
        shutil.copy(journal, copy)
        wal = Path(f"{journal}-wal").read_bytes()
        Path(f"{copy}-wal").write_bytes(wal[: len(wal) - 1000])
    async with bc.Controller("cut", journal=copy) as resumed:
        held = resumed.collect()
        # What committed before the cut is there; a task whose record was cut runs again.
        for i in range(20):
            task = resumed.push(abs, -i, name=f"t{i}")
            assert (await task).result == i
    assert held.height <= 20


def test_a_journal_of_another_layout_is_refused_by_name(tmp_path: Path) -> None:
    journal = tmp_path / "old.journal"
    with sqlite3.connect(journal) as connection:
        connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        connection.execute("INSERT INTO meta VALUES ('format', 99), ('batchcrew', '9.0')")
    with pytest.raises(bc.JournalError, match=r"layout 99, written by batchcrew 9\.0"):
        JournalWriter(journal)
    (tmp_path / "notes.txt").write_text("not a database, though it has text enough for one")
    with pytest.raises(bc.JournalError, match="is not a batchcrew journal"):
        JournalWriter(tmp_path / "notes.txt")


def _append_when(go: str, out: str) -> str:
    """Wait (on the worker) until the file `go` exists, then append a line to `out`."""
    import time

    while not os.path.exists(go):
        time.sleep(0.01)
    with open(out, "a") as file:
        file.write("ran\n")
    return "done"


async def test_a_controller_closed_detached_leaves_its_running_work_to_the_next(
    tmp_path: Path,
) -> None:
    journal, go, out = tmp_path / "app.journal", tmp_path / "go", tmp_path / "out"
    first = bc.Controller("app", journal=journal, seconds_reconnect=30.0)
    await first.start()
    task = first.push(_append_when, str(go), str(out), name="job")
    with anyio.fail_after(30):
        while not task.running():
            await anyio.sleep(0.01)
    await first.aclose(detach=True)  # a redeploy's old process: its worker goes on
    assert (await task).status == "cancel"
    async with bc.Controller("app", journal=journal, seconds_reconnect=30.0) as second:
        dispatcher = second._dispatcher
        assert dispatcher is not None
        with anyio.fail_after(30):
            while not dispatcher.rejoined:
                await anyio.sleep(0.01)
        go.touch()
        resumed = second.task("job")
        assert resumed is not None
        assert (await resumed).result == "done"
    assert out.read_text() == "ran\n"  # once: taken back, not run again


async def test_detach_without_a_journal_is_refused(tmp_path: Path) -> None:
    async with bc.Controller("plain") as controller:
        with pytest.raises(ValueError, match="has no journal"):
            await controller.aclose(detach=True)


def _count_run(out: str, fail_unless: str = "") -> int:
    """Append a line to `out`; raise unless the file `fail_unless` exists (when given)."""
    with open(out, "a") as file:
        file.write("ran\n")
    if fail_unless and not os.path.exists(fail_unless):
        raise ValueError("not yet")
    with open(out) as file:
        return len(file.readlines())


async def test_a_resumed_run_does_only_what_is_left(tmp_path: Path) -> None:
    journal, ok, bad, fixed = (tmp_path / name for name in ("j", "ok", "bad", "fixed"))
    never, go = tmp_path / "never", tmp_path / "go"
    async with bc.Controller("again", 2, journal=journal) as first:
        assert (await first.push(_count_run, str(ok), name="ok")).status == "success"
        assert (await first.push(_count_run, str(bad), str(fixed), name="bad")).status == "error"
        waiting = first.push(_append_when, str(go), str(never), name="never")
        with anyio.fail_after(30):
            while not waiting.running():
                await anyio.sleep(0.01)
    # Closed with "never" running: it was cancelled here, and stays to do in the journal.
    fixed.touch()
    go.touch()
    async with bc.Controller("again", 2, journal=journal) as second:
        assert second.counts()["unresolved"] == 1
        stored = second.push(_count_run, str(ok), name="ok")
        assert stored.done()  # its stored result, without running it
        assert (await stored).result == 1
        again = second.push(_count_run, str(bad), str(fixed), name="bad")
        assert (await again).status == "success"  # a failure runs again
        resumed = second.push(_append_when, str(go), str(never), name="never")
        assert resumed is second.task("never")  # the task resumed at start, not a second one
        assert (await resumed).result == "done"
        assert second.forget("ok")
        assert (await second.push(_count_run, str(ok), name="ok")).result == 2  # ran again
    with bc.Journal(journal) as view:
        assert view.unresolved().height == 0
        assert sorted(view.results()["name"]) == ["bad", "never", "ok"]  # the failure replaced
