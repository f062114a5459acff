"""Benchmark of the tiered cache, each tier measured next to the raw store under it.

Measures, in one run on this machine:

- ``l1_hit_us``: ``TieredCache.get`` of a key held in L1 (next to ``dict_get_us``, a plain dict get);
- ``l2_hit_us``: ``TieredCache.lookup`` that misses L1 and hits Redis (no L3 configured), next to
  ``raw_redis_get_us``, a redis-py ``GET`` (hiredis parser) of the very same stored bytes;
- ``l3_hit_us``: ``TieredCache.lookup`` that misses L1 and hits sqlite (no Redis configured), next to
  ``raw_sqlite_get_us``, a plain ``SELECT blob FROM t WHERE key = ?`` of the same blobs in WAL mode;
- ``miss_overhead_us``: ``get_or_compute`` of a new key with every tier enabled and an instant compute,
  i.e. three misses plus the writes of the value to every tier;
- ``l3_writes_per_s``: ``SqliteTier.set`` of distinct 2 KB blobs followed by ``flush()``, and
  ``tiered_l3_sets_per_s``: the same through ``TieredCache.set`` with only L3 behind a tiny L1, so
  compression and encryption are included; ``raw_sqlite_writes_per_s`` is the ceiling for the same
  blobs in a plain WAL table (512 rows per transaction). The write paths take turns in rounds.

Values are 2048-byte text strings made of common words (they compress like prose), stored
shared (no user) with two tags, under a fresh random master key. Latencies are medians and 99th
percentiles of per-operation timings (``perf_counter_ns`` around each call, after a warm-up, with
the clock's own cost subtracted); a cache read is measured in alternating rounds with the raw
store it is compared to, so drift on a busy machine hits both alike. L1 entries are removed before
each timed L2/L3 read, outside the timed region.

A private redis-server (no persistence) on a free loopback port and the sqlite files live in a
temporary folder that is removed at the end. Goals are reported as met or not met, never asserted.
The last line of output is one JSON object with every number.

Run it with ``make bench-cache`` (or ``.venv/bin/python bench/bench_cache.py`` from the repo root);
``--quick`` runs far fewer iterations, as a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import zstandard
from redis.utils import HIREDIS_AVAILABLE

# `tests.servers` is not part of the installed distribution: import it from the checkout.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cache.crypto import Keyring  # noqa: E402
from cache.keys import KeyBuilder  # noqa: E402
from cache.tiered import Outcome, TieredCache  # noqa: E402
from cache.tiers.base import Record  # noqa: E402
from cache.tiers.memory import MemoryTier  # noqa: E402
from cache.tiers.redis import RedisTier  # noqa: E402
from cache.tiers.sqlite import SqliteTier  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

VALUE_BYTES = 2048
TTL = 3600.0
TAGS = ("intent:HassLightSet", "template:light_set")
WORDS = (
    "the", "of", "and", "to", "a", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
    "as", "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use",
    "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out",
    "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into",
    "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could",
    "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find",
    "long", "down", "day", "did", "get", "come", "made", "may", "part", "light", "kitchen", "turn",
    "on", "off", "temperature", "degrees", "living", "room", "bedroom", "lamp", "brightness", "percent",
    "weather", "today", "tomorrow", "rain",
)

Op = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Sizes:
    """Iteration counts of one run."""

    fast: int
    """Timed calls of in-memory reads (L1 hit, dict get)."""
    io: int
    """Timed calls of reads that go to Redis or sqlite, per probe."""
    miss: int
    """Timed full misses (each a new key written to every tier)."""
    writes: int
    """Records written in each L3 throughput run."""
    keys: int
    """Distinct keys the read probes cycle through."""
    rounds: int
    """Alternating rounds a probe and its raw counterpart are split into."""


FULL = Sizes(fast=20000, io=10000, miss=5000, writes=20000, keys=1000, rounds=5)
QUICK = Sizes(fast=1000, io=500, miss=300, writes=2000, keys=100, rounds=2)


@dataclass(slots=True)
class Probe:
    """One operation timed call by call; ``args`` are cycled, each call takes the next one."""

    name: str
    op: Op
    args: Sequence[Any]
    prepare: Op | None = None
    """Run before each call, outside the timed region (e.g. drop the key from L1)."""
    check: Callable[[Any], bool] | None = None
    """Must hold for each result, so a probe cannot silently measure the wrong path."""
    samples: list[int] = field(default_factory=list)
    cursor: int = 0

    def run(self, count: int, *, keep: bool = True) -> None:
        """Time ``count`` calls; ``keep=False`` for a warm-up."""
        op, args, prepare, check = self.op, self.args, self.prepare, self.check
        ns = time.perf_counter_ns
        size = len(args)
        out: list[int] = []
        wrong = 0
        for i in range(self.cursor, self.cursor + count):
            arg = args[i % size]
            if prepare is not None:
                prepare(arg)
            started = ns()
            result = op(arg)
            elapsed = ns() - started
            out.append(elapsed)
            if check is not None and not check(result):
                wrong += 1
        self.cursor += count
        if wrong:
            raise RuntimeError(f"{self.name}: {wrong} of {count} calls did not take the measured path")
        if keep:
            self.samples.extend(out)


@dataclass(frozen=True, slots=True)
class Timing:
    """Median and 99th percentile of one probe, in microseconds, clock cost subtracted."""

    median_us: float
    p99_us: float
    count: int


def clock_cost_ns(count: int) -> float:
    """The median cost of the two clock reads that bracket every timed call."""
    ns = time.perf_counter_ns
    out = []
    for _ in range(count):
        started = ns()
        out.append(ns() - started)
    return float(statistics.median(out))


def summarize(samples: Sequence[int], clock_ns: float) -> Timing:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(ordered)
    return Timing(max(0.0, (median - clock_ns) / 1000), max(0.0, (p99 - clock_ns) / 1000), len(ordered))


def side_by_side(probes: Sequence[Probe], count: int, rounds: int) -> None:
    """Warm each probe up, then time them in alternating rounds of ``count / rounds`` calls."""
    warmup = max(50, count // 10)
    for probe in probes:
        probe.run(warmup, keep=False)
    chunk = max(1, count // rounds)
    for _ in range(rounds):
        for probe in probes:
            gc.collect()
            probe.run(chunk)


def text_values(rng: random.Random, count: int) -> list[str]:
    """Distinct ASCII strings of exactly ``VALUE_BYTES``, drawn from common words (Zipf-like)."""
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    out = []
    for _ in range(count):
        words = rng.choices(WORDS, weights, k=VALUE_BYTES // 3)
        out.append(" ".join(words)[:VALUE_BYTES])
    return out


def new_cache(keyring: Keyring, *, redis_tier: RedisTier | None, sqlite_tier: SqliteTier | None,
              memory_bytes: int = 64 * 1024 * 1024) -> TieredCache:
    # Invalidation events are not part of what is measured: no listener thread.
    return TieredCache(keyring=keyring, memory=MemoryTier(memory_bytes), redis_tier=redis_tier,
                       sqlite_tier=sqlite_tier, listen=False).start()


def source_is(tier: str) -> Callable[[Any], bool]:
    def check(found: Any) -> bool:
        return isinstance(found, Outcome) and found.source == tier
    return check


@dataclass(slots=True)
class Writer:
    """A write path timed in chunks: ``write(i)`` for each index, then ``flush()`` (timed too)."""

    name: str
    write: Callable[[int], None]
    flush: Callable[[], Any]
    seconds: float = 0.0
    done: int = 0

    def run(self, count: int) -> None:
        write, first = self.write, self.done
        gc.collect()
        started = time.perf_counter()
        for i in range(first, first + count):
            write(i)
        self.flush()
        self.seconds += time.perf_counter() - started
        self.done += count

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


class PlainSqliteWriter:
    """Rows into a plain WAL (key, blob) table, ``batch`` rows per transaction: the disk's ceiling."""

    def __init__(self, path: Path, rows: Sequence[tuple[str, bytes]], batch: int = 512) -> None:
        self.rows = rows
        self.batch = batch
        self.buffer: list[tuple[str, bytes]] = []
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE t (key TEXT PRIMARY KEY, blob BLOB NOT NULL)")

    def write(self, i: int) -> None:
        self.buffer.append(self.rows[i])
        if len(self.buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.conn.execute("BEGIN")
            self.conn.executemany("INSERT INTO t (key, blob) VALUES (?, ?)", self.buffer)
            self.conn.execute("COMMIT")
            self.buffer.clear()

    def close(self) -> None:
        self.conn.close()


def raw_sqlite_copy(path: Path, rows: Sequence[tuple[str, bytes]]) -> sqlite3.Connection:
    """A plain WAL table holding ``rows``, and a fresh connection for reading it."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE t (key TEXT PRIMARY KEY, blob BLOB NOT NULL)")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (key, blob) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def run(sizes: Sizes, workdir: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Every measurement; whatever is started is registered on ``stack`` to be stopped."""
    rng = random.Random(20240501)
    keyring = Keyring({1: os.urandom(32)})
    names = KeyBuilder(keyring.naming_secret())
    values = text_values(rng, 64)
    value_of: dict[str, str] = {}
    keys: list[str] = []
    for i in range(sizes.keys):
        key = names.key("gen", "bench", i)
        keys.append(key)
        value_of[key] = values[i % len(values)]

    server = RedisServer(workdir / "redis")
    stack.callback(server.stop)
    server.start()
    raw_redis = redis.Redis.from_url(server.url)
    stack.callback(raw_redis.close)

    def tier_l2() -> RedisTier:
        return RedisTier(server.url, namer=names.name)

    def tier_l3(name: str) -> SqliteTier:
        return SqliteTier(workdir / name)

    full = new_cache(keyring, redis_tier=tier_l2(), sqlite_tier=tier_l3("full.db"))
    stack.callback(full.close)
    l2_only = new_cache(keyring, redis_tier=tier_l2(), sqlite_tier=None)
    stack.callback(l2_only.close)
    l3_only = new_cache(keyring, redis_tier=None, sqlite_tier=tier_l3("l3.db"))
    stack.callback(l3_only.close)
    assert l3_only.sqlite is not None and full.sqlite is not None
    for cache in (full, l2_only, l3_only):
        for key in keys:
            cache.set(key, value_of[key], ttl=TTL, tags=TAGS)
    l3_only.sqlite.flush()
    full.sqlite.flush()

    clock_ns = clock_cost_ns(sizes.fast)
    results: dict[str, Timing] = {}

    # A plain dict is the floor for any in-process lookup.
    plain = dict(value_of)
    l1 = Probe("l1_hit", full.get, keys, check=lambda v: v is not None)
    dict_get = Probe("dict_get", plain.get, keys)
    side_by_side([l1, dict_get], sizes.fast, sizes.rounds)

    # L2 and redis-py on the same bytes: the very keys L2 stored, read back verbatim.
    l2 = Probe("l2_hit", l2_only.lookup, keys, prepare=l2_only.memory.delete, check=source_is("l2"))
    raw_r = Probe("raw_redis_get", raw_redis.get, keys, check=lambda v: v is not None)
    side_by_side([l2, raw_r], sizes.io, sizes.rounds)
    l2_stored = len(raw_redis.get(keys[0]) or b"")

    # L3 and plain sqlite on the same blobs.
    with contextlib.closing(sqlite3.connect(workdir / "l3.db")) as stored:
        rows = [(str(k), bytes(b)) for k, b in stored.execute("SELECT key, blob FROM items")]
    conn = raw_sqlite_copy(workdir / "raw.db", rows)
    stack.callback(conn.close)
    select = "SELECT blob FROM t WHERE key = ?"

    def raw_sqlite_get(key: str) -> Any:
        return conn.execute(select, (key,)).fetchone()

    l3 = Probe("l3_hit", l3_only.lookup, keys, prepare=l3_only.memory.delete, check=source_is("l3"))
    raw_s = Probe("raw_sqlite_get", raw_sqlite_get, keys, check=lambda row: row is not None)
    side_by_side([l3, raw_s], sizes.io, sizes.rounds)
    l3_blob = len(rows[0][1])

    # Full misses: every call a key never seen, and a compute that costs nothing.
    computed = values[0]
    computes = [0]
    miss_keys = [names.key("gen", "miss", i) for i in range(sizes.miss + max(50, sizes.miss // 10))]

    def compute() -> str:
        computes[0] += 1
        return computed

    def miss(key: str) -> Any:
        return full.get_or_compute(key, compute, ttl=TTL, tags=TAGS)

    miss_probe = Probe("miss_overhead", miss, miss_keys)
    side_by_side([miss_probe], sizes.miss, 1)
    if computes[0] != len(miss_keys):
        raise RuntimeError("miss_overhead: some calls were not full misses")
    full.sqlite.flush()

    for probe in (l1, dict_get, l2, raw_r, l3, raw_s, miss_probe):
        results[probe.name] = summarize(probe.samples, clock_ns)

    # L3 write throughput, on fresh files, the write paths taking turns in rounds (as the reads do)
    # so that a busy disk slows them alike.
    expires = time.time() + TTL
    base = os.urandom(VALUE_BYTES)
    blobs = [i.to_bytes(4, "big") + base[4:] for i in range(sizes.writes)]
    writers: list[Writer] = []
    for label, tags in (("l3_writes_per_s", TAGS), ("l3_untagged_writes_per_s", ())):
        tier = tier_l3(f"writes-{len(tags)}.db").start()
        stack.callback(tier.close)
        records = [(f"w:{i}", Record(blob, expires, tags, None, len(blob))) for i, blob in enumerate(blobs)]

        def write(i: int, tier: SqliteTier = tier, records: list[tuple[str, Record]] = records) -> None:
            tier.set(*records[i])

        writers.append(Writer(label, write, tier.flush))

    plain_writer = PlainSqliteWriter(workdir / "raw-writes.db", [(f"w:{i}", b) for i, b in enumerate(blobs)])
    stack.callback(plain_writer.close)
    writers.append(Writer("raw_sqlite_writes_per_s", plain_writer.write, plain_writer.flush))

    # Through the cache, behind an L1 too small to keep anything: compression and sealing count.
    sets_only = new_cache(keyring, redis_tier=None, sqlite_tier=tier_l3("sets.db"), memory_bytes=1)
    stack.callback(sets_only.close)
    assert sets_only.sqlite is not None
    set_keys = [names.key("gen", "set", i) for i in range(sizes.writes)]

    def cache_set(i: int) -> None:
        sets_only.set(set_keys[i], values[i % len(values)], ttl=TTL, tags=TAGS)

    writers.append(Writer("tiered_l3_sets_per_s", cache_set, sets_only.sqlite.flush))
    chunk = sizes.writes // sizes.rounds
    for _ in range(sizes.rounds):
        for writer in writers:
            writer.run(chunk)
    rates = {writer.name: writer.rate for writer in writers}

    info = raw_redis.info("server")
    compressed = len(zstandard.ZstdCompressor(level=3).compress(values[0].encode()))
    return {
        "timings": results,
        "rates": rates,
        "clock_ns": clock_ns,
        "env": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "redis": info.get("redis_version"),
            "sqlite": sqlite3.sqlite_version,
            "value_bytes": VALUE_BYTES,
            "zstd_bytes": compressed,
            "l2_value_bytes": l2_stored,
            "l3_blob_bytes": l3_blob,
            "hiredis": HIREDIS_AVAILABLE,
        },
    }


def report(data: dict[str, Any], sizes: Sizes, quick: bool) -> dict[str, Any]:
    """Print the tables and goals; the numbers for the JSON line."""
    t: dict[str, Timing] = data["timings"]
    rates: dict[str, float] = data["rates"]
    env = data["env"]
    print(f"bench_cache{' (--quick)' if quick else ''}: python {env['python']}, {env['cpus']} cpus, "
          f"redis {env['redis']} (hiredis: {env['hiredis']}), sqlite {env['sqlite']}")
    print(f"value {env['value_bytes']} B text (zstd-3: {env['zstd_bytes']} B); "
          f"stored in Redis {env['l2_value_bytes']} B, sealed blob in sqlite {env['l3_blob_bytes']} B; "
          f"tags {len(TAGS)}, shared scope; {sizes.keys} keys cycled")
    print(f"per-op timings, clock cost {data['clock_ns']:.0f} ns subtracted; "
          f"{sizes.rounds} alternating rounds per pair\n")

    rows = [("dict_get", "plain dict.get"), ("l1_hit", "TieredCache.get, L1 hit"),
            ("raw_redis_get", "redis-py GET, same bytes"), ("l2_hit", "lookup, L1 miss, L2 hit"),
            ("raw_sqlite_get", "SELECT blob by key, WAL"), ("l3_hit", "lookup, L1 miss, L3 hit"),
            ("miss_overhead", "get_or_compute, new key")]
    print(f"{'name':<18}{'median us':>11}{'p99 us':>10}{'calls':>8}  what")
    for name, what in rows:
        tm = t[name]
        print(f"{name:<18}{tm.median_us:>11.3f}{tm.p99_us:>10.2f}{tm.count:>8}  {what}")
    print()
    print(f"{'name':<30}{'per second':>12}")
    for name, rate in rates.items():
        print(f"{name:<30}{rate:>12,.0f}")
    print()

    def ratio(a: str, b: str) -> float:
        return t[a].median_us / t[b].median_us if t[b].median_us > 0 else float("inf")

    ratios = {"l2_hit/raw_redis_get": ratio("l2_hit", "raw_redis_get"),
              "l3_hit/raw_sqlite_get": ratio("l3_hit", "raw_sqlite_get"),
              "l1_hit/dict_get": ratio("l1_hit", "dict_get"),
              "l3_writes/raw_sqlite_writes": rates["l3_writes_per_s"] / rates["raw_sqlite_writes_per_s"]}
    for name, value in ratios.items():
        print(f"{name:<30}{value:>8.2f}x")
    print()

    goals = [
        ("l1_hit_us <= 3", t["l1_hit"].median_us <= 3.0, f"{t['l1_hit'].median_us:.2f} us"),
        ("l2_hit_us <= 1.5 x raw_redis_get_us", ratios["l2_hit/raw_redis_get"] <= 1.5,
         f"{ratios['l2_hit/raw_redis_get']:.2f}x"),
        ("l3_hit_us <= 60", t["l3_hit"].median_us <= 60.0, f"{t['l3_hit'].median_us:.1f} us"),
        ("l3_writes_per_s >= 20000", rates["l3_writes_per_s"] >= 20000,
         f"{rates['l3_writes_per_s']:,.0f}/s"),
    ]
    print("goals:")
    for goal, met, measured in goals:
        print(f"  {goal:<38}{measured:>14}  {'met' if met else 'NOT MET'}")
    print()

    out: dict[str, Any] = {f"{name}_us": round(t[name].median_us, 3 if t[name].median_us < 1 else 2)
                           for name, _ in rows}
    out.update({name: round(rate) for name, rate in rates.items()})
    out.update({f"{name}_p99_us": round(t[name].p99_us, 2) for name, _ in rows})
    out["ratio_l2_raw_redis"] = round(ratios["l2_hit/raw_redis_get"], 2)
    out["ratio_l3_raw_sqlite"] = round(ratios["l3_hit/raw_sqlite_get"], 2)
    out["ratio_l1_dict"] = round(ratios["l1_hit/dict_get"], 1)
    out["ratio_l3_writes_raw_sqlite"] = round(ratios["l3_writes/raw_sqlite_writes"], 2)
    out["goals_met"] = sum(met for _, met, _ in goals)
    out["quick"] = quick
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="far fewer iterations (a smoke test)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cache-")))
        data = run(sizes, workdir, stack)
    # The JSON line comes last, after every resource is released.
    print(json.dumps(report(data, sizes, args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
