"""Who may reach LocalBatch: loopback only unless remote access is allowed explicitly, and then
only requests signed (SigV4) with the credentials it made. Real servers, real aiobotocore and
aiohttp clients, real `batchcrew emulator` processes."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import signal
import sys
from typing import Any

import aiohttp
import anyio
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from batchcrew.testing import LocalBatch
from batchcrew.testing._localbatch import DUMMY_SECRET_ACCESS_KEY, is_loopback
from tests.testing.conftest import NO_RETRIES

STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "example.com", "127.0.0.1x"])
def test_a_host_beyond_loopback_needs_allow_remote(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ValueError, match="not a loopback address") as raised:
        LocalBatch(host=host)
    assert "allow_remote=True" in str(raised.value)
    assert "--allow-remote" in str(raised.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_nothing(host: str) -> None:
    assert is_loopback(host)
    assert LocalBatch(host=host).allow_remote is False


async def emulator(*argv: str) -> anyio.abc.Process:
    return await anyio.open_process([sys.executable, "-m", "batchcrew.testing._command", *argv])


async def read_all(stream: anyio.abc.ByteReceiveStream | None) -> str:
    assert stream is not None
    text = b""
    async for chunk in stream:
        text += chunk
    return text.decode()


async def test_the_emulator_command_refuses_a_host_beyond_loopback() -> None:
    done = await anyio.run_process(
        [sys.executable, "-m", "batchcrew.testing._command", "--host", "0.0.0.0", "--port", "0"],
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == b""  # it never listened
    error = done.stderr.decode()
    assert error.startswith("batchcrew emulator: --host 0.0.0.0 is not a loopback address")
    assert "Use --host 127.0.0.1, or add --allow-remote" in error


async def all_jobs(client: Any, queue: str) -> list[str]:
    ids: list[str] = []
    for status in STATUSES:
        listed = await client.list_jobs(jobQueue=queue, jobStatus=status)
        ids += [job["jobId"] for job in listed["jobSummaryList"]]
    return ids


async def test_remote_access_answers_only_requests_signed_with_its_credentials(
    aws_session: AioSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew.testing")
    async with LocalBatch(queues=["q"], job_definition="d", allow_remote=True) as batch:
        kwargs = batch.client_kwargs()
        assert kwargs["aws_secret_access_key"] != DUMMY_SECRET_ACCESS_KEY  # drawn at random
        assert batch.environment()["AWS_SECRET_ACCESS_KEY"] == kwargs["aws_secret_access_key"]
        async with (
            aws_session.create_client("batch", config=NO_RETRIES, **kwargs) as signed,
            aws_session.create_client("logs", config=NO_RETRIES, **kwargs) as logs,
        ):
            # REST-JSON with an ARN in the path, JSON 1.1, and a job that runs.
            (queue,) = (await signed.describe_job_queues())["jobQueues"]
            await signed.tag_resource(resourceArn=queue["jobQueueArn"], tags={"team": "data"})
            tags = await signed.list_tags_for_resource(resourceArn=queue["jobQueueArn"])
            assert tags["tags"] == {"team": "data"}
            assert (await logs.describe_log_groups())["logGroups"]
            job = await signed.submit_job(jobName="ok", jobQueue="q", jobDefinition="d")
            assert (await batch.wait_for_job(job["jobId"]))["status"] == "SUCCEEDED"

            refused = {
                "InvalidSignatureException": {**kwargs, "aws_secret_access_key": "localbatch"},
                "UnrecognizedClientException": {**kwargs, "aws_access_key_id": "someone"},
                "MissingAuthenticationTokenException": {
                    "endpoint_url": batch.endpoint_url,
                    "region_name": batch.region,
                    "config": NO_RETRIES.merge(AioConfig(signature_version=UNSIGNED)),
                },
            }
            for code, other in refused.items():
                other.setdefault("config", NO_RETRIES)
                async with aws_session.create_client("batch", **other) as client:
                    with pytest.raises(ClientError) as raised:
                        await client.submit_job(jobName="evil", jobQueue="q", jobDefinition="d")
                error = raised.value.response["Error"]
                assert error["Code"] == code
                assert "LocalBatch.environment()" in error["Message"]
                assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            async with aws_session.create_client(
                "logs", **refused["InvalidSignatureException"]
            ) as client:
                with pytest.raises(ClientError, match="InvalidSignatureException"):
                    await client.describe_log_groups()
            assert await all_jobs(signed, "q") == [job["jobId"]]  # nothing else ran
        errors = [request.error for request in batch.requests if request.error]
        assert errors == [*refused, "InvalidSignatureException"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def sign(
    url: str, body: bytes, secret: str, when: datetime.datetime, *, content_hash: bool = False
) -> dict[str, str]:
    """Headers of a DescribeJobQueues request signed by botocore's SigV4 signer at `when`."""
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Type": "application/json", "X-Amz-Date": stamp}
    if content_hash:
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials("localbatch", secret), "batch", "us-east-1")
    signature = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    signed = signer.signed_headers(signer.headers_to_sign(request))
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential=localbatch/{signer.credential_scope(request)}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers


