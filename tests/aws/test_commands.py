"""The `batchcrew` subcommands for job definitions and jobs, against LocalBatch: in-process
through `add_commands` and `run_async`, and as `batchcrew` processes (`python -m batchcrew.cli`);
--json output parsed, short job ids looked up, AWS errors and bad arguments as one line in the
CLI's own words (its flags, never Python's parameters) and a non-zero exit code."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiobotocore.session import get_session

from batchcrew.aws._commands import add_commands, in_cli_words, run_async
from batchcrew.aws.monitor import BatchMonitor
from batchcrew.errors import BatchError
from batchcrew.testing import LocalBatch
from tests.aws.conftest import wait_for_status

pytestmark = pytest.mark.timeout(40)

#: A whole job id that no job has.
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"


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

    # A whole id is looked up first: TerminateJobs would count a job it cannot find as ended.
    code, out, _ = await cli("terminate", NO_SUCH_ID, "--json")
    (row,) = json.loads(out)
    assert (code, row["id"], row["ended"]) == (1, NO_SUCH_ID, False)
    assert f"no job {NO_SUCH_ID}: DescribeJobs knows no such id" in row["error"]
    code, out, err = await cli("terminate", "no-such-job", "--json")  # a short id: looked up
    assert (code, out) == (1, "")
    assert err == (
        f"batchcrew: error: no job id starts with no-such-job in job queue {local_aws.job_queue}, "
        f"the only one in region {local_aws.region}: check the id and --region (AWS keeps ended "
        "jobs for about 7 days)\n"
    )


async def test_aws_errors_are_one_line_and_exit_1(cli: Any, local_aws: LocalBatch) -> None:
    code, out, err = await cli("jobs", "--queue", "no-such-queue", "--definition", "d")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("batchcrew: error: listing")
    assert "ClientException: JobQueue no-such-queue not found" in err
    assert "Traceback" not in err

    for command in ("status", "logs"):
        code, out, err = await cli(command, NO_SUCH_ID)
        assert (code, out) == (1, "")
        assert err == (
            f"batchcrew: error: no job {NO_SUCH_ID}: check the id and --region (AWS keeps "
            "ended jobs for about 7 days)\n"
        )

    with pytest.raises(BatchError):  # --debug: the exception (and its traceback) comes out
        await run_async(
            parser().parse_args(
                ["--debug", "jobs", "--queue", "no-such-queue", "--definition", "d"]
            )
        )


REGISTER = ["definition", "register", "--definition", "d", "--image", "i"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["terminate"], "give the ids of the jobs to end, or --all"),
        (["terminate", "x", "--all"], "give the ids of the jobs to end, or --all"),
        (["terminate", "--all"], "--all ends every active job of one job queue and job"),
        (["terminate", "--all", "--queue", "q"], "give both --queue and --definition"),
        (["terminate", NO_SUCH_ID, "--reason", " "], "--reason must not be empty"),
        (["terminate", " "], "a job id must not be empty"),
        (["status", ""], "a job id must not be empty"),
        (["status", "x", "--queue", ""], "--queue must be a non-empty string, not ''"),
        (["jobs", "--queue", "q", "--definition", ""], "--definition must be a non-empty"),
        (["jobs", "--queue", "q", "--definition", "d", "--region", ""], "--region must be"),
        (["status", "x", "--endpoint-url", ""], "--endpoint-url must be a non-empty string"),
        (["status", NO_SUCH_ID, "--endpoint-url", "nowhere"], "--endpoint-url nowhere is not a"),
        (["status", "x", "--profile", ""], "--profile must be a non-empty string"),
        (["logs", "x", "--log-group", ""], "--log-group must be a non-empty string"),
        (["logs", "x", "--follow", "--interval", "0"], "--interval must be more than 0"),
        (["logs", "x", "--follow", "--interval", "nan"], "--interval must be more than 0"),
        ([*REGISTER, "--cpus", "-1"], "--cpus must be a finite number > 0, not -1.0"),
        ([*REGISTER, "--memory", "0"], "--memory must be a finite number > 0, not 0.0"),
        ([*REGISTER, "--gpus", "1.5"], "--gpus must be a whole number, not 1.5"),
        ([*REGISTER, "--seconds-timeout", "-5"], "--seconds-timeout must be a finite number"),
        ([*REGISTER, "--scheduling-priority", "10000"], "--scheduling-priority must be a whole"),
        ([*REGISTER, "--job-role-arn", ""], "--job-role-arn must be a non-empty string"),
        ([*REGISTER, "--execution-role-arn", ""], "--execution-role-arn must be a non-empty"),
        (["definition", "register", "--definition", "d", "--image", ""], "--image must be a"),
        (["definition", "register", "--definition", "d:1", "--image", "i"], "--definition must"),
        (["definition", "describe", "--definition", "a/b"], "--definition must be a job"),
        (["definition", "deregister", "--definition", "d", "--revision", "0"], "--revision must"),
    ],
)
async def test_bad_arguments_are_one_line_in_the_clis_words_and_exit_2(
    cli: Any, local_aws: LocalBatch, argv: list[str], message: str
) -> None:
    code, out, err = await cli(*argv)
    assert (code, out) == (2, "")
    assert err.startswith("batchcrew: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert_no_python_in(err)
    assert local_aws.requests == []  # refused before anything was asked of AWS


def assert_no_python_in(message: str) -> None:
    """`message` names no Python parameter (`job_queue`, `cpus=`), method (`describe()`), class
    (`BatchMonitor`) or None: a CLI user has flags and commands only."""
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", message), message
    assert not re.search(r"\b[a-z]+=", message), message
    assert not re.search(r"\w\(\)|\w\(\w+=", message), message
    assert "BatchMonitor" not in message
    assert "JobDefinition(" not in message
    assert "None" not in message


@pytest.mark.parametrize(
    ("said", "meant"),
    [
        (
            "revision must be a whole number >= 1 or None, not 0",
            "--revision must be a whole number >= 1, not 0",
        ),
        (
            'platform_capabilities="FARGATE" needs execution_role_arn: AWS requires one',
            "--platform FARGATE needs --execution-role-arn: AWS requires one",
        ),
        (
            "cpus=0.5 is not a vCPU count AWS Batch accepts on EC2",
            "--cpus 0.5 is not a vCPU count AWS Batch accepts on EC2",
        ),
        (
            "memory: 3 MiB is less than the 4 MiB AWS Batch requires",
            "--memory: 3 MiB is less than the 4 MiB AWS Batch requires",
        ),
        (
            "seconds_timeout=30: at least 60 seconds; give 60 or more (or none). A task's own "
            "limit is seconds_timeout= on push, map or walk",
            "--seconds-timeout 30: at least 60 seconds; give 60 or more (or none)",
        ),
        (
            "x: no AWS region; set AWS_DEFAULT_REGION or pass region=",
            "x: no AWS region; set AWS_DEFAULT_REGION or pass --region",
        ),
        (
            "x: ProfileNotFound; check profile= or AWS_PROFILE",
            "x: ProfileNotFound; check --profile or AWS_PROFILE",
        ),
        (
            "x: cannot reach AWS (y); check the network, region and endpoint_url",
            "x: cannot reach AWS (y); check the network, --region and --endpoint-url",
        ),
        (
            "in another log group: pass log_group= (CLI: --log-group)",
            "in another log group: pass --log-group",
        ),
        (
            "registering job definition 'job_queue': refused",
            "registering job definition 'job_queue': refused",
        ),
        ("the job my_job_role_arn ended", "the job my_job_role_arn ended"),
    ],
)
def test_library_messages_are_said_with_the_clis_flags(said: str, meant: str) -> None:
    assert in_cli_words(said) == meant


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
    for columns in ("80", "400"):
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
    queued = rows["queued"][0].split()
    assert queued[1:3] == [ids["queued"][:8], "runnable"]
    assert queued[3].startswith("MISCONFIGURATION:")  # AWS's reason it is not placed

    wide = tables["400"]  # room enough: every name and reason whole
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


# -- short job ids, as `batchcrew jobs` prints them ------------------------------------------


def short_ids(table: str) -> dict[str, str]:
    """{name: id} of the rows of a `batchcrew jobs` table, ids as it shows them."""
    rows = [line.split() for line in table.splitlines()[1:-1]]
    return {row[0]: row[1] for row in rows}


async def submit_to(local_aws: LocalBatch, queue: str, name: str, **params: Any) -> str:
    """SubmitJob straight to the emulator (any queue, array jobs); the job's id."""
    async with get_session().create_client("batch", **local_aws.client_kwargs()) as client:
        answer = await client.submit_job(
            jobName=name, jobQueue=queue, jobDefinition=local_aws.job_definition, **params
        )
    return str(answer["jobId"])


