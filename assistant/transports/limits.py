"""Per-user limits: requests and seconds of audio a minute, counted for every node."""

from __future__ import annotations

import contextlib
import threading
import time

from cache import KeyBuilder, RedisTier, TierUnavailable, scope_of


class UserLimits:
    """Per-user counts per minute, shared by every node through Redis.

    Counted in memory on the request's path, and the counts added since the last sync sent
    to Redis (which returns everyone's total) at most every ``sync`` seconds per counter:
    every node sees the others' counts within that time, and a request costs no round trip.
    While Redis is down the counts are this node's alone. Counter names are HMACs: Redis
    does not learn who asked.
    """

    def __init__(self, redis_tier: RedisTier | None, keys: KeyBuilder, *,
                 requests_per_minute: int = 0, audio_seconds_per_minute: float = 0.0,
                 sync: float = 0.5) -> None:
        """The limits per user (0: none); ``sync``: seconds between a counter's syncs."""
        self.requests_per_minute = requests_per_minute
        self.audio_seconds_per_minute = audio_seconds_per_minute
        self._redis = redis_tier
        self._keys = keys
        self._sync = sync
        # name -> [shared total at the last sync, added here since, last sync, expires]
        self._counts: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, user: str, what: str, amount: float) -> float:
        """Add ``amount`` to the user's count of ``what`` this minute; the total."""
        window = int(time.time() // 60)
        name = self._keys.name("rate", f"{scope_of(user)}:{what}:{window}")
        now = time.monotonic()
        with self._lock:
            if len(self._counts) > 10000:
                self._counts = {k: v for k, v in self._counts.items() if v[3] > now}
            count = self._counts.setdefault(name, [0.0, 0.0, 0.0, now + 120])
            count[1] += amount
            due = now - count[2] >= self._sync
            added = 0.0
            if due:
                count[2] = now
                added, count[1] = count[1], 0.0
        if due:
            total = count[0] + added  # this node's alone while Redis is down
            if self._redis is not None:
                with contextlib.suppress(TierUnavailable):
                    total = self._redis.count(name, added, 120.0)
            with self._lock:
                count[0] = max(count[0] + added, total)
        with self._lock:
            return count[0] + count[1]

    def exceeded(self, user: str, *, audio: bool) -> str | None:
        """Count a request of ``user``; why it is over a limit, or None."""
        if self.requests_per_minute and self.add(user, "requests", 1) > self.requests_per_minute:
            return f"more than {self.requests_per_minute} requests a minute"
        if audio and self.audio_seconds_per_minute and self.add(
                user, "audio", 0) >= self.audio_seconds_per_minute:
            return f"more than {self.audio_seconds_per_minute:g} s of audio a minute"
        return None

    def heard(self, user: str, seconds: float) -> None:
        """Count ``seconds`` of ``user``'s audio."""
        if self.audio_seconds_per_minute:
            self.add(user, "audio", seconds)
