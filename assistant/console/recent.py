"""The requests answered lately, as the console shows them: when, where, what was
understood and how fast; their words only for sites whose owner allows it, and never a
private user's."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assistant.pipeline import Handled
    from assistant.protocol import AudioRequest, TextRequest


class RecentRequests:
    """A ring of the last ``size`` requests answered (in memory only)."""

    def __init__(self, size: int, *, shown: Iterable[str],
                 private: Callable[[str], bool]) -> None:
        """``shown``: the sites whose requests' text may be shown; ``private``: is this user's
        policy private (their words are never shown)?"""
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._shown = frozenset(shown)
        self._private = private
        self._lock = threading.Lock()

    def record(self, *, site: str, user: str, text: str | None, intent: str | None,
               match: str, ms: float, spoken: bool) -> None:
        words = text if site in self._shown and not self._private(user) else None
        with self._lock:
            self._ring.append({"time": round(time.time(), 3), "site": site, "text": words,
                               "intent": intent, "match": match, "ms": round(ms, 1),
                               "spoken": spoken, "_user": user})

    def answered(self, request: TextRequest | AudioRequest, handled: Handled) -> None:
        """A request the MQTT service answered (its ``answered`` hook)."""
        spoken = handled.transcript is not None
        self.record(site=request.site, user=request.user,
                    text=handled.transcript if spoken else getattr(request, "text", None),
                    intent=handled.answer.intent, match=handled.answer.stage,
                    ms=handled.timings.get("total", 0.0), spoken=spoken)

    def forgotten(self, ref: str, ref_of: Callable[[str], str | None]) -> None:
        """A user was forgotten (``cache forget``): their words go from here too."""
        with self._lock:
            for row in self._ring:
                if row["_user"] and ref_of(row["_user"]) == ref:
                    row["text"] = None

    def rows(self) -> list[dict[str, Any]]:
        """Newest first; who asked is not shown."""
        with self._lock:
            return [{k: v for k, v in row.items() if k != "_user"}
                    for row in reversed(self._ring)]
