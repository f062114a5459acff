"""Waiting for a reply on a socket by polling it briefly before sleeping on it.

On an idle machine a local Redis answers in about 20 µs, and a thread asleep in ``recv``
is woken 30-40 µs after the reply came: polling for the reply first reads it that much
sooner. The poll yields the CPU between polls (``sched_yield``), so that on a busy machine
the server and the other threads run as if the poller slept. Polls that keep running out
mean the server is farther away than the poll is long: after
:data:`MISSES_BEFORE_SLEEPING` in a row, the thread sleeps on its replies at once for
:data:`SLEEP_AFTER_MISSES_NS`, then tries polling again.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

MISSES_BEFORE_SLEEPING = 8
"""Polls in a row that ran out before a thread stops polling..."""
SLEEP_AFTER_MISSES_NS = 1_000_000_000
"""...for this long."""


class ReplyPoll:
    """Polls a socket for up to ``spin`` seconds before the blocking read that follows.

    Its state is per thread: each thread polls the socket of the connection it holds."""

    def __init__(self, spin: float) -> None:
        """``spin``: seconds to poll for (0: never poll, sleep on the read at once)."""
        self._spin_ns = int(spin * 1e9)
        self._local = threading.local()
        self.missed = 0
        """Polls that ran out before the reply came (all threads)."""

    def wait(self, sock: socket.socket | None) -> None:
        """Poll ``sock`` until something is there to read or the poll has run out."""
        if self._spin_ns <= 0 or sock is None:
            return
        now = time.perf_counter_ns()
        local = self._local
        if now < getattr(local, "sleep_until", 0):
            return
        held = getattr(local, "poller", None)
        if held is None or held[0] is not sock:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            held = local.poller = (sock, poller)
        poll = held[1].poll
        deadline = now + self._spin_ns
        while not poll(0):
            now = time.perf_counter_ns()
            if now >= deadline:
                self.missed += 1
                local.missed = missed = getattr(local, "missed", 0) + 1
                if missed >= MISSES_BEFORE_SLEEPING:
                    local.sleep_until, local.missed = now + SLEEP_AFTER_MISSES_NS, 0
                return
            os.sched_yield()
        local.missed = 0

    def polled(self) -> socket.socket | None:
        """The socket this thread last polled (None: none yet)."""
        held = getattr(self._local, "poller", None)
        return None if held is None else held[0]
