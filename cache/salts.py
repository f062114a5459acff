"""Per-user salts: kept in a small sqlite file of their own, apart from the cached data, and
agreed on by every node through Redis.

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cache.crypto import new_salt
from cache.errors import TierUnavailable

if TYPE_CHECKING:
    from cache.tiers.redis import RedisTier
    from cache.tiers.sqlite import SqliteTier

log = logging.getLogger(__name__)


def private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by this user only, if it does not exist.

    sqlite gives its WAL and shared-memory files the mode of the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_corruption(error: sqlite3.Error) -> bool:
    """Does ``error`` mean a bad file? (Locked, busy, full, I/O or a closed handle do not.)"""
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT_CODES


class SaltStore:
    """User id -> salt, durable (``synchronous=FULL``), thread-safe."""

    def __init__(self, path: Path) -> None:
        """``path``: the salts file; created when missing, deleted when corrupt."""
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (or create) the file."""
        with self._lock:
            if self._conn is None:
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
                    raise TierUnavailable(f"salts file {self.path}: {error}") from error
                # Not moved aside like the data file: a copy would keep forgotten users' salts.
                log.error("salts file %s is unusable (%s): deleted; cached items of every user "
                          "will be recomputed", self.path, error)
                self.path.unlink()
        raise AssertionError("unreachable")

    def _run(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        if self._conn is None:
            raise TierUnavailable(f"salts file {self.path} is not open")
        try:
            return self._conn.execute(sql, params)
        except sqlite3.DatabaseError as error:
            if is_corruption(error):
                # Damaged under us: deleted like one found damaged at start, which forgets
                # every user (their items become unreadable), and the operation is retried.
                log.error("salts file %s is damaged (%s): deleted; cached items of every user "
                          "will be recomputed", self.path, error)
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                self._conn = self._open()
            raise TierUnavailable(f"salts file {self.path}: {error}") from error

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
            if self._conn is not None:
                self._conn.close()
            self._conn = None


class Salts:
    """The salt of each user as every node agrees on it, remembered in memory.

    A user's salt is taken from this node's disk, else made; Redis then keeps the one every
    node uses (the first stored wins). A salt read from disk for a user forgotten elsewhere
    since (Redis holds a tombstone) dies with their rows here, and the user starts afresh.
    While Redis is unreachable a salt is used unshared, and dropped from memory when Redis
    is back (:meth:`reshare`), so that the shared one wins.
    """

    def __init__(self, *, disk: SqliteTier | None, redis: RedisTier | None,
                 on_redis_down: Callable[[], None] = lambda: None) -> None:
        """``on_redis_down``: called when Redis could not be asked (for the metrics)."""
        self._disk = disk
        self._redis = redis
        self._on_redis_down = on_redis_down
        self._salts: dict[str, bytes] = {}
        self._unshared: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, user: str) -> bytes:
        """The salt of ``user``, made on first use."""
        salt = self._salts.get(user)
        if salt is not None:
            return salt
        with self._lock:
            salt = self._salts.get(user)
            if salt is not None:
                return salt
            local: bytes | None = None
            if self._disk is not None:
                with contextlib.suppress(TierUnavailable):
                    local = self._disk.get_salt(user)
            candidate = local or new_salt()
            shared = False
            if self._redis is not None:
                try:
                    found = self._redis.salt(user, candidate, from_disk=local is not None)
                    if found is None:
                        # Forgotten elsewhere since this disk last saw them: their salt and
                        # rows here go, and they start afresh.
                        log.warning("user forgotten elsewhere: dropping their items on this disk")
                        found = self._redis.salt(user, new_salt(), from_disk=False)
                    candidate = found or new_salt()
                    shared = found is not None
                except TierUnavailable:
                    self._on_redis_down()
            if self._disk is not None and candidate != local:
                with contextlib.suppress(TierUnavailable):
                    if local is not None:  # rows sealed under the old salt can't be read now
                        self._disk.forget_user(user)
                    candidate = self._disk.put_salt(user, candidate)
            self._salts[user] = candidate
            if not shared:
                self._unshared.add(user)
            return candidate

    def forget(self, user: str) -> None:
        """Drop the salt of ``user`` held in memory."""
        with self._lock:
            self._salts.pop(user, None)
            self._unshared.discard(user)

    def reshare(self) -> None:
        """Drop the salts used while Redis was unreachable: Redis's may differ."""
        with self._lock:
            for user in self._unshared:
                self._salts.pop(user, None)
            self._unshared.clear()
