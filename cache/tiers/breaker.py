"""A circuit breaker: after repeated failures a tier is skipped for a while, then tried again."""

from __future__ import annotations

import threading

from cache.tiers.base import Clock, wall_clock


class CircuitBreaker:
    """Closed -> (``threshold`` failures in a row) -> open for ``cooldown`` s -> one trial.

    While open, :meth:`allow` is false and callers skip the tier without touching the
    network. After the cool-down one caller is let through; its success closes the
    breaker, its failure opens it for another cool-down.
    """

    def __init__(self, *, threshold: int = 3, cooldown: float = 2.0, clock: Clock = wall_clock):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._trial = False
        self.opened = 0
        """How many times the breaker has opened."""

    @property
    def is_open(self) -> bool:
        """True while calls are being skipped."""
        return self._failures >= self.threshold

    def allow(self) -> bool:
        """May a call go to the tier now?"""
        if self._failures < self.threshold:
            return True
        with self._lock:
            if self._trial or self._clock() < self._open_until:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        """Record a call that worked."""
        if self._failures:
            with self._lock:
                self._failures = 0
                self._trial = False

    def failure(self) -> None:
        """Record a call that failed."""
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._failures >= self.threshold:
                if self._failures == self.threshold:
                    self.opened += 1
                self._open_until = self._clock() + self.cooldown
