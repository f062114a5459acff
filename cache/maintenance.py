"""Keeping a cache in order: expired rows, key rotation, policies applied to old data, stats."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cache.codec import Codec
from cache.errors import BlobError, TierUnavailable
from cache.policy import PolicyBook
from cache.tiers.sqlite import SqliteTier

if TYPE_CHECKING:
    from cache.tiered import TieredCache

log = logging.getLogger(__name__)


def gc(cache: TieredCache) -> int:
    """Remove expired rows from the disk tier (memory and Redis expire by themselves)."""
    return 0 if cache.sqlite is None else cache.sqlite.gc()


def rotate(cache: TieredCache) -> int:
    """Re-encrypt every disk-tier blob under the keyring's current key id; the number
    rewritten (a blob that cannot be opened is deleted)."""
    if cache.sqlite is None:
        return 0
    codec, current = cache.codec, cache.keyring.current_id

    def reseal(key: str, blob: bytes, user: str | None) -> bytes | None:
        try:
            return codec.seal(key, codec.open(key, blob, user), user)
        except BlobError:
            return None

    return cache.sqlite.reseal(reseal, stale=lambda blob: Codec.key_id(blob) != current)


def enforce_policies(sqlite: SqliteTier, policies: PolicyBook, now: float, *,
                     ref: Callable[[str], str]) -> None:
    """Apply the policies in force now to what an earlier run left on disk: shorter lives are
    capped, and the items of whoever no longer allows disk are deleted. ``ref``: the name a
    user goes by on disk."""
    named = {user: ref(user) for user in policies.users}
    try:
        for user, policy in policies.users.items():
            sqlite.restrict(users=[named[user]], expires_by=now + policy.max_ttl,
                            keep=policy.persist)
        sqlite.restrict(others_than=list(named.values()),
                        expires_by=now + policies.default.max_ttl, keep=policies.default.persist)
        sqlite.restrict(users=None, expires_by=now + policies.shared.max_ttl,
                        keep=policies.shared.persist)
    except TierUnavailable as error:
        log.error("could not apply privacy policies to the disk tier: %s", error)


def stats(cache: TieredCache) -> dict[str, Any]:
    """Counters of every tier and the state of each."""
    memory = cache.memory
    out: dict[str, Any] = {
        "l1": {"entries": len(memory), "bytes": memory.bytes_used,
               "max_bytes": memory.max_bytes, "evictions": memory.evictions},
        "metrics": cache.metrics.snapshot(),
    }
    if cache.redis is not None:
        breaker, events = cache.redis.breaker, cache.events
        try:
            out["l2"] = {**cache.redis.info(), "breaker_open": breaker.is_open,
                         "breaker_opened": breaker.opened,
                         "events_applied": events.applied if events else 0,
                         "events_pending": events.pending if events else 0}
        except TierUnavailable as error:
            out["l2"] = {"error": str(error), "breaker_open": breaker.is_open}
    if cache.sqlite is not None:
        try:
            out["l3"] = cache.sqlite.stats()
        except TierUnavailable as error:
            out["l3"] = {"error": str(error)}
    return out
