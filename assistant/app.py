"""Builds the tiered cache from its settings sections."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from assistant.settings import (
    CacheSettings,
    KeySettings,
    PrivacySettings,
    RedisSettings,
    SqliteSettings,
)
from cache import (
    CacheMetrics,
    CircuitBreaker,
    KeyBuilder,
    Keyring,
    MemoryTier,
    RedisTier,
    SqliteTier,
    TieredCache,
    TierUnavailable,
    load_keyring,
)

log = logging.getLogger(__name__)


def open_keyring(keys: KeySettings, environ: Mapping[str, str] | None = None) -> Keyring:
    """The master keys from a systemd credential, the environment, or the key file."""
    env = os.environ if environ is None else environ
    return load_keyring(
        file=keys.file,
        env_value=env.get(keys.env_var),
        credentials_directory=env.get("CREDENTIALS_DIRECTORY"),
        credential_name=keys.credential,
        create_file=keys.create,
    )


def open_cache(
    *,
    cache: CacheSettings,
    redis: RedisSettings,
    sqlite: SqliteSettings,
    keys: KeySettings,
    privacy: PrivacySettings,
    listen: bool = True,
    metrics: CacheMetrics | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[TieredCache, KeyBuilder]:
    """The tiered cache and the key builder under the same master keys."""
    keyring = open_keyring(keys, environ)
    names = KeyBuilder(keyring.naming_secret())
    metrics = metrics or CacheMetrics()
    policies = privacy.book()
    longest = max([policies.default.max_ttl, policies.shared.max_ttl,
                   *(p.max_ttl for p in policies.users.values())])
    redis_tier = None
    if redis.enabled:
        redis_tier = RedisTier(
            redis.url,
            namer=names.name,
            timeout=redis.timeout,
            breaker=CircuitBreaker(threshold=redis.breaker_threshold,
                                   cooldown=redis.breaker_cooldown),
            # A forget is remembered as long as anything of the user may live anywhere.
            tombstone_ttl=longest + 3600,
        )
    sqlite_tier = None
    if sqlite.enabled:
        def quarantined(path: Path) -> None:
            metrics.errors.labels("l3", "quarantined").inc()

        try:
            sqlite_tier = SqliteTier(
                sqlite.path,
                max_bytes=sqlite.max_bytes,
                batch_size=sqlite.batch_size,
                flush_interval=sqlite.flush_interval,
                queue_size=sqlite.queue_size,
                gc_interval=sqlite.gc_interval,
                on_quarantine=quarantined,
            )
        except TierUnavailable as error:
            # Answers still come from memory and Redis; the disk tier is back after a restart.
            log.error("disk cache unavailable, running without it: %s", error)
            metrics.errors.labels("l3", "unavailable").inc()
    tiered = TieredCache(
        keyring=keyring,
        memory=MemoryTier(cache.memory_bytes),
        redis_tier=redis_tier,
        sqlite_tier=sqlite_tier,
        policies=policies,
        metrics=metrics,
        zstd_level=cache.zstd_level,
        compress_min_bytes=cache.compress_min_bytes,
        listen=listen,
        listen_block=cache.listen_block,
    )
    return tiered, names
