"""Faults: Redis killed and restarted, the sqlite file overwritten; answers keep coming."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cache import KeyBuilder, Keyring, TieredCache, TierUnavailable
from tests.conftest import make_cache
from tests.servers import RedisServer


@pytest.fixture
def cache_on_own_redis(keyring: Keyring, names: KeyBuilder, own_redis: RedisServer,
                       tmp_path: Path) -> Iterator[TieredCache]:
    cache = make_cache(keyring=keyring, names=names, redis_url=own_redis.url,
                       db=tmp_path / "cache.db", cooldown=0.5)
    yield cache
    cache.close()


def test_redis_killed_then_restarted(cache_on_own_redis: TieredCache, own_redis: RedisServer,
                                     names: KeyBuilder) -> None:
    cache = cache_on_own_redis
    cached = names.key("answer", "kitchen light on")
    cache.set(cached, "The kitchen light is on.", ttl=300)
    cache.sqlite.flush()  # type: ignore[union-attr]

    own_redis.kill()
    cache.memory.clear()  # L1 lost too: the answer must come from disk
    started = time.perf_counter()
    found = cache.lookup(cached)
    assert found is not None and found.source == "l3"
    fresh = cache.get_or_compute(names.key("answer", "new question"), lambda: "new answer",
                                 ttl=300)
    assert fresh == "new answer"
    # Further requests skip Redis entirely while the breaker is open: no timeouts paid.
    for i in range(20):
        cache.get_or_compute(names.key("answer", f"q{i}"), lambda i=i: f"a{i}", ttl=300)
    elapsed = time.perf_counter() - started
    assert cache.redis.breaker.is_open  # type: ignore[union-attr]
    # Two failures cost at most two socket timeouts (0.2 s each); the rest are skipped.
    assert elapsed < 2.0, elapsed
    assert cache.metrics.value("cache_errors_total", tier="l2", kind="unavailable") >= 2

    own_redis.start()  # same port, empty
    deadline = time.monotonic() + 10
    key = names.key("answer", "after restart")
    while time.monotonic() < deadline:
        cache.set(key, "back", ttl=300)
        if cache.redis.client.exists(key):  # type: ignore[union-attr]
            break
        time.sleep(0.1)
    assert cache.redis.client.exists(key), "L2 was not used again after Redis came back"  # type: ignore[union-attr]
    cache.memory.clear()
    assert cache.lookup(key).source == "l2"  # type: ignore[union-attr]
    assert not cache.redis.breaker.is_open  # type: ignore[union-attr]


def test_invalidation_while_redis_is_down_reaches_redis_when_it_is_back(
        keyring: Keyring, names: KeyBuilder, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "durable", durable=True).start()
    cache = make_cache(keyring=keyring, names=names, redis_url=server.url,
                       db=tmp_path / "cache.db", listen=True)
    try:
        key = names.key("answer", "tagged")
        cache.set(key, "old template answer", ttl=300, tags=["intent:HassTurnOn"])
        server.kill()  # the stale copy survives in the append-only file
        removed = cache.invalidate_tag("intent:HassTurnOn")
        assert removed["l1"] == 1 and removed["l2"] == 0  # L2 queued, not done
        assert cache.lookup(key) is None
        server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and cache.redis.client.exists(key):  # type: ignore[union-attr]
            time.sleep(0.05)
        assert not cache.redis.client.exists(key), "queued purge never reached Redis"  # type: ignore[union-attr]
        assert cache.pending_events == 0
    finally:
        cache.close()
        server.stop()


def test_sqlite_overwritten_with_garbage_is_quarantined(keyring: KeyBuilder, names: KeyBuilder,
                                                        redis_url: str, tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db)  # type: ignore[arg-type]
    key = names.key("answer", "before")
    cache.set(key, "kept in redis", ttl=300)
    cache.sqlite.flush()  # type: ignore[union-attr]
    # Garbage over the file and its WAL, as after a bad SD card write.
    for path in (db, Path(str(db) + "-wal")):
        if path.exists():
            path.write_bytes(b"\x13\x37garbage" * 4096)
    cache.memory.clear()
    cache.redis.client.flushall()  # type: ignore[union-attr]
    # The first read sees garbage: a miss, not an exception, and the file is moved aside.
    assert cache.lookup(key) is None
    answer = cache.get_or_compute(names.key("answer", "after"), lambda: "still answering",
                                  ttl=300)
    assert answer == "still answering"
    cache.sqlite.flush()  # type: ignore[union-attr]
    assert cache.sqlite.quarantined == 1  # type: ignore[union-attr]
    assert list(tmp_path.glob("cache.db.corrupt-*"))
    assert cache.sqlite.stats()["rows"] == 1  # type: ignore[union-attr]
    cache.close()


def test_garbage_file_at_start_is_quarantined(keyring: KeyBuilder, names: KeyBuilder,
                                              tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    db.write_bytes(b"this is not a database" * 100)
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db)  # type: ignore[arg-type]
    assert cache.sqlite.quarantined == 1  # type: ignore[union-attr]
    cache.set("v1:t:a", "works", ttl=60)
    cache.memory.clear()
    assert cache.get("v1:t:a") == "works"
    cache.close()


def test_forget_while_the_disk_is_locked_destroys_the_salt_first(
        keyring: Keyring, names: KeyBuilder, tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    key = names.key("gen", "hal's note")
    cache.set(key, "Hal's note", ttl=3600, user="hal")
    cache.sqlite.flush()  # type: ignore[union-attr]
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool holding the file
    try:
        counts = cache.forget_user("hal")
        assert counts["l3"] == 0 and counts["l1"] == 1
        assert cache.sqlite.get_salt(cache.ref_of("hal") or "") is None  # type: ignore[union-attr]
        assert cache.pending_events == 1  # the rows are still to go
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 10
    while cache.pending_events and time.monotonic() < deadline:
        time.sleep(0.05)  # the writer thread retries
    assert cache.pending_events == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM items WHERE user = ?",
                        (cache.ref_of("hal"),)).fetchone()[0] == 0
    conn.close()
    cache.close()


def test_calls_after_close_fail_cleanly_and_never_quarantine(
        keyring: Keyring, names: KeyBuilder, tmp_path: Path) -> None:
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=tmp_path / "cache.db")
    cache.set("v1:t:a", "x", ttl=60)
    cache.close()
    assert cache.sqlite is not None
    for call in (lambda: cache.sqlite.delete("v1:t:a"),  # type: ignore[union-attr]
                 lambda: cache.sqlite.invalidate_tag("t"),  # type: ignore[union-attr]
                 lambda: cache.sqlite.gc()):  # type: ignore[union-attr]
        with pytest.raises(TierUnavailable):
            call()
    assert cache.lookup("v1:t:b") is None  # a request still in flight gets a miss
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_purges_queued_while_redis_is_down_survive_a_restart(
        keyring: Keyring, names: KeyBuilder, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "durable", durable=True).start()
    db = tmp_path / "cache.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=server.url, db=db)
    key = names.key("answer", "stale")
    cache.set(key, "old answer", ttl=300, tags=["intent:HassGetWeather"])
    server.kill()
    cache.invalidate_tag("intent:HassGetWeather")
    assert cache.pending_events == 1
    cache.close()  # the service stops before Redis is back
    server.start()
    try:
        assert redis.Redis.from_url(server.url).exists(key)  # the stale copy is still there
        restarted = make_cache(keyring=keyring, names=names, redis_url=server.url, db=db)
        assert restarted.pending_events == 0
        assert not redis.Redis.from_url(server.url).exists(key)
        restarted.close()
    finally:
        server.stop()