async def test_the_ids_jobs_prints_are_taken_back(
    cli: Any, monitor: BatchMonitor, local_aws: LocalBatch
) -> None:
    done = (await monitor.submit("done", ["echo", "hi"]))["id"][0]
    waiting = (await monitor.submit("waiting", ["true"], cpus=100_000))["id"][0]
    await wait_for_status(monitor, done, ["succeeded"])
    queue = ("--queue", local_aws.job_queue, "--definition", local_aws.job_definition)
    code, table, _ = await cli("jobs", *queue)
    shown = short_ids(table)
    assert shown == {"done": done[:8], "waiting": waiting[:8]}

    before = len(local_aws.requests_for("ListJobs"))
    code, out, err = await cli("status", shown["done"], "--json")
    assert (code, err) == (0, "")
    assert [row["id"] for row in json.loads(out)] == [done]
    assert len(local_aws.requests_for("DescribeJobQueues")) == 1  # no --queue: every queue
    assert len(local_aws.requests_for("ListJobs")) == before + 7  # a call per status

    code, out, _ = await cli("status", shown["done"], "--queue", local_aws.job_queue)
    assert code == 0
    assert done in out
    assert len(local_aws.requests_for("DescribeJobQueues")) == 1  # --queue: that queue only
    code, out, _ = await cli("logs", shown["done"], "--queue", local_aws.job_queue)
    assert (code, out) == (0, "hi\n")
    code, out, err = await cli("logs", done[:5], "--follow", "--interval", "0.05")
    assert (code, out) == (0, "hi\n")
    assert f"job {done} succeeded" in err  # said with the whole id

    listed = len(local_aws.requests_for("ListJobs"))
    code, out, _ = await cli("status", done, "--json")  # a whole id is used as it is
    assert (code, json.loads(out)[0]["id"]) == (0, done)
    assert len(local_aws.requests_for("ListJobs")) == listed

    code, out, _ = await cli("terminate", shown["waiting"], "--json")
    assert (code, json.loads(out)) == (0, [{"id": waiting, "ended": True, "error": None}])


