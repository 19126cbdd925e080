"""`BatchMonitor` against LocalBatch (jobs really run) and moto's server: submit, status, the
listings and their ListJobs calls, logs and their paging, terminate, and bad input."""

from __future__ import annotations

import datetime
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest

from batchcrew.aws.definition import JobDefinition
from batchcrew.aws.monitor import (
    JOB_SCHEMA,
    LOG_SCHEMA,
    NO_REASON,
    STATUSES,
    TERMINATE_SCHEMA,
    BatchMonitor,
    _progress,
)
from batchcrew.errors import BatchError
from batchcrew.testing import LocalBatch
from tests.aws.conftest import Moto, wait_for_status

pytestmark = pytest.mark.timeout(40)

#: More vCPUs than LocalBatch has: a job asking for them stays RUNNABLE, without a process.
NEVER_FITS = 100_000
DONE = ("succeeded", "failed")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until_exists(path: Path) -> list[str]:
    """A job command that runs until `path` exists: the test decides when it ends."""
    return python(f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.01)")


@pytest.fixture
async def monitor(local_aws: LocalBatch) -> AsyncIterator[BatchMonitor]:
    """A monitor of the emulator's queue and definition, open (one client per service) for
    the test: a client per call would cost each status poll a new client."""
    async with BatchMonitor(local_aws.job_queue, local_aws.job_definition) as opened:
        yield opened


async def test_submit_two_jobs_and_watch_them(monitor: BatchMonitor, tmp_path: Path) -> None:
    first = await monitor.submit("first job", python("print('one')"))
    second = await monitor.submit("second", wait_until_exists(tmp_path / "go"))
    assert first.columns == ["name", "id", "arn"]
    assert first["name"][0] == "first_job"  # made a valid AWS job name
    running = await wait_for_status(monitor, second["id"][0], ["running"])
    assert running.schema == pl.Schema(JOB_SCHEMA)
    assert running["started"][0] is not None
    assert running["stopped"][0] is None
    assert running["reason"][0] == NO_REASON
    assert running["queue"][0] == monitor.job_queue
    await wait_for_status(monitor, first["id"][0], ["succeeded"])

    listed = await monitor.jobs()
    assert listed.schema == pl.Schema(JOB_SCHEMA)
    assert listed["id"].to_list() == [second["id"][0], first["id"][0]]  # newest first
    assert listed["status"].to_list() == ["running", "succeeded"]

    (tmp_path / "go").touch()
    done = await wait_for_status(monitor, second["id"][0], DONE)
    assert done["status"][0] == "succeeded"
    assert done["reason"][0] == "Essential container in task exited"
    created, started, stopped = done.row(0)[-3:]
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - created) < datetime.timedelta(minutes=1)
    assert created <= started <= stopped
    assert set((await monitor.succeeded())["id"]) == {first["id"][0], second["id"][0]}


async def test_each_status_method_lists_only_its_status(
    local_aws: LocalBatch, monitor: BatchMonitor, tmp_path: Path
) -> None:
    local_aws.register_job_definition("other", command=["true"])
    other = BatchMonitor(local_aws.job_queue, "other")
    async with other:
        ok = (await monitor.submit("ok", ["true"]))["id"][0]
        bad = (await monitor.submit("bad", ["false"]))["id"][0]
        waiting = (await monitor.submit("waiting", ["true"], cpus=NEVER_FITS))["id"][0]
        busy = (await monitor.submit("busy", wait_until_exists(tmp_path / "never")))["id"][0]
        elsewhere = (await other.submit("elsewhere", ["true"]))["id"][0]
        await wait_for_status(monitor, ok, ["succeeded"])
        await wait_for_status(monitor, bad, ["failed"])
        await wait_for_status(monitor, busy, ["running"])
        await wait_for_status(monitor, elsewhere, ["succeeded"])

        expected = {"succeeded": {ok}, "failed": {bad}, "runnable": {waiting}, "running": {busy}}
        for status in STATUSES:
            method = getattr(monitor, status)
            table = await method()
            assert set(table["id"]) == expected.get(status, set()), status
            assert set(table["status"]) <= {status}
            assert table.schema == pl.Schema(JOB_SCHEMA)
        assert set((await monitor.active())["id"]) == {waiting, busy}
        assert set((await monitor.inactive())["id"]) == {ok, bad}
        assert set((await monitor.jobs())["id"]) == {ok, bad, waiting, busy}  # not elsewhere
        assert set((await monitor.jobs(["FAILED", "runnable"]))["id"]) == {bad, waiting}
        # A definition named with its revision, or by ARN, matches the same jobs.
        arn = (await monitor.status(ok))["arn"][0].split(":job/")[0]
        revision = BatchMonitor(local_aws.job_queue, f"{local_aws.job_definition}:1")
        by_arn = BatchMonitor(
            f"{arn}:job-queue/{local_aws.job_queue}",
            f"{arn}:job-definition/{local_aws.job_definition}:1",
        )
        assert set((await revision.jobs())["id"]) == {ok, bad, waiting, busy}
        assert set((await by_arn.inactive())["id"]) == {ok, bad}
        assert set((await BatchMonitor(local_aws.job_queue, "other:2").jobs())["id"]) == set()
        failed = await monitor.status(bad)
        assert failed["reason"][0] == "Essential container in task exited"


