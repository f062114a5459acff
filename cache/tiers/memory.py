"""L1: an in-process LRU with per-entry expiry, bounded in bytes.

The store is cachetools' ``LRUCache`` sized in bytes (``getsizeof``). Expiry is
checked on read against the injected clock, and an expired entry is dropped
there; entries nobody reads again age out through LRU order like any other, so
the byte budget holds either way. (``TLRUCache`` keeps a heap of expiries and
calls the timer several times per operation: on a hit-heavy tier that
bookkeeping costs more than it saves.)

A hit takes no lock: it reads the store's own dict and moves the key to the end of its
recency order, two operations of C code that the interpreter runs whole, so a
concurrent write or eviction is seen either before or after, never half done. (That
reaches into cachetools' ``LRUCache``; a release laid out otherwise is detected and
read through its public interface, under the lock, as before.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Self

from cachetools import LRUCache

from cache.scope import tag_user
from cache.tiers.base import Clock, Record, wall_clock

ENTRY_OVERHEAD = 256
"""Bytes charged per entry on top of its payload (dict slots, record object, key string)."""


class _Store(LRUCache[str, Record]):
    """An LRU cache that reports every entry it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, Record], None]) -> None:
        super().__init__(maxsize, getsizeof=lambda record: record.size + ENTRY_OVERHEAD)
        self._on_evict = on_evict
        data = getattr(self, "_Cache__data", None)
        order = getattr(self, "_LRUCache__order", None)
        self.direct: tuple[dict[str, Record], OrderedDict[str, None]] | None = (
            (data, order) if isinstance(data, dict) and isinstance(order, OrderedDict)
            and type(self).__getitem__ is LRUCache.__getitem__ else None)
        """The store's dict and recency order, for reads without the lock (None: not
        laid out as expected)."""

    def popitem(self) -> tuple[str, Record]:
        key, record = super().popitem()
        self._on_evict(key, record)
        return key, record


class MemoryTier:
    """L1: thread-safe, byte-bounded LRU with per-entry expiry and tag/user indexes."""

    name = "l1"

    def __init__(self, max_bytes: int, *, clock: Clock = wall_clock) -> None:
        """``max_bytes``: the budget for payload sizes plus a fixed overhead per entry."""
        self._lock = threading.Lock()
        self._clock = clock
        self._store = _Store(max_bytes, self._evicted)
        self._by_tag: dict[str, set[str]] = {}
        self._by_user: dict[str, set[str]] = {}
        self.evictions = 0
        self.max_bytes = max_bytes
        self.generation = 0
        """Bumped by every purge; a copy read from below before a purge is not stored after it."""

    def start(self) -> Self:
        """Nothing to open: memory is there from the start."""
        return self

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

    def _evicted(self, key: str, record: Record) -> None:
        self._unindex(key, record)
        self.evictions += 1

    def get(self, key: str) -> Record | None:
        direct = self._store.direct
        if direct is None:
            return self._get_locked(key)
        record = direct[0].get(key)
        if record is None:
            return None
        if record.expires_at <= self._clock():
            return self._get_locked(key)  # expired: dropped under the lock
        try:  # noqa: SIM105 (contextlib.suppress costs more than the rest of a hit)
            direct[1].move_to_end(key)
        except KeyError:  # removed since it was read: this read came first
            pass
        return record

    def _get_locked(self, key: str) -> Record | None:
        with self._lock:
            try:
                record = self._store[key]
            except KeyError:
                return None
            if record.expires_at > self._clock():
                return record
            self._remove(key)
            return None

    def set(self, key: str, record: Record, generation: int | None = None) -> bool:
        """Store ``record``; with ``generation``, only if no purge happened since it was read.

        True when stored.
        """
        with self._lock:
            if generation is not None and generation != self.generation:
                return False
            self._remove(key)
            if record.expires_at <= self._clock():
                return False
            if record.size + ENTRY_OVERHEAD > self.max_bytes:
                return False  # larger than the whole budget: not worth keeping in memory
            self._store[key] = record
            self._index(key, record)
            return True

    def _remove(self, key: str) -> bool:
        record = self._store.pop(key, None)
        if record is None:
            return False
        self._unindex(key, record)
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            self.generation += 1
            return self._remove(key)

    def discard(self, key: str) -> bool:
        """Drop the copy at ``key`` because a newer value replaces it elsewhere: as a write
        does, it leaves the generation alone (a delete moves it, so computes that began
        before it do not store what it removed)."""
        with self._lock:
            return self._remove(key)

    def _remove_all(self, keys: AbstractSet[str] | None) -> int:
        """Remove ``keys``; the number of them that were still live."""
        now = self._clock()
        live = 0
        for key in list(keys or ()):
            record = self._store.pop(key, None)
            if record is not None:
                self._unindex(key, record)
                live += record.expires_at > now
        return live

    def invalidate_tag(self, tag: str) -> int:
        with self._lock:
            self.generation += 1
            count = self._remove_all(self._by_tag.get(tag))
            user = tag_user(tag)
            if user is not None:  # a user's items carry this tag in every other tier
                count += self._remove_all(self._by_user.get(user))
            return count

    def forget_user(self, user: str) -> int:
        with self._lock:
            self.generation += 1
            return self._remove_all(self._by_user.get(user))

    def clear(self) -> None:
        """Drop everything (used when invalidation messages may have been missed)."""
        with self._lock:
            self.generation += 1
            self._store = _Store(self.max_bytes, self._evicted)  # clear() would count evictions
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
