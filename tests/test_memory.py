"""L1 specifics beyond the tier contract: the byte budget, LRU order, index hygiene, threads."""

from __future__ import annotations

import random
import threading

from cache import MemoryTier, Record
from cache.tiers.memory import ENTRY_OVERHEAD
from tests.conftest import FakeClock


def record(clock: FakeClock, *, size: int = 100, ttl: float = 3600.0, tags: tuple[str, ...] = (),
           user: str | None = None, payload: object = b"x") -> Record:
    return Record(payload=payload, expires_at=clock() + ttl, tags=tags, user=user, size=size)


def live_keys(tier: MemoryTier) -> set[str]:
    """The keys the store holds and has not seen expire (iterating does not reorder)."""
    return set(tier._store)


def assert_indexes_match(tier: MemoryTier, written: dict[str, Record]) -> None:
    """The tag and user indexes hold exactly the live keys, under exactly their tags and user."""
    live = live_keys(tier)
    expected_tags: dict[str, set[str]] = {}
    expected_users: dict[str, set[str]] = {}
    for key in live:
        for tag in written[key].tags:
            expected_tags.setdefault(tag, set()).add(key)
        user = written[key].user
        if user is not None:
            expected_users.setdefault(user, set()).add(key)
    assert tier._by_tag == expected_tags
    assert tier._by_user == expected_users


# ---------------------------------------------------------------- budget


def test_stays_within_budget_after_writing_ten_times_it(clock: FakeClock) -> None:
    tier = MemoryTier(10_000, clock=clock)
    charged: dict[str, int] = {}
    writes = 0
    total = 0
    while total < 10 * tier.max_bytes:
        key = f"k{writes}"
        size = (writes * 37) % 900 + 1
        tier.set(key, record(clock, size=size))
        charged[key] = size + ENTRY_OVERHEAD
        total += charged[key]
        writes += 1
        assert tier.bytes_used <= tier.max_bytes
    live = live_keys(tier)
    assert 0 < len(live) < writes
    assert tier.bytes_used == sum(charged[key] for key in live)
    assert tier.evictions == writes - len(tier)
    assert tier.evictions > 0


def test_overwriting_a_key_charges_it_once(clock: FakeClock) -> None:
    tier = MemoryTier(10_000, clock=clock)
    for size in (100, 500, 50, 2000):
        tier.set("k", record(clock, size=size))
        assert tier.bytes_used == size + ENTRY_OVERHEAD
    assert len(tier) == 1
    assert tier.evictions == 0


def test_lru_order(clock: FakeClock) -> None:
    tier = MemoryTier(3 * (100 + ENTRY_OVERHEAD), clock=clock)  # room for exactly three
    for key in "abc":
        tier.set(key, record(clock, payload=key))
    assert live_keys(tier) == {"a", "b", "c"}
    found = tier.get("a")  # a is now the most recently used; b the least
    assert found is not None
    assert found.payload == "a"

    tier.set("d", record(clock, payload="d"))
    assert live_keys(tier) == {"a", "c", "d"}
    assert tier.get("b") is None
    assert tier.evictions == 1

    tier.set("e", record(clock, payload="e"))  # c is now the least recently used
    assert live_keys(tier) == {"a", "d", "e"}
    assert tier.evictions == 2


def test_rewriting_a_key_makes_it_recent(clock: FakeClock) -> None:
    tier = MemoryTier(3 * (100 + ENTRY_OVERHEAD), clock=clock)
    for key in "abc":
        tier.set(key, record(clock))
    tier.set("a", record(clock))
    tier.set("d", record(clock))
    assert live_keys(tier) == {"a", "c", "d"}


def test_item_larger_than_the_budget_is_not_stored(clock: FakeClock) -> None:
    budget = 3 * (100 + ENTRY_OVERHEAD)
    tier = MemoryTier(budget, clock=clock)
    tier.set("a", record(clock))
    tier.set("b", record(clock))
    used = tier.bytes_used

    tier.set("big", record(clock, size=budget))
    assert tier.get("big") is None
    assert live_keys(tier) == {"a", "b"}
    assert tier.bytes_used == used
    assert tier.evictions == 0


def test_too_large_rewrite_drops_the_stale_value(clock: FakeClock) -> None:
    budget = 3 * (100 + ENTRY_OVERHEAD)
    tier = MemoryTier(budget, clock=clock)
    tier.set("a", record(clock, payload="old"))
    tier.set("b", record(clock))
    tier.set("a", record(clock, size=budget, payload="new"))
    assert tier.get("a") is None  # neither the new value (too big) nor the old one (stale)
    assert live_keys(tier) == {"b"}
    assert tier.evictions == 0


def test_item_of_exactly_the_budget_is_stored(clock: FakeClock) -> None:
    budget = 3 * (100 + ENTRY_OVERHEAD)
    tier = MemoryTier(budget, clock=clock)
    tier.set("a", record(clock))
    tier.set("whole", record(clock, size=budget - ENTRY_OVERHEAD))
    assert live_keys(tier) == {"whole"}
    assert tier.bytes_used == budget
    assert tier.evictions == 1


def test_expired_items_leave_the_budget(clock: FakeClock) -> None:
    tier = MemoryTier(10_000, clock=clock)
    tier.set("short", record(clock, ttl=5, size=1000))
    tier.set("long", record(clock, ttl=500, size=1000))
    clock.advance(10)
    assert tier.get("short") is None
    assert tier.bytes_used == 1000 + ENTRY_OVERHEAD
    assert len(tier) == 1
    assert tier.evictions == 0  # expiry is not eviction


# ---------------------------------------------------------------- indexes


