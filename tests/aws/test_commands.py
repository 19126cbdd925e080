"""The `batchcrew` subcommands for job definitions and jobs, against LocalBatch: in-process
through `add_commands` and `run_async`, and as `batchcrew` processes (`python -m batchcrew.cli`);
--json output parsed, AWS errors and bad arguments as one line and a non-zero exit code."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchcrew.aws._commands import add_commands, run_async
from batchcrew.aws.monitor import BatchMonitor
from batchcrew.errors import BatchError
from batchcrew.testing import LocalBatch
from tests.aws.conftest import wait_for_status

pytestmark = pytest.mark.timeout(40)


def parser() -> argparse.ArgumentParser:
    """The `batchcrew` parser as cli.py makes it: --debug on top, the subcommands below."""
    made = argparse.ArgumentParser(prog="batchcrew")
    made.add_argument("--debug", action="store_true")
    add_commands(made.add_subparsers(dest="command", required=True))
    return made


@pytest.fixture
def cli(
    local_aws: LocalBatch, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """`await cli(*argv)`: (exit code, stdout, stderr) of one command run in-process."""
    monkeypatch.setenv("COLUMNS", "250")  # rich tables wide enough to keep ids on one line

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await run_async(parser().parse_args(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
async def monitor(local_aws: LocalBatch) -> AsyncIterator[BatchMonitor]:
    """The test's own view of the jobs (one client per service for the test)."""
    async with BatchMonitor(local_aws.job_queue, local_aws.job_definition) as opened:
        yield opened


async def test_definition_register_describe_deregister(cli: Any) -> None:
    register = (
        "definition",
        "register",
        "--definition",
        "from-cli",
        "--image",
        "busybox",
        "--memory",
        "512",
        "--memory-units",
        "mebibytes",
        "--tag",
        "team=data",
        "--parameter",
        "size=large",
        "--no-propagate-tags",
        "--json",
    )
    code, out, err = await cli(*register)
    assert (code, err) == (0, "")
    assert [(row["name"], row["revision"]) for row in json.loads(out)] == [("from-cli", 1)]
    assert (await cli(*register))[0] == 0

    code, out, _ = await cli("definition", "describe", "--definition", "from-cli", "--json")
    described = json.loads(out)
    assert code == 0
    assert [row["revision"] for row in described] == [2, 1]
    assert described[0]["tags"] == [{"key": "team", "value": "data"}]
    assert described[0]["container_properties"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": "512"},
    ]

    code, out, _ = await cli("definition", "deregister", "--definition", "from-cli", "--json")
    assert (code, [row["revision"] for row in json.loads(out)]) == (0, [2])
    code, out, _ = await cli(
        "definition", "describe", "--definition", "from-cli", "--active", "--json"
    )
    assert [row["revision"] for row in json.loads(out)] == [1]

    code, out, _ = await cli("definition", "describe", "--definition", "from-cli")
    assert code == 0
    assert "from-cli" in out
    assert "more with --json: parameters" in out  # nested columns stay out of the table


