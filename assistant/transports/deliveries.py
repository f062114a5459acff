"""Requests as the broker delivers them: acknowledged in order once dealt with, and given
up at their deadline."""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Self

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Delivery:
    """One received message, to be acknowledged when dealt with."""

    mid: int
    qos: int
    connection: int
    done: bool = False


class Acks:
    """QoS 1 acknowledgements, sent in the order the messages came (as MQTT asks), each
    once its message is dealt with. Deliveries of an earlier connection are not
    acknowledged on a new one: the broker sends them again."""

    def __init__(self, send: Callable[[int, int], object]) -> None:
        """``send(mid, qos)``: acknowledge one message (paho's ``Client.ack``)."""
        self._send = send
        self._queue: collections.deque[Delivery] = collections.deque()
        self._connection = 0
        self._lock = threading.Lock()

    def received(self, mid: int, qos: int) -> Delivery:
        """A message came; acknowledge it later with :meth:`done`."""
        with self._lock:
            delivery = Delivery(mid, qos, self._connection)
            if qos:
                self._queue.append(delivery)
            return delivery

    def done(self, deliveries: Iterable[Delivery]) -> None:
        """These are dealt with; acknowledge every one in order up to the first that is not."""
        with self._lock:
            for delivery in deliveries:
                delivery.done = True
            while self._queue and self._queue[0].done:
                delivery = self._queue.popleft()
                if delivery.connection == self._connection:
                    try:
                        self._send(delivery.mid, delivery.qos)
                    except Exception:  # a lost connection: the broker sends it again
                        log.debug("an acknowledgement was not sent", exc_info=True)

    def reconnected(self) -> None:
        """A new connection: what is waiting will come again."""
        with self._lock:
            self._connection += 1
            self._queue.clear()


class Deadlines:
    """Calls ``expire(key)`` for each key whose deadline passes, on a thread of its own."""

    def __init__(self, expire: Callable[[Hashable], object]) -> None:
        self._expire = expire
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
        self._thread.start()
        return self

    def add(self, key: Hashable, deadline: float) -> None:
        """Expire ``key`` at ``deadline`` (``time.monotonic()``). Only the key is kept."""
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), key))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    wait = self._heap[0][0] - now if self._heap else 1.0
                    self._cond.wait(min(wait, 1.0))
                    continue
            for key in due:
                try:
                    self._expire(key)
                except Exception:  # one failure must not end every later deadline
                    log.exception("a request's deadline could not be applied")

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
