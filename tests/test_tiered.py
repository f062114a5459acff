"""The TieredCache over real tiers: promotion, single flight, errors, tamper, rotation."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

from cache import KeyBuilder, Keyring, MemoryTier, SqliteTier, TieredCache, maintenance
from tests.conftest import FakeClock, make_cache
from tests.servers import admin_url


def test_hit_is_promoted_with_its_remaining_ttl(tiered: TieredCache, clock: FakeClock,
                                                names: KeyBuilder) -> None:
    key = names.key("answer", "what time is it")
    tiered.set(key, "It is noon.", ttl=100)
    tiered.sqlite.flush()  # type: ignore[union-attr]
    clock.advance(40)
    tiered.memory.clear()
    found = tiered.lookup(key)
    assert found is not None and (found.value, found.source) == ("It is noon.", "l2")
    l1 = tiered.memory.get(key)
    assert l1 is not None and l1.expires_at == pytest.approx(clock() + 60)  # not a fresh 100
    assert tiered.lookup(key).source == "l1"  # type: ignore[union-attr]

    tiered.memory.clear()
    tiered.redis.delete(key)  # type: ignore[union-attr]
    found = tiered.lookup(key)
    assert found is not None and found.source == "l3"
    assert tiered.memory.get(key).expires_at == pytest.approx(clock() + 60)  # type: ignore[union-attr]
    # Not copied into Redis: this disk may hold what another node has just purged.
    assert tiered.redis.get(key) is None  # type: ignore[union-attr]
    clock.advance(61)
    tiered.memory.clear()
    assert tiered.lookup(key) is None


def test_promoted_item_keeps_its_tags(tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("answer", "lights on")
    tiered.set(key, "Done.", ttl=60, tags=["intent:HassTurnOn"])
    tiered.memory.clear()
    assert tiered.lookup(key).source == "l2"  # type: ignore[union-attr]
    tiered.memory.invalidate_tag("intent:HassTurnOn")
    assert tiered.memory.get(key) is None


def test_values_of_every_kind_round_trip_through_disk(tiered: TieredCache,
                                                      names: KeyBuilder) -> None:
    values = {"bytes": b"RIFF\x00\x01", "text": "Grüß dich 👋", "json": {"a": [1, 2.5, None]}}
    for name, value in values.items():
        tiered.set(names.key("t", name), value, ttl=60)
    tiered.memory.clear()
    tiered.redis.client.flushall()  # type: ignore[union-attr]
    for name, value in values.items():
        found = tiered.lookup(names.key("t", name))
        assert found is not None and found.source == "l3" and found.value == value


def test_sixteen_threads_one_missing_key_compute_once(tiered: TieredCache,
                                                      names: KeyBuilder) -> None:
    key = names.key("gen", "slow")
    calls = 0
    gate = threading.Barrier(16)

    def compute() -> str:
        nonlocal calls
        calls += 1
        time.sleep(0.2)  # long enough that every thread arrives while it runs
        return "computed once"

    results: list[str] = []

    def ask() -> None:
        gate.wait()
        results.append(tiered.get_or_compute(key, compute, ttl=60))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1
    assert results == ["computed once"] * 16


def test_compute_errors_are_raised_to_every_waiter_and_never_cached(
        tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("gen", "fails")
    started = threading.Event()
    release = threading.Event()

    def failing() -> str:
        started.set()
        release.wait(5)
        raise RuntimeError("model crashed")

    errors: list[BaseException] = []

    def ask() -> None:
        try:
            tiered.get_or_compute(key, failing, ttl=60)
        except RuntimeError as error:
            errors.append(error)

    leader = threading.Thread(target=ask)
    leader.start()
    started.wait(5)
    follower = threading.Thread(target=ask)
    follower.start()
    time.sleep(0.05)
    release.set()
    leader.join()
    follower.join()
    assert len(errors) == 2 and all(str(e) == "model crashed" for e in errors)
    assert tiered.lookup(key) is None
    assert tiered.redis.get(key) is None  # type: ignore[union-attr]
    assert tiered.get_or_compute(key, lambda: "recovered", ttl=60) == "recovered"


def test_fetch_reports_the_source(tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("answer", "source")
    assert tiered.fetch(key, lambda: "x", ttl=60).source == "computed"
    assert tiered.fetch(key, lambda: "y", ttl=60).source == "l1"


def _flip_stored_byte(db: Path, key: str, position: int) -> None:
    conn = sqlite3.connect(db)
    blob = bytearray(conn.execute("SELECT blob FROM items WHERE key = ?", (key,)).fetchone()[0])
    blob[position] ^= 0x01
    conn.execute("UPDATE items SET blob = ? WHERE key = ?", (bytes(blob), key))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("position", [2, 20, -1])  # nonce, ciphertext, tag
def test_flipped_byte_on_disk_is_a_miss_and_is_deleted(tiered: TieredCache, names: KeyBuilder,
                                                       tmp_path: Path, position: int) -> None:
    key = names.key("answer", "tamper")
    tiered.set(key, "original answer", ttl=60)
    tiered.sqlite.flush()  # type: ignore[union-attr]
    _flip_stored_byte(tmp_path / "cache.db", key, position)
    tiered.memory.clear()
    tiered.redis.delete(key)  # type: ignore[union-attr]
    assert tiered.lookup(key) is None
    assert tiered.metrics.value("cache_errors_total", tier="l3", kind="corrupt") == 1
    assert tiered.sqlite.get(key) is None  # type: ignore[union-attr]
    assert tiered.get_or_compute(key, lambda: "recomputed", ttl=60) == "recomputed"


def test_blob_copied_under_another_key_is_rejected(tiered: TieredCache,
                                                   names: KeyBuilder) -> None:
    secret, public = names.key("answer", "alice's diary"), names.key("answer", "weather")
    tiered.set(secret, "private words", ttl=60)
    client = tiered.redis.client  # type: ignore[union-attr]
    client.set(public, client.get(secret))
    tiered.memory.clear()
    assert tiered.lookup(public) is None
    assert tiered.metrics.value("cache_errors_total", tier="l2", kind="corrupt") == 1


def test_garbage_in_redis_is_a_miss(tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("answer", "garbage")
    tiered.redis.client.set(key, b"\xff" * 3)  # type: ignore[union-attr]
    assert tiered.lookup(key) is None
    tiered.redis.client.set(key, b"\x00" * 200)  # type: ignore[union-attr]
    assert tiered.lookup(key) is None


def test_rotation_reseals_disk_under_the_new_key(tmp_path: Path, redis_url: str,
                                                 names: KeyBuilder, clock: FakeClock) -> None:
    old = Keyring({1: b"a" * 32})
    cache = make_cache(keyring=old, names=names, redis_url=None, db=tmp_path / "r.db",
                       clock=clock)
    cache.set("v1:t:shared", "for everyone", ttl=60)
    cache.set("v1:t:mine", "for alice", ttl=60, user="alice")
    cache.close()
    new = Keyring({1: b"a" * 32, 2: b"b" * 32})
    cache = make_cache(keyring=new, names=names, redis_url=None, db=tmp_path / "r.db",
                       clock=clock)
    assert maintenance.rotate(cache) == 2
    conn = sqlite3.connect(tmp_path / "r.db")
    assert {row[0][1] for row in conn.execute("SELECT blob FROM items")} == {2}
    conn.close()
    cache.close()
    # Only the new key is needed to read them now.
    only_new = Keyring({2: b"b" * 32})
    cache = make_cache(keyring=only_new, names=names, redis_url=None, db=tmp_path / "r.db",
                       clock=clock)
    assert cache.get("v1:t:shared") == "for everyone"
    # A user's items are filed under a name derived from the oldest key, like every cache
    # key: retiring that key renames them with everything else (a miss, not an error).
    assert cache.get("v1:t:mine", user="alice") is None
    cache.close()


def test_blob_under_a_key_not_loaded_here_is_left_alone(tmp_path: Path, names: KeyBuilder,
                                                        clock: FakeClock) -> None:
    newer = make_cache(keyring=Keyring({1: b"a" * 32, 2: b"b" * 32}), names=names,
                       redis_url=None, db=tmp_path / "k.db", clock=clock)
    newer.set("v1:t:x", "sealed under 2", ttl=60)
    newer.close()
    older = make_cache(keyring=Keyring({1: b"a" * 32}), names=names, redis_url=None,
                       db=tmp_path / "k.db", clock=clock)
    assert older.lookup("v1:t:x") is None
    assert older.sqlite.get("v1:t:x") is not None  # type: ignore[union-attr]
    older.close()


def test_stats_reports_every_tier(tiered: TieredCache, names: KeyBuilder) -> None:
    tiered.get_or_compute(names.key("t", "s"), lambda: "v", ttl=60)
    tiered.get(names.key("t", "s"))
    tiered.sqlite.flush()  # type: ignore[union-attr]
    stats = maintenance.stats(tiered)
    assert stats["l1"]["entries"] == 1
    assert stats["l2"]["keys"] >= 1 and stats["l2"]["breaker_open"] is False
    assert stats["l3"]["rows"] == 1
    requests = stats["metrics"]["cache_requests_total"]
    assert requests["result=hit,tier=l1"] == 1
    assert requests["result=miss,tier=l3"] == 1
    assert stats["metrics"]["cache_computes_total"]["-"] == 1


def test_keys_and_tags_in_redis_reveal_no_text(tiered: TieredCache, names: KeyBuilder,
                                               redis_url: str) -> None:
    key = names.key("gen", "tell me about my sister Margaret")
    tiered.set(key, "Margaret is visiting on Friday", ttl=60, tags=["intent:Family"],
               user="margaret-brother")
    client = redis.Redis.from_url(redis_url)
    dump = b" ".join(client.scan_iter()) + b" ".join(
        client.dump(k) or b"" for k in client.scan_iter())
    for word in (b"Margaret", b"sister", b"Family", b"margaret-brother", b"Friday"):
        assert word not in dump
    assert all(k.startswith(b"v1:") for k in client.scan_iter())



def test_copy_read_before_a_purge_is_not_promoted_after_it(
        tiered: TieredCache, names: KeyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    key = names.key("answer", "race")
    tiered.set(key, "old", ttl=60, tags=["intent:HassTurnOn"])
    tiered.memory.clear()
    real_get = tiered.redis.get  # type: ignore[union-attr]

    def read_then_purge(k: str):  # type: ignore[no-untyped-def]
        record = real_get(k)  # the reader got the old copy from Redis...
        tiered.invalidate_tag("intent:HassTurnOn")  # ...then a purge ran before it promoted
        return record

    monkeypatch.setattr(tiered.redis, "get", read_then_purge)
    tiered.lookup(key)
    monkeypatch.undo()
    assert tiered.memory.get(key) is None
    assert tiered.lookup(key) is None


def test_value_computed_across_a_purge_is_returned_but_not_stored(
        tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("answer", "computed across purge")

    def compute() -> str:
        tiered.invalidate_tag("entities")  # e.g. the entity registry changed meanwhile
        return "from old entities"

    assert tiered.get_or_compute(key, compute, ttl=60, tags=["entities"]) == "from old entities"
    assert tiered.lookup(key) is None
    assert tiered.get_or_compute(key, lambda: "fresh", ttl=60, tags=["entities"]) == "fresh"
    assert tiered.lookup(key).value == "fresh"  # type: ignore[union-attr]


def test_json_values_from_memory_cannot_be_changed_by_callers(tiered: TieredCache,
                                                              names: KeyBuilder) -> None:
    key = names.key("answer", "plan")
    tiered.set(key, {"fragments": ["a", "b"]}, ttl=60)
    got = tiered.get(key)
    got["fragments"].append("mutated")
    assert tiered.get(key) == {"fragments": ["a", "b"]}
    assert tiered.lookup(key).value == {"fragments": ["a", "b"]}  # type: ignore[union-attr]


def test_a_user_tag_purge_reaches_memory_too(tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("gen", "fay's question")
    tiered.set(key, "fay's answer", ttl=60, user="fay")
    counts = tiered.invalidate_tag("user:fay")
    assert counts["l1"] == 1 and counts["l2"] == 1 and counts["l3"] == 1
    assert tiered.lookup(key, user="fay") is None


def test_rotation_keeps_the_disk_byte_total_exact(tmp_path: Path, names: KeyBuilder,
                                                   clock: FakeClock) -> None:
    cache = make_cache(keyring=Keyring({1: b"a" * 32}), names=names, redis_url=None,
                       db=tmp_path / "r.db", clock=clock)
    for i in range(20):
        cache.set(f"v1:t:{i}", "x" * (100 * i), ttl=60)
    cache.close()
    cache = TieredCache(keyring=Keyring({1: b"a" * 32, 2: b"b" * 32}),
                        memory=MemoryTier(1 << 20, clock=clock),
                        sqlite_tier=SqliteTier(tmp_path / "r.db", clock=clock),
                        clock=clock, compress_min_bytes=0, listen=False).start()
    assert maintenance.rotate(cache) == 20  # now compressed as well as re-encrypted: sizes change
    conn = sqlite3.connect(tmp_path / "r.db")
    actual = conn.execute("SELECT sum(length(blob)), sum(size) FROM items").fetchone()
    conn.close()
    assert actual[0] == actual[1] == cache.sqlite.stats()["bytes"]  # type: ignore[union-attr]
    cache.close()


def test_an_item_can_be_kept_out_of_redis_or_off_disk(tiered: TieredCache, names: KeyBuilder,
                                                       redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    local, volatile = names.key("kv", "local"), names.key("kv", "volatile")
    tiered.set(local, b"state" * 100, ttl=60, redis=False)
    tiered.set(volatile, b"big" * 100, ttl=60, redis=False, disk=False)
    assert raw.exists(local) == 0 and raw.exists(volatile) == 0
    assert tiered.sqlite is not None
    tiered.sqlite.flush()
    assert tiered.sqlite.get(local) is not None and tiered.sqlite.get(volatile) is None
    tiered.memory.clear()
    found = tiered.lookup(local, redis=False)
    assert found is not None and found.source == "l3" and found.value == b"state" * 100
    assert tiered.lookup(volatile, redis=False) is None
    raw.close()


def test_item_reads_from_many_threads_never_mix_replies(redis_url: str, names: KeyBuilder,
                                                        keyring: Keyring) -> None:
    from tests.conftest import make_redis_tier

    tier = make_redis_tier(redis_url, names)
    cache = TieredCache(keyring=keyring, memory=MemoryTier(1024 * 1024), redis_tier=tier,
                        listen=False).start()
    keys = [names.key("mix", i) for i in range(64)]
    for i, key in enumerate(keys):
        cache.set(key, f"value {i} " * (i + 1), ttl=60)
    raw = redis.Redis.from_url(admin_url(redis_url))  # CLIENT LIST is not the assistant's
    before = len(raw.client_list())
    wrong: list[str] = []

    def read(offset: int) -> None:
        for n in range(400):
            i = (offset * 7 + n) % len(keys)
            cache.memory.delete(keys[i])
            found = cache.lookup(keys[i])
            if found is None or found.value != f"value {i} " * (i + 1):
                wrong.append(keys[i])

    threads = [threading.Thread(target=read, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(raw.client_list()) >= before + 8  # one held reading connection per thread
    cache.close()
    deadline = time.monotonic() + 5
    while len(raw.client_list()) > before - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(raw.client_list()) <= before - 1  # all of them closed with the cache
    raw.close()


def test_a_held_read_connection_closed_by_the_server_reconnects(redis_url: str,
                                                                names: KeyBuilder,
                                                                keyring: Keyring) -> None:
    from tests.conftest import make_redis_tier

    tier = make_redis_tier(redis_url, names)
    cache = TieredCache(keyring=keyring, memory=MemoryTier(1024 * 1024), redis_tier=tier,
                        listen=False).start()
    key = names.key("held", 1)
    cache.set(key, "still here", ttl=60)
    cache.memory.clear()
    assert cache.lookup(key) is not None  # the read connection is now held
    raw = redis.Redis.from_url(admin_url(redis_url))
    raw.client_kill_filter(_type="normal", skipme=True)  # as a restart or idle timeout would
    cache.memory.clear()
    found = cache.lookup(key)
    assert found is not None and (found.source, found.value) == ("l2", "still here")
    assert tier.breaker._failures == 0  # not counted as a failure of Redis
    cache.close()
    raw.close()


def test_the_metrics_say_what_the_memory_tier_holds(tiered: TieredCache,
                                                    names: KeyBuilder) -> None:
    assert tiered.metrics.value("cache_memory_items") == 0
    for n in range(3):
        tiered.set(names.key("answer", f"held {n}"), "x" * 1000, ttl=60)
    assert tiered.metrics.value("cache_memory_items") == 3
    held = tiered.metrics.value("cache_memory_bytes")
    assert held == tiered.memory.bytes_used and held >= 3000
    tiered.memory.clear()
    assert tiered.metrics.value("cache_memory_bytes") == 0


def test_values_too_large_for_memory_are_kept_on_disk_only(
        keyring: Keyring, names: KeyBuilder, redis_url: str, tmp_path: Path) -> None:
    from cache import PolicyBook, PrivacyPolicy

    policies = PolicyBook(users={"guest": PrivacyPolicy(max_ttl=600, persist=False)})
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "cache.db", policies=policies)
    cache.memory_max_item = 1000
    try:
        small, large, guests = (names.key("state", n) for n in ("small", "large", "guest's"))
        cache.set(large, "old and small", ttl=60, redis=False)
        cache.set(small, "s" * 100, ttl=60, redis=False)
        cache.set(large, "L" * 5000, ttl=60, redis=False)
        cache.set(guests, "G" * 5000, ttl=60, redis=False, user="guest")
        assert cache.lookup(small).source == "l1"  # type: ignore[union-attr]
        for _ in range(2):  # read from disk every time, never the older copy in memory
            found = cache.lookup(large)
            assert found is not None and found.source == "l3" and found.value == "L" * 5000
        assert cache.memory.get(large) is None
        # Where the disk may not keep it, memory does.
        assert cache.lookup(guests, user="guest").source == "l1"  # type: ignore[union-attr]
        cache.set(names.key("state", "tagged"), "T" * 5000, ttl=60, tags=["model"], redis=False)
        cache.invalidate_tag("model")
        assert cache.lookup(names.key("state", "tagged")) is None
    finally:
        cache.close()


def test_a_large_value_kept_on_disk_leaves_a_compute_in_flight_alone(
        tiered: TieredCache, names: KeyBuilder) -> None:
    """A generated answer saves its model's state (large, kept on disk) while it is being
    computed: the answer is stored all the same, as after any other write."""
    tiered.memory_max_item = 1000
    key = names.key("answer", "capital of France")

    def compute() -> str:
        tiered.set(names.key("state", "prefix"), "B" * 5000, ttl=60, redis=False)
        return "Paris."

    assert tiered.get_or_compute(key, compute, ttl=60) == "Paris."
    assert tiered.lookup(key).source == "l1"  # type: ignore[union-attr]
    tiered.memory.clear()
    assert tiered.lookup(key).source == "l2"  # type: ignore[union-attr]


def test_a_large_value_stays_below_wherever_it_was_written(
        tiered: TieredCache, names: KeyBuilder) -> None:
    """Written to Redis too, a large value is read from Redis and not promoted; with the disk
    down (its write skipped) and no Redis for it, memory keeps it after all."""
    tiered.memory_max_item = 1000
    shared, local = names.key("speech", "long"), names.key("state", "disk down")
    tiered.set(shared, "S" * 5000, ttl=60)
    for _ in range(2):
        assert tiered.lookup(shared).source == "l2"  # type: ignore[union-attr]
    assert tiered.sqlite is not None
    tiered.sqlite.close()
    tiered.set(local, "D" * 5000, ttl=60, redis=False)
    assert tiered.lookup(local).source == "l1"  # type: ignore[union-attr]


def test_a_leader_finds_a_large_value_another_just_queued_for_disk(
        tiered: TieredCache, names: KeyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its read below missed just before the previous leader stored (on disk only, too large
    for memory): it takes that value rather than computing it again."""
    tiered.memory_max_item = 1000
    key = names.key("state", "raced")
    tiered.set(key, "R" * 5000, ttl=60, redis=False)
    monkeypatch.setattr(tiered, "_below", lambda *args: (None, None))  # the raced miss
    found = tiered.fetch(key, lambda: pytest.fail("computed again"), ttl=60, redis=False)
    assert found.value == "R" * 5000 and found.source == "l3"
