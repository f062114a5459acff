"""The cache's fast paths: key spaces (a name for a prompt seen before without an HMAC), hits
in memory without the lock, the epochs read with the L2 miss, promotion without encoding
again. Each keeps what the slow path promised."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from cache import (
    CacheError,
    GenerationKey,
    KeyBuilder,
    MemoryTier,
    NonDeterministicError,
    RedisTier,
    TieredCache,
)
from cache.errors import TierUnavailable
from cache.keys import SLOT, Field
from cache.tiers.base import Record
from tests.conftest import FakeClock
from tests.servers import RedisServer, admin_url

REQUEST = GenerationKey(
    backend="llama_cpp", model_id="m.gguf", model_version="a" * 32, tokenizer_version="t",
    template_id="unmatched", template_version="1", system_prompt="You are a voice assistant.",
    prompt="", temperature=0.0, top_p=1.0, top_k=40, max_tokens=64, seed=None, scope="shared")

fields = st.one_of(st.none(), st.booleans(), st.integers(),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
                   st.binary(max_size=6))


# ---------------------------------------------------------------- key spaces


@given(before=st.lists(fields, max_size=3), after=st.lists(fields, max_size=3),
       free=st.lists(fields, min_size=1, max_size=2))
def test_a_space_names_what_the_builder_names(before: list[Field], after: list[Field],
                                             free: list[Field]) -> None:
    names = KeyBuilder(b"s" * 32)
    slots: list[Field | Any] = [*before, SLOT, *after] if len(free) == 1 else \
        [*before, SLOT, *after, SLOT]
    space = names.space("k", *slots)
    whole = [*before, free[0], *after] if len(free) == 1 else [*before, free[0], *after, free[1]]
    expected = names.key("k", *whole)
    assert space.key(*free) == expected
    assert space.key(*free) == expected  # remembered, the same


def test_a_generation_space_names_what_generation_key_names() -> None:
    names = KeyBuilder(b"s" * 32)
    space = names.generation_space(dataclasses.replace(REQUEST, prompt="ignored"))
    for prompt in ("turn on the light", "", "ab", "a" * 5000, "Grüß dich"):
        assert space.key(prompt) == names.generation_key(dataclasses.replace(REQUEST,
                                                                             prompt=prompt))
    with pytest.raises(NonDeterministicError):
        names.generation_space(dataclasses.replace(REQUEST, temperature=0.7))


def test_remembered_names_are_never_confused() -> None:
    names = KeyBuilder(b"s" * 32)
    a = names.space("gen", "model-a", SLOT)
    b = names.space("gen", "model-b", SLOT)
    c = names.space("frag", "model-a", SLOT)
    user = names.space("gen", "model-a", SLOT, "user:ann")
    two = names.space("gen", "model-a", SLOT, SLOT)
    for space in (a, b, c, user):
        space.key("hello")  # every space has now seen the prompt
    assert len({a.key("hello"), b.key("hello"), c.key("hello"), user.key("hello")}) == 4
    # Equal in Python, different fields: 1, 1.0 and True; 0.0 and -0.0; "1" and b"1".
    assert len({a.key(1), a.key(1.0), a.key(True), a.key("1"), a.key(b"1")}) == 5
    assert a.key(0.0) != a.key(-0.0)
    assert a.key(0.0) == names.key("gen", "model-a", 0.0)
    assert two.key("ab", "c") != two.key("a", "bc")
    assert two.key("ab", "c") == names.key("gen", "model-a", "ab", "c")
    other = KeyBuilder(b"t" * 32).space("gen", "model-a", SLOT)
    assert other.key("hello") != a.key("hello")  # another secret, other names
    with pytest.raises(CacheError):
        a.key("one", "too many")
    with pytest.raises(CacheError):
        names.space("gen", "no slot")
    with pytest.raises(CacheError):
        names.space("Bad Kind", SLOT)
    with pytest.raises(CacheError):
        a.key(float("nan"))


def test_a_space_remembers_only_as_many_names_as_it_is_told() -> None:
    space = KeyBuilder(b"s" * 32).space("gen", SLOT, memo=4)
    first = [space.key(str(n)) for n in range(100)]
    assert first == [space.key(str(n)) for n in range(100)]
    assert space._remembered.cache_info().currsize == 4  # type: ignore[attr-defined]


# ---------------------------------------------------------------- memory without the lock


def test_memory_hits_read_the_store_directly() -> None:
    clock = FakeClock()
    memory = MemoryTier(10_000, clock=clock)
    assert memory._store.direct is not None  # this cachetools is laid out as expected
    memory.set("a", Record("A", clock() + 10, size=100))
    memory.set("b", Record("B", clock() + 10, size=100))
    assert memory.get("a").payload == "A"  # type: ignore[union-attr]
    # A hit moves its key to the recent end: "b", not "a", goes first when room is needed.
    for n in range(30):
        memory.set(f"filler{n}", Record("x", clock() + 10, size=100))
        memory.get("a")
    assert memory.get("a") is not None and memory.get("b") is None
    clock.advance(11)
    assert memory.get("a") is None and len(memory) < 30  # expired: dropped on read


def test_memory_hits_and_writes_from_many_threads_keep_the_budget() -> None:
    memory = MemoryTier(50 * (100 + 256))
    stop = time.monotonic() + 1.0
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            i = 0
            while time.monotonic() < stop:
                key = f"k{(i * 7 + n) % 200}"
                if i % 3:
                    found = memory.get(key)
                    assert found is None or found.payload == key
                else:
                    memory.set(key, Record(key, time.time() + 60, size=100))
                if i % 50 == 0:
                    memory.delete(key)
                i += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert memory.bytes_used <= memory.max_bytes and len(memory) <= 50


def test_memory_falls_back_to_the_lock_when_cachetools_is_laid_out_otherwise() -> None:
    memory = MemoryTier(10_000)
    memory._store.direct = None
    memory.set("a", Record("A", time.time() + 10, size=1))
    assert memory.get("a").payload == "A"  # type: ignore[union-attr]
    assert memory.get("b") is None


# ---------------------------------------------------------------- through the tiers


def test_items_named_by_a_space_are_purged_and_forgotten_everywhere(
        tiered: TieredCache, names: KeyBuilder) -> None:
    space = names.generation_space(REQUEST)
    tiered.set(space.key("lights on"), "Done.", ttl=60, tags=["intent:HassTurnOn"])
    tiered.set(space.key("lights off"), "Off.", ttl=60, tags=["intent:HassTurnOff"])
    ann = names.generation_space(dataclasses.replace(REQUEST, scope="user:ann"))
    tiered.set(ann.key("my alarm"), "At six.", ttl=60, user="ann")
    assert tiered.get(space.key("lights on")) == "Done."
    assert tiered.invalidate_tag("intent:HassTurnOn") == {"l3": 1, "l2": 1, "l1": 1}
    assert tiered.get(space.key("lights on")) is None
    assert tiered.lookup(space.key("lights on")) is None
    assert tiered.get(space.key("lights off")) == "Off."
    tiered.forget_user("ann")
    assert tiered.lookup(ann.key("my alarm"), user="ann") is None
    tiered.delete(space.key("lights off"))
    assert tiered.lookup(space.key("lights off")) is None


def test_a_miss_reads_the_epochs_with_the_l2_read(tiered: TieredCache, names: KeyBuilder,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tiered.redis
    assert shared is not None
    sent: list[int] = []
    real = shared._exchange

    def counted(packed: list[bytes], replies: int = 1, **options: Any) -> list[Any]:
        sent.append(replies)
        return real(packed, replies, **options)

    monkeypatch.setattr(shared, "_exchange", counted)
    monkeypatch.setattr(shared, "epochs", lambda tags: pytest.fail("a second round trip"))
    key = names.key("answer", "weather")
    value = tiered.get_or_compute(key, lambda: "sunny", ttl=60, tags=["weather"], user="ann")
    assert value == "sunny"
    # The read and the epochs of its two tags (weather, user:ann) in one exchange, then the
    # write (a compare-and-set on those epochs).
    assert sent == [2, 1]
    tiered.memory.clear()
    assert tiered.lookup(key, user="ann").source == "l2"  # type: ignore[union-attr]


def test_a_purge_between_the_miss_and_the_write_still_wins(
        tiered: TieredCache, names: KeyBuilder, redis_url: str) -> None:
    key = names.key("answer", "raced")

    def compute() -> str:
        # Another node purges the tag while this one computes: only Redis's epoch says so.
        other = redis.Redis.from_url(redis_url)
        assert tiered.redis is not None
        other.incr(tiered.redis.epoch_name("entities"))
        other.close()
        return "from old entities"

    assert tiered.get_or_compute(key, compute, ttl=60, tags=["entities"]) == "from old entities"
    tiered.memory.clear()
    assert tiered.lookup(key) is None


def test_a_miss_with_redis_down_still_computes_and_is_answered(
        tiered: TieredCache, names: KeyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    from cache.errors import TierUnavailable

    assert tiered.redis is not None

    def down(*args: Any, **kwargs: Any) -> Any:
        raise TierUnavailable("down")

    monkeypatch.setattr(tiered.redis, "get_with_epochs", down)
    key = names.key("answer", "no redis")
    assert tiered.get_or_compute(key, lambda: "still", ttl=60, tags=["t"]) == "still"
    assert tiered.get(key) == "still"


def test_json_promoted_from_below_is_kept_serialized_and_safe_from_callers(
        tiered: TieredCache, names: KeyBuilder) -> None:
    key = names.key("answer", "plan")
    tiered.set(key, {"fragments": ["a", "b"]}, ttl=60)
    for below in ("l2", "l3"):
        tiered.memory.clear()
        if below == "l3":
            tiered.redis.delete(key)  # type: ignore[union-attr]
        found = tiered.lookup(key)
        assert found is not None and found.source == below
        found.value["fragments"].append("mutated")
        assert tiered.get(key) == {"fragments": ["a", "b"]}
        assert type(tiered.memory.get(key).payload).__name__ == "_Frozen"  # type: ignore[union-attr]


# ---------------------------------------------------------------- waiting for Redis's replies


def test_a_reply_later_than_the_poll_is_still_read(own_redis: RedisServer,
                                                   names: KeyBuilder) -> None:
    """Redis stopped for 50 ms: the poll gives up after its 100 µs and the read sleeps until
    the reply comes; the value read is the one written."""
    tier = RedisTier(own_redis.url, namer=names.name, timeout=1.0).start()
    record = Record(b"payload" * 10, time.time() + 60)
    tier.set("k", record)
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    threading.Timer(0.05, own_redis.proc.send_signal, (signal.SIGCONT,)).start()
    started = time.monotonic()
    found = tier.get("k")
    assert time.monotonic() - started >= 0.04  # it really waited for the stopped server
    assert found is not None and bytes(found.payload) == b"payload" * 10
    assert tier.spins_missed == 1  # polled first, and the poll ran out
    tier.close()


def test_the_poll_is_bounded_and_can_be_turned_off(own_redis: RedisServer,
                                                   names: KeyBuilder) -> None:
    """While Redis is stopped, a read that times out after 0.3 s costs the thread the poll's
    CPU time, not 0.3 s of it; with ``spin=0`` none."""
    assert own_redis.proc is not None
    for spin, most in ((0.005, 0.1), (0.0, 0.05)):
        tier = RedisTier(own_redis.url, namer=names.name, timeout=0.3, spin=spin).start()
        tier.set("k", Record(b"x", time.time() + 60))
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            cpu = time.thread_time()
            with pytest.raises(TierUnavailable):
                tier.get("k")
            assert time.thread_time() - cpu < most
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert tier.spins_missed == (1 if spin else 0)
        tier.close()


class ScriptedPoller:
    """A poller that says a reply has come (``ready``) or not yet, whatever the socket has:
    the read after it still waits for the real reply."""

    def __init__(self) -> None:
        self.ready = True

    def register(self, *args: Any) -> None:
        pass

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return [(0, 1)] if self.ready else []


def test_polls_that_keep_running_out_turn_polling_off_for_a_second(
        redis_url: str, names: KeyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """One poll that runs out among others that do not leaves polling on; eight in a row
    turn it off for the thread, and it is tried again a second later."""
    import select

    import cache.tiers.poll as module

    poller = ScriptedPoller()
    monkeypatch.setattr(module, "select", SimpleNamespace(poll=lambda: poller,
                                                          POLLIN=select.POLLIN))
    tier = RedisTier(redis_url, namer=names.name, timeout=2.0, spin=0.0002).start()
    tier.set("k", Record(b"x", time.time() + 60))

    def read(ready: bool) -> None:
        poller.ready = ready
        assert tier.get("k") is not None

    for _ in range(10):  # a slow reply now and then
        read(False)
        read(True)
    assert tier.spins_missed == 10
    for _ in range(8):
        read(False)
    assert tier.spins_missed == 18
    for _ in range(3):  # within the second: not polled, so no poll runs out
        read(False)
    assert tier.spins_missed == 18
    time.sleep(1.0)
    read(False)
    assert tier.spins_missed == 19
    assert tier.info()["polls_run_out"] == 19
    tier.close()


def test_the_poll_follows_the_connection_after_redis_restarts(own_redis: RedisServer,
                                                              names: KeyBuilder) -> None:
    tier = RedisTier(own_redis.url, namer=names.name, timeout=0.5).start()
    tier.set("k", Record(b"before", time.time() + 60))
    assert tier.get("k") is not None
    own_redis.kill()
    own_redis.start()  # empty: the shipped server keeps no file
    assert tier.get("k") is None  # the held connection reconnected once; polled anew
    tier.set("k", Record(b"after", time.time() + 60))
    found = tier.get("k")
    assert found is not None and bytes(found.payload) == b"after"
    assert tier._poll.polled() is tier._reader()._get_socket()  # the new socket's
    tier.close()


def test_claims_and_counters_over_the_held_connection(own_redis: RedisServer,
                                                      names: KeyBuilder) -> None:
    tier = RedisTier(own_redis.url, namer=names.name, timeout=0.5).start()
    assert tier.claim("c", 0.2, owner=b"a")
    assert not tier.claim("c", 0.2, owner=b"b")
    assert tier.claim("c", 0.2, owner=b"a")  # held already: held again
    time.sleep(0.3)
    assert tier.claim("c", 10, owner=b"b")  # expired: anyone's
    assert tier.count("n", 1.5, 60) == 1.5
    assert tier.count("n", 0.25, 1) == 1.75
    plain = redis.Redis.from_url(own_redis.url)
    assert plain.pttl("n") > 10_000  # the life given when it was made, not the later one
    plain.close()
    admin = redis.Redis.from_url(admin_url(own_redis.url))
    admin.script_flush()  # as after a restart: the scripts are loaded again
    admin.close()
    assert not tier.claim("c", 10, owner=b"a")
    assert tier.count("n", 1, 60) == 2.75
    tier.close()


def test_a_counter_whose_reply_was_lost_is_not_added_twice(
        redis_url: str, names: KeyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The add reached Redis and its reply was lost: sent again, it would count twice. A
    claim (the same either way) is sent again."""
    tier = RedisTier(redis_url, namer=names.name, timeout=1.0).start()
    assert tier.count("lost", 1, 60) == 1
    conn = tier._reader()
    read = conn.read_response
    lose = [1]

    def lossy(*args: Any, **kwargs: Any) -> Any:
        if lose[0]:
            lose[0] -= 1
            raise redis.ConnectionError("the reply was lost")
        return read(*args, **kwargs)

    monkeypatch.setattr(conn, "read_response", lossy)
    with pytest.raises(TierUnavailable):
        tier.count("lost", 1, 60)
    assert tier.count("lost", 0, 60) == 2  # added once
    lose[0] = 1
    assert tier.claim("lost-claim", 60, owner=b"a")  # sent again after the lost reply
    tier.close()
