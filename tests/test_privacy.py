"""Privacy: TTL caps, nothing on disk for users who forbid it, and forgetting for real."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import redis

from cache import KeyBuilder, Keyring, PolicyBook, PrivacyPolicy
from tests.conftest import FakeClock, make_cache

POLICIES = PolicyBook(
    default=PrivacyPolicy(max_ttl=3600, persist=True),
    users={"guest": PrivacyPolicy(max_ttl=10, persist=False, private=True)},
)


def _disk_bytes(db: Path) -> bytes:
    """Everything on disk next to the database: file, WAL, shared memory."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")) if p.is_file())


def test_user_ttl_caps_every_tier(keyring: Keyring, names: KeyBuilder, redis_url: str,
                                  tmp_path: Path, clock: FakeClock) -> None:
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=tmp_path / "c.db",
                       clock=clock, policies=POLICIES)
    key = names.key("gen", "guest question")
    cache.set(key, "guest answer", ttl=86400, user="guest")
    ttl_ms = redis.Redis.from_url(redis_url).pttl(key)
    assert 0 < ttl_ms <= 10_000
    assert cache.memory.get(key).expires_at <= clock() + 10  # type: ignore[union-attr]
    clock.advance(11)
    assert cache.lookup(key, user="guest") is None
    # A shared item is not capped by the guest's policy.
    cache.set(names.key("gen", "weather"), "sunny", ttl=86400)
    clock.advance(100)
    assert cache.get(names.key("gen", "weather")) == "sunny"
    cache.close()


def test_policy_tightened_after_storing_applies_at_start(keyring: Keyring, names: KeyBuilder,
                                                         tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "c.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db, clock=clock)
    cache.set("v1:t:bob", "kept a day", ttl=86400, user="bob")
    cache.set("v1:t:carol", "kept a day", ttl=86400, user="carol")
    cache.set("v1:t:dan", "kept a day", ttl=86400, user="dan")
    cache.set("v1:t:shared", "kept a day", ttl=86400)
    cache.close()
    strict = PolicyBook(
        default=PrivacyPolicy(max_ttl=120),
        users={"bob": PrivacyPolicy(max_ttl=60, persist=False),
               "carol": PrivacyPolicy(max_ttl=60)},
    )
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db, clock=clock,
                       policies=strict)
    conn = sqlite3.connect(db)
    rows = dict(conn.execute("SELECT user, expires_at FROM items"))
    conn.close()
    bob, carol, dan = (cache.ref_of(u) for u in ("bob", "carol", "dan"))
    assert bob not in rows  # no longer allowed on disk: gone before anything is served
    assert rows[carol] == clock() + 60 and rows[dan] == clock() + 120
    assert rows[None] == clock() + 86400  # shared items keep their TTL
    clock.advance(61)
    assert cache.get("v1:t:carol", user="carol") is None
    assert cache.get("v1:t:dan", user="dan") == "kept a day"
    cache.close()


def test_persist_false_never_reaches_disk(keyring: Keyring, names: KeyBuilder, redis_url: str,
                                          tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "c.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db, clock=clock,
                       policies=POLICIES)
    for i in range(20):
        cache.get_or_compute(names.key("gen", f"guest {i}"), lambda i=i: f"guest secret {i}",
                             ttl=5, user="guest")
    cache.set(names.key("gen", "shared"), "shared answer", ttl=60)
    # Promotion from Redis must not write to disk either.
    cache.memory.clear()
    assert cache.get(names.key("gen", "guest 3"), user="guest") == "guest secret 3"
    cache.sqlite.flush()  # type: ignore[union-attr]
    conn = sqlite3.connect(db)
    users = [row[0] for row in conn.execute("SELECT user FROM items")]
    conn.close()
    assert users == [None]  # only the shared item
    cache.close()


def test_forget_leaves_nothing_readable_on_disk(keyring: Keyring, names: KeyBuilder,
                                                redis_url: str, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db)
    secret = "Alice's appointment with Dr. Okafor is on the 14th"
    alice_keys = [names.key("gen", f"alice {i}") for i in range(50)]
    for i, key in enumerate(alice_keys):
        cache.set(key, f"{secret} #{i}", ttl=3600, user="alice", tags=["intent:Calendar"])
    cache.set(names.key("gen", "bob"), "Bob's answer", ttl=3600, user="bob")
    cache.set(names.key("gen", "shared"), "It is sunny", ttl=3600)
    cache.sqlite.flush()  # type: ignore[union-attr]
    blobs = [cache.sqlite.get(k).payload for k in alice_keys]  # type: ignore[union-attr]
    salt = cache.sqlite.get_salt(cache.ref_of("alice") or "")  # type: ignore[union-attr]
    assert salt is not None
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)  # a copy taken before the forget (its WAL content included below)
    shutil.copy(Path(str(db) + "-wal"), Path(str(backup) + "-wal"))
    on_disk = _disk_bytes(db)
    assert any(blob[16:48] in on_disk for blob in blobs), "test premise: blobs were on disk"

    removed = cache.forget_user("alice")
    assert removed["l1"] == 50 and removed["l2"] == 50 and removed["l3"] == 50

    on_disk = _disk_bytes(db) + b"".join(p.read_bytes() for p in tmp_path.glob("c-salts.db*"))
    assert secret.encode() not in on_disk
    assert b"Okafor" not in on_disk
    for blob in blobs:
        assert blob[16:48] not in on_disk  # not even the ciphertext is left in file or WAL
    assert salt not in on_disk
    # Nothing of hers is served, from any tier, by this process or a fresh one.
    for key in alice_keys:
        assert cache.lookup(key, user="alice") is None
    assert cache.get(names.key("gen", "bob"), user="bob") == "Bob's answer"
    cache.close()
    fresh = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db)
    assert fresh.lookup(alice_keys[0], user="alice") is None
    fresh.close()

    # The backup copy still holds her ciphertext, but without her salt it can't be opened;
    # the shared item in the same backup still can (the keys themselves are fine).
    shutil.copy(backup, db)
    shutil.copy(Path(str(backup) + "-wal"), Path(str(db) + "-wal"))
    restored = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    assert restored.sqlite.get(alice_keys[0]) is not None  # type: ignore[union-attr]
    assert restored.lookup(alice_keys[0], user="alice") is None
    assert restored.get(names.key("gen", "shared")) == "It is sunny"
    restored.close()


def test_forget_reaches_items_still_queued_for_disk(keyring: Keyring, names: KeyBuilder,
                                                    tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    cache.set("v1:t:q", "queued, not yet written", ttl=3600, user="carol")
    cache.forget_user("carol")
    cache.close()
    reopened = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    assert reopened.sqlite.stats()["rows"] == 0  # type: ignore[union-attr]
    reopened.close()


def test_private_policy_scopes_shareable_items_per_user() -> None:
    assert POLICIES.scope("shared", "guest") == "user:guest"
    assert POLICIES.scope("shared", "alice") == "shared"
    assert POLICIES.scope("user", "alice") == "user:alice"
