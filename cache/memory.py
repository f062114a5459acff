"""L1: an in-process LRU with per-entry expiry, bounded in bytes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from cachetools import TLRUCache

from cache.tier import Clock, Record, wall_clock

ENTRY_OVERHEAD = 256
"""Bytes charged per entry on top of its payload (dict slots, record object, key string)."""


class _Store(TLRUCache[str, Record]):
    """A TLRU cache that reports every entry it drops by itself (eviction, expiry)."""

    def __init__(
        self, maxsize: int, timer: Clock, on_drop: Callable[[str, Record, bool], None]
    ) -> None:
        super().__init__(
            maxsize,
            ttu=lambda _key, record, _now: record.expires_at,
            timer=timer,
            getsizeof=lambda record: record.size + ENTRY_OVERHEAD,
        )
        self._on_drop = on_drop

    def popitem(self) -> tuple[str, Record]:
        key, record = super().popitem()
        self._on_drop(key, record, True)
        return key, record

    def expire(self, time: Any = None) -> Any:
        expired = super().expire(time)
        for key, record in expired:
            self._on_drop(key, record, False)
        return expired


class MemoryTier:
    """L1: thread-safe, byte-bounded LRU with per-entry expiry and tag/user indexes."""

    name = "l1"

    def __init__(self, max_bytes: int, *, clock: Clock = wall_clock) -> None:
        """``max_bytes``: the budget for payload sizes plus a fixed overhead per entry."""
        self._lock = threading.Lock()
        self._store = _Store(max_bytes, clock, self._dropped)
        self._by_tag: dict[str, set[str]] = {}
        self._by_user: dict[str, set[str]] = {}
        self.evictions = 0
        self.max_bytes = max_bytes
        self.generation = 0
        """Bumped by every purge; a copy read from below before a purge is not stored after it."""

    def _index(self, key: str, record: Record) -> None:
        for tag in record.tags:
            self._by_tag.setdefault(tag, set()).add(key)
        if record.user is not None:
            self._by_user.setdefault(record.user, set()).add(key)

    def _unindex(self, key: str, record: Record) -> None:
        for tag in record.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]
        if record.user is not None:
            keys = self._by_user.get(record.user)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[record.user]

    def _dropped(self, key: str, record: Record, evicted: bool) -> None:
        self._unindex(key, record)
        if evicted:
            self.evictions += 1

    def get(self, key: str) -> Record | None:
        with self._lock:
            return self._store.get(key)

    def set(self, key: str, record: Record, generation: int | None = None) -> bool:
        """Store ``record``; with ``generation``, only if no purge happened since it was read.

        True when stored.
        """
        with self._lock:
            if generation is not None and generation != self.generation:
                return False
            self._remove(key)
            if record.size + ENTRY_OVERHEAD > self.max_bytes:
                return False  # larger than the whole budget: not worth keeping in memory
            self._store[key] = record
            if key not in self._store:  # already expired
                return False
            self._index(key, record)
            return True

    def _remove(self, key: str) -> bool:
        self._store.expire()  # drop (and unindex) expired entries, so pop sees only live ones
        record = self._store.pop(key, None)
        if record is None:
            return False
        self._unindex(key, record)
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._remove(key)

    def _remove_all(self, keys: AbstractSet[str] | None) -> int:
        return sum(self._remove(key) for key in list(keys or ()))

    def invalidate_tag(self, tag: str) -> int:
        with self._lock:
            self.generation += 1
            return self._remove_all(self._by_tag.get(tag))

    def forget_user(self, user: str) -> int:
        with self._lock:
            self.generation += 1
            return self._remove_all(self._by_user.get(user))

    def clear(self) -> None:
        """Drop everything (used when invalidation messages may have been missed)."""
        with self._lock:
            self.generation += 1
            self._store.clear()
            self._by_tag.clear()
            self._by_user.clear()

    @property
    def bytes_used(self) -> int:
        """Bytes charged against the budget now."""
        with self._lock:
            return int(self._store.currsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def close(self) -> None:
        self.clear()
