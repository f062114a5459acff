"""The disk tier's database file: its schema, connections and transactions, and quarantine.

One writer connection (used under :attr:`SqliteFile.write_lock`) and one reader connection
per thread. ``secure_delete`` zeroes deleted content. A file that is corrupt or not a
database is moved aside (quarantined) and a fresh one started; every sqlite or OS error
leaves here as :class:`~cache.errors.TierUnavailable`, with the original as its cause.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cache.errors import TierUnavailable
from cache.salts import is_corruption, private_file

log = logging.getLogger(__name__)
T = TypeVar("T")

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

PAGE_SIZE = 16384
"""Only takes effect on a new file. Blobs of 1-2 KB waste half of a 4 KB page and each
costs a page in the WAL; 16 KB pages more than double the write rate and suit an SD card's
erase blocks better."""

WAL_BYTES = 2 * 1024 * 1024
"""How far the WAL may grow between checkpoints, and the size it is cut back to."""

_MAGIC = b"SQLite format 3\x00"


class SqliteFile:
    """The database file of the disk tier, its connections, and quarantine."""

    def __init__(self, path: Path, *,
                 on_quarantine: Callable[[Path], None] | None = None) -> None:
        """``path``: the database file (its folder is created on :meth:`open`);
        ``on_quarantine``: called with the new name of a file moved aside as corrupt."""
        self.path = Path(path)
        self._on_quarantine = on_quarantine
        self.write_lock = threading.RLock()
        """Held by whoever uses the writer connection."""
        self._local = threading.local()
        self._generation = 0
        self._writer: sqlite3.Connection | None = None
        self.quarantined = 0
        """Files this process moved aside."""

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=5.0)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA secure_delete = ON")
        # sqlite's own 2 MiB of page cache per connection. Each thread that reads has its own
        # connection, and each filled its cache as the file grew: with 8 MiB, a service under
        # load held 46 MB more after five minutes, and kept growing; a point read was no
        # faster (10.5 against 10.4 us in bench_cache, 49.5 against 50.2 in bench_peers).
        conn.execute("PRAGMA cache_size = -2048")
        return conn

    def open(self) -> None:
        """Open (or create) the file; a corrupt one is moved aside and a fresh one made."""
        with self.write_lock:
            self._writer = self._open_writer()

    def _open_writer(self) -> sqlite3.Connection:
        for attempt in (1, 2):
            conn = None
            try:
                private_file(self.path)
                conn = self._connect()
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                # The WAL is checkpointed every WAL_BYTES of pages (sqlite counts 1000 pages
                # by default: 16 MB of our pages) and cut back to that size afterwards.
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BYTES // PAGE_SIZE}")
                conn.execute(f"PRAGMA journal_size_limit = {WAL_BYTES}")
                conn.executescript(SCHEMA)
                return conn
            except sqlite3.Error as error:
                if conn is not None:
                    conn.close()
                if attempt == 2 or not is_corruption(error):
                    raise TierUnavailable(f"sqlite {self.path}: {error}") from error
                self._move_aside(error)
            except OSError as error:
                if conn is not None:
                    conn.close()
                raise TierUnavailable(f"sqlite {self.path}: {error}") from error
        raise AssertionError("unreachable")

    @property
    def writer(self) -> sqlite3.Connection:
        """The writer connection (use it under :attr:`write_lock`)."""
        if self._writer is None:
            raise TierUnavailable("sqlite tier is closed")
        return self._writer

    @property
    def is_open(self) -> bool:
        """Between :meth:`open` and :meth:`close`."""
        return self._writer is not None

    def reader(self) -> sqlite3.Connection:
        """This thread's reader connection (made anew after a quarantine)."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != self._generation:
            if conn is not None:
                conn.close()
            conn = local.conn = self._connect()
            local.generation = self._generation
        return conn

    # -- quarantine ----------------------------------------------------------------------

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
        with self.write_lock:
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.close()
            try:
                self._move_aside(error)
            except OSError as move_error:
                raise TierUnavailable(f"sqlite {self.path} is corrupt and cannot be moved "
                                      f"aside: {move_error}") from move_error
            self._writer = self._open_writer()

    def replace(self, meta: list[tuple[str, str]]) -> None:
        """A clean slate: a new empty file, holding ``meta``, takes this one's place.

        It is made and filled beside this one, then renamed over it (one atomic step: the
        path never names a missing or half-made file). This file's WAL and shared-memory
        index are moved aside first, so that no connection ever reads them against the new
        file; readers of other threads reconnect on their next read. The old file is gone
        with its name (its items were sealed: nothing on it is in clear)."""
        with self.write_lock:
            fresh = self.path.with_name(f"{self.path.name}.new")
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(fresh) + suffix).unlink(missing_ok=True)
            private_file(fresh)
            conn = sqlite3.connect(fresh, isolation_level=None)
            try:
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(SCHEMA)
                conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                                 meta)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()  # the last connection: its WAL is folded in and removed
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.close()
                self._writer = None
            old = self.path.with_name(f"{self.path.name}.rotated")
            for suffix in ("-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.replace(Path(str(old) + suffix))
            fresh.replace(self.path)
            self._generation += 1
            self._writer = self._open_writer()
            for suffix in ("-wal", "-shm"):
                Path(str(old) + suffix).unlink(missing_ok=True)

    def check(self) -> bool:
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
            raise TierUnavailable(f"sqlite {self.path}: {error}") from error
        if header == _MAGIC:
            return False
        with self.write_lock:
            if header:
                self._quarantine(sqlite3.DatabaseError("file header is not sqlite's"))
            else:
                log.error("sqlite cache %s vanished; starting a fresh file", self.path)
                if self._writer is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._writer.close()
                self._generation += 1
                self._writer = self._open_writer()
        return True

    def guard(self, op: Callable[[], T]) -> T:
        """Run ``op``; quarantine a corrupt file, translate sqlite and OS errors."""
        if self._writer is None:
            raise TierUnavailable("sqlite tier is closed")
        try:
            return op()
        except sqlite3.Error as error:
            if is_corruption(error):
                self._quarantine(error)
            raise TierUnavailable(f"sqlite: {error}") from error
        except OSError as error:
            raise TierUnavailable(f"sqlite {self.path}: {error}") from error

    # -- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection (hold :attr:`write_lock`)."""
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # sqlite may have rolled back already (disk full)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def write(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement in its own transaction, guarded; the rows it changed."""
        def run() -> int:
            with self.tx() as conn:
                return int(conn.execute(sql, tuple(params)).rowcount)

        with self.write_lock:
            return self.guard(run)

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """The rows of one query on this thread's reader, guarded."""
        return self.guard(lambda: self.reader().execute(sql, tuple(params)).fetchall())

    def checkpoint(self) -> bool:
        """Copy the WAL back into the file and cut it to nothing; false if readers kept part."""
        with self.write_lock:
            busy = self.guard(
                lambda: self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
        return not busy

    def close(self) -> None:
        """Checkpoint and close the writer, and this thread's reader."""
        with self.write_lock:
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._writer.close()
                self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