async def test_jobs_makes_one_listjobs_call_per_status_and_pages(
    local_aws: LocalBatch, monitor: BatchMonitor
) -> None:
    """1,000 jobs fit one page of each status (7 calls, the fewest); one more job needs a
    second page for its status (8 calls), and every job is listed once."""
    limiter = anyio.CapacityLimiter(8)

    async def submit(index: int) -> None:
        async with limiter:
            await monitor.submit(f"job-{index}", ["true"], cpus=NEVER_FITS)

    async with anyio.create_task_group() as group:
        for index in range(1000):
            group.start_soon(submit, index)
    before = len(local_aws.requests_for("ListJobs"))
    listed = await monitor.jobs()
    calls = local_aws.requests_for("ListJobs")[before:]
    assert listed.height == 1000
    assert len(calls) == 7
    assert {call["jobStatus"] for call in calls} == {s.upper() for s in STATUSES}
    assert {call["maxResults"] for call in calls} == {1000}
    assert all("filters" not in call for call in calls)  # filters make AWS ignore jobStatus

    await submit(1000)
    before = len(local_aws.requests_for("ListJobs"))
    listed = await monitor.jobs()
    calls = local_aws.requests_for("ListJobs")[before:]
    assert listed.height == listed["id"].n_unique() == 1001
    assert len(calls) == 8
    assert sum(1 for call in calls if call.get("nextToken")) == 1
    assert listed["created"].is_sorted(descending=True)


async def test_log_returns_each_line_as_a_row(monitor: BatchMonitor) -> None:
    # echo gets a real newline character inside one argument: no shell is involved, so the
    # job prints two lines, and CloudWatch Logs holds two events.
    job = (await monitor.submit("echo", ["echo", "hello\nworld"]))["id"][0]
    await wait_for_status(monitor, job, ["succeeded"])
    log = await monitor.log(job)
    assert log.schema == pl.Schema(LOG_SCHEMA)
    assert log["message"].to_list() == ["hello", "world"]
    assert log["timestamp"].null_count() == 0
    newest_first = await monitor.log(job, start_from_head=False)
    assert newest_first["message"].to_list() == ["world", "hello"]


async def test_log_reads_every_page(local_aws: LocalBatch, monitor: BatchMonitor) -> None:
    """GetLogEvents returns at most 10,000 events a page: 10,050 lines take two pages and a
    last call whose token comes back unchanged, forward and backward."""
    job = (await monitor.submit("many", python("for i in range(10050): print(i)")))["id"][0]
    await wait_for_status(monitor, job, ["succeeded"])
    expected = [str(i) for i in range(10050)]
    log = await monitor.log(job)
    calls = local_aws.requests_for("GetLogEvents")
    assert log["message"].to_list() == expected
    assert len(calls) == 3
    assert [bool(call.get("nextToken")) for call in calls] == [False, True, True]
    assert all(call["startFromHead"] for call in calls)
    backward = await monitor.log(job, start_from_head=False)
    assert backward["message"].to_list() == expected[::-1]
    assert len(local_aws.requests_for("GetLogEvents")) == 6


async def test_follow_yields_new_lines_until_the_job_ends(
    monitor: BatchMonitor, tmp_path: Path
) -> None:
    """The job writes a line, then waits for the test to have read it before the next."""
    go = tmp_path / "go"
    code = (
        "import os, time\nprint('before', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\nprint('after')"
    )
    job = (await monitor.submit("slow", python(code)))["id"][0]
    frames: list[list[str]] = []
    with anyio.fail_after(20):
        async for frame in monitor.follow(job, seconds_interval=0.05):
            assert frame.schema == pl.Schema(LOG_SCHEMA)
            frames.append(frame["message"].to_list())
            go.touch()
    assert frames == [["before"], ["after"]]
    assert (await monitor.status(job))["status"][0] == "succeeded"


