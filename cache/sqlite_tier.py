"""L3: an sqlite file in WAL mode that survives reboots.

Writes are queued and applied by one writer thread in batches (one transaction
each), flushed by size, by interval and on close: nothing accepted is lost on a
clean shutdown. Reads use one connection per thread and see queued writes
first, so a queued delete is never undone by a read of the old row.

A running byte total is kept per write batch (and by a trigger on delete, which
also drops the item's tags); the size cap evicts the least recently used rows.
``secure_delete`` zeroes deleted content and a forget ends with a truncating
checkpoint, so a forgotten user's blobs leave both the database file and its
WAL; their salt lives in a separate file
(:mod:`cache.salts`), so copies of this one can't be read after a forget either.
A file that is corrupt or not a database is moved aside and a fresh one started.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cache.errors import TierUnavailable
from cache.salts import SaltStore, private_file
from cache.tier import Clock, Record, wall_clock

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    blob BLOB NOT NULL,
    expires_at REAL NOT NULL,
    user TEXT,
    size INTEGER NOT NULL,
    accessed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_expiry ON items (expires_at);
CREATE INDEX IF NOT EXISTS items_access ON items (accessed_at);
CREATE INDEX IF NOT EXISTS items_user ON items (user) WHERE user IS NOT NULL;
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (tag, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key ON tags (key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('bytes', '0');
CREATE TRIGGER IF NOT EXISTS items_del AFTER DELETE ON items BEGIN
    UPDATE meta SET value = value - OLD.size WHERE name = 'bytes';
    DELETE FROM tags WHERE key = OLD.key;
END;
"""

_SELECT = "SELECT blob, expires_at, user, size FROM items WHERE key = ? AND expires_at > ?"

_UPSERT = """
INSERT INTO items (key, blob, expires_at, user, size, accessed_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET blob = excluded.blob, expires_at = excluded.expires_at,
    user = excluded.user, size = excluded.size, accessed_at = excluded.accessed_at
"""


_MAGIC = b"SQLite format 3\x00"


