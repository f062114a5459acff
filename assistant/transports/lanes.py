"""Requests waiting for a worker, in two lanes, so that an answer the cache holds is not kept
waiting behind speech to transcribe or a sentence to generate.

A text request whose words were answered quickly the last time anyone asked them
(:class:`QuickAnswers` remembers which) goes in the express lane, the rest in the main lane.
Whether an answer is quick is a matter of the words, mostly: those the cache holds for
everyone, or a template's own; a lane says no more of who asked what than the shared cache's
own speed does. Every worker takes the express lane first; one worker (when there are
two or more) takes nothing else, so one is free for quick answers even while the others are
all transcribing or generating.
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

QUICK_MS = 50.0
"""An answer that took less than this (milliseconds, the pipeline alone) was quick."""


class Lanes(Generic[T]):
    """A bounded two-lane queue of jobs for a pool of workers, each person's share of it
    bounded too (a flood from one fills their share, not the queue)."""

    def __init__(self, capacity: int, share: int) -> None:
        """``capacity``: jobs waiting in both lanes together; ``share``: of them, one
        person's."""
        self.capacity = capacity
        self.share = share
        self._express: collections.deque[tuple[str, T]] = collections.deque()
        self._main: collections.deque[tuple[str, T]] = collections.deque()
        self._waiting: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T, *, owner: str, express: bool) -> str | None:
        """Queue ``owner``'s ``item``; why it cannot be (their share or both lanes full,
        or closed), else None."""
        with self._cond:
            if self._waiting[owner] >= self.share:
                return f"{self._waiting[owner]} of your requests are waiting already"
            if self._closed or len(self._express) + len(self._main) >= self.capacity:
                return "too many requests are waiting"
            (self._express if express else self._main).append((owner, item))
            self._waiting[owner] += 1
            self._cond.notify_all()  # the express-only worker may be the one waiting
            return None

    def get(self, *, express_only: bool = False) -> T | None:
        """The next job a worker may take (the express lane first; ``express_only``: no
        other), waiting for one; None once closed and nothing it may take is left."""
        with self._cond:
            while True:
                if self._express:
                    return self._taken(self._express.popleft())
                if self._main and not express_only:
                    return self._taken(self._main.popleft())
                if self._closed:
                    return None
                self._cond.wait()

    def _taken(self, entry: tuple[str, T]) -> T:
        owner, item = entry
        self._waiting[owner] -= 1
        if not self._waiting[owner]:
            del self._waiting[owner]
        return item

    def close(self) -> None:
        """Take nothing more; the workers finish what waits, then :meth:`get` gives None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._express) + len(self._main)


class QuickAnswers:
    """Which words were answered quickly the last time they were asked: a digest of them
    (keyed with a secret of this process, so nothing in memory repeats what was said), most
    recent first, at most ``size`` of them."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._secret = secrets.token_bytes(16)
        self._quick: collections.OrderedDict[bytes, bool] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _key(self, text: str) -> bytes:
        words = " ".join(text.casefold().split())
        return hashlib.blake2b(words.encode(), key=self._secret, digest_size=16).digest()

    def expected(self, text: str) -> bool:
        """Were these words answered quickly the last time?"""
        with self._lock:
            return self._quick.get(self._key(text), False)

    def took(self, text: str, ms: float) -> None:
        """They were answered in ``ms`` milliseconds."""
        key = self._key(text)
        with self._lock:
            self._quick[key] = ms < QUICK_MS
            self._quick.move_to_end(key)
            if len(self._quick) > self._size:
                self._quick.popitem(last=False)
