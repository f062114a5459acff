"""The service's metrics, and the Prometheus endpoint that shows them with the cache's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from assistant.ops.heap import TRIMMER

log = logging.getLogger(__name__)

STAGES = ("stt", "recognise", "answer", "tts", "publish", "total")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)


class ServiceMetrics:
    """Requests, answers by source, errors by code, stage timings and the queue."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """``registry``: shared with the cache's metrics, so one endpoint shows both."""
        self.registry = registry
        self.requests = Counter("assistant_requests", "Requests received, by kind",
                                ["kind"], registry=registry)
        self.answers = Counter("assistant_answers", "Requests answered, by where the answer "
                               "came from (l1, l2, l3, computed, replayed)", ["source"],
                               registry=registry)
        self.errors = Counter("assistant_errors", "Requests answered with an error, by code",
                              ["code"], registry=registry)
        self.stage = Histogram("assistant_stage_seconds", "Time per stage of a request",
                               ["stage"], buckets=_BUCKETS, registry=registry)
        self.queue = Gauge("assistant_queue_depth", "Requests waiting for a worker",
                           registry=registry)
        self.actions = Counter("assistant_actions", "Device commands published",
                               registry=registry)
        registry.register(_HeapTrims())

    def answered(self, fragments: Any) -> None:
        """Count an answer by where it came from: its least cached piece's tier."""
        order = ("computed", "waited", "uncached", "fallback", "l3", "l2", "l1")
        sources = {f.source for f in fragments}
        self.answers.labels(next((s for s in order if s in sources), "computed")).inc()

    def timings(self, timings: dict[str, float]) -> None:
        """Record a request's stage timings (milliseconds)."""
        for stage, ms in timings.items():
            if stage in STAGES:
                self.stage.labels(stage).observe(ms / 1000)


class _HeapTrims(Collector):
    """How often the process's heaps were handed back to the system after heavy work
    (:mod:`assistant.ops.heap`)."""

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("assistant_heap_trims", "Times the heaps were handed back "
                                  "to the system after heavy work", value=TRIMMER.trims)


def histogram_median(histogram: Histogram, stage: str) -> float | None:
    """The median of one label's observations of ``histogram``, in milliseconds, as the upper
    bound of the bucket it falls in (None before any)."""
    buckets: list[tuple[float, float]] = []
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("stage") == stage:
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    for bound, count in buckets:
        if count >= total / 2:
            return bound * 1000 if bound != float("inf") else _BUCKETS[-1] * 1000
    return None


class MetricsEndpoint:
    """``/metrics`` over HTTP, on loopback unless configured otherwise."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Listen (port 0 in the settings means no endpoint)."""
        if self.port and self._server is None:
            self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                           registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
