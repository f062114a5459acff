"""Per-user salts in a small sqlite file of their own, apart from the cached data.

Keeping the salts out of the data file is what makes a forgotten user's data
unreadable everywhere it may linger: in the data file's free pages, in its WAL,
and in any copy or backup of it. Deleted salts are overwritten in place
(``secure_delete``) and the rollback journal stays in memory, so no old copy of
a page is ever written to another file. A crash during a write can then corrupt
the file; a corrupt salts file is deleted, which costs every user's cached
items (they become unreadable misses), never their privacy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path

from cache.errors import TierUnavailable

log = logging.getLogger(__name__)


def private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by this user only, if it does not exist.

    sqlite gives its WAL and shared-memory files the mode of the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SaltStore:
    """User id -> salt, durable (``synchronous=FULL``), thread-safe."""

    def __init__(self, path: Path) -> None:
        """``path``: the salts file; created when missing, moved aside when corrupt."""
        self.path = path
        self._lock = threading.Lock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        for attempt in (1, 2):
            private_file(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=5.0)
            try:
                conn.execute("PRAGMA journal_mode = MEMORY")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("CREATE TABLE IF NOT EXISTS salts "
                             "(user TEXT PRIMARY KEY, salt BLOB NOT NULL)")
                return conn
            except sqlite3.DatabaseError as error:
                conn.close()
                if attempt == 2 or isinstance(error, sqlite3.OperationalError):
                    raise TierUnavailable(f"salts file {self.path}: {error}") from None
                # Not moved aside like the data file: a copy would keep forgotten users' salts.
                log.error("salts file %s is unusable (%s): deleted; cached items of every user "
                          "will be recomputed", self.path, error)
                self.path.unlink()
        raise AssertionError("unreachable")

    def _run(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.DatabaseError as error:
            raise TierUnavailable(f"salts file {self.path}: {error}") from None

    def get(self, user: str) -> bytes | None:
        """The stored salt of ``user``, if any."""
        with self._lock:
            row = self._run("SELECT salt FROM salts WHERE user = ?", (user,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, user: str, salt: bytes) -> bytes:
        """Store ``salt`` unless ``user`` has one; the salt now stored."""
        with self._lock:
            self._run("INSERT OR IGNORE INTO salts (user, salt) VALUES (?, ?)", (user, salt))
            row = self._run("SELECT salt FROM salts WHERE user = ?", (user,)).fetchone()
        return bytes(row[0])

    def delete(self, user: str) -> bool:
        """Destroy the salt of ``user``; true when there was one."""
        with self._lock:
            return bool(self._run("DELETE FROM salts WHERE user = ?", (user,)).rowcount)

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()
