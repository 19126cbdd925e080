"""`aws.doctor()` and `batchcrew doctor` against LocalBatch (AWS Batch, real HTTP) and moto's
EC2 (the VPC, subnets and security groups): a sound setup passes and runs one worker, and each
broken part is named with its fix; no job is left running."""

from __future__ import annotations

import argparse
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiobotocore.session import get_session

from batchcrew import aws
from batchcrew.aws._commands import add_commands, run_async
from batchcrew.testing import LocalBatch, LocalBatchOptions

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def environment(
    local_batch: LocalBatch, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS Batch at the emulator (AWS_ENDPOINT_URL, region, dummy keys), EC2 at moto: the
    doctor's EC2 client must find it by botocore's standard resolution alone."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", moto_endpoint)


@dataclass(frozen=True)
class Network:
    """A VPC in moto with one subnet, a security group whose inbound rule admits all TCP from
    itself, and one with no inbound rule."""

    vpc: str
    subnet: str
    group: str
    bare_group: str


async def make_network(moto_endpoint: str, cidr: str) -> Network:
    async with get_session().create_client(
        "ec2",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="moto",
        aws_secret_access_key="moto",
    ) as ec2:
        vpc = (await ec2.create_vpc(CidrBlock=cidr))["Vpc"]["VpcId"]
        subnet_cidr = cidr.replace("/16", "/24")
        subnet = (await ec2.create_subnet(VpcId=vpc, CidrBlock=subnet_cidr))["Subnet"]
        group = (await ec2.create_security_group(GroupName="workers", Description="w", VpcId=vpc))[
            "GroupId"
        ]
        await ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 0,
                    "ToPort": 65535,
                    "UserIdGroupPairs": [{"GroupId": group}],
                }
            ],
        )
        bare = (await ec2.create_security_group(GroupName="bare", Description="b", VpcId=vpc))[
            "GroupId"
        ]
    return Network(vpc, subnet["SubnetId"], group, bare)


@pytest.fixture
async def network(moto_endpoint: str) -> Network:
    """A VPC whose subnet holds 127.0.0.1: there, the emulator's workers are inside it."""
    return await make_network(moto_endpoint, "127.0.0.0/16")


def queue_in(local_batch: LocalBatch, network: Network, group: str, name: str = "q") -> str:
    """A queue of its own MANAGED compute environment `<name>-ce`, in `network`."""
    local_batch.create_queue(name, security_group_ids=[group], subnets=[network.subnet])
    return name


def options_for(queue: str, definition: str) -> aws.BatchOptions:
    return aws.BatchOptions(
        job_definition=definition,
        job_queue=queue,
        cpus=1,
        memory=512,
        memory_units="mebibytes",
    )


def row_of(report: aws.DoctorReport, check: str) -> dict[str, Any]:
    (row,) = report.checks.filter(report.checks["check"] == check).iter_rows(named=True)
    return row


async def test_a_sound_setup_passes_and_its_one_worker_runs_a_task(
    local_batch: LocalBatch, network: Network
) -> None:
    queue = queue_in(local_batch, network, network.group)
    with anyio.fail_after(25):
        report = await aws.doctor(
            options=options_for(queue, local_batch.job_definition),
            host="127.0.0.1",
            seconds_launch=10,
        )
    assert report.ok, str(report)
    assert report.checks.columns == ["check", "subject", "status", "found", "fix"]
    assert report.checks["check"].to_list() == [
        "credentials",
        "job queue",
        "compute environment",
        "job definition",
        "image",
        "command",
        "logs",
        "capacity",
        "security groups",
        "address",
        "launch",
    ]
    assert set(report.checks["status"]) == {"ok"}
    assert report.checks["fix"].null_count() == report.checks.height
    assert network.group in row_of(report, "security groups")["found"]
    assert network.subnet in row_of(report, "address")["found"]
    launch = row_of(report, "launch")
    assert "ran a task" in launch["found"]
    assert "SUCCEEDED" in launch["found"]  # the worker left when the doctor closed
    (submitted,) = local_batch.requests_for("SubmitJob")
    assert submitted["jobQueue"] == queue
    assert local_batch.describe_job(launch["subject"])["status"] == "SUCCEEDED"
    assert local_batch.process_ids() == []
    assert "all checks passed" in str(report)


async def test_a_disabled_queue_is_named_with_its_fix_and_nothing_is_launched(
    local_batch: LocalBatch, network: Network
) -> None:
    queue = queue_in(local_batch, network, network.group)
    async with get_session().create_client("batch", **local_batch.client_kwargs()) as client:
        await client.update_job_queue(jobQueue=queue, state="DISABLED")
    with anyio.fail_after(15):
        report = await aws.doctor(queue, local_batch.job_definition, host="127.0.0.1")
    assert not report.ok
    assert report.problems["check"].to_list() == ["job queue"]
    row = row_of(report, "job queue")
    assert "DISABLED" in row["found"]
    assert f"aws batch update-job-queue --job-queue {queue} --state ENABLED" in row["fix"]
    launch = row_of(report, "launch")
    assert launch["status"] == "skipped"
    assert f"job queue {queue} is DISABLED" in launch["found"]
    assert local_batch.requests_for("SubmitJob") == []  # a launch could not have worked
    text = str(report)
    assert "[problem] job queue" in text
    assert f"fix: aws batch update-job-queue --job-queue {queue}" in text


