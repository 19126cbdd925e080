"""OpenTelemetry traces: a span per task, from push to resolve, in the trace of whoever pushed it.

With OpenTelemetry installed (`pip install "batchcrew[otel]"`) and a tracer provider configured
(the global one, or the controller's `tracer_provider=`), each task is a span "batchcrew task",
a child of the span current at push (a FastAPI request's, say), ended when the task resolves,
with its name, controller, worker, status, run time and retries. Its trace context travels with
the task: on a worker where OpenTelemetry is configured too (its `initializer` can do it), spans
the task makes join the same trace. Without OpenTelemetry, or with no provider configured, none
of this costs anything: no span is made, nothing travels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchcrew import __version__

if TYPE_CHECKING:
    from batchcrew.results import Result

_MISSING = object()
_api: Any = None  # opentelemetry's modules once imported, _MISSING if not installed


def _opentelemetry() -> Any:
    global _api
    if _api is None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            _api = _MISSING
        else:
            _api = (context, propagate, trace)
    return None if _api is _MISSING else _api


class Spans:
    """The open spans of a controller's tasks, by task id."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer
        self._open: dict[int, Any] = {}

    @classmethod
    def for_provider(cls, provider: Any) -> Spans | None:
        """Spans made with `provider` (None: the global provider); None when OpenTelemetry is
        not installed or no provider is configured."""
        api = _opentelemetry()
        if api is None:
            return None
        trace = api[2]
        if provider is None:
            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider):
                return None  # nothing configured: every span would be thrown away
        return cls(provider.get_tracer("batchcrew", __version__))

    def start(self, task_id: int, name: str, controller: str) -> dict[str, str]:
        """Open the span of a task pushed now, a child of the current span; return the trace
        context to send with the task."""
        _, propagate, trace = _opentelemetry()
        span = self._tracer.start_span(
            "batchcrew task",
            kind=trace.SpanKind.PRODUCER,
            attributes={"batchcrew.task.name": name, "batchcrew.controller": controller},
        )
        self._open[task_id] = span
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def end(self, task_id: int, result: Result, retries: int) -> None:
        """Close the span of a resolved task, with what became of it."""
        span = self._open.pop(task_id, None)
        if span is None:
            return
        _, _, trace = _opentelemetry()
        span.set_attribute("batchcrew.task.status", result.status)
        span.set_attribute("batchcrew.task.retries", retries)
        span.set_attribute("batchcrew.task.interruptions", result.interruptions)
        span.set_attribute("batchcrew.task.attempts", result.attempts)
        span.set_attribute("batchcrew.controller", result.controller)
        if result.worker is not None:
            span.set_attribute("batchcrew.worker", result.worker)
        if result.seconds is not None:
            span.set_attribute("batchcrew.task.seconds", result.seconds)
        if result.status != "success":
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.error or result.status))
        span.end()


@contextlib.contextmanager
def joined(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """On a worker: run inside the trace context that came with the task (if OpenTelemetry is
    installed here; its spans reach an exporter only where a provider is configured)."""
    api = _opentelemetry()
    if carrier is None or api is None:
        yield
        return
    context, propagate, _ = api
    token = context.attach(propagate.extract(dict(carrier)))
    try:
        yield
    finally:
        context.detach(token)