_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def _is_corruption(error: sqlite3.Error) -> bool:
    # Only these codes mean a bad file; locked, busy, full, I/O or a closed handle are not.
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT_CODES


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
        """
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_size = queue_size
        self._gc_interval = gc_interval
        self._touch_interval = touch_interval
        self._on_quarantine = on_quarantine
        self._cond = threading.Condition()
        self._pending: dict[str, Record] = {}
        self._flushing: dict[str, Record] = {}  # the batch being written, still to be read
        self._touched: dict[str, float] = {}
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._generation = 0
        self._closed = False  # no new writes accepted
        self._shut = False  # connections closed
        self.evictions = 0
        self.quarantined = 0
        self.dropped = 0
        """Queued writes given up while the file could not be written (the queue is bounded)."""
        self.pending_forgets: dict[str, set[str]] = {}
        """Users whose rows could not be deleted yet (their salt is already gone), with the
        keys of their writes that were dropped from the queue."""
        self.salts = SaltStore(self.path.with_name(f"{self.path.stem}-salts{self.path.suffix}"))
        self._writer = self._open_writer()
        self._thread = threading.Thread(target=self._run, name="l3-writer", daemon=True)
        self._thread.start()

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=5.0)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA secure_delete = ON")
        # 8 MiB of page cache per connection (the default is 2): index pages stay hot, which
        # takes about a quarter off a point read.
        conn.execute("PRAGMA cache_size = -8192")
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        for attempt in (1, 2):
            conn = None
            try:
                private_file(self.path)
                conn = self._connect()
                # Only takes effect on a new file. Blobs of 1-2 KB waste half of a 4 KB page and
                # each costs a page in the WAL; 16 KB pages more than double the write rate and
                # suit an SD card's erase blocks better.
                conn.execute("PRAGMA page_size = 16384")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.executescript(SCHEMA)
                return conn
            except sqlite3.Error as error:
                if conn is not None:
                    conn.close()
                if attempt == 2 or not _is_corruption(error):
                    raise TierUnavailable(f"sqlite {self.path}: {error}") from None
                self._move_aside(error)
            except OSError as error:
                if conn is not None:
                    conn.close()
                raise TierUnavailable(f"sqlite {self.path}: {error}") from None
        raise AssertionError("unreachable")

    def _reader(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != self._generation:
            if conn is not None:
                conn.close()
            conn = local.conn = self._connect()
            local.generation = self._generation
        return conn

    def _move_aside(self, error: BaseException) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{self.quarantined}")
        log.error("sqlite cache %s is unusable (%s): moved to %s, starting a fresh file",
                  self.path, error, target)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(target) + suffix))
        self.quarantined += 1
        self._generation += 1
        if self._on_quarantine is not None:
            self._on_quarantine(target)

    def _quarantine(self, error: BaseException) -> None:
        with self._write_lock:
            with contextlib.suppress(sqlite3.Error):
                self._writer.close()
            try:
                self._move_aside(error)
            except OSError as move_error:
                raise TierUnavailable(f"sqlite {self.path} is corrupt and cannot be moved "
                                      f"aside: {move_error}") from None
            self._writer = self._open_writer()

    def check_file(self) -> bool:
        """Quarantine the file if its header is no longer sqlite's; true when it was.

        Open connections keep working from cached pages and the WAL index when the file
        is overwritten under them, so the header is checked before writing to it.
        """
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(_MAGIC))
        except FileNotFoundError:
            header = b""
        except OSError as error:
            raise TierUnavailable(f"sqlite {self.path}: {error}") from None
        if header == _MAGIC:
            return False
        with self._write_lock:
            if header:
                self._quarantine(sqlite3.DatabaseError("file header is not sqlite's"))
            else:
                log.error("sqlite cache %s vanished; starting a fresh file", self.path)
                with contextlib.suppress(sqlite3.Error):
                    self._writer.close()
                self._generation += 1
                self._writer = self._open_writer()
        return True

    def _guard(self, op: Callable[[], Any]) -> Any:
        """Run ``op``; quarantine a corrupt file, translate sqlite and OS errors."""
        if self._shut:
            raise TierUnavailable("sqlite tier is closed")
        try:
            return op()
        except sqlite3.Error as error:
            if _is_corruption(error):
                self._quarantine(error)
            raise TierUnavailable(f"sqlite: {error}") from None
        except OSError as error:
            raise TierUnavailable(f"sqlite {self.path}: {error}") from None

    # -- the tier contract ---------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        # No lock on this path: a dict read or write is atomic, and the writer swaps whole
        # dicts. A touch that lands in a dict just swapped out is lost, which only blurs LRU.
        queued = self._pending.get(key) or self._flushing.get(key)
        now = self._clock()
        if queued is not None:
            if queued.expires_at <= now:
                return None
            return Record(queued.payload, queued.expires_at, queued.tags, queued.user, queued.size)
        if self._shut:
            raise TierUnavailable("sqlite tier is closed")
        try:
            row = self._reader().execute(_SELECT, (key, now)).fetchone()
        except (sqlite3.Error, OSError):  # quarantine if need be, and say why in one place
            row = self._guard(lambda: self._reader().execute(_SELECT, (key, now)).fetchone())
        if row is None:
            return None
        self._touched[key] = now
        return Record(row[0], row[1], (), row[2], row[3])

    def set(self, key: str, record: Record) -> None:
        if record.expires_at <= self._clock():
            return
        if not isinstance(record.payload, bytes | bytearray | memoryview):
            raise TypeError("the sqlite tier stores sealed blobs (bytes)")
        self._enqueue(key, record)

    def _enqueue(self, key: str, record: Record) -> None:
        with self._cond:
            if self._closed:
                raise TierUnavailable("sqlite tier is closed")
            if self._queued() >= self._queue_size and key not in self._pending:
                self._cond.notify_all()
                if not self._cond.wait_for(lambda: self._queued() < self._queue_size, 2.0):
                    raise TierUnavailable("sqlite write queue is full")
            self._pending[key] = record
            self._touched.pop(key, None)
            if len(self._pending) >= self._batch_size:
                self._cond.notify_all()

    def _queued(self) -> int:
        return len(self._pending) + len(self._flushing)

    def delete(self, key: str) -> bool:
        with self._write_lock:
            self.flush()
            cur = self._guard(lambda: self._writer.execute("DELETE FROM items WHERE key = ?",
                                                            (key,)))
            return bool(cur.rowcount)

    def invalidate_tag(self, tag: str) -> int:
        with self._write_lock:
            self.flush()
            return int(self._guard(lambda: self._in_tx(
                "DELETE FROM items WHERE key IN (SELECT key FROM tags WHERE tag = ?)", (tag,))))

    def forget_user(self, user: str) -> int:
        """Destroy the user's salt, then delete their rows; retried by the writer if it fails.

        The salt goes first, in its own file: once it is gone, whatever rows remain are
        unreadable, so a busy or full disk can delay the deletion but not the forgetting.
        """
        self.salts.delete(user)
        with self._cond:
            # The batch being written is left alone (its rows are deleted right after it).
            unwritten = [k for k, r in self._pending.items() if r.user == user]
            for key in unwritten:
                del self._pending[key]
        # A write dropped here may have been overwriting an older row of the same key,
        # perhaps not theirs: that row is stale too, and goes with theirs.
        stale = set(unwritten) | self.pending_forgets.get(user, set())
        try:
            with self._write_lock:
                return len(unwritten) + self._delete_user_rows(user, stale)
        except TierUnavailable:
            with self._cond:  # the writer thread tries again
                self.pending_forgets.setdefault(user, set()).update(unwritten)
            raise

    def _delete_user_rows(self, user: str, stale: Iterable[str]) -> int:
        keys = sorted(stale)

        def forget() -> int:
            with self._tx() as conn:
                count = conn.execute("DELETE FROM items WHERE user = ?", (user,)).rowcount
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    conn.execute(f"DELETE FROM items WHERE key IN ({','.join('?' * len(chunk))})",
                                 chunk)
            # Old versions of the deleted pages still sit in the WAL: copy the zeroed pages
            # back and cut the WAL file to nothing.
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:
                log.warning("forget %s: WAL checkpoint incomplete (readers active); the WAL is "
                            "cut at the next checkpoint", user)
            return int(count)

        count = int(self._guard(forget))
        with self._cond:
            self.pending_forgets.pop(user, None)
        return count

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        with self._write_lock:
            try:
                self.flush()
                for user, stale in list(self.pending_forgets.items()):
                    self._delete_user_rows(user, stale)
            except TierUnavailable as error:
                log.error("sqlite cache closed with %d writes not written: %s",
                          len(self._pending), error)
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
            self._shut = True
        self.salts.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Any:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # sqlite may have rolled back already (disk full)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _in_tx(self, sql: str, params: Iterable[Any]) -> int:
        with self._tx() as conn:
            return int(conn.execute(sql, tuple(params)).rowcount)

    def _run(self) -> None:
        last_gc = last_check = last_touch = time.monotonic()
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
                for user, stale in list(self.pending_forgets.items()):
                    with self._write_lock:
                        self._delete_user_rows(user, stale)
                if time.monotonic() - last_check >= 1.0:
                    last_check = time.monotonic()
                    self.check_file()
                if time.monotonic() - last_gc >= self._gc_interval:
                    last_gc = time.monotonic()
                    self.gc()
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
        with self._write_lock:
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
                self.check_file()
                self._guard(lambda: self._apply(pending, touched))
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
                all_tags.add(f"user:{record.user}")
            tags.extend((tag, key) for tag in all_tags)
        with self._tx() as conn:
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

    # -- maintenance ---------------------------------------------------------------------

    def gc(self) -> int:
        """Remove expired rows; the number removed."""
        with self._write_lock:
            now = self._clock()
            return int(self._guard(lambda: self._in_tx(
                "DELETE FROM items WHERE expires_at <= ?", (now,))))

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
        with self._write_lock:
            self.flush()
            if keep:
                return int(self._guard(lambda: self._in_tx(
                    f"UPDATE items SET expires_at = ? WHERE {where} AND expires_at > ?",
                    [expires_by, *params, expires_by])))
            return int(self._guard(lambda: self._in_tx(f"DELETE FROM items WHERE {where}",
                                                       params)))

    def get_salt(self, user: str) -> bytes | None:
        """The salt of ``user`` stored on this node, if any."""
        return self.salts.get(user)

    def put_salt(self, user: str, salt: bytes) -> bytes:
        """Store ``salt`` for ``user`` unless one is there; the salt now stored."""
        return self.salts.put(user, salt)

    def get_meta(self, name: str) -> str | None:
        """A value of the small metadata table."""
        row = self._guard(lambda: self._reader().execute(
            "SELECT value FROM meta WHERE name = ?", (name,)).fetchone())
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        """Store a value in the metadata table."""
        with self._write_lock:
            self._guard(lambda: self._in_tx(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value)))

    def reseal(self, reseal: Callable[[str, bytes, str | None], bytes | None],
               *, current_key_id: int, batch: int = 500) -> int:
        """Re-encrypt every row not sealed under ``current_key_id``; the number rewritten.

        ``reseal(key, blob, user)`` returns the new blob, or ``None`` for a blob that
        can't be opened (that row is deleted).
        """
        done = 0
        marker = bytes([current_key_id])
        with self._write_lock:
            self.flush()
            while True:
                rows = self._guard(lambda: self._writer.execute(
                    "SELECT key, blob, user FROM items WHERE substr(blob, 2, 1) != ? LIMIT ?",
                    (marker, batch)).fetchall())
                if not rows:
                    return done
                def rewrite(rows: list[Any] = rows) -> int:
                    count = 0
                    with self._tx() as conn:
                        for key, blob, user in rows:
                            new = reseal(key, bytes(blob), user)
                            if new is None:
                                conn.execute("DELETE FROM items WHERE key = ?", (key,))
                                continue
                            old = conn.execute("SELECT size FROM items WHERE key = ?",
                                               (key,)).fetchone()[0]
                            conn.execute("UPDATE items SET blob = ?, size = ? WHERE key = ?",
                                         (new, len(new), key))
                            conn.execute("UPDATE meta SET value = value + ? WHERE name = 'bytes'",
                                         (len(new) - old,))
                            count += 1
                    return count

                done += int(self._guard(rewrite))

    def stats(self) -> dict[str, Any]:
        """Rows, bytes, file sizes and quarantines."""
        def read() -> tuple[int, int]:
            conn = self._reader()
            rows = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            used = conn.execute("SELECT value FROM meta WHERE name = 'bytes'").fetchone()[0]
            return int(rows), int(used)
        rows, used = self._guard(read)
        wal = Path(str(self.path) + "-wal")
        return {
            "rows": rows, "bytes": used, "max_bytes": self.max_bytes,
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "queued": len(self._pending), "evictions": self.evictions,
            "quarantined": self.quarantined, "dropped": self.dropped,
            "forgets_pending": len(self.pending_forgets),
        }
