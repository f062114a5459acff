"""Memory freed by the models' work, handed back to the system once the work is over.

Recognising speech, synthesising it and generating text allocate buffers of a size that
follows the input (audio length, sentence length, prompt length) and free them at the end.
glibc's malloc keeps what is freed for the next allocation rather than returning it: in
the heap of each thread that did the work (speech, synthesis and generation run in worker
threads, and their libraries in thread pools of their own), and the larger the buffers, the
more, as freeing a large mapped buffer raises the size below which later ones come from
the heap. What is kept is fragmented between inputs of other sizes, so it accumulates: a
service under load grew 15 % in its first five minutes after warm-up, and only levelled off
after twenty. Measured one component at a time, after warm-up: 270 varied requests grew
faster-whisper 36 MB (12.6 %), 135 prompts grew llama.cpp 25 MB (10.3 %); handing the free
memory back after each (``malloc_trim``) left 15 MB (6.2 %) and none.

Heavy work is marked with :func:`heavy`; once none has run for :data:`IDLE_SECONDS`, a
thread of this module trims the heaps, once per spell of work. A service that is never idle
that long (a busy home) is trimmed every :data:`BUSY_SECONDS` while work goes on. Trimming takes 0.4 to 8 ms,
and no request is waiting on it then; the next heavy request touches its memory afresh:
speech recognised right after a trim took 15-20 ms more (median 182 against 167 ms on two
cores), for 45 MB less resident. Where there is no glibc (musl, macOS) it does nothing.

What a trim cannot hand back is a page still partly in use, and every heap keeps its own: glibc
gives each thread that meets a locked heap a new one, up to eight per core, and over minutes
the heavy work wanders from thread to thread and heap to heap, each keeping its share of
partly used pages. :func:`limit_heaps` caps their number (the service: one per core, as no
more threads than cores run at once).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.5
"""Time with no heavy work running before the heaps are trimmed: a request's stages follow
each other closely (speech recognised, then an answer generated, then spoken), so a pause
this long is between requests."""


BUSY_SECONDS = 10.0
"""Longest time between trims while heavy work keeps coming: trimming then runs beside a
request's work (it takes each heap's lock in turn), at most this often."""


_M_ARENA_MAX = -8
"""``mallopt``'s parameter for the most heaps (``M_ARENA_MAX`` in glibc's malloc.h)."""


def _glibc(name: str) -> Callable[..., int] | None:
    """glibc's function ``name``, or None where there is none (musl, macOS)."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    return function


def limit_heaps(count: int) -> bool:
    """Let threads share at most ``count`` heaps from now on (glibc); False: not possible here.

    Heaps already made stay; called before the threads start, it holds for all of them.
    """
    if count < 1:
        raise ValueError("at least one heap")
    mallopt = _glibc("mallopt")
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, count))


class Trimmer:
    """Trims the process's heaps after heavy work, once none has run for ``idle`` seconds."""

    def __init__(self, idle: float = IDLE_SECONDS, *, busy: float = BUSY_SECONDS,
                 malloc_trim: Callable[[int], int] | None = None) -> None:
        """``busy``: the longest time between trims while work keeps coming;
        ``malloc_trim``: what trims the heaps (default: glibc's, when there is one)."""
        self.idle = idle
        self.busy = busy
        self.trims = 0
        """Times the heaps were trimmed."""
        self._trim = malloc_trim or _glibc("malloc_trim")
        self._busy = 0
        self._dirty = False
        self._ended = 0.0
        self._trimmed = time.monotonic()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        """Can this process's heaps be trimmed (is it linked with glibc)?"""
        return self._trim is not None

    @contextmanager
    def heavy(self) -> Iterator[None]:
        """Marks the work done inside as heavy: the heaps are trimmed after it."""
        if self._trim is None:
            yield
            return
        with self._changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._dirty = True
                self._ended = time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="heap-trim",
                                                    daemon=True)
                    self._thread.start()
                self._changed.notify()

    def _due(self) -> float | None:
        """Seconds until the heaps are to be trimmed (0: now); None: nothing to trim."""
        if not self._dirty:
            return None
        now = time.monotonic()
        busy = self._trimmed + self.busy - now
        if self._busy:  # the end of the work wakes the thread again
            return max(0.0, busy)
        return max(0.0, min(self._ended + self.idle - now, busy))

    def _run(self) -> None:
        while True:
            with self._changed:
                wait = self._due()
                while wait is None or wait > 0:
                    self._changed.wait(wait)
                    wait = self._due()
                self._dirty = False
                self._trimmed = time.monotonic()
            self.trim()

    def trim(self) -> None:
        """Hand the free memory of every heap back to the system now."""
        if self._trim is None:
            return
        started = time.perf_counter()
        self._trim(0)
        self.trims += 1
        log.debug("heaps trimmed in %.1f ms", (time.perf_counter() - started) * 1000)


TRIMMER = Trimmer()
"""The process's one trimmer (its heaps are the process's)."""


def heavy() -> AbstractContextManager[None]:
    """:meth:`Trimmer.heavy` of :data:`TRIMMER`."""
    return TRIMMER.heavy()
