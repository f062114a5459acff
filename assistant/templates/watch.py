"""Watching the templates folder: every edit of a ``.yaml`` file under it calls back."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

import watchfiles

log = logging.getLogger(__name__)


class TemplateWatcher:
    """Calls ``on_change()`` after each (debounced) edit of a ``.yaml`` file under a folder."""

    def __init__(self, folder: Path, on_change: Callable[[], object]) -> None:
        self.folder = folder
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Start watching, on a thread of its own."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="intents-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        def yaml_only(change: watchfiles.Change, path: str) -> bool:
            return path.endswith(".yaml")

        while not self._stop.is_set():
            try:
                for _changes in watchfiles.watch(self.folder, watch_filter=yaml_only,
                                                 stop_event=self._stop, debounce=200, step=20,
                                                 rust_timeout=500, yield_on_timeout=False,
                                                 raise_interrupt=False):
                    self._on_change()
            except Exception:  # keep watching: one bad moment must not end reloads for good
                log.exception("intent template watcher failed; watching again")
                self._stop.wait(1.0)

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