async def test_log_of_a_job_not_started_or_unknown(monitor: BatchMonitor) -> None:
    waiting = (await monitor.submit("waiting", ["true"], cpus=NEVER_FITS))["id"][0]
    with pytest.raises(BatchError, match="has not started") as caught:
        await monitor.log(waiting)
    assert caught.value.code == "JobNotStarted"
    with pytest.raises(BatchError, match="not found") as unknown:
        await monitor.log("no-such-job")
    assert unknown.value.code == "JobNotFound"
    missing = await monitor.status("no-such-job")
    assert missing.height == 0
    assert missing.schema == pl.Schema(JOB_SCHEMA)


async def test_log_in_a_missing_group_says_where_it_looked(
    local_aws: LocalBatch, monitor: BatchMonitor
) -> None:
    job = (await monitor.submit("echo", ["echo", "hi"]))["id"][0]
    await wait_for_status(monitor, job, ["succeeded"])
    elsewhere = BatchMonitor(log_group="/not/there")
    with pytest.raises(BatchError, match="/not/there") as caught:
        await elsewhere.log(job)
    assert caught.value.code == "ResourceNotFoundException"


async def test_terminate_a_running_job_fails_it_with_the_reason(
    monitor: BatchMonitor, tmp_path: Path
) -> None:
    job = (await monitor.submit("long", wait_until_exists(tmp_path / "never")))["id"][0]
    await wait_for_status(monitor, job, ["running"])
    ended = await monitor.terminate(job, reason="enough of this")
    assert ended.schema == pl.Schema(TERMINATE_SCHEMA)
    assert ended.rows() == [(job, True, None)]
    failed = await wait_for_status(monitor, job, DONE)
    assert failed["status"][0] == "failed"
    assert failed["reason"][0] == "enough of this"


async def test_terminate_all_ends_every_active_job_and_collects_failures(
    local_aws: LocalBatch, monitor: BatchMonitor, tmp_path: Path
) -> None:
    waiting = [
        (await monitor.submit(f"waiting-{i}", ["true"], cpus=NEVER_FITS))["id"][0] for i in range(5)
    ]
    busy = (await monitor.submit("busy", wait_until_exists(tmp_path / "never")))["id"][0]
    await wait_for_status(monitor, busy, ["running"])
    ended = await monitor.terminate(all=True)
    assert set(ended["id"]) == {*waiting, busy}
    assert ended["ended"].all()
    # One TerminateJobs call for the six (it ends a job in any state: no CancelJob first).
    (call,) = local_aws.requests_for("TerminateJobs")
    assert sorted(call["jobs"]) == sorted([*waiting, busy])
    assert local_aws.requests_for("CancelJob") == local_aws.requests_for("TerminateJob") == []
    await wait_for_status(monitor, busy, ["failed"])
    assert (await monitor.active()).height == 0
    assert set((await monitor.failed())["reason"]) == {"terminated by batchcrew monitor"}

    mixed = await monitor.terminate(pl.Series(["no-such-job", busy, busy]))
    assert mixed["id"].to_list() == ["no-such-job", busy]  # each once, in the order given
    assert mixed["ended"].to_list() == [False, True]
    assert "no-such-job" in mixed["error"][0]
    assert mixed["error"][1] is None
    assert (await monitor.terminate(all=True)).height == 0  # nothing active: nothing to end