async def test_jobs_status_and_logs(cli: Any, monitor: BatchMonitor, local_aws: LocalBatch) -> None:
    job = (await monitor.submit("echo", ["echo", "hello\n[bold]world"]))["id"][0]
    await wait_for_status(monitor, job, ["succeeded"])
    queue = ("--queue", local_aws.job_queue, "--definition", local_aws.job_definition)

    code, out, _ = await cli("jobs", *queue, "--json")
    (row,) = json.loads(out)
    assert (code, row["id"], row["status"]) == (0, job, "succeeded")
    created = datetime.datetime.fromisoformat(row["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert row["started"] is not None

    code, out, _ = await cli("jobs", *queue, "--status", "running", "--status", "failed", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = await cli("jobs", *queue, "--status", "inactive", "--json")
    assert [row["id"] for row in json.loads(out)] == [job]

    code, out, _ = await cli("status", job, "--json")
    assert (code, [row["status"] for row in json.loads(out)]) == (0, ["succeeded"])
    code, out, _ = await cli("status", job)
    assert code == 0
    assert job in out
    assert "succeeded" in out

    code, out, _ = await cli("logs", job, "--json")
    assert [event["message"] for event in json.loads(out)] == ["hello", "[bold]world"]
    code, out, _ = await cli("logs", job)
    assert (code, out) == (0, "hello\n[bold]world\n")  # printed as written, no markup
    code, out, err = await cli("logs", job, "--follow", "--interval", "0.05")
    assert (code, out) == (0, "hello\n[bold]world\n")
    assert f"job {job} succeeded" in err
    code, out, _ = await cli("logs", job, "--timestamps")
    stamp, message = out.splitlines()[0].split(" ", 1)
    assert message == "hello"
    assert datetime.datetime.fromisoformat(stamp).tzinfo is not None


async def test_terminate_by_id_and_all(
    cli: Any, monitor: BatchMonitor, local_aws: LocalBatch, tmp_path: Path
) -> None:
    wait = (
        f"import os, time\nwhile not os.path.exists({str(tmp_path / 'never')!r}): time.sleep(0.01)"
    )
    busy = (await monitor.submit("busy", [sys.executable, "-c", wait]))["id"][0]
    queued = (await monitor.submit("queued", ["true"], cpus=100_000))["id"][0]
    await wait_for_status(monitor, busy, ["running"])

    code, out, _ = await cli("terminate", busy, "--reason", "from the CLI", "--json")
    assert (code, json.loads(out)) == (0, [{"id": busy, "ended": True, "error": None}])
    assert (await wait_for_status(monitor, busy, ["failed"]))["reason"][0] == "from the CLI"

    queue = ("--queue", local_aws.job_queue, "--definition", local_aws.job_definition)
    code, out, _ = await cli("terminate", "--all", *queue, "--json")
    assert (code, [row["id"] for row in json.loads(out)]) == (0, [queued])
    assert (await monitor.active()).height == 0

    code, out, _ = await cli("terminate", "no-such-job", "--json")
    (row,) = json.loads(out)
    assert (code, row["ended"]) == (1, False)  # a job not ended: non-zero exit
    assert "no-such-job" in row["error"]


async def test_aws_errors_are_one_line_and_exit_1(cli: Any, local_aws: LocalBatch) -> None:
    code, out, err = await cli("jobs", "--queue", "no-such-queue", "--definition", "d")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("batchcrew: error: listing")
    assert "ClientException: JobQueue no-such-queue not found" in err
    assert "Traceback" not in err

    code, out, err = await cli("status", "no-such-job")
    assert (code, out) == (1, "")
    assert err == "batchcrew: error: no job no-such-job: check the id and --region\n"

    code, _, err = await cli("logs", "no-such-job")
    assert code == 1
    assert err.startswith("batchcrew: error: job no-such-job not found")

    with pytest.raises(BatchError):  # --debug: the exception (and its traceback) comes out
        await run_async(
            parser().parse_args(
                ["--debug", "jobs", "--queue", "no-such-queue", "--definition", "d"]
            )
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["terminate"], "give the ids of the jobs to end, or --all"),
        (["terminate", "x", "--all"], "give the ids of the jobs to end, or --all"),
        (["terminate", "--all"], "job_queue and job_definition"),
        (["definition", "register", "--definition", "d", "--image", "i", "--cpus", "-1"], "cpus"),
        (["definition", "register", "--definition", "d:1", "--image", "i"], "job_definition"),
        (["definition", "deregister", "--definition", "d", "--revision", "0"], "revision"),
        (["logs", "x", "--follow", "--interval", "0"], "seconds_interval"),
    ],
)
async def test_bad_arguments_are_one_line_and_exit_2(
    cli: Any, local_aws: LocalBatch, argv: list[str], message: str
) -> None:
    code, out, err = await cli(*argv)
    assert (code, out) == (2, "")
    assert err.startswith("batchcrew: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert local_aws.requests == []


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "--queue", "q"],  # no --definition
        ["jobs", "--queue", "q", "--definition", "d", "--status", "done"],
        ["definition", "register", "--definition", "d"],  # no --image
        ["definition", "register", "--definition", "d", "--image", "i", "--tag", "novalue"],
    ],
)
def test_argparse_refuses_malformed_commands(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(argv)
    assert caught.value.code == 2


async def command(*argv: str) -> tuple[int, str, str]:
    """Run the subcommands as their own process, environment inherited."""
    done = await anyio.run_process(
        [sys.executable, "-m", "batchcrew.cli", *argv],
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_as_a_process(local_aws: LocalBatch, monitor: BatchMonitor) -> None:
    job = (await monitor.submit("echo", ["echo", "hi"]))["id"][0]
    await wait_for_status(monitor, job, ["succeeded"])
    queue = ("--queue", local_aws.job_queue, "--definition", local_aws.job_definition)
    missing = ("--queue", "no-such-queue", "--definition", "d")
    runs = {
        "listed": ("jobs", *queue, "--json"),  # the endpoint comes from AWS_ENDPOINT_URL
        "failed": ("jobs", *missing),
        "debugged": ("--debug", "jobs", *missing),
    }
    results: dict[str, tuple[int, str, str]] = {}

    async def run(key: str) -> None:
        results[key] = await command(*runs[key])

    async with anyio.create_task_group() as group:  # three interpreters start at once
        for key in runs:
            group.start_soon(run, key)

    code, out, err = results["listed"]
    assert (code, err) == (0, "")
    assert [row["id"] for row in json.loads(out)] == [job]
    code, out, err = results["failed"]
    assert (code, out) == (1, "")
    assert err.startswith("batchcrew: error: listing")
    assert err.count("\n") == 1
    code, out, err = results["debugged"]
    assert code == 1
    assert "Traceback" in err
    assert "BatchError" in err


# -- tables a person reads -------------------------------------------------------------------


async def test_jobs_table_fits_80_columns_with_one_line_per_job(
    cli: Any,
    monitor: BatchMonitor,
    local_aws: LocalBatch,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    wait = (
        f"import os, time\nwhile not os.path.exists({str(tmp_path / 'never')!r}): time.sleep(0.01)"
    )
    jobs = {
        "ok": await monitor.submit("controller-" + "0123456789abcdef" * 4, ["true"]),
        "failed": await monitor.submit("failed", [sys.executable, "-c", "raise SystemExit(3)"]),
        "running": await monitor.submit("running", [sys.executable, "-c", wait]),
        "queued": await monitor.submit("queued", ["true"], cpus=100_000),
    }
    ids = {key: frame["id"][0] for key, frame in jobs.items()}
    await wait_for_status(monitor, ids["ok"], ["succeeded"])
    await wait_for_status(monitor, ids["failed"], ["failed"])
    await wait_for_status(monitor, ids["running"], ["running"])
    queue = ("--queue", local_aws.job_queue, "--definition", local_aws.job_definition)

    tables = {}
    for columns in ("80", "250"):
        monkeypatch.setenv("COLUMNS", columns)
        code, tables[columns], err = await cli("jobs", *queue)
        assert (code, err) == (0, "")
    narrow = tables["80"].splitlines()
    assert max(len(line) for line in narrow) <= 80
    rows = {key: [line for line in narrow if job_id[:8] in line] for key, job_id in ids.items()}
    assert all(len(lines) == 1 for lines in rows.values()), rows  # one line per job
    assert narrow[0].split() == ["name", "id", "status", "reason", "started", "run", "time"]
    assert len(narrow) == 1 + len(ids) + 1  # header, the jobs, the caption
    assert ids["ok"] not in tables["80"]  # short ids: the full ones are in --json
    assert "full ids and every field: --json" in narrow[-1]
    (ok,) = rows["ok"]
    assert ok.startswith("controller-")
    assert "…" in ok  # the long name is cut, not wrapped
    assert " succeeded " in ok
    assert " failed " in rows["failed"][0]
    assert rows["running"][0].startswith("running ")
    assert rows["running"][0].rstrip().endswith("s")  # running so far
    assert rows["queued"][0].split()[1:4] == [ids["queued"][:8], "runnable", "no"]

    wide = tables["250"]  # room enough: every name and reason whole
    assert "controller-" + "0123456789abcdef" * 4 in wide
    assert "Essential container in task exited" in wide
    assert "…" not in wide

    code, out, _ = await cli("jobs", *queue, "--json")  # every field, full ids
    listed = {row["id"]: row for row in json.loads(out)}
    assert set(listed) == set(ids.values())
    assert set(listed[ids["ok"]]) == {
        "name",
        "id",
        "arn",
        "queue",
        "status",
        "reason",
        "created",
        "started",
        "stopped",
    }


async def test_status_shows_one_field_a_line_within_80_columns(
    cli: Any, monitor: BatchMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = (await monitor.submit("x" * 120, [sys.executable, "-c", "raise SystemExit(3)"]))["id"][0]
    await wait_for_status(monitor, job, ["failed"])
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = await cli("status", job)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    fields = [line.split()[0] for line in lines if line[:1].strip()]
    assert fields == [
        "name",
        "id",
        "arn",
        "queue",
        "status",
        "reason",
        "created",
        "started",
        "stopped",
        "run",
    ]
    assert f"id        {job}" in out  # the full id, whole on its line
    assert "Essential container in task exited" in out
    assert "UTC" in out
    text = "".join(line[10:].strip() for line in lines)  # long values fold, nothing is lost
    assert "x" * 120 in text
    assert f"job/{job}" in text


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"), (90061, "1d01h")],
)
def test_run_times_read_at_a_glance(seconds: int, shown: str) -> None:
    from batchcrew.aws._commands import _run_time

    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    end = start + datetime.timedelta(seconds=seconds)
    assert _run_time(start, end, "succeeded", start) == shown
    assert _run_time(start, None, "running", end) == shown  # running: so far
    assert _run_time(start, None, "starting", end) == ""
    assert _run_time(None, None, "runnable", end) == ""
