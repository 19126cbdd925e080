"""Workers the controller loses while their process lives on: on another host behind a link
that fails (tests/netns.py), or frozen by SIGSTOP.

The rules under test: a worker silent for longer than `seconds_heartbeat` is written off and
its task retried elsewhere; a cut-off worker exits by itself about a heartbeat after that;
nothing a written-off worker sends afterwards is accepted; every task resolves exactly once.
A silence shorter than the heartbeat costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from batchcrew.controller import _primary_address
from batchcrew.worker import EXIT_LOST, EXIT_TERMINATED
from tests.conftest import MakeController, RecordingLauncher, watch_resolutions
from tests.netns import Cut, Host, HostLauncher, require_namespaces

HEARTBEAT = 2.0


def network_namespace() -> str:
    """Which network namespace the calling process is in."""
    return os.readlink("/proc/self/ns/net")


def wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def once_started(started: str, go: str) -> int:
    """Say it started (a file named by its pid in `started`), wait for `go`, return its pid."""
    Path(started, str(os.getpid())).touch()
    wait_for_file(go)
    return os.getpid()


async def started_pids(started: Path, count: int, within: float) -> list[int]:
    """The pids of the first `count` runs of `once_started`, in the order they started."""
    with anyio.fail_after(within):
        while len(list(started.iterdir())) < count:
            await anyio.sleep(0.01)
    runs = sorted(started.iterdir(), key=lambda path: path.stat().st_mtime_ns)
    return [int(path.name) for path in runs]


# -- the harness -----------------------------------------------------------------------------

CONNECT = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0).close()
    except OSError as error:
        sys.exit(f"{type(error).__name__}: {error}")
    """
)


async def test_the_harness_partitions_a_host_both_ways(hosts: list[Host]) -> None:
    require_namespaces(drops=True)
    host = hosts[0]
    listener = await anyio.create_tcp_listener(local_host=host.gateway)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def connect() -> str:
        done = await host.run(sys.executable, "-c", CONNECT, host.gateway, str(port))
        return done.stderr.decode().strip()

    async with listener:
        assert await connect() == ""
        await host.cut("link")  # the kernel knows: an error at once
        assert await connect() == "OSError: [Errno 101] Network is unreachable"
        await host.heal()
        assert await connect() == ""
        await host.cut("drop")  # nothing answers: only a timeout tells
        assert await connect() == "TimeoutError: timed out"
        await host.heal()
        assert await connect() == ""


# -- the address workers dial ----------------------------------------------------------------


async def test_a_remote_launchers_workers_reach_the_address_the_controller_picks(
    controller: MakeController, hosts: list[Host]
) -> None:
    if _primary_address() == "127.0.0.1":
        pytest.skip("this machine has no non-loopback address with a route")
    crew = await controller(workers=1, launcher=HostLauncher(hosts[0]))  # no host=
    assert crew.host == _primary_address()
    result = await crew.push(network_namespace)
    assert result.status == "success"
    assert result.result != network_namespace()  # it ran on the other host


# -- partitions ------------------------------------------------------------------------------


def finish_when_told(go: str, done: str) -> int:
    """Wait for `go`, say it finished (`done`), return its worker's pid."""
    wait_for_file(go)
    Path(done).touch()
    return os.getpid()


def pid() -> int:
    return os.getpid()


