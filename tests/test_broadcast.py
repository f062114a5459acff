"""Invalidation across OS processes that share one Redis, each with its own L1 and L3."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cache import KeyBuilder, Keyring, TieredCache
from tests import helpers
from tests.conftest import make_cache

ROOT = Path(__file__).resolve().parent.parent


def cache_peer(redis_url: str, db: Path) -> helpers.Peer:
    """The other process: a TieredCache of its own over the same Redis."""
    return helpers.Peer("tests.peer", redis_url, str(db))


@pytest.fixture
def peer_db(tmp_path: Path) -> Path:
    return tmp_path / "peer" / "cache.db"


@pytest.fixture
def peer(redis_url: str, peer_db: Path) -> Iterator[helpers.Peer]:
    p = cache_peer(redis_url, peer_db)
    yield p
    p.close()


@pytest.fixture
def here(keyring: Keyring, names: KeyBuilder, redis_url: str,
         tmp_path: Path) -> Iterator[TieredCache]:
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "here.db", listen=True)
    yield cache
    cache.close()


def _until(condition: Any) -> None:
    helpers.until(condition, timeout=5.0)


def test_tag_purge_reaches_the_other_process(here: TieredCache, peer: helpers.Peer,
                                             names: KeyBuilder) -> None:
    on, off = names.key("answer", "turn on"), names.key("answer", "turn off")
    assert peer.ask("set", on, "Turned on.", ["intent:HassTurnOn"], None) is True
    assert peer.ask("set", off, "Turned off.", ["intent:HassTurnOff"], None) is True
    assert here.get(on) == "Turned on."  # this process sees it through Redis
    assert peer.ask("l1", on) is True

    here.invalidate_tag("intent:HassTurnOn")
    _until(lambda: peer.ask("l1", on) is False)
    assert peer.ask("get", on, None) is None  # gone from its L1, from Redis and from its L3
    assert peer.ask("get", off, None) == ["Turned off.", "l1"]  # the other intent is untouched
    assert here.lookup(on) is None


def test_forget_reaches_the_other_process(here: TieredCache, peer: helpers.Peer,
                                          names: KeyBuilder) -> None:
    key = names.key("gen", "dave's reminder")
    assert peer.ask("set", key, "Dave: dentist at 3", [], "dave") is True
    assert here.get(key, user="dave") == "Dave: dentist at 3"
    here.forget_user("dave")
    _until(lambda: peer.ask("l1", key) is False)
    assert peer.ask("get", key, "dave") is None


def test_a_stopped_process_catches_up_when_it_starts(here: TieredCache, redis_url: str,
                                                     peer_db: Path, names: KeyBuilder) -> None:
    key = names.key("answer", "lights")
    first = cache_peer(redis_url, peer_db)
    assert first.ask("set", key, "Old template answer", ["template:light.yaml"], None) is True
    first.close()
    here.invalidate_tag("template:light.yaml")  # while the peer is not running
    # Redis is emptied of the item too, so only the peer's own disk could still serve it.
    second = cache_peer(redis_url, peer_db)
    try:
        assert second.ask("get", key, None) is None
    finally:
        second.close()


def test_a_compute_racing_a_purge_elsewhere_is_not_stored(here: TieredCache, keyring: Keyring,
                                                          names: KeyBuilder, redis_url: str,
                                                          tmp_path: Path) -> None:
    there = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "there.db")  # another node, no listener: sees no events
    key = names.key("answer", "is the kitchen light on")

    def compute_while_state_changes() -> str:
        answer = "It is off."  # read from the registry before the change...
        here.invalidate_tag("entity:light.kitchen")  # ...which another node now announces
        return answer

    result = there.fetch(key, compute_while_state_changes, ttl=600,
                         tags=["entity:light.kitchen"])
    assert result.value == "It is off." and result.source == "computed"  # answered once
    assert there.redis.get(key) is None  # type: ignore[union-attr]  # but not shared
    assert here.lookup(key) is None and there.lookup(key) is None
    assert there.metrics.value("cache_errors_total", tier="l2", kind="purged_meanwhile") == 1
    there.close()


def test_a_forgotten_users_salt_on_another_disk_is_not_published_again(
        keyring: Keyring, names: KeyBuilder, redis_url: str, tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    b = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db)
    key = names.key("gen", "gus's reminder")
    b.set(key, "Gus: pills at 8", ttl=3600, user="gus")
    gus = b.ref_of("gus") or ""
    old_salt = b.sqlite.get_salt(gus)  # type: ignore[union-attr]
    b.close()  # node B is down while the forget happens (and misses the event)

    a = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=tmp_path / "a.db")
    a.forget_user("gus")
    a.close()

    b = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db)  # no listener
    assert b.lookup(key, user="gus") is None
    salts = redis.Redis.from_url(redis_url).hgetall("v1:salts")
    assert old_salt not in salts.values()  # not put back for others to use
    assert b.sqlite.get_salt(gus) != old_salt  # type: ignore[union-attr]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM items WHERE user = ?", (gus,)).fetchone()[0] == 0
    conn.close()
    b.close()