async def test_stale_and_altered_signed_requests_are_refused() -> None:
    async with LocalBatch(queues=["q"], allow_remote=True) as batch:
        secret = batch.client_kwargs()["aws_secret_access_key"]
        url = f"{batch.endpoint_url}/v1/describejobqueues"
        body = b"{}"
        now = datetime.datetime.now(datetime.UTC)
        other = json.dumps({"jobQueues": ["q"]}).encode()
        cases = {
            "fresh": (sign(url, body, secret, now), body),
            "stale": (sign(url, body, secret, now - datetime.timedelta(minutes=20)), body),
            "other body": (sign(url, body, secret, now), other),
            "other body, hash signed": (sign(url, body, secret, now, content_hash=True), other),
        }
        answers: dict[str, tuple[int, dict[str, Any]]] = {}
        async with aiohttp.ClientSession() as session:
            for case, (headers, sent) in cases.items():
                async with session.post(url, data=sent, headers=headers) as response:
                    answers[case] = (response.status, await response.json(content_type=None))
    assert answers["fresh"][0] == 200
    assert answers["fresh"][1]["jobQueues"][0]["jobQueueName"] == "q"
    assert answers["stale"][0] == 403
    assert answers["stale"][1]["__type"] == "InvalidSignatureException"
    assert "Signature expired" in answers["stale"][1]["message"]
    for case in ("other body", "other body, hash signed"):
        assert answers[case][0] == 403, case
        assert answers[case][1]["__type"] == "InvalidSignatureException", case


async def test_listening_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="batchcrew.testing")
    async with LocalBatch(host="0.0.0.0", allow_remote=True) as batch:
        port = batch.endpoint_url.rsplit(":", 1)[1]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"anyone who can reach port {port} and holds its credentials" in message
    assert "can run any command on this machine" in message


async def test_the_emulator_command_with_allow_remote_warns_and_prints_working_credentials(
    aws_session: AioSession,
) -> None:
    process = await emulator("--host", "0.0.0.0", "--port", "0", "--allow-remote")
    async with process:
        assert process.stdout is not None
        output = ""
        with anyio.fail_after(20):
            async for chunk in process.stdout:
                output += chunk.decode()
                if "Press Ctrl-C" in output:
                    break
        assert "only requests signed with the credentials below are answered" in output
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in output.splitlines()
            if line.strip().startswith("export ")
        )
        kwargs = {
            "endpoint_url": exports["AWS_ENDPOINT_URL"],
            "region_name": exports["AWS_DEFAULT_REGION"],
            "aws_access_key_id": exports["AWS_ACCESS_KEY_ID"],
            "config": NO_RETRIES,
        }
        async with aws_session.create_client(
            "batch", aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"], **kwargs
        ) as client:
            queues = (await client.describe_job_queues())["jobQueues"]
        assert [queue["jobQueueName"] for queue in queues] == ["localbatch"]
        async with aws_session.create_client(
            "batch", aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY, **kwargs
        ) as client:
            with pytest.raises(ClientError, match="InvalidSignatureException"):
                await client.describe_job_queues()
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await process.wait() == 0
        errors = await read_all(process.stderr)
    assert "anyone who can reach port" in errors
    assert "can run any command on this machine" in errors
