"""The FastAPI example: driven over ASGI with its lifespan running and real local workers, and
served by a real uvicorn process with AWS Batch workers on LocalBatch, stopped by SIGTERM."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from batchcrew import aws
from batchcrew.testing import LocalBatch
from tests.conftest import children

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "fastapi_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_app"] = module
    spec.loader.exec_module(module)
    return module


async def wait_resolved(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            response = await client.get(f"/jobs/{name}")
            assert response.status_code == 200
            body: dict[str, Any] = response.json()
            if body["status"] != "unresolved":
                return body
            await anyio.sleep(0.02)


async def test_the_app_runs_jobs_and_closing_it_leaves_no_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As when the app runs from its own directory: workers import the module it defines.
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE.parent))
    app = load_example().create_app(workers=2, seconds_heartbeat=5.0)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post("/jobs", json={"draws": 20_000, "seed": 1})
            assert response.status_code == 202
            name = response.json()["name"]
            body = await wait_resolved(client, name)
            assert body["status"] == "success"
            assert 2.9 < body["result"] < 3.4
            assert body["launcher"] == "local"
            assert body["controller"] == "api"
            assert (await client.get(f"/jobs/{name}")).json() == body  # a GET takes nothing

            named = await client.post("/jobs", json={"draws": 10, "name": "mine"})
            assert named.json() == {"name": "mine"}
            await wait_resolved(client, "mine")
            # Its result is held: the name is refused, so that result cannot be hidden.
            again = await client.post("/jobs", json={"draws": 10, "name": "mine"})
            assert again.status_code == 409
            assert "take its result first" in again.json()["detail"]
            taken = await client.delete("/jobs/mine")
            assert taken.json()["status"] == "success"
            assert (await client.get("/jobs/mine")).status_code == 404

            bad = await client.post("/jobs", json={"draws": 0})
            assert bad.status_code == 422

            workers = (await client.get("/workers")).json()
            assert workers["controller"] == "api"
            assert workers["elapsed"] > 0
            assert workers["task_seconds"] > 0
            assert workers["success"] == 2
            assert workers["tasks"] == 2
            assert 1 <= workers["workers"] <= 2

            # The dashboard, mounted at /dashboard: its page, and the state the page reads.
            bare = await client.get("/dashboard")
            assert (bare.status_code, bare.headers["location"]) == (307, "http://app/dashboard/")
            page = await client.get("/dashboard/")
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert b'fetch("state.json"' in page.content  # relative: it works under the mount
            state = (await client.get("/dashboard/state.json")).json()
            (crew,) = state["controllers"]
            assert crew["name"] == "api"
            assert {key: crew["counts"][key] for key in ("tasks", "success")} == {
                "tasks": 2,
                "success": 2,
            }
            assert crew["workers_total"] >= 1
            assert (await client.post("/dashboard/state.json")).status_code == 405

            # Prometheus metrics, mounted at /metrics: they read the same counters.
            metrics = await client.get("/metrics/")
            assert metrics.status_code == 200
            samples = {
                (sample.name, sample.labels.get("status")): sample.value
                for family in text_string_to_metric_families(metrics.text)
                for sample in family.samples
                if sample.labels.get("controller") == "api"
            }
            counts = app.state.controller.counts()
            assert samples[("batchcrew_tasks_pushed_total", None)] == counts["tasks"] == 2
            for status in ("success", "error", "crash", "cancel"):
                assert samples[("batchcrew_tasks_total", status)] == counts[status]
            assert samples[("batchcrew_task_seconds_count", None)] == 2
            assert children()
    assert not children()


async def test_deleting_a_running_job_interrupts_it_and_frees_its_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE.parent))
    app = load_example().create_app(workers=1, seconds_heartbeat=5.0)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            # A billion draws: minutes of work, unless it is interrupted.
            await client.post("/jobs", json={"draws": 1_000_000_000, "name": "huge"})
            with anyio.fail_after(30):  # one worker, one job: once connected, it runs it
                while (await client.get("/workers")).json()["workers"] < 1:
                    await anyio.sleep(0.02)
            deleted = (await client.delete("/jobs/huge")).json()
            assert (deleted["name"], deleted["status"]) == ("huge", "cancel")
            await client.post("/jobs", json={"draws": 1000, "name": "next"})
            with anyio.fail_after(30):  # far less than the huge job would take
                body = await wait_resolved(client, "next")
            assert body["status"] == "success"
            assert body["worker"] == deleted["worker"]  # the same worker, freed
            summary = (await client.get("/workers")).json()
            assert (summary["cancel"], summary["success"]) == (1, 1)
            assert summary["workers"] == 1


# -- SIGTERM to the server -------------------------------------------------------------------

GRACE = 30.0
"""What an orchestrator gives a container between SIGTERM and SIGKILL (the default of ECS's
stopTimeout and of Kubernetes' terminationGracePeriodSeconds)."""


@pytest.mark.timeout(120)
async def test_sigterm_to_uvicorn_ends_every_batch_job_within_the_grace_period(
    local_batch: LocalBatch, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Jobs run with the emulator's environment (this process's): they import the job
    # function from there. The server and the monitor reach the emulator the standard way.
    root = Path(__file__).parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLE.parent), str(root)]))
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    environment = {
        **os.environ,
        "BATCHCREW_TEST_JOB_QUEUE": local_batch.job_queue,
        "BATCHCREW_TEST_JOB_DEFINITION": local_batch.job_definition,
    }
    listener = socket.create_server(("127.0.0.1", 0))  # handed to uvicorn: no port race
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", "--factory", "tests.batch_app:create_app"]
    command += ["--fd", str(listener.fileno()), "--timeout-graceful-shutdown", "5"]
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as output, listener:
        server = await anyio.open_process(
            command,
            env=environment,
            cwd=root,
            stdin=None,
            stdout=output,
            stderr=output,
            pass_fds=[listener.fileno()],
        )
    async with server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        try:
            with anyio.fail_after(30):
                while True:
                    try:
                        if (await client.get("/workers")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass  # not listening yet
                    await anyio.sleep(0.05)
            for name in ("first", "second"):  # minutes of work each, unless ended
                job = {"draws": 1_000_000_000, "name": name}
                assert (await client.post("/jobs", json=job)).status_code == 202
            with anyio.fail_after(30):
                while (await client.get("/workers")).json()["workers"] < 2:
                    await anyio.sleep(0.05)
            monitor = aws.BatchMonitor(local_batch.job_queue, local_batch.job_definition)
            ours = pl.col("name").str.starts_with("api-")
            assert (await monitor.active()).filter(ours).height >= 1
            assert len(local_batch.process_ids()) == 2  # both workers, running their jobs
            server.send_signal(signal.SIGTERM)
            with anyio.fail_after(GRACE):
                await server.wait()
                # Recent uvicorn shuts down gracefully, then re-raises the signal it caught.
                assert server.returncode == -signal.SIGTERM
                while (await monitor.active()).filter(ours).height:
                    await anyio.sleep(0.05)
                while local_batch.process_ids():
                    await anyio.sleep(0.05)
        finally:
            if server.returncode is None:
                server.kill()
    assert "Application shutdown complete." in log.read_text()
    assert (await monitor.inactive()).filter(ours).height >= 1
