"""The contract of a tier: the record it stores and the operations it offers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Clock = Callable[[], float]
"""Seconds since the epoch; injected so TTL logic is tested without sleeping."""

wall_clock: Clock = time.time


@dataclass(slots=True)
class Record:
    """One cached item as a tier holds it."""

    payload: Any
    """The value itself (memory tier) or its sealed blob (Redis, sqlite)."""
    expires_at: float
    """Absolute expiry in clock seconds; promotion keeps it, so a copy never outlives the original."""
    tags: tuple[str, ...] = ()
    """Invalidation tags (``intent:X``, ``template:F``); a user's items also carry their user
    tag (:func:`cache.scope.user_tag`)."""
    user: str | None = None
    """The user whose item this is, or ``None`` for shared items."""
    size: int = 0
    """Bytes this item accounts for in the tier's budget."""

    def ttl(self, now: float) -> float:
        """Seconds left at ``now`` (may be negative)."""
        return self.expires_at - now


class Tier(Protocol):
    """The contract every tier meets (tests/test_tier_contract.py checks it on each).

    A tier's constructor only stores its configuration: connections, files and threads
    begin in :meth:`start` and end in :meth:`close`.
    """

    name: str

    def start(self) -> Tier:
        """Open what the tier needs (connections, files, threads); itself, for chaining."""
        ...

    def get(self, key: str) -> Record | None:
        """The live record at ``key``, or ``None``; raises TierUnavailable when the tier is down."""
        ...

    def set(self, key: str, record: Record) -> None:
        """Store ``record`` until its expiry; an already expired record is not stored."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; true when something was removed."""
        ...

    def invalidate_tag(self, tag: str) -> int:
        """Remove every item carrying ``tag``; the count removed (best effort for Redis)."""
        ...

    def forget_user(self, user: str) -> int:
        """Remove every item of ``user``; the count removed."""
        ...

    def close(self) -> None:
        """Release resources; pending writes are flushed first."""
        ...
