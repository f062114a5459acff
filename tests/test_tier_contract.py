"""One contract, every tier: L1, L2 (real redis-server), L3 (real sqlite file), and the TieredCache.

Expiry is driven by an injected clock, so nothing here sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import KeyBuilder, Keyring, MemoryTier, Record, SqliteTier, TieredCache
from tests.conftest import FakeClock, make_cache, make_redis_tier

TIERS = ["l1", "l2", "l3", "tiered"]


class TieredAsTier:
    """The TieredCache seen through the tier contract (values are the payloads)."""

    name = "tiered"

    def __init__(self, cache: TieredCache, clock: FakeClock) -> None:
        self.cache = cache
        self.clock = clock
        self.users: dict[str, str | None] = {}

    def get(self, key: str) -> Record | None:
        found = self.cache.lookup(key, user=self.users.get(key))
        return None if found is None else Record(found.value, 0.0)

    def set(self, key: str, record: Record) -> None:
        self.users[key] = record.user
        self.cache.set(key, record.payload, ttl=record.expires_at - self.clock(),
                       tags=record.tags, user=record.user)

    def delete(self, key: str) -> bool:
        existed = self.get(key) is not None
        self.cache.delete(key)
        return existed

    def invalidate_tag(self, tag: str) -> int:
        return sum(self.cache.invalidate_tag(tag).values())

    def forget_user(self, user: str) -> int:
        return sum(self.cache.forget_user(user).values())

    def close(self) -> None:
        self.cache.close()


Factory = Callable[[], Any]


@pytest.fixture(params=TIERS)
def tier_factory(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock,
                 redis_url: str, keyring: Keyring, names: KeyBuilder) -> Iterator[Factory]:
    """Makes empty tiers of one kind; closes them at the end."""
    made: list[Any] = []
    counter = itertools.count()

    def make() -> Any:
        n = next(counter)
        tier: Any
        if request.param == "l1":
            tier = MemoryTier(1 << 20, clock=clock)
        elif request.param == "l2":
            redis.Redis.from_url(redis_url).flushall()
            tier = make_redis_tier(redis_url, names, clock)
        elif request.param == "l3":
            tier = SqliteTier(tmp_path / f"c{n}.db", clock=clock, flush_interval=0.01).start()
        else:
            redis.Redis.from_url(redis_url).flushall()
            tier = TieredAsTier(make_cache(keyring=keyring, names=names, redis_url=redis_url,
                                           db=tmp_path / f"t{n}.db", clock=clock), clock)
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.close()


@pytest.fixture
def tier(tier_factory: Factory) -> Any:
    return tier_factory()


def rec(payload: bytes, clock: FakeClock, ttl: float = 60, tags: tuple[str, ...] = (),
        user: str | None = None) -> Record:
    return Record(payload, clock() + ttl, tags, user, len(payload))


def test_missing_key_is_none(tier: Any) -> None:
    assert tier.get("v1:t:missing") is None


def test_set_then_get_returns_the_payload(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:a", rec(b"alpha", clock))
    found = tier.get("v1:t:a")
    assert found is not None and found.payload == b"alpha"


def test_overwrite_replaces(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:a", rec(b"one", clock))
    tier.set("v1:t:a", rec(b"two", clock))
    assert tier.get("v1:t:a").payload == b"two"


def test_expiry_follows_the_clock(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:a", rec(b"x", clock, ttl=10))
    clock.advance(9.5)
    assert tier.get("v1:t:a") is not None
    clock.advance(1)
    assert tier.get("v1:t:a") is None


def test_expired_record_is_not_stored(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:a", rec(b"x", clock, ttl=-1))
    assert tier.get("v1:t:a") is None


def test_delete(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:a", rec(b"x", clock))
    assert tier.delete("v1:t:a") is True
    assert tier.get("v1:t:a") is None
    assert tier.delete("v1:t:a") is False


def test_invalidate_tag_removes_exactly_the_tagged(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:a", rec(b"a", clock, tags=("intent:On",)))
    tier.set("v1:t:b", rec(b"b", clock, tags=("intent:On", "template:x.yaml")))
    tier.set("v1:t:c", rec(b"c", clock, tags=("intent:Off",)))
    assert tier.invalidate_tag("intent:On") >= 2
    assert tier.get("v1:t:a") is None and tier.get("v1:t:b") is None
    assert tier.get("v1:t:c").payload == b"c"
    tier.set("v1:t:a", rec(b"again", clock, tags=("intent:On",)))
    assert tier.get("v1:t:a").payload == b"again"


def test_forget_user_removes_only_theirs(tier: Any, clock: FakeClock) -> None:
    tier.set("v1:t:alice", rec(b"a", clock, user="alice"))
    tier.set("v1:t:bob", rec(b"b", clock, user="bob"))
    tier.set("v1:t:shared", rec(b"s", clock))
    assert tier.forget_user("alice") >= 1
    assert tier.get("v1:t:alice") is None
    assert tier.get("v1:t:bob").payload == b"b"
    assert tier.get("v1:t:shared").payload == b"s"


KEYS = st.sampled_from([f"v1:t:{c}" for c in "abcd"])
TAGS = st.sampled_from(["intent:On", "intent:Off", "template:a.yaml"])
USERS = st.sampled_from([None, "alice", "bob"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.binary(min_size=1, max_size=40),
                  st.integers(1, 30), st.lists(TAGS, max_size=2, unique=True), USERS),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("tag"), TAGS),
        st.tuples(st.just("forget"), st.sampled_from(["alice", "bob"])),
        st.tuples(st.just("advance"), st.integers(1, 20)),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_sequence_agrees_with_a_model(tier_factory: Factory, clock: FakeClock,
                                          ops: list[tuple[Any, ...]]) -> None:
    """Random operations give the same visible state as a plain dict model."""
    tier = tier_factory()
    model: dict[str, tuple[bytes, float, tuple[str, ...], str | None]] = {}
    for op in ops:
        if op[0] == "set":
            _, key, payload, ttl, tags, user = op
            tier.set(key, rec(payload, clock, ttl, tuple(tags), user))
            model[key] = (payload, clock() + ttl, tuple(tags), user)
        elif op[0] == "delete":
            tier.delete(op[1])
            model.pop(op[1], None)
        elif op[0] == "tag":
            tier.invalidate_tag(op[1])
            model = {k: v for k, v in model.items() if op[1] not in v[2]}
        elif op[0] == "forget":
            tier.forget_user(op[1])
            model = {k: v for k, v in model.items() if v[3] != op[1]}
        else:
            clock.advance(op[1])
        for key in ("v1:t:a", "v1:t:b", "v1:t:c", "v1:t:d"):
            entry = model.get(key)
            expected = entry[0] if entry is not None and entry[1] > clock() else None
            found = tier.get(key)
            assert (None if found is None else found.payload) == expected, (op, key)
