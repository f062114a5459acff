"""Fixtures: real redis-server processes on free ports, sqlite files in temp folders, a fake clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cache import (
    CircuitBreaker,
    KeyBuilder,
    Keyring,
    MemoryTier,
    PolicyBook,
    PrivacyPolicy,
    RedisTier,
    SqliteTier,
    TieredCache,
)
from tests.servers import RedisServer
from tests.service import Broker


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared test server, emptied for this test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, for tests that kill and restart it."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring({1: b"k" * 32})


@pytest.fixture
def names(keyring: Keyring) -> KeyBuilder:
    return KeyBuilder(keyring.naming_secret())


def make_redis_tier(url: str, names: KeyBuilder, clock: FakeClock | None = None,
                    cooldown: float = 0.5) -> RedisTier:
    breaker = CircuitBreaker(threshold=2, cooldown=cooldown)
    if clock is None:
        return RedisTier(url, namer=names.name, timeout=0.2, breaker=breaker).start()
    return RedisTier(url, namer=names.name, timeout=0.2, breaker=breaker, clock=clock).start()


def make_cache(
    *,
    keyring: Keyring,
    names: KeyBuilder,
    redis_url: str | None,
    db: Path | None,
    clock: FakeClock | None = None,
    policies: PolicyBook | None = None,
    memory_bytes: int = 8 * 1024 * 1024,
    listen: bool = False,
    cooldown: float = 0.5,
) -> TieredCache:
    """A started TieredCache over real tiers; ``None`` leaves a tier out."""
    kwargs = {} if clock is None else {"clock": clock}
    return TieredCache(
        keyring=keyring,
        memory=MemoryTier(memory_bytes, **kwargs),
        redis_tier=None if redis_url is None else make_redis_tier(redis_url, names, clock, cooldown),
        sqlite_tier=None if db is None else SqliteTier(db, flush_interval=0.01, **kwargs),
        policies=policies,
        listen=listen,
        listen_block=0.2,
        **kwargs,
    ).start()


@pytest.fixture
def cache(keyring: Keyring, names: KeyBuilder, redis_url: str,
          tmp_path: Path) -> Iterator[TieredCache]:
    """A TieredCache over real tiers on the wall clock, with room for model states."""
    tiered = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                        db=tmp_path / "cache.db", memory_bytes=64 * 1024 * 1024)
    yield tiered
    tiered.close()


@pytest.fixture
def tiered(keyring: Keyring, names: KeyBuilder, redis_url: str, tmp_path: Path,
           clock: FakeClock) -> Iterator[TieredCache]:
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "cache.db", clock=clock)
    yield cache
    cache.close()


@pytest.fixture(scope="session")
def llama() -> Iterator[Any]:
    """The packaged SmolLM2 model on llama.cpp, loaded once for the whole run."""
    from assistant.generation.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(threads=2).start()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def speech_cache(redis_server: RedisServer, keyring: Keyring,
                 tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[TieredCache, KeyBuilder]]:
    """The speech tests' cache, over real tiers, where the user "guest" is private and keeps
    nothing on disk."""
    names = KeyBuilder(keyring.naming_secret())
    policies = PolicyBook(users={"guest": PrivacyPolicy(max_ttl=60, persist=False, private=True)})
    tiered = make_cache(keyring=keyring, names=names, redis_url=redis_server.url,
                        db=tmp_path_factory.mktemp("speech") / "cache.db", policies=policies,
                        memory_bytes=64 * 1024 * 1024)
    yield tiered, names
    tiered.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A mosquitto of the service tests' own, with their accounts, on a free loopback port."""
    server = Broker(tmp_path_factory.mktemp("broker")).start()
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What each fault cost the requests streaming through it (tests/test_service_faults.py)."""
    from tests.faults import REPORTS, summary

    if REPORTS:
        terminalreporter.section("faults")
        for line in summary(REPORTS):
            terminalreporter.write_line(line)