@pytest.mark.parametrize("how", ["link", "drop"])
async def test_a_partition_shorter_than_the_heartbeat_costs_nothing(
    controller: MakeController, hosts: list[Host], tmp_path: Path, how: Cut
) -> None:
    require_namespaces(drops=how == "drop")
    launcher = HostLauncher(hosts[0])
    crew = await controller(
        workers=1, launcher=launcher, host=hosts[0].gateway, seconds_heartbeat=HEARTBEAT * 3
    )
    resolutions = watch_resolutions(crew)
    first = await crew.push(pid)
    go, done = tmp_path / "go", tmp_path / "done"
    task = crew.push(finish_when_told, str(go), str(done))
    await hosts[0].cut(how)
    go.touch()
    with anyio.fail_after(10):
        while not done.exists():
            await anyio.sleep(0.01)
    # The task finished on the far side of the partition: its result cannot cross it yet.
    assert not task.done()
    await anyio.sleep(HEARTBEAT)  # the partition's length: a third of the heartbeat timeout
    assert not task.done()
    assert crew.counts()["workers"] == 1  # not written off
    await hosts[0].heal()
    with anyio.fail_after(HEARTBEAT * 2):
        result = await task
    assert (result.status, result.result, result.worker) == ("success", first.result, first.worker)
    after = await crew.push(pid)
    assert (after.result, after.worker) == (first.result, first.worker)  # it carries on
    assert sorted(resolutions.values()) == [1, 1, 1]
    assert crew.counts()["crash"] == 0
    assert (len(launcher.launched), launcher.exits) == (1, [])  # none lost, none replaced
    dispatcher = crew._dispatcher
    assert dispatcher is not None
    assert (dispatcher.late, dispatcher.dropped) == (0, 0)


@pytest.mark.parametrize("how", ["link", "drop"])
async def test_a_partition_longer_than_the_heartbeat_writes_the_worker_off(
    controller: MakeController, hosts: list[Host], tmp_path: Path, how: Cut
) -> None:
    require_namespaces(drops=how == "drop")
    cut_off, healthy = hosts
    launcher = HostLauncher(cut_off, log_dir=tmp_path / "logs")
    crew = await controller(
        workers=1, launcher=launcher, host=healthy.gateway, seconds_heartbeat=HEARTBEAT
    )
    resolutions = watch_resolutions(crew)
    started, go = tmp_path / "started", tmp_path / "go"
    started.mkdir()
    task = crew.push(once_started, str(started), str(go))
    (lost,) = await started_pids(started, 1, within=20)
    launcher.move_to(healthy)  # where the replacement will run
    await cut_off.cut(how)
    cut_at = time.monotonic()
    # The controller hears nothing for its heartbeat, writes the worker off and retries the
    # task on a new worker, on the healthy host.
    lost_pid, retry_pid = await started_pids(started, 2, within=HEARTBEAT * 2 + 20)
    assert lost_pid == lost
    written_off_at = launcher.launched[1]  # the replacement's launch, decided as it was
    assert crew.counts()["workers"] == 1  # the replacement only
    await cut_off.heal()  # the link is back while the cut-off worker still lives
    go.touch()  # both runs finish: the cut-off one's result must not count
    with anyio.fail_after(20):
        result = await task
    assert (result.status, result.result) == ("success", retry_pid)
    # The cut-off worker leaves by itself (EXIT_LOST: the launcher never had to end it). Each
    # side notices the silence within 1.25 heartbeats (a ping goes out every quarter of one);
    # the worker then waits one heartbeat for the link to return. With a second's slack:
    with anyio.fail_after(HEARTBEAT * 3):
        while not launcher.exits:
            await anyio.sleep(0.01)
    ((exited_at, exit),) = launcher.exits
    assert exit.code == EXIT_LOST
    assert written_off_at - cut_at < 1.25 * HEARTBEAT + 1
    assert written_off_at < exited_at < cut_at + 2.25 * HEARTBEAT + 1
    log = (tmp_path / "logs" / f"{exit.launch}-{exit.index}.log").read_text()
    assert "lost its connection to the controller" in log
    assert (await crew.push(pid)).result == retry_pid  # the replacement carries on
    assert sorted(resolutions.values()) == [1, 1]  # each resolved once
    assert crew.counts()["crash"] == 0
    assert launcher.ended == []  # reported gone: nothing to end