async def test_a_security_group_without_the_self_rule_is_named_with_the_rule_to_add(
    local_batch: LocalBatch, network: Network, moto_endpoint: str
) -> None:
    queue = queue_in(local_batch, network, network.bare_group)
    definition = local_batch.job_definition
    with anyio.fail_after(15):
        report = await aws.doctor(queue, definition, host="127.0.0.1", launch=False)
    assert report.problems["check"].to_list() == ["security groups"]
    row = row_of(report, "security groups")
    assert row["subject"] == f"{queue}-ce"
    assert f"no inbound rule of {network.bare_group}" in row["found"]
    assert "49152-65535" in row["found"]  # port=0: any port the controller may pick
    group = network.bare_group
    assert (
        f"aws ec2 authorize-security-group-ingress --group-id {group} --protocol tcp "
        f"--port 49152-65535 --source-group {group}" in row["fix"]
    )
    # A rule for one port: enough for a controller on that port, not for a random one.
    async with get_session().create_client(
        "ec2", endpoint_url=moto_endpoint, region_name="us-east-1"
    ) as ec2:
        await ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 5555,
                    "ToPort": 5555,
                    "UserIdGroupPairs": [{"GroupId": group}],
                }
            ],
        )
    with anyio.fail_after(15):
        random_port = await aws.doctor(queue, definition, host="127.0.0.1", launch=False)
        fixed_port = await aws.doctor(queue, definition, host="127.0.0.1", port=5555, launch=False)
    row = row_of(random_port, "security groups")
    assert row["status"] == "problem"
    assert "allows only TCP 5555" in row["found"]
    assert "port=" in row["fix"]
    assert fixed_port.ok, str(fixed_port)
    assert "TCP port 5555" in row_of(fixed_port, "security groups")["found"]


async def test_an_image_that_cannot_be_pulled_stops_the_launch_at_starting(
    local_batch: LocalBatch, network: Network
) -> None:
    image = "registry.example.com/team/worker:missing"
    definition = "doctor-unpullable"
    local_batch.register_job_definition(
        definition, command=["python", "-m", "batchcrew.worker"], image=image
    )
    local_batch.fail_pulls(image)
    queue = queue_in(local_batch, network, network.group)
    with anyio.fail_after(20):
        report = await aws.doctor(
            options=options_for(queue, definition), host="127.0.0.1", seconds_launch=4
        )
    assert report.problems["check"].to_list() == ["launch"]
    row = row_of(report, "launch")
    assert "FAILED at STARTING" in row["found"]
    assert "CannotPullContainerError" in row["found"]
    assert image in row["fix"]
    assert "ecr:BatchGetImage" in row["fix"]
    assert "NAT gateway" in row["fix"]
    assert row_of(report, "command")["found"].startswith("`python -m batchcrew.worker`")
    assert local_batch.describe_job(row["subject"])["status"] == "FAILED"
    assert len(local_batch.requests_for("SubmitJob")) == 1  # one worker, never more


async def test_a_controller_outside_the_vpc_is_named_with_the_ways_to_reach_it(
    local_batch: LocalBatch, moto_endpoint: str
) -> None:
    elsewhere = await make_network(moto_endpoint, "10.20.0.0/16")
    queue = queue_in(local_batch, elsewhere, elsewhere.group)
    with anyio.fail_after(15):
        report = await aws.doctor(queue, local_batch.job_definition, host="127.0.0.1", launch=False)
    assert report.problems["check"].to_list() == ["address"]
    row = row_of(report, "address")
    assert row["subject"] == "127.0.0.1"
    assert f"outside the VPC where they run ({elsewhere.vpc} 10.20.0.0/16)" in row["found"]
    assert "loopback" in row["found"]
    assert "A laptop outside the VPC will not work" in row["found"]
    assert "ssh -N -R" in row["fix"]
    assert "address=" in row["fix"]
    assert row_of(report, "launch")["status"] == "skipped"


@pytest.mark.parametrize("local_batch_options", [LocalBatchOptions(vcpus=0.5)])
async def test_a_job_that_never_leaves_runnable_is_named_with_aws_reason_and_its_fix(
    local_batch: LocalBatch, network: Network
) -> None:
    """No instance the compute environment can launch fits a worker (here: the emulator's
    whole capacity is half a vCPU), which the checks cannot see: the job waits RUNNABLE."""
    queue = queue_in(local_batch, network, network.group)
    with anyio.fail_after(15):
        report = await aws.doctor(
            options=options_for(queue, local_batch.job_definition),
            host="127.0.0.1",
            seconds_launch=1,
        )
    assert report.problems["check"].to_list() == ["launch"]
    row = row_of(report, "launch")
    assert "never left RUNNABLE" in row["found"]
    assert "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT" in row["found"]
    assert "bigger instance types" in row["fix"]
    assert local_batch.describe_job(row["subject"])["status"] == "FAILED"  # ended, not left


