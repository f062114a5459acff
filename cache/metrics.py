"""Cache metrics in a prometheus-client registry of their own (one per cache)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

TIERS = ("l1", "l2", "l3")
_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
            1e-2, 2.5e-2, 0.1, 0.5, 1.0, 5.0)


class TierMetrics:
    """Pre-bound metric children of one tier, so the hot path does no label lookups."""

    def __init__(self, parent: CacheMetrics, tier: str) -> None:
        self.hit = parent.requests.labels(tier, "hit")
        self.miss = parent.requests.labels(tier, "miss")
        self.set = parent.sets.labels(tier)
        self.get_seconds = parent.latency.labels(tier, "get")
        self.set_seconds = parent.latency.labels(tier, "set")
        self.tier = tier
        self._parent = parent

    def error(self, kind: str) -> None:
        """Count a failure of this tier (``unavailable``, ``corrupt``, ...)."""
        self._parent.errors.labels(self.tier, kind).inc()

    def evicted(self, count: int) -> None:
        """Count entries the tier dropped to stay within its bound."""
        if count:
            self._parent.evictions.labels(self.tier).inc(count)


class CacheMetrics:
    """Hits, misses, sets, evictions, errors and latency per tier, plus computes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("cache_requests", "Lookups by tier and result",
                                ["tier", "result"], registry=r)
        self.sets = Counter("cache_sets", "Writes by tier", ["tier"], registry=r)
        self.evictions = Counter("cache_evictions", "Entries evicted to stay within bounds",
                                 ["tier"], registry=r)
        self.errors = Counter("cache_errors", "Tier failures by kind", ["tier", "kind"],
                              registry=r)
        self.latency = Histogram("cache_latency_seconds", "Tier operation latency",
                                 ["tier", "op"], buckets=_BUCKETS, registry=r)
        self.computes = Counter("cache_computes", "Values computed after a miss in every tier",
                                registry=r)
        self.compute_errors = Counter("cache_compute_errors", "Computes that raised (never cached)",
                                      registry=r)
        self.invalidations = Counter("cache_invalidations", "Tag purges and forgets applied",
                                     ["kind", "origin"], registry=r)
        self.tiers = {tier: TierMetrics(self, tier) for tier in TIERS}

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
