"""L3: an sqlite file in WAL mode that survives reboots; the tier others call.

The file and its quarantine are :mod:`cache.tiers.sqlite.file`'s, the queued writes and
the thread that applies them :mod:`cache.tiers.sqlite.writer`'s; this module answers the
tier contract over both, and keeps the disk-only operations (GC, policy restriction,
re-encryption, metadata, salts).

``secure_delete`` zeroes deleted content and a forget ends with a truncating checkpoint,
so a forgotten user's blobs leave both the database file and its WAL; their salt lives in
a separate file (:mod:`cache.salts`), so copies of this one can't be read after a forget
either.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from cache.errors import TierUnavailable
from cache.salts import SaltStore
from cache.tiers.base import Clock, Record, wall_clock
from cache.tiers.sqlite.file import SqliteFile
from cache.tiers.sqlite.writer import WriteQueue

log = logging.getLogger(__name__)

_PENDING = "forgets.pending"
_SELECT = "SELECT blob, expires_at, user, size FROM items WHERE key = ? AND expires_at > ?"


class SqliteTier:
    """L3: WAL sqlite with a batching writer thread, LRU size cap, GC and quarantine."""

    name = "l3"

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 1 << 30,
        clock: Clock = wall_clock,
        batch_size: int = 512,
        flush_interval: float = 0.05,
        queue_size: int = 20000,
        gc_interval: float = 60.0,
        touch_interval: float = 1.0,
        on_quarantine: Callable[[Path], None] | None = None,
        quarantine_ttl: float = 86400.0,
    ) -> None:
        """
        Args:
            path: the database file; its folder is created.
            max_bytes: cap on the summed blob sizes; least recently used rows go first.
            clock: the clock expiries are measured on.
            batch_size: queued writes that trigger a flush.
            flush_interval: seconds a queued write may wait before it is flushed.
            queue_size: queued writes beyond which ``set`` waits for the writer.
            gc_interval: seconds between removals of expired rows by the writer.
            touch_interval: seconds between the writer's updates of read rows' last access
                (the LRU order): at thousands of reads a second, updating every
                ``flush_interval`` costs the readers CPU and the card writes for no better
                eviction.
            on_quarantine: called with the new name of a file moved aside as corrupt.
            quarantine_ttl: seconds a file moved aside is kept (for a look at what went
                wrong) before it is deleted; a forget deletes every such file at once.
        """
        self.path = Path(path)
        self._clock = clock
        self._gc_interval = gc_interval
        self._quarantine_ttl = quarantine_ttl
        self.file = SqliteFile(self.path, on_quarantine=on_quarantine)
        self.writes = WriteQueue(self.file, clock=clock, max_bytes=max_bytes,
                                 batch_size=batch_size, flush_interval=flush_interval,
                                 queue_size=queue_size, touch_interval=touch_interval,
                                 housekeeping=self._housekeeping)
        self.salts = SaltStore(self.path.with_name(f"{self.path.stem}-salts{self.path.suffix}"))
        self.pending_forgets: dict[str, set[str]] = {}
        """Users whose rows could not be deleted yet (their salt is already gone), with the
        keys of their writes that were dropped from the queue."""
        self._last_check = self._last_gc = 0.0
        self._pending_saved = False

    def start(self) -> Self:
        """Open the file (quarantining a corrupt one) and the salts file; start the writer.

        Forgets an earlier run could not finish are taken up again, and files moved aside
        longer ago than ``quarantine_ttl`` are deleted.
        """
        self.file.open()
        try:
            self.salts.open()
        except BaseException:
            self.file.close()
            raise
        self._load_pending()
        self._remove_copies_logged(older_than=self._quarantine_ttl)
        self._last_check = self._last_gc = time.monotonic()
        self.writes.start()
        return self

    @property
    def max_bytes(self) -> int:
        """Cap on the summed blob sizes."""
        return self.writes.max_bytes

    @property
    def evictions(self) -> int:
        """Rows evicted to stay within ``max_bytes``."""
        return self.writes.evictions

    @property
    def quarantined(self) -> int:
        """Files this process moved aside as corrupt."""
        return self.file.quarantined

    # -- the tier contract ---------------------------------------------------------------

    def queued(self, key: str) -> Record | None:
        """The live record written at ``key`` and not yet in the file (no I/O)."""
        queued = self.writes.queued(key)
        return None if queued is None else self._live(queued, self._clock())

    @staticmethod
    def _live(queued: Record, now: float) -> Record | None:
        """A copy of a queued record (the reader changes what it reads), unless expired."""
        if queued.expires_at <= now:
            return None
        return Record(queued.payload, queued.expires_at, queued.tags, queued.user, queued.size)

    def get(self, key: str) -> Record | None:
        queued = self.writes.queued(key)
        now = self._clock()
        if queued is not None:  # newer than the file's row, if any
            return self._live(queued, now)
        if not self.file.is_open:
            raise TierUnavailable("sqlite tier is closed")
        try:
            row = self.file.reader().execute(_SELECT, (key, now)).fetchone()
        except (sqlite3.Error, OSError):  # quarantine if need be, and say why in one place
            row = self.file.guard(lambda: self.file.reader().execute(_SELECT,
                                                                     (key, now)).fetchone())
        if row is None:
            return None
        self.writes.touch(key, now)
        return Record(row[0], row[1], (), row[2], row[3])

    def set(self, key: str, record: Record) -> None:
        if record.expires_at <= self._clock():
            return
        if not isinstance(record.payload, bytes | bytearray | memoryview):
            raise TypeError("the sqlite tier stores sealed blobs (bytes)")
        self.writes.put(key, record)

    def flush(self, *, touches: bool = True) -> int:
        """Write everything queued now, in one transaction; the number of writes applied."""
        return self.writes.flush(touches=touches)

    def delete(self, key: str) -> bool:
        with self.file.write_lock:
            self.flush()
            return bool(self.file.write("DELETE FROM items WHERE key = ?", (key,)))

    def invalidate_tag(self, tag: str) -> int:
        with self.file.write_lock:
            self.flush()
            return self.file.write(
                "DELETE FROM items WHERE key IN (SELECT key FROM tags WHERE tag = ?)", (tag,))

    def forget_user(self, user: str) -> int:
        """Destroy the user's salt, then delete their rows and every file moved aside.

        The salt goes first, in its own file: once it is gone, whatever rows remain are
        unreadable, so a busy or full disk can delay the deletion but not the forgetting.
        Until all of it is done the forget is pending: retried by the writer and by the next
        start, counted in :attr:`pending_forgets`, and :class:`TierUnavailable` is raised.
        """
        # The batch being written is left alone (its rows are deleted right after it).
        unwritten = self.writes.take_user(user)
        # A write dropped here may have been overwriting an older row of the same key,
        # perhaps not theirs: that row is stale too, and goes with theirs.
        self.pending_forgets.setdefault(user, set()).update(unwritten)
        with self.file.write_lock:
            try:
                return len(unwritten) + self._forget(user)
            except TierUnavailable:
                self._save_pending()
                raise

    def _forget(self, user: str) -> int:
        """One attempt at a pending forget; the rows deleted. Hold the write lock."""
        self.salts.delete(user)
        keys = sorted(self.pending_forgets.get(user, set()))

        def rows() -> int:
            with self.file.tx() as conn:
                count = conn.execute("DELETE FROM items WHERE user = ?", (user,)).rowcount
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    conn.execute(f"DELETE FROM items WHERE key IN ({','.join('?' * len(chunk))})",
                                 chunk)
            return int(count)

        count = self.file.guard(rows)
        # A file moved aside cannot be changed, only deleted: it goes whole. One that cannot
        # be deleted is unreadable all the same (the salt is gone), and is tried again later.
        self._remove_copies_logged()
        # Old versions of the deleted pages still sit in the WAL: copy the zeroed pages
        # back and cut the WAL file to nothing.
        if not self.file.checkpoint():
            log.warning("forget: WAL checkpoint incomplete (readers active); the WAL is cut at "
                        "the next checkpoint")
        self.pending_forgets.pop(user, None)
        if self._pending_saved:
            self._save_pending()
        return count

    def _save_pending(self) -> None:
        """Keep the pending forgets in the file, so a restart takes them up (best effort: a
        full disk keeps them in memory only, retried all the same)."""
        value = json.dumps({user: sorted(keys) for user, keys in self.pending_forgets.items()})
        try:
            self.set_meta(_PENDING, value)
        except TierUnavailable as error:
            log.warning("pending forgets kept in memory only: %s", error)
        else:
            self._pending_saved = bool(self.pending_forgets)

    def _load_pending(self) -> None:
        try:
            saved = json.loads(self.get_meta(_PENDING) or "{}")
        except (TierUnavailable, ValueError) as error:
            log.error("pending forgets of an earlier run unreadable: %s", error)
            return
        for user, keys in saved.items():
            self.pending_forgets.setdefault(str(user), set()).update(map(str, keys))
        self._pending_saved = bool(saved)
        if self.pending_forgets:
            log.warning("%d forgets of an earlier run are finished now", len(saved))

    def copies(self) -> list[Path]:
        """Files moved aside as corrupt (each with its WAL and shared-memory files)."""
        return sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*"))

    def _remove_copies_logged(self, *, older_than: float | None = None) -> None:
        try:
            self.remove_copies(older_than=older_than)
        except TierUnavailable as error:
            log.error("%s", error)

    def remove_copies(self, *, older_than: float | None = None) -> int:
        """Delete files moved aside (those modified more than ``older_than`` seconds ago,
        or all); the number of database files deleted."""
        cutoff = None if older_than is None else time.time() - older_than
        removed = 0
        for path in self.copies():
            try:
                if cutoff is not None and path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise TierUnavailable(f"sqlite: cannot delete {path}: {error}") from error
            removed += not path.name.endswith(("-wal", "-shm"))
        if removed:
            log.info("deleted %d file(s) moved aside from %s", removed, self.path)
        return removed

    def _housekeeping(self) -> None:
        """The writer thread's work after each flush: retried forgets, file check, GC. Each
        step is tried whatever became of the others."""
        for user in list(self.pending_forgets):
            try:
                with self.file.write_lock:
                    self._forget(user)
            except TierUnavailable as error:
                log.warning("a pending forget is retried later: %s", error)
        if time.monotonic() - self._last_check >= 1.0:
            self._last_check = time.monotonic()
            self.file.check()
        if time.monotonic() - self._last_gc >= self._gc_interval:
            self._last_gc = time.monotonic()
            self._remove_copies_logged(older_than=self._quarantine_ttl)
            self.gc()

    def rotate(self) -> int:
        """A clean slate without stopping: every item goes with the old file, replaced by an
        empty one (:meth:`SqliteFile.replace`). What the file keeps besides items (purges
        not yet sent, the position in the event stream, forgets still to do) is carried
        over. The items dropped."""
        with self.file.write_lock:
            self.writes.flush()
            rows = int(self.file.read("SELECT count(*) FROM items")[0][0])
            meta = [(str(name), str(value)) for name, value in self.file.read(
                "SELECT name, value FROM meta WHERE name != 'bytes'")]
            self.file.replace(meta)
        log.info("disk tier %s rotated: %d items dropped", self.path, rows)
        return rows

    def close(self) -> None:
        if not self.file.is_open:
            return
        self.writes.close()
        with self.file.write_lock:
            try:
                self.flush()
            except TierUnavailable as error:
                log.error("sqlite cache closed with %d writes not written: %s",
                          self.writes.waiting, error)
            for user in list(self.pending_forgets):
                try:
                    self._forget(user)
                except TierUnavailable as error:
                    log.error("a forget is still pending (kept for the next start): %s", error)
            if self.pending_forgets:
                self._save_pending()
            self.file.close()
        self.salts.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- maintenance ---------------------------------------------------------------------

    def gc(self) -> int:
        """Remove expired rows; the number removed."""
        return self.file.write("DELETE FROM items WHERE expires_at <= ?", (self._clock(),))

    def restrict(self, *, expires_by: float, keep: bool, users: list[str] | None = None,
                 others_than: list[str] | None = None) -> int:
        """Cap the expiry of some rows at ``expires_by``, or delete them when not ``keep``.

        The rows: those of ``users``; with ``others_than``, those of every user not named;
        with neither, the shared ones. The number of rows changed.
        """
        if others_than is not None:
            marks = ",".join("?" * len(others_than))
            where, params = f"user IS NOT NULL AND user NOT IN ({marks})", list(others_than)
        elif users is not None:
            where, params = f"user IN ({','.join('?' * len(users))})", list(users)
        else:
            where, params = "user IS NULL", []
        with self.file.write_lock:
            self.flush()
            if keep:
                return self.file.write(
                    f"UPDATE items SET expires_at = ? WHERE {where} AND expires_at > ?",
                    [expires_by, *params, expires_by])
            return self.file.write(f"DELETE FROM items WHERE {where}", params)

    def get_salt(self, user: str) -> bytes | None:
        """The salt of ``user`` stored on this node, if any."""
        return self.salts.get(user)

    def put_salt(self, user: str, salt: bytes) -> bytes:
        """Store ``salt`` for ``user`` unless one is there; the salt now stored."""
        return self.salts.put(user, salt)

    def get_meta(self, name: str) -> str | None:
        """A value of the small metadata table."""
        rows = self.file.read("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: str) -> None:
        """Store a value in the metadata table."""
        self.file.write("INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    def meta_items(self, prefix: str) -> list[tuple[str, str]]:
        """The metadata values whose names start with ``prefix``, by name."""
        return [(str(n), str(v)) for n, v in self.file.read(
            "SELECT name, value FROM meta WHERE name >= ? AND name < ? ORDER BY name",
            (prefix, prefix + "\U0010ffff"))]

    def delete_meta(self, name: str) -> None:
        """Remove a value of the metadata table."""
        self.file.write("DELETE FROM meta WHERE name = ?", (name,))

    def reseal(self, reseal: Callable[[str, bytes, str | None], bytes | None], *,
               stale: Callable[[bytes], bool], batch: int = 500) -> int:
        """Rewrite every row whose blob is ``stale``; the number rewritten.

        ``reseal(key, blob, user)`` returns the new blob, or ``None`` for a blob that
        can't be opened (that row is deleted). Which blobs are stale is the codec's to say:
        this tier does not know the blob layout.
        """
        done = 0
        after = ""
        with self.file.write_lock:
            self.flush()
            while True:
                rows = self.file.read(
                    "SELECT key, blob, user FROM items WHERE key > ? ORDER BY key LIMIT ?",
                    (after, batch))
                if not rows:
                    return done
                after = rows[-1][0]
                todo = [(k, bytes(b), u) for k, b, u in rows if stale(bytes(b))]

                def rewrite(todo: list[tuple[str, bytes, str | None]] = todo) -> int:
                    count = 0
                    with self.file.tx() as conn:
                        for key, blob, user in todo:
                            new = reseal(key, blob, user)
                            if new is None:
                                conn.execute("DELETE FROM items WHERE key = ?", (key,))
                                continue
                            conn.execute("UPDATE items SET blob = ?, size = ? WHERE key = ?",
                                         (new, len(new), key))
                            conn.execute("UPDATE meta SET value = value + ? WHERE name = 'bytes'",
                                         (len(new) - len(blob),))
                            count += 1
                    return count

                if todo:
                    done += self.file.guard(rewrite)

    def stats(self) -> dict[str, Any]:
        """Rows, bytes, file sizes and quarantines."""
        rows = self.file.read("SELECT count(*) FROM items")[0][0]
        used = self.file.read("SELECT value FROM meta WHERE name = 'bytes'")[0][0]
        file_bytes, wal_bytes = _size(self.path), _size(Path(str(self.path) + "-wal"))
        return {
            "rows": int(rows), "bytes": int(used), "max_bytes": self.max_bytes,
            "file_bytes": file_bytes, "wal_bytes": wal_bytes,
            "queued": self.writes.waiting, "evictions": self.evictions,
            "quarantined": len([p for p in self.copies()
                                if not p.name.endswith(("-wal", "-shm"))]),
            "quarantined_here": self.quarantined, "dropped": self.writes.dropped,
            "forgets_pending": len(self.pending_forgets),
        }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