async def test_a_short_id_with_an_index_is_an_array_child(
    cli: Any, monitor: BatchMonitor, local_aws: LocalBatch
) -> None:
    parent = await submit_to(
        local_aws,
        local_aws.job_queue,
        "array",
        arrayProperties={"size": 3},
        containerOverrides={"command": ["true"]},
    )
    single = (await monitor.submit("single", ["true"]))["id"][0]
    code, out, _ = await cli("status", f"{parent[:8]}:2", "--json")
    assert (code, [row["id"] for row in json.loads(out)]) == (0, [f"{parent}:2"])
    code, out, _ = await cli("status", parent[:8], "--json")  # no index: the array job
    assert (code, [row["id"] for row in json.loads(out)]) == (0, [parent])

    code, _, err = await cli("status", f"{parent[:8]}:7")
    assert code == 1
    assert f"no job id starts with {parent[:8]}:7" in err
    code, _, err = await cli("status", f"{single[:8]}:0")  # not an array job: no children
    assert code == 1
    assert f"no job id starts with {single[:8]}:0" in err


async def test_a_short_id_is_looked_up_in_every_queue_or_in_queue(
    cli: Any, local_aws: LocalBatch
) -> None:
    local_aws.create_queue("elsewhere")
    job = await submit_to(local_aws, "elsewhere", "far", containerOverrides={"command": ["true"]})
    code, out, _ = await cli("status", job[:8], "--json")
    (row,) = json.loads(out)
    assert (code, row["id"], row["queue"]) == (0, job, "elsewhere")

    code, out, err = await cli("status", job[:8], "--queue", local_aws.job_queue)
    assert (code, out) == (1, "")
    assert err == (
        f"batchcrew: error: no job id starts with {job[:8]} in job queue {local_aws.job_queue} "
        f"(region {local_aws.region}): check the id, --queue (leave it out to look in every job "
        "queue) and --region\n"
    )

    code, _, err = await cli("logs", "fffffffg")  # no id starts with a "g"
    assert code == 1
    assert err == (
        "batchcrew: error: no job id starts with fffffffg in the 2 job queues of region "
        f"{local_aws.region} ({local_aws.job_queue}, elsewhere): check the id and --region "
        "(AWS keeps ended jobs for about 7 days)\n"
    )
    code, _, err = await cli("terminate", "fffffffg", "gggg")
    assert code == 1
    assert err.startswith("batchcrew: error: no job ids start with fffffffg, gggg in the 2 job")
    assert local_aws.requests_for("TerminateJob") == []
    assert local_aws.requests_for("TerminateJobs") == []

    code, _, err = await cli("status", job[:8], "--queue", "no-such-queue")
    assert code == 1
    assert "JobQueue no-such-queue not found" in err