async def test_a_hung_remote_worker_written_off_is_ended(
    controller: MakeController, hosts: list[Host], tmp_path: Path
) -> None:
    """A worker on another host that stops answering but never leaves (its machine stalled,
    its process stopped): its job would bill on, so the controller has the launcher end it."""
    launcher = HostLauncher(hosts[0])
    crew = await controller(
        workers=1, launcher=launcher, host=hosts[0].gateway, seconds_heartbeat=HEARTBEAT
    )
    started, go = tmp_path / "started", tmp_path / "go"
    started.mkdir()
    task = crew.push(once_started, str(started), str(go))
    (hung,) = await started_pids(started, 1, within=20)
    os.kill(hung, signal.SIGSTOP)
    go.touch()  # the retry finishes at once
    try:
        # Written off after the heartbeat; its task retried (on the same host: not cut off).
        _, retry = await started_pids(started, 2, within=HEARTBEAT * 2 + 20)
        written_off_at = launcher.launched[1]
        with anyio.fail_after(HEARTBEAT * 3 + 10):
            while not launcher.exits:
                await anyio.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):  # ended, as it should be
            os.kill(hung, signal.SIGCONT)
    ((_, exit),) = launcher.exits
    # Ended, though it was stopped: by SIGTERM itself, or, woken, by its own SIGTERM handler.
    assert exit.code in (-signal.SIGTERM, EXIT_TERMINATED)
    (ended_at,) = launcher.ended
    assert ended_at - written_off_at >= 3 * HEARTBEAT - 0.5  # after its chance to leave
    result = await task
    assert (result.status, result.result) == ("success", retry)


# -- a frozen worker -------------------------------------------------------------------------


@pytest.mark.parametrize("sibling", [False, True], ids=["alone", "with a live sibling"])
async def test_a_frozen_worker_is_written_off_and_its_frames_refused_when_it_thaws(
    controller: MakeController,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    sibling: bool,
) -> None:
    """SIGSTOP, as an instance under memory pressure or a paused VM. Alone in its launch, the
    thawed worker's key was retired with it and its handshake is refused; with a live sibling
    its key still holds, so it gets through, and its late result is dropped and it is told to
    leave."""
    launcher = RecordingLauncher(log_dir=tmp_path / "logs")
    crew = await controller(workers=2, launcher=launcher, seconds_heartbeat=HEARTBEAT)
    resolutions = watch_resolutions(crew)
    started, go = tmp_path / "started", tmp_path / "go"
    started.mkdir()
    if sibling:
        others, other_go = tmp_path / "others", tmp_path / "other-go"
        others.mkdir()
        frozen_task, other = await crew.walk(
            once_started, [str(started), str(others)], [str(go), str(other_go)]
        )
        await started_pids(others, 1, within=20)
    else:
        frozen_task = crew.push(once_started, str(started), str(go))
    (frozen,) = await started_pids(started, 1, within=20)
    assert len(launcher.requests) == 1
    os.kill(frozen, signal.SIGSTOP)
    try:
        # Written off after the heartbeat, its task retried on a new worker.
        frozen_pid, retry_pid = await started_pids(started, 2, within=HEARTBEAT * 2 + 20)
        assert frozen_pid == frozen
        go.touch()
        with anyio.fail_after(20):
            result = await frozen_task
        assert (result.status, result.result) == ("success", retry_pid)
    finally:
        os.kill(frozen, signal.SIGCONT)
    dispatcher = crew._dispatcher
    assert dispatcher is not None
    with anyio.fail_after(HEARTBEAT * 3):
        while not launcher.exits:
            await anyio.sleep(0.01)
    ((_, exit),) = launcher.exits
    if sibling:
        # It got back in and sent its result: dropped, logged as late; told to go, it went.
        assert exit.code == 0
        assert dispatcher.late >= 2  # its result, its goodbye
        assert f"dropped the result of task {frozen_task.id} from worker" in caplog.text
        other_go.touch()
        assert (await other).status == "success"
    else:
        # Its launch's key was retired with it: the handshake is refused, and it leaves.
        assert exit.code == EXIT_LOST
        assert dispatcher._zap is not None
        assert dispatcher._zap.refused >= 1
        log = (tmp_path / "logs" / f"{exit.launch}-{exit.index}.log").read_text()
        assert "the controller refused this worker's key" in log
    assert dispatcher.dropped == 0  # never taken for an unknown peer
    assert sorted(resolutions.values()) == ([1, 1] if sibling else [1])  # each once
    assert crew.counts()["crash"] == 0
