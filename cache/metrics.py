"""Cache metrics in a prometheus-client registry of their own (one per cache)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

TIERS = ("l1", "l2", "l3")
_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
            1e-2, 2.5e-2, 0.1, 0.5, 1.0, 5.0)


class Latency:
    """A latency histogram with prometheus' bucket semantics, at a fraction of its cost.

    ``observe`` is a bisect and two additions, without a lock (see :class:`TierMetrics`).
    """

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one operation that took ``seconds``."""
        self.counts[bisect_left(_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        out, running = [], 0
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class TierMetrics:
    """Counters of one tier.

    Hits, misses and sets are plain integers, exported when the registry is read:
    a prometheus counter takes a lock on every increment, which costs more than
    an L1 hit itself. An increment lost to a thread switch only blurs a count.
    """

    def __init__(self, parent: CacheMetrics, tier: str) -> None:
        self.tier = tier
        self.hits = 0
        self.misses = 0
        self.sets = 0
        self.get_seconds = Latency()
        self.set_seconds = Latency()
        self._parent = parent

    def error(self, kind: str) -> None:
        """Count a failure of this tier (``unavailable``, ``corrupt``, ...)."""
        self._parent.errors.labels(self.tier, kind).inc()



class _CountsCollector(Collector):
    """Exports the integer counters of every tier."""

    def __init__(self, tiers: dict[str, TierMetrics]) -> None:
        self._tiers = tiers

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("cache_requests", "Lookups by tier and result",
                                       labels=["tier", "result"])
        sets = CounterMetricFamily("cache_sets", "Writes by tier", labels=["tier"])
        for name, tier in self._tiers.items():
            requests.add_metric([name, "hit"], tier.hits)
            requests.add_metric([name, "miss"], tier.misses)
            sets.add_metric([name], tier.sets)
        yield requests
        yield sets
        latency = HistogramMetricFamily("cache_latency_seconds", "Tier operation latency",
                                        labels=["tier", "op"])
        for name, tier in self._tiers.items():
            for op, histogram in (("get", tier.get_seconds), ("set", tier.set_seconds)):
                latency.add_metric([name, op], histogram.buckets(), histogram.total)
        yield latency


class _EvictionsCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("cache_evictions", "Entries evicted to stay within bounds",
                                     labels=["tier"])
        for tier, count in self._counts().items():
            family.add_metric([tier], count)
        yield family


_STORE_GAUGES = {"memory_bytes": ("cache_memory_bytes",
                                  "Bytes the memory tier holds, as counted against its budget"),
                 "memory_items": ("cache_memory_items", "Items in the memory tier"),
                 "used_memory": ("cache_redis_used_memory_bytes", "Memory Redis uses"),
                 "disk_bytes": ("cache_disk_bytes", "Size of the disk tier's files"),
                 "disk_items": ("cache_disk_items", "Items in the disk tier")}
_STORE_COUNTERS = {"evicted_keys": ("cache_redis_evicted_keys", "Keys Redis evicted"),
                   "keyspace_hits": ("cache_redis_keyspace_hits", "Redis lookups that hit"),
                   "keyspace_misses": ("cache_redis_keyspace_misses",
                                       "Redis lookups that missed")}


class _StoresCollector(Collector):
    """Exports what Redis and the disk tier say of themselves, read at each scrape."""

    def __init__(self, figures: Callable[[], dict[str, float]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self._figures()
        for key, (name, text) in _STORE_GAUGES.items():
            if key in figures:
                yield GaugeMetricFamily(name, text, value=figures[key])
        for key, (name, text) in _STORE_COUNTERS.items():
            if key in figures:
                yield CounterMetricFamily(name, text, value=figures[key])


class CacheMetrics:
    """Hits, misses, sets, evictions, errors and latency per tier, plus computes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.errors = Counter("cache_errors", "Tier failures by kind", ["tier", "kind"],
                              registry=r)
        self.computes = Counter("cache_computes", "Values computed after a miss in every tier",
                                registry=r)
        self.compute_errors = Counter("cache_compute_errors", "Computes that raised (never cached)",
                                      registry=r)
        self.invalidations = Counter("cache_invalidations", "Tag purges and forgets applied",
                                     ["kind", "origin"], registry=r)
        self.tiers = {tier: TierMetrics(self, tier) for tier in TIERS}
        r.register(_CountsCollector(self.tiers))

    def track_evictions(self, counts: Callable[[], dict[str, int]]) -> None:
        """Export ``counts()`` (evictions by tier, kept by the tiers) as ``cache_evictions``."""
        self.registry.register(_EvictionsCollector(counts))

    def track_stores(self, figures: Callable[[], dict[str, float]]) -> None:
        """Export what the stores under the tiers say of themselves, read at each scrape:
        ``figures()`` gives the memory tier's ``memory_bytes`` and ``memory_items``, Redis's
        ``used_memory``, ``evicted_keys``, ``keyspace_hits``, ``keyspace_misses`` and the
        disk tier's ``disk_bytes``, ``disk_items`` (a store that does not answer is left
        out)."""
        self.registry.register(_StoresCollector(figures))

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it has not been recorded yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def snapshot(self) -> dict[str, Any]:
        """Every sample as ``{metric: {labels: value}}``, for ``stats``."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out.setdefault(sample.name, {})[labels or "-"] = sample.value
        return out
