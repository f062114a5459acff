"""The figures the service keeps of itself over the hours, and how they are read.

Every ``[service] figures_interval`` seconds the service writes one line to
``figures.jsonl`` (beside the disk cache): its time and the cumulative counters that tell
how it is doing (lookups per tier and result, tier read latency buckets, time per stage
buckets, requests, errors by code). Nothing personal is in them. Differences between two
lines give what happened in between: :func:`series` turns the file into hit ratios and
latency quantiles per interval, for ``assistant report`` and the console. The file is cut
back to :data:`KEEP_SECONDS` when it doubles, so it stays a few megabytes on the SD card.

:func:`current` reads the same figures from a running service's metrics endpoint, since
it started, for ``assistant stats``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

KEEP_SECONDS = 48 * 3600
"""How far back the file goes (at least)."""
KEPT = ("cache_requests_total", "cache_latency_seconds_bucket", "assistant_stage_seconds_bucket",
        "assistant_requests_total", "assistant_errors_total", "assistant_queue_depth")
"""The samples kept (by name)."""


def _key(sample: Sample) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}"


def snapshot(samples: Iterable[Sample]) -> dict[str, float]:
    """The kept samples as ``{"name{labels}": value}``."""
    return {_key(s): float(s.value) for s in samples if s.name in KEPT
            and not (s.name == "cache_latency_seconds_bucket" and s.labels.get("op") != "get")}


def registry_samples(registry: CollectorRegistry) -> Iterator[Sample]:
    for family in registry.collect():
        yield from family.samples


class FigureKeeper:
    """Writes a line of figures every ``interval`` seconds (a thread of its own)."""

    def __init__(self, registry: CollectorRegistry, path: Path, *, interval: float) -> None:
        self.registry = registry
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FigureKeeper:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="figures", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except OSError as error:
                log.warning("figures not kept: %s", error)

    def write(self) -> None:
        """Append one line now (and cut the file back when it has doubled)."""
        line = {"time": round(time.time(), 3),
                "figures": snapshot(registry_samples(self.registry))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
        lines = read_lines(self.path)
        if lines and lines[-1]["time"] - lines[0]["time"] > 2 * KEEP_SECONDS:
            cut = [ln for ln in lines if ln["time"] >= lines[-1]["time"] - KEEP_SECONDS]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(ln, separators=(",", ":")) + "\n" for ln in cut))
            tmp.replace(self.path)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.interval > 0:
            try:
                self.write()  # the last figures before it stops
            except OSError as error:
                log.warning("figures not kept: %s", error)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a figures file (a damaged line is skipped)."""
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "time" in line and "figures" in line:
            lines.append(line)
    return lines


# -- reading figures ------------------------------------------------------------------------

def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``{upper bound: count}``, interpolated
    within its bucket as Prometheus' ``histogram_quantile`` does; None when empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 0.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def _histograms(figures: dict[str, float], name: str, label: str) -> dict[str, dict[float, float]]:
    """``{label value: {le: count}}`` of one histogram's buckets."""
    out: dict[str, dict[float, float]] = {}
    for key, value in figures.items():
        if not key.startswith(name + "{"):
            continue
        labels = dict(part.split("=", 1) for part in key[len(name) + 1:-1].split(",") if part)
        if label in labels and "le" in labels:
            out.setdefault(labels[label], {})[float(labels["le"])] = value
    return out


def _counts(figures: dict[str, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in figures.items():
        if key.startswith(name + "{"):
            labels = dict(p.split("=", 1) for p in key[len(name) + 1:-1].split(",") if p)
            if label in labels:
                out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


@dataclass
class Point:
    """What happened in one interval (or since start)."""

    time: float
    hit_ratio: dict[str, float] = field(default_factory=dict)
    """Per tier: hits over lookups."""
    tier_p50_ms: dict[str, float] = field(default_factory=dict)
    """Per tier: median read latency."""
    stage_p50_ms: dict[str, float] = field(default_factory=dict)
    stage_p95_ms: dict[str, float] = field(default_factory=dict)
    requests: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    queue: float = 0.0


def point(now: dict[str, float], before: dict[str, float] | None = None, *,
          at: float = 0.0) -> Point:
    """The figures between ``before`` and ``now`` (cumulative snapshots; since the start
    when ``before`` is None)."""
    base = before or {}

    def delta(key: str) -> float:
        return max(0.0, now.get(key, 0.0) - base.get(key, 0.0))

    moved = {key: delta(key) for key in now}
    out = Point(time=at, queue=now.get("assistant_queue_depth{}", 0.0))
    lookups = _counts(moved, "cache_requests_total", "tier")
    hits = {tier: value for tier, value in _counts(
        {k: v for k, v in moved.items() if "result=hit" in k}, "cache_requests_total",
        "tier").items()}
    out.hit_ratio = {tier: hits.get(tier, 0.0) / n for tier, n in lookups.items() if n > 0}
    for tier, buckets in _histograms(moved, "cache_latency_seconds_bucket", "tier").items():
        value = quantile(buckets, 0.5)
        if value is not None:
            out.tier_p50_ms[tier] = value * 1000
    for stage, buckets in _histograms(moved, "assistant_stage_seconds_bucket", "stage").items():
        for q, into in ((0.5, out.stage_p50_ms), (0.95, out.stage_p95_ms)):
            value = quantile(buckets, q)
            if value is not None:
                into[stage] = value * 1000
    out.requests = sum(_counts(moved, "assistant_requests_total", "kind").values())
    out.errors = {code: n for code, n in _counts(moved, "assistant_errors_total", "code").items()
                  if n > 0}
    return out


def series(lines: list[dict[str, Any]], *, hours: float | None = None) -> list[Point]:
    """One :class:`Point` per interval between consecutive lines (the last ``hours``); a
    restart (counters that went down) starts again from zero."""
    if hours is not None and lines:
        lines = [ln for ln in lines if ln["time"] >= lines[-1]["time"] - hours * 3600]
    points = []
    for before, now in itertools.pairwise(lines):
        restarted = any(v < before["figures"].get(k, 0.0) for k, v in now["figures"].items()
                        if "_total{" in k)
        points.append(point(now["figures"], None if restarted else before["figures"],
                            at=now["time"]))
    return points


def metrics_url(host: str, port: int) -> str:
    """The service's ``/metrics`` (an IPv6 address in brackets)."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, read as this machine
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def current(url: str) -> Point:
    """A running service's figures since it started, from its metrics endpoint ``url``."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not a metrics URL: {url}")
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - http(s) only
        text = reply.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return point(snapshot(samples), at=time.time())
