"""Prometheus metrics: a collector that reads a controller's running counters when scraped.

    pip install "batchcrew[prometheus]"

    import batchcrew.metrics
    batchcrew.metrics.register(controller)             # into prometheus_client's REGISTRY
    app.mount("/metrics", prometheus_client.make_asgi_app())

Nothing is counted twice and nothing waits on a scrape: the collector reads, at scrape time,
the counters the controller keeps anyway (tasks by status, workers, launches, the run-time
histogram of its timeline).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from batchcrew.tracking import SECONDS_BUCKETS

if TYPE_CHECKING:
    from batchcrew.controller import Controller
    from batchcrew.group import ControllerGroup

_STATUSES = ("success", "error", "crash", "cancel")
_STATES = ("launching", "idle", "busy", "leaving")


class ControllerCollector(Collector):
    """Metrics of one controller or of every controller of a group, labelled `controller`:

    - `batchcrew_tasks_pushed_total`, `batchcrew_tasks_total{status}` (resolved),
      `batchcrew_tasks_unresolved`, `batchcrew_tasks_queued`;
    - `batchcrew_workers{state}` (launching, idle, busy, leaving);
    - `batchcrew_launches_total`, `batchcrew_launch_failures_total`;
    - `batchcrew_task_seconds` (a histogram of task run times).
    """

    def __init__(self, source: Controller | ControllerGroup) -> None:
        from batchcrew.group import ControllerGroup

        self._controllers = (
            list(source.controllers.values()) if isinstance(source, ControllerGroup) else [source]
        )

    def collect(self) -> Iterator[Metric]:
        labels = ["controller"]
        pushed = CounterMetricFamily(
            "batchcrew_tasks_pushed", "Tasks pushed to the controller.", labels=labels
        )
        resolved = CounterMetricFamily(
            "batchcrew_tasks", "Tasks resolved, by status.", labels=[*labels, "status"]
        )
        unresolved = GaugeMetricFamily(
            "batchcrew_tasks_unresolved", "Tasks pushed and not yet resolved.", labels=labels
        )
        queued = GaugeMetricFamily(
            "batchcrew_tasks_queued", "Unresolved tasks not yet sent to a worker.", labels=labels
        )
        workers = GaugeMetricFamily(
            "batchcrew_workers", "Workers, by state.", labels=[*labels, "state"]
        )
        launches = CounterMetricFamily(
            "batchcrew_launches", "Launches (a launch starts one or more workers).", labels=labels
        )
        failures = CounterMetricFamily(
            "batchcrew_launch_failures", "Launches that failed.", labels=labels
        )
        seconds = HistogramMetricFamily(
            "batchcrew_task_seconds", "Run time of resolved tasks on their workers.", labels=labels
        )
        for controller in self._controllers:
            name = controller.name
            counts = controller.counts()
            pushed.add_metric([name], counts["tasks"])
            for status in _STATUSES:
                resolved.add_metric([name, status], counts[status])
            unresolved.add_metric([name], counts["unresolved"])
            dispatcher = controller._dispatcher
            states: Counter[str] = Counter()
            if dispatcher is not None:
                scheduler, tracker = dispatcher.scheduler, dispatcher.tracker
                queued.add_metric([name], scheduler.queued)
                for record in tracker.records():
                    if record.ended is None:
                        states[scheduler.state_of(record.worker.encode())] += 1
                launches.add_metric([name], tracker.launches)
                failures.add_metric([name], scheduler.failed_launches)
            for state in _STATES:
                workers.add_metric([name, state], states[state])
            timeline = controller._timeline
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*map(str, SECONDS_BUCKETS), "+Inf"), timeline.buckets, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            seconds.add_metric([name], buckets, timeline.seconds_sum)
        yield from (pushed, resolved, unresolved, queued, workers, launches, failures, seconds)


def register(
    source: Controller | ControllerGroup, registry: CollectorRegistry | None = None
) -> ControllerCollector:
    """Register a collector of `source`'s metrics (a controller, or every controller of a
    group) with `registry` (default: prometheus_client's global REGISTRY); return it, so that
    `registry.unregister(collector)` can remove it."""
    collector = ControllerCollector(source)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
