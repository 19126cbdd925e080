"""OpenTelemetry traces: a span per task in its pusher's trace, joined by spans on the worker."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import MakeController
from tests.test_fastapi_app import EXAMPLE, load_example


class FileExporter(SpanExporter):
    """Writes each span a worker ends as a JSON line: the test reads them back."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                context, parent = span.get_span_context(), span.parent
                line = {
                    "name": span.name,
                    "trace_id": context.trace_id,
                    "parent_span_id": parent.span_id if parent else None,
                }
                out.write(json.dumps(line) + "\n")
        return SpanExportResult.SUCCESS


def configure_tracing(path: str) -> None:
    """The workers' initializer: OpenTelemetry configured on the worker."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(path)))
    trace.set_tracer_provider(provider)


def traced_work(x: int) -> int:
    with trace.get_tracer("the task").start_as_current_span("work on the worker"):
        return 2 * x


def fail() -> None:
    raise ValueError("no")


@pytest.fixture
def memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_a_task_is_a_span_in_the_trace_current_at_push_and_the_worker_joins_it(
    controller: MakeController,
    memory: tuple[TracerProvider, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    provider, exporter = memory
    worker_spans = tmp_path / "worker-spans.jsonl"
    crew = await controller(
        workers=1,
        tracer_provider=provider,
        initializer=configure_tracing,
        initargs=(str(worker_spans),),
    )
    with provider.get_tracer("test").start_as_current_span("request") as request:
        task = crew.push(traced_work, 21, name="doubling")
    assert (await task).result == 42
    failed = await crew.push(fail)
    assert failed.status == "error"
    (span,) = [
        span
        for span in exporter.get_finished_spans()
        if (span.attributes or {}).get("batchcrew.task.name") == "doubling"
    ]
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.context.trace_id == request.get_span_context().trace_id
    attributes = dict(span.attributes or {})
    assert attributes["batchcrew.task.name"] == "doubling"
    assert attributes["batchcrew.task.status"] == "success"
    assert attributes["batchcrew.controller"] == crew.name
    assert attributes["batchcrew.worker"] == (await crew.push(traced_work, 1)).worker
    assert attributes["batchcrew.task.retries"] == 0
    assert attributes["batchcrew.task.interruptions"] == 0
    assert attributes["batchcrew.task.attempts"] == 1
    assert float(attributes["batchcrew.task.seconds"]) >= 0  # type: ignore[arg-type]
    errored = [s for s in exporter.get_finished_spans() if s.status.status_code.name == "ERROR"]
    assert len(errored) == 1
    with anyio.fail_after(10):
        while not worker_spans.exists():
            await anyio.sleep(0.02)
    (on_worker, *_) = [json.loads(line) for line in worker_spans.read_text().splitlines()]
    assert on_worker["name"] == "work on the worker"
    assert on_worker["trace_id"] == span.context.trace_id  # the same trace, across processes
    assert on_worker["parent_span_id"] == span.context.span_id


async def test_without_a_provider_no_span_and_no_trace_travels(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)  # the global provider is OpenTelemetry's default proxy
    assert crew._spans is None
    assert (await crew.push(traced_work, 2)).result == 4


async def test_a_task_pushed_in_a_fastapi_request_has_the_request_span_as_parent(
    memory: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = memory
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE.parent))
    app = load_example().create_app(workers=1, seconds_heartbeat=5.0, tracer_provider=provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post("/jobs", json={"draws": 100, "name": "traced"})
            assert response.status_code == 202
            with anyio.fail_after(30):
                while (await client.get("/jobs/traced")).json()["status"] == "unresolved":
                    await anyio.sleep(0.02)
    spans = exporter.get_finished_spans()
    (task,) = [span for span in spans if span.name == "batchcrew task"]
    (request,) = [
        span for span in spans if span.kind == trace.SpanKind.SERVER and "POST" in span.name
    ]
    assert task.parent is not None
    assert task.parent.span_id == request.context.span_id
    assert task.context.trace_id == request.context.trace_id