async def test_an_ambiguous_short_id_lists_the_jobs_it_matches(
    cli: Any, local_aws: LocalBatch
) -> None:
    waiting = {
        "command": ["true"],
        # More vCPUs than the emulator has: the job waits, runnable, and never runs.
        "resourceRequirements": [{"type": "VCPU", "value": "100000"}],
    }
    ids: list[str] = []

    async def submit(index: int) -> None:
        ids.append(
            await submit_to(
                local_aws, local_aws.job_queue, f"queued-{index}", containerOverrides=waiting
            )
        )

    async with anyio.create_task_group() as group:
        for index in range(17):  # 16 hex digits: two of 17 ids start with the same one
            group.start_soon(submit, index)
    first = next(digit for digit in "0123456789abcdef" if sum(i[0] == digit for i in ids) > 1)
    matching = sorted(i for i in ids if i.startswith(first))

    code, out, err = await cli("status", first)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"batchcrew: error: the job id {first} is ambiguous: {len(matching)} jobs start with it: "
    )
    assert err.rstrip().endswith("Give more of the id")
    for job_id in matching:
        assert f"{job_id} (queued-" in err
    assert f"runnable, queue {local_aws.job_queue})" in err
    assert err.count("\n") == 1

    code, _, err = await cli("terminate", first, "--queue", local_aws.job_queue)
    assert code == 2
    assert "is ambiguous" in err
    assert local_aws.requests_for("TerminateJob") == []  # nothing ended
    assert local_aws.requests_for("TerminateJobs") == []

    unique = next(  # the shortest start of the first matching id that no other id has
        matching[0][:size]
        for size in range(2, 37)
        if sum(i.startswith(matching[0][:size]) for i in ids) == 1
    )
    code, out, _ = await cli("status", unique, "--json")
    assert (code, [row["id"] for row in json.loads(out)]) == (0, [matching[0]])


async def test_logs_of_a_job_not_started_say_how_to_wait(cli: Any, monitor: BatchMonitor) -> None:
    job = (await monitor.submit("waiting", ["true"], cpus=100_000))["id"][0]
    await wait_for_status(monitor, job, ["runnable"])
    code, out, err = await cli("logs", job[:8])
    assert (code, out) == (1, "")
    assert err == (
        f"batchcrew: error: job {job} has not started: it has no log stream yet (status "
        f"runnable); wait until `batchcrew status {job}` says running, or use --follow, which "
        "waits for it\n"
    )


