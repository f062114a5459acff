"""A clean slate for the disk tier without stopping the service (``assistant cache
rotate-db``), and the lock by which a running service says it holds the disk tier.

The process holding the disk tier (the running service) is asked through the Redis event
stream to rotate it (:meth:`TieredCache.rotate_disk`), and acknowledges in the new file.
With no answer within three seconds (it reads the stream every second), the command
rotates it itself, unless a service holds the file's lock: then nothing is rotated, since
that service would go on writing to the old file (``force`` goes on all the same).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import secrets
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError
from assistant.settings import Settings
from cache.tiered import ROTATE_DB, ROTATED

log = logging.getLogger(__name__)

ANSWER_SECONDS = 3.0
"""How long the running service has to acknowledge."""


class NotRotated(AssistantError):
    """Nothing was rotated; ``status`` is the command's exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def service_lock_path(settings: Settings) -> Path:
    """The lock a running service holds on its disk tier (``cache rotate-db`` asks it)."""
    return settings.sqlite.path.parent / f"{settings.sqlite.path.name}.service-lock"


def service_lock_held(settings: Settings) -> bool:
    """Does a running service hold this disk tier?"""
    path = service_lock_path(settings)
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class ServiceLock:
    """Held while the service runs, so that other processes know it holds the disk tier."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def start(self) -> ServiceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another service holds %s: two services share one disk tier",
                        self.path)
        self._handle = handle
        return self

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


def rotate_db(settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """Rotate the disk tier of ``settings``; what was done (path, by whom, items dropped)."""
    from assistant.app import cache_of

    path = settings.sqlite.path.resolve()
    token = secrets.token_hex(8)

    def acknowledged() -> str | None:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                row = conn.execute("SELECT value FROM meta WHERE name = ?",
                                   (ROTATED,)).fetchone()
        except sqlite3.Error:
            return None
        return str(row[0]) if row and str(row[0]).startswith(token + ":") else None

    cache, _keys = cache_of(settings, listen=False)
    with cache:
        if cache.sqlite is None:
            raise NotRotated("there is no disk tier ([sqlite] enabled = false)", 2)
        told = cache.announce(ROTATE_DB, f"{socket.gethostname()}|{path}|{token}")
        deadline = time.monotonic() + (ANSWER_SECONDS if told else 0.0)
        while (done := acknowledged()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if done is not None:
            return {"rotated": str(path), "by": "the running service",
                    "dropped": int(done.split(":", 1)[1])}
        if service_lock_held(settings) and not force:
            why = "did not answer" if told else "could not be asked (Redis is unreachable)"
            raise NotRotated(f"a running service holds {path} and {why}: nothing rotated "
                             "(--force rotates it anyway; restart that service after)", 1)
        return {"rotated": str(path), "by": "this command", "dropped": cache.rotate_disk()}