class Terminal(io.StringIO):
    """Stands for a terminal on stderr."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("jobs", "shown"), [(5, True), (3, False)])
def test_progress_bar_only_for_several_jobs_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, jobs: int, shown: bool
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with _progress(jobs) as advance:
        advance(jobs - 1)  # a TerminateJobs call settles several jobs at once
        advance(1)
    assert (f"{jobs}/{jobs}" in terminal.getvalue()) is shown
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with _progress(10) as advance:
        advance(10)
    assert piped.getvalue() == ""  # not a terminal: no bar


async def test_async_with_keeps_one_client_per_service(local_aws: LocalBatch) -> None:
    monitor = BatchMonitor(local_aws.job_queue, local_aws.job_definition)
    async with monitor:
        job = (await monitor.submit("echo", ["echo", "hi"]))["id"][0]
        await wait_for_status(monitor, job, ["succeeded"])
        await monitor.log(job)
        clients = dict(monitor._scope._clients)
        assert set(clients) == {"batch", "logs"}
        await monitor.jobs()
        await monitor.log(job)
        assert monitor._scope._clients == clients
        with pytest.raises(RuntimeError, match="already open"):
            await monitor.__aenter__()
    assert monitor._scope._clients == {}
    # Without `async with`, each call makes and closes its own clients.
    assert (await monitor.status(job))["status"][0] == "succeeded"
    assert (await monitor.log(job))["message"].to_list() == ["hi"]
    assert monitor._scope._clients == {}


async def test_aws_errors_surface_as_one_batch_error(local_aws: LocalBatch) -> None:
    with pytest.raises(BatchError, match="JobQueue no-such-queue not found") as caught:
        await BatchMonitor("no-such-queue", local_aws.job_definition).jobs()
    assert caught.value.code == "ClientException"
    with pytest.raises(BatchError, match="submitting job") as submitted:
        await BatchMonitor(local_aws.job_queue, "no-such-definition").submit("x", ["true"])
    assert "no-such-definition" in submitted.value.message


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"job_queue": ""}, "job_queue"),
        ({"job_queue": 3}, "job_queue"),
        ({"job_definition": ""}, "job_definition"),
        ({"job_definition": ["a"]}, "job_definition"),
        ({"log_group": ""}, "log_group"),
        ({"profile": ""}, "profile"),
    ],
)
def test_bad_constructor_arguments(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        BatchMonitor(**arguments)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda m: m.submit(""), "name"),
        (lambda m: m.submit(None), "name"),
        (lambda m: m.submit("x", "echo hi"), "command"),
        (lambda m: m.submit("x", []), "command"),
        (lambda m: m.submit("x", ["echo", 1]), "command"),
        (lambda m: m.submit("x", cpus=-1), "cpus"),
        (lambda m: m.submit("x", cpus=0), "cpus"),
        (lambda m: m.submit("x", gpus=-1), "gpus"),
        (lambda m: m.submit("x", memory=-1), "memory"),
        (lambda m: m.submit("x", memory=1, memory_units="kilobytes"), "memory_units"),
        (lambda m: m.status(""), "id"),
        (lambda m: m.status(None), "id"),
        (lambda m: m.log(""), "id"),
        (lambda m: m.log(42), "id"),
        (lambda m: m.log("x", start_from_head="yes"), "start_from_head"),
        (lambda m: m.jobs("done"), "status"),
        (lambda m: m.jobs([]), "status"),
        (lambda m: m.terminate(), "ids"),
        (lambda m: m.terminate([]), "ids"),
        (lambda m: m.terminate(5), "ids"),
        (lambda m: m.terminate([""]), "ids"),
        (lambda m: m.terminate(["x"], all=True), "ids or all"),
        (lambda m: m.terminate(["x"], reason=""), "reason"),
        (lambda m: BatchMonitor().jobs(), "job_queue"),
        (lambda m: BatchMonitor().submit("x"), "job_queue"),
        (lambda m: BatchMonitor().terminate(all=True), "job_queue"),
    ],
)
async def test_bad_input_fails_before_any_request(
    local_aws: LocalBatch, monitor: BatchMonitor, call: Any, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        await call(monitor)
    assert local_aws.requests == []


async def test_follow_rejects_bad_input_before_any_request(
    local_aws: LocalBatch, monitor: BatchMonitor
) -> None:
    for arguments, named in (({"id": ""}, "id"), ({"id": "x", "seconds_interval": 0}, "interval")):
        with pytest.raises(ValueError, match=named):
            async for _ in monitor.follow(**arguments):
                pass
    assert local_aws.requests == []


async def test_listing_on_moto(moto: Moto) -> None:
    """moto answers ListJobs per status too (and runs each job to SUCCEEDED at once)."""
    name = f"moto-monitor-{moto.job_queue}"
    definition = JobDefinition(
        name, moto.job_queue, region=moto.region, endpoint_url=moto.endpoint_url
    )
    await definition.register(image="busybox", memory=128, memory_units="mebibytes", cpus=1)
    async with definition.monitor() as monitor:
        job = (await monitor.submit("on-moto", ["echo", "hi"]))["id"][0]
        finished = await wait_for_status(monitor, job, DONE)
        assert finished["queue"][0] == moto.job_queue
        listed = await monitor.jobs()
        assert listed["id"].to_list() == [job]
        assert listed["status"].to_list() == [finished["status"][0]]
        assert (await monitor.active()).height == 0
        assert (await monitor.status("no-such-job")).height == 0