async def test_logs_in_another_log_group_name_the_flag(cli: Any, monitor: BatchMonitor) -> None:
    job = (await monitor.submit("echo", ["echo", "hi"]))["id"][0]
    await wait_for_status(monitor, job, ["succeeded"])
    code, out, err = await cli("logs", job, "--log-group", "/elsewhere")
    assert (code, out) == (1, "")
    assert "ResourceNotFoundException" in err
    assert err.rstrip().endswith("its logs are in another log group: pass --log-group")
    assert_no_python_in(err.replace("/aws/batch/job", ""))


async def test_definition_errors_name_the_commands_to_use(cli: Any, local_aws: LocalBatch) -> None:
    code, out, err = await cli(
        "definition", "deregister", "--definition", local_aws.job_definition, "--revision", "99"
    )
    assert (code, out) == (1, "")
    assert err == (
        f"batchcrew: error: job definition {local_aws.job_definition} has no revision 99: "
        f"`batchcrew definition describe --definition {local_aws.job_definition}` lists the "
        "revisions there are\n"
    )
    code, out, err = await cli("definition", "describe", "--definition", "never-made")
    assert (code, out) == (0, "")
    assert err == (
        "job definition never-made has no revision here: check --definition and --region\n"
    )
    code, out, _ = await cli("definition", "describe", "--definition", "never-made", "--json")
    assert (code, json.loads(out)) == (0, [])


async def test_aws_configuration_errors_name_the_flags(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    code, _, err = await cli("status", NO_SUCH_ID, "--profile", "no-such-profile")
    assert code == 1
    assert err.startswith("batchcrew: error: creating the batch client: ")
    assert "check --profile or AWS_PROFILE" in err
    assert_no_python_in(err.replace("no-such-profile", ""))

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    code, _, err = await cli("status", NO_SUCH_ID)
    assert code == 1
    assert err.rstrip().endswith("no AWS region; set AWS_DEFAULT_REGION or pass --region")
    assert_no_python_in(err)


# -- Fargate ---------------------------------------------------------------------------------


async def test_register_for_fargate_with_a_public_ip_and_a_platform_version(cli: Any) -> None:
    role = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
    fargate = [
        "definition",
        "register",
        "--definition",
        "on-fargate",
        "--image",
        "busybox",
        "--platform",
        "FARGATE",
        "--cpus",
        "1",
        "--memory",
        "2",
        "--execution-role-arn",
        role,
    ]
    code, _, err = await cli(*fargate, "--assign-public-ip", "--platform-version", "1.4.0")
    assert (code, err) == (0, "")
    code, _, err = await cli(*fargate, "--no-assign-public-ip")
    assert (code, err) == (0, "")
    code, out, _ = await cli("definition", "describe", "--definition", "on-fargate", "--json")
    containers = [row["container_properties"] for row in json.loads(out)]  # newest first
    assert [c["networkConfiguration"] for c in containers] == [
        {"assignPublicIp": "DISABLED"},
        {"assignPublicIp": "ENABLED"},
    ]
    assert containers[1]["fargatePlatformConfiguration"] == {"platformVersion": "1.4.0"}
    assert {c["executionRoleArn"] for c in containers} == {role}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--platform", "FARGATE", "--cpus", "1", "--memory", "2"],
            "--platform FARGATE needs --execution-role-arn: AWS requires an execution role",
        ),
        (["--assign-public-ip"], "--assign-public-ip is for Fargate only (--platform FARGATE)"),
        (["--platform-version", "LATEST"], "--platform-version is for Fargate only"),
        (
            ["--platform", "FARGATE", "--execution-role-arn", "arn:r", "--platform-version", ""],
            "--platform-version must be a non-empty string",
        ),
    ],
)
async def test_fargate_flags_refused_name_the_flags(
    cli: Any, local_aws: LocalBatch, extra: list[str], message: str
) -> None:
    code, out, err = await cli(*REGISTER, *extra)
    assert (code, out) == (2, "")
    assert err.startswith(f"batchcrew: error: {message}")
    assert_no_python_in(err)
    assert local_aws.requests == []