async def test_workers_that_cannot_reach_the_controller_are_named_with_the_network_fix(
    local_batch: LocalBatch, network: Network, dropped_port: int
) -> None:
    """The checks see nothing wrong (the rule is there, the address in the subnet), but the
    network drops the workers' connections: the launch says so, and ends its job."""
    queue = queue_in(local_batch, network, network.group)
    with anyio.fail_after(20):
        report = await aws.doctor(
            options=options_for(queue, local_batch.job_definition),
            host="127.0.0.1",
            port=dropped_port,
            seconds_launch=1.5,
        )
    assert report.problems["check"].to_list() == ["launch"]
    row = row_of(report, "launch")
    assert "was RUNNING, but its worker never connected" in row["found"]
    assert f"tcp://127.0.0.1:{dropped_port}" in row["found"]
    assert f"TCP port {dropped_port}" in row["fix"]
    assert "security group" in row["fix"]
    assert "laptop outside the VPC" in row["fix"]
    assert len(local_batch.requests_for("SubmitJob")) == 1
    job = await local_batch.wait_for_job(row["subject"], seconds=10)
    assert job["status"] == "FAILED"  # ended by the doctor's controller
    with anyio.fail_after(10):
        while local_batch.process_ids():
            await anyio.sleep(0.02)


async def test_ec2_out_of_reach_skips_the_network_checks_saying_what_to_allow(
    local_batch: LocalBatch, network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", nowhere)
    queue = queue_in(local_batch, network, network.group)
    with anyio.fail_after(20):
        report = await aws.doctor(queue, local_batch.job_definition, host="127.0.0.1", launch=False)
    assert report.ok  # skipped checks are not problems
    for check in ("security groups", "address"):
        row = row_of(report, check)
        assert row["status"] == "skipped"
        assert nowhere in row["found"]
        assert "ec2:DescribeSecurityGroups" in row["fix"]


async def test_no_credentials_is_the_one_problem_and_the_rest_is_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with anyio.fail_after(15):
        report = await aws.doctor("q", "d")
    assert report.problems["check"].to_list() == ["credentials"]
    assert "AWS_ACCESS_KEY_ID" in row_of(report, "credentials")["fix"]
    assert set(report.checks["status"].to_list()[1:]) == {"skipped"}


async def test_bad_arguments_are_refused_at_the_door() -> None:
    with pytest.raises(ValueError, match="job_queue must be a non-empty string"):
        await aws.doctor("", "d")
    with pytest.raises(ValueError, match="give the job queue and the job definition"):
        await aws.doctor("q")
    with pytest.raises(ValueError, match="workers must be a whole number >= 1"):
        await aws.doctor("q", "d", workers=0)
    with pytest.raises(ValueError, match="seconds_launch must be a positive number"):
        await aws.doctor("q", "d", seconds_launch=0)
    options = aws.BatchOptions(job_definition="d", job_queue="q")
    with pytest.raises(ValueError, match="job_queue='other' but options names 'q'"):
        await aws.doctor("other", options=options)


def parser() -> argparse.ArgumentParser:
    """The `batchcrew` parser as cli.py makes it: --debug on top, the subcommands below."""
    made = argparse.ArgumentParser(prog="batchcrew")
    made.add_argument("--debug", action="store_true")
    add_commands(made.add_subparsers(dest="command", required=True))
    return made


async def test_the_cli_prints_each_problem_with_its_fix_and_exits_1(
    local_batch: LocalBatch,
    network: Network,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables wide enough to keep a fix on one line
    queue = queue_in(local_batch, network, network.group)
    async with get_session().create_client("batch", **local_batch.client_kwargs()) as client:
        await client.update_job_queue(jobQueue=queue, state="DISABLED")
    argv = ["doctor", "--queue", queue, "--definition", local_batch.job_definition]
    argv += ["--host", "127.0.0.1"]
    with anyio.fail_after(15):
        code = await run_async(parser().parse_args(argv))
    out = capsys.readouterr().out
    assert code == 1
    assert f"fix: aws batch update-job-queue --job-queue {queue} --state ENABLED" in out
    assert "1 problem: fix them, then run batchcrew doctor again" in out
    with anyio.fail_after(15):
        code = await run_async(parser().parse_args([*argv, "--no-launch", "--json"]))
    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document["ok"] is False
    (launch,) = [row for row in document["checks"] if row["check"] == "launch"]
    assert "--no-launch" in launch["found"]
    code = await run_async(parser().parse_args(["doctor", "--queue", "", "--definition", "d"]))
    assert code == 2
    assert "--queue must be a non-empty string" in capsys.readouterr().err
    assert local_batch.requests_for("SubmitJob") == []