def test_indexes_do_not_leak_through_evictions_and_expiries(clock: FakeClock) -> None:
    tier = MemoryTier(20 * (100 + ENTRY_OVERHEAD), clock=clock)
    written: dict[str, Record] = {}
    for i in range(300):
        key = f"k{i}"
        user = "early" if i < 50 else (None if i % 4 == 0 else f"u{i % 3}")
        written[key] = record(
            clock,
            ttl=5 if i % 3 == 0 else 3600,
            tags=(f"batch:{i // 50}", f"item:{i}", "all"),
            user=user,
        )
        tier.set(key, written[key])
        if i % 10 == 9:
            clock.advance(2)
        assert tier.bytes_used <= tier.max_bytes
        assert_indexes_match(tier, written)
    assert tier.evictions > 0

    live = live_keys(tier)
    assert live
    assert all(int(key[1:]) >= 250 for key in live)
    assert len(tier._by_tag) <= 2 + len(live)  # "all", the live batch, one per live item
    for gone in ("batch:0", "batch:1", "item:0", "item:120"):
        assert tier.invalidate_tag(gone) == 0
        assert live_keys(tier) == live
    assert tier.forget_user("early") == 0
    assert live_keys(tier) == live
    assert_indexes_match(tier, written)

    assert tier.invalidate_tag("all") == len(live)
    assert len(tier) == 0
    assert tier._by_tag == {}
    assert tier._by_user == {}


def test_evicted_key_written_again_keeps_only_its_new_tags(clock: FakeClock) -> None:
    tier = MemoryTier(3 * (100 + ENTRY_OVERHEAD), clock=clock)
    tier.set("k", record(clock, tags=("old",), user="alice"))
    for filler in ("f1", "f2", "f3"):
        tier.set(filler, record(clock))
    assert tier.get("k") is None  # evicted
    tier.set("k", record(clock, tags=("new",), payload="fresh"))
    assert tier.invalidate_tag("old") == 0
    assert tier.forget_user("alice") == 0
    found = tier.get("k")
    assert found is not None
    assert found.payload == "fresh"
    assert "old" not in tier._by_tag
    assert "alice" not in tier._by_user
    assert tier.invalidate_tag("new") == 1
    assert tier.get("k") is None


def test_expired_key_written_again_keeps_only_its_new_tags(clock: FakeClock) -> None:
    tier = MemoryTier(10_000, clock=clock)
    tier.set("k", record(clock, ttl=1, tags=("old",), user="alice"))
    tier.set("other", record(clock, ttl=3600, tags=("old",)))
    clock.advance(2)
    tier.set("k", record(clock, tags=("new",), payload="fresh"))
    assert tier._by_tag == {"old": {"other"}, "new": {"k"}}
    assert tier._by_user == {}
    assert tier.invalidate_tag("old") == 1
    found = tier.get("k")
    assert found is not None
    assert found.payload == "fresh"


def test_overwrite_replaces_tags_and_user(clock: FakeClock) -> None:
    tier = MemoryTier(10_000, clock=clock)
    tier.set("k", record(clock, tags=("a",), user="alice"))
    tier.set("k", record(clock, tags=("b",), user="bob"))
    assert tier.invalidate_tag("a") == 0
    assert tier.forget_user("alice") == 0
    assert tier.get("k") is not None
    assert tier._by_tag == {"b": {"k"}}
    assert tier._by_user == {"bob": {"k"}}


def test_expired_item_is_not_counted_by_invalidation(clock: FakeClock) -> None:
    tier = MemoryTier(10_000, clock=clock)
    tier.set("short", record(clock, ttl=1, tags=("t",), user="alice"))
    tier.set("long", record(clock, ttl=100, tags=("t",), user="alice"))
    clock.advance(5)
    assert tier.invalidate_tag("t") == 1
    assert tier._by_tag == {}
    assert tier._by_user == {}


# ---------------------------------------------------------------- threads


def test_threads_share_the_tier_safely(clock: FakeClock) -> None:
    tier = MemoryTier(16 * (200 + ENTRY_OVERHEAD), clock=clock)
    keys = [f"k{i}" for i in range(64)]
    tags = [f"t{i}" for i in range(6)]
    named_users = ["alice", "bob", "carol"]
    users = [None, *named_users]
    errors: list[BaseException | str] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait(timeout=30)
            for i in range(400):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.5:
                    tier.set(key, record(clock, size=rng.randint(1, 400), ttl=rng.uniform(5, 200),
                                         tags=tuple(rng.sample(tags, 2)), user=rng.choice(users)))
                    if tier.bytes_used > tier.max_bytes:
                        errors.append(f"over budget: {tier.bytes_used} > {tier.max_bytes}")
                elif op < 0.75:
                    tier.get(key)
                elif op < 0.85:
                    tier.invalidate_tag(rng.choice(tags))
                elif op < 0.95:
                    tier.delete(key)
                else:
                    tier.forget_user(rng.choice(named_users))
                if seed == 0 and i % 50 == 0:
                    clock.advance(3)
        except BaseException as error:  # reported below, with every other thread's
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert tier.bytes_used <= tier.max_bytes
    assert tier.evictions > 0

    tier.set("final", record(clock, tags=("t0",)))  # purges what expired meanwhile
    live = live_keys(tier)
    for index in (tier._by_tag, tier._by_user):
        for name, indexed in index.items():
            assert indexed, name
            assert indexed <= live, name
    for key in live:
        found = tier.get(key)
        assert found is not None
        for tag in found.tags:
            assert key in tier._by_tag[tag]
        if found.user is not None:
            assert key in tier._by_user[found.user]
