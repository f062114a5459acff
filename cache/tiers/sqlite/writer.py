"""The disk tier's writes: queued, and applied in batches by one writer thread.

Writes are applied in one transaction per batch, flushed by size, by interval and on
close: nothing accepted is lost on a clean shutdown. Readers see queued writes first (the
batch being written included), so a queued delete is never undone by a read of the old
row. A running byte total is kept per batch; the size cap evicts the least recently used
rows. Reads are recorded and their last-access times written at most once per
``touch_interval``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from cache.errors import TierUnavailable
from cache.scope import user_tag
from cache.tiers.base import Clock, Record
from cache.tiers.sqlite.file import SqliteFile

log = logging.getLogger(__name__)

_UPSERT = """
INSERT INTO items (key, blob, expires_at, user, size, accessed_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET blob = excluded.blob, expires_at = excluded.expires_at,
    user = excluded.user, size = excluded.size, accessed_at = excluded.accessed_at
"""


class WriteQueue:
    """Queued writes of the disk tier and the thread that applies them."""

    def __init__(self, file: SqliteFile, *, clock: Clock, max_bytes: int, batch_size: int,
                 flush_interval: float, queue_size: int, touch_interval: float,
                 housekeeping: Callable[[], None]) -> None:
        """
        Args:
            file: the database file.
            clock: the clock expiries are measured on.
            max_bytes: cap on the summed blob sizes; least recently used rows go first.
            batch_size: queued writes that trigger a flush.
            flush_interval: seconds a queued write may wait before it is flushed.
            queue_size: queued writes beyond which :meth:`put` waits for the writer.
            touch_interval: seconds between updates of read rows' last access.
            housekeeping: called by the writer thread after each flush (retries, GC).
        """
        self._file = file
        self._clock = clock
        self.max_bytes = max_bytes
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_size = queue_size
        self._touch_interval = touch_interval
        self._housekeeping = housekeeping
        self._cond = threading.Condition()
        self._pending: dict[str, Record] = {}
        self._flushing: dict[str, Record] = {}  # the batch being written, still to be read
        self._touched: dict[str, float] = {}
        self._closed = True
        self._thread: threading.Thread | None = None
        self.evictions = 0
        """Rows evicted to stay within ``max_bytes``."""
        self.dropped = 0
        """Queued writes given up while the file could not be written (the queue is bounded)."""

    def start(self) -> None:
        """Accept writes and start the writer thread."""
        with self._cond:
            self._closed = False
        self._thread = threading.Thread(target=self._run, name="l3-writer", daemon=True)
        self._thread.start()

    # -- what readers and writers call ---------------------------------------------------

    def queued(self, key: str) -> Record | None:
        """The write of ``key`` not yet committed, if any."""
        # No lock: a dict read is atomic and the writer swaps whole dicts.
        return self._pending.get(key) or self._flushing.get(key)

    def touch(self, key: str, now: float) -> None:
        """Record a read of ``key`` (its last access, for LRU eviction)."""
        # A touch that lands in a dict just swapped out is lost, which only blurs LRU.
        self._touched[key] = now

    def put(self, key: str, record: Record) -> None:
        """Queue a write; waits (up to 2 s) while the queue is full."""
        with self._cond:
            if self._closed:
                raise TierUnavailable("sqlite tier is closed")
            if self._size() >= self._queue_size and key not in self._pending:
                self._cond.notify_all()
                if not self._cond.wait_for(lambda: self._size() < self._queue_size, 2.0):
                    raise TierUnavailable("sqlite write queue is full")
            self._pending[key] = record
            self._touched.pop(key, None)
            if len(self._pending) >= self._batch_size:
                self._cond.notify_all()

    def take_user(self, user: str) -> list[str]:
        """Drop the queued (not yet being written) writes of ``user``; their keys."""
        with self._cond:
            keys = [k for k, r in self._pending.items() if r.user == user]
            for key in keys:
                del self._pending[key]
        return keys

    def _size(self) -> int:
        return len(self._pending) + len(self._flushing)

    @property
    def waiting(self) -> int:
        """Writes queued and not yet being written."""
        return len(self._pending)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        last_touch = time.monotonic()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closed or len(self._pending) >= self._batch_size,
                    self._flush_interval,
                )
                if self._closed:
                    return
            try:
                touches = time.monotonic() - last_touch >= self._touch_interval
                self.flush(touches=touches)
                if touches:
                    last_touch = time.monotonic()
                self._housekeeping()
            except TierUnavailable as error:
                log.warning("sqlite cache writer: %s", error)
                time.sleep(self._flush_interval)
            except Exception:
                log.exception("sqlite cache writer failed; retrying")
                time.sleep(self._flush_interval)

    def flush(self, *, touches: bool = True) -> int:
        """Write everything queued now, in one transaction; the number of writes applied.

        ``touches=False`` leaves the recorded reads (last-access updates) for a later flush.
        """
        with self._file.write_lock:
            with self._cond:
                pending = self._flushing = self._pending  # readers look here until committed
                self._pending = {}
                touched: dict[str, float] = {}
                if touches:
                    touched, self._touched = self._touched, {}
                self._cond.notify_all()
            if not pending and not touched:
                return 0
            try:
                self._file.check()
                self._file.guard(lambda: self._apply(pending, touched))
            except BaseException:
                self._requeue(pending)
                raise
            finally:
                with self._cond:
                    self._flushing = {}
                    self._cond.notify_all()  # writers waiting for room in the queue
            return len(pending)

    def _requeue(self, batch: dict[str, Record]) -> None:
        """Put a batch that failed back in the queue; newer writes win, the bound holds."""
        now = self._clock()
        with self._cond:
            room = self._queue_size - len(self._pending)
            for key, record in batch.items():
                if key in self._pending or record.expires_at <= now:
                    continue
                if room <= 0:
                    self.dropped += 1
                    continue
                self._pending[key] = record
                room -= 1

    def _apply(self, pending: dict[str, Record], touched: dict[str, float]) -> None:
        now = self._clock()
        upserts: list[tuple[Any, ...]] = []
        tags: list[tuple[str, str]] = []
        for key, record in pending.items():
            upserts.append((key, bytes(record.payload), record.expires_at, record.user,
                            len(record.payload), now))
            all_tags = set(record.tags)
            if record.user is not None:
                all_tags.add(user_tag(record.user))
            tags.extend((tag, key) for tag in all_tags)
        with self._file.tx() as conn:
            if upserts:
                # Rows being replaced: their old size leaves the total, their old tags go.
                old = self._existing(conn, [u[0] for u in upserts])
                if old:
                    conn.executemany("DELETE FROM tags WHERE key = ?", [(k,) for k in old])
                conn.executemany(_UPSERT, upserts)
                conn.executemany("INSERT OR IGNORE INTO tags (tag, key) VALUES (?, ?)", tags)
                added = sum(u[4] for u in upserts) - sum(old.values())
                conn.execute("UPDATE meta SET value = value + ? WHERE name = 'bytes'", (added,))
            if touched:
                # list() copies in one step: a late reader may still add to this dict.
                conn.executemany("UPDATE items SET accessed_at = ? WHERE key = ?",
                                 [(t, k) for k, t in list(touched.items())])
            self._evict(conn)

    @staticmethod
    def _existing(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
        """Size by key of those of ``keys`` that have a row."""
        found: dict[str, int] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(conn.execute(f"SELECT key, size FROM items WHERE key IN ({marks})", chunk))
        return found

    def _evict(self, conn: sqlite3.Connection) -> None:
        used = int(conn.execute("SELECT value FROM meta WHERE name = 'bytes'").fetchone()[0])
        while used > self.max_bytes:
            # Oldest accesses first, in chunks sized to what must go (at least 64 rows).
            removed = conn.execute(
                "DELETE FROM items WHERE key IN (SELECT key FROM items ORDER BY accessed_at "
                "LIMIT 64)").rowcount
            if not removed:
                break
            self.evictions += removed
            used = int(conn.execute("SELECT value FROM meta WHERE name = 'bytes'").fetchone()[0])

    def close(self) -> None:
        """Refuse new writes and stop the thread (what is queued stays for :meth:`flush`)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
