"""Invalidation events between processes: a Redis stream, an outbox, replay, announcements.

Tag purges and forgets are applied in this process by :class:`~cache.tiered.TieredCache`
and announced here on a Redis stream (not pub/sub), which every other process reads to
drop the same items. One that was stopped or cut off reads what it missed when it comes
back (its position is kept in its disk tier) before it serves.

Purges, forgets and announcements (``app:<name>`` events, such as a template reload) made
while Redis is down wait in an outbox: one row each in the disk tier's metadata, written as
they are queued. Whichever process sharing that disk first reaches Redis sends them, its
own and those a one-shot command left behind, so a service that keeps running hears of a
reload made while Redis was down once it is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import redis

from cache.errors import TierUnavailable
from cache.metrics import CacheMetrics
from cache.tiers.redis import EVENTS_STREAM, RedisTier

log = logging.getLogger(__name__)

_POSITION = "events.last"
_LEGACY_OUTBOX = "events.outbox"
_OUTBOX = "outbox:"
_APP = "app:"


class PositionStore(Protocol):
    """Where a process keeps its place in the stream and its unsent events (the disk tier)."""

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...

    def meta_items(self, prefix: str) -> list[tuple[str, str]]: ...

    def delete_meta(self, name: str) -> None: ...


class EventBus:
    """Sends this process's purges and forgets, and applies those of every other process."""

    def __init__(self, redis_tier: RedisTier, *, node_id: str,
                 apply: Callable[[str, str], None], on_reconnect: Callable[[], None],
                 store: PositionStore | None, metrics: CacheMetrics, listen: bool = True,
                 block: float = 1.0) -> None:
        """
        Args:
            redis_tier: L2, whose server carries the stream.
            node_id: this process's id; its own events are not applied twice.
            apply: ``apply(op, arg)`` applies another process's ``tag`` purge or ``forget``
                to this process's tiers.
            on_reconnect: called when Redis is back after being unreachable, before queued
                events are sent (what was kept in memory meanwhile may be stale).
            store: keeps the stream position and the outbox across restarts.
            metrics: counts lost events and Redis failures.
            listen: follow the stream (a one-shot command does not).
            block: seconds one blocking read of the stream waits.
        """
        self._redis = redis_tier
        self.node_id = node_id
        self._apply = apply
        self._on_reconnect = on_reconnect
        self._store = store
        self._metrics = metrics
        self._listen = listen
        self._block = block
        self._outbox: list[tuple[str | None, dict[str, str]]] = []
        """Events not sent yet: the name of their row on disk (None if it could not be
        written), and the event."""
        self._outbox_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[str, str], None]] = []
        self.applied = 0
        """Purges and forgets of other processes applied here."""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Send what a previous run could not; catch up with the stream; follow it."""
        self._load_legacy_outbox()
        self._replay()
        if not self._listen:
            return
        client: Any = self._redis.listener(self._block)
        last: str | None = None
        try:
            last = self._start_position(client)
            # Catch up before serving: an L3 row purged elsewhere meanwhile must not be read.
            while True:
                last, count = self._read(client, last, None)
                if not count:
                    break
        except redis.RedisError as error:
            log.warning("cache events: redis unreachable at start (%s); retrying", error)
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, args=(client, last),
                                        name="cache-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following; send what is queued if Redis is back (the rest stays on disk)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._outbox:
            self._replay()
        lost = [event for row, event in self._outbox if row is None]
        if lost:
            log.error("%d purges, forgets or announcements could not be kept on disk and are "
                      "lost: %s", len(lost), ", ".join(sorted({e["op"] for e in lost})))

    # -- sending -----------------------------------------------------------------------------

    def send(self, op: str, arg: str, purge: Callable[[RedisTier], int]) -> int:
        """Purge L2 with ``purge`` and announce ``op`` (``tag`` or ``forget``) of ``arg``;
        both wait in the outbox while Redis is down. The count L2 removed."""
        event = {"op": op, "arg": arg, "origin": self.node_id}
        try:
            count = purge(self._redis)
            self._redis.publish(event)
        except TierUnavailable as error:
            self._metrics.tiers["l2"].error("unavailable")
            log.warning("redis down: a %s is queued until it is back (%s)", op, error)
            self._queue(event)
            return 0
        return count

    def _queue(self, event: dict[str, str]) -> None:
        """Keep ``event`` for when Redis is back: in memory and, if it can, on disk."""
        row: str | None = None
        if self._store is not None:
            row = f"{_OUTBOX}{time.time_ns():020d}:{uuid.uuid4().hex}"
            try:
                self._store.set_meta(row, json.dumps(event))
            except TierUnavailable as error:
                log.error("a queued %s is kept in memory only (the disk tier failed: %s)",
                          event["op"], error)
                row = None
        with self._outbox_lock:
            self._outbox.append((row, event))

    @property
    def pending(self) -> int:
        """Events not yet sent: Redis was unreachable."""
        return len(self._outbox)

    def _replay(self) -> None:
        """Send the outbox: this process's events and those others sharing the disk left."""
        with self._outbox_lock:
            queued, self._outbox = self._outbox, []
        mine = {row for row, _event in queued if row is not None}
        if self._store is not None:
            try:
                found = self._store.meta_items(_OUTBOX)
            except TierUnavailable:
                found = []
            for name, value in found:
                if name in mine:
                    continue
                with contextlib.suppress(ValueError, TypeError):
                    queued.append((name, dict(json.loads(value))))
            queued.sort(key=lambda item: item[0] or "")
        for number, (row, event) in enumerate(queued):
            try:
                if event["op"] == "tag":
                    self._redis.invalidate_tag(event["arg"])
                elif event["op"] == "forget":
                    self._redis.forget_user(event["arg"])
                self._redis.publish(event)
            except TierUnavailable:
                with self._outbox_lock:
                    self._outbox[:0] = [item for item in queued[number:]
                                        if item[1].get("origin") == self.node_id]
                return
            if row is not None and self._store is not None:
                with contextlib.suppress(TierUnavailable):
                    self._store.delete_meta(row)

    def _load_legacy_outbox(self) -> None:
        """Events an earlier version kept as one list: queued again one by one."""
        if self._store is None:
            return
        with contextlib.suppress(TierUnavailable, ValueError):
            saved = json.loads(self._store.get_meta(_LEGACY_OUTBOX) or "[]")
            for event in saved:
                self._queue(dict(event))
            if saved:
                self._store.delete_meta(_LEGACY_OUTBOX)

    # -- announcements -------------------------------------------------------------------

    def announce(self, name: str, arg: str = "") -> bool:
        """Tell every other process sharing Redis something (e.g. templates were reloaded);
        false when Redis is unreachable: then it is queued like a purge, and told when Redis
        is back."""
        event = {"op": _APP + name, "arg": arg, "origin": self.node_id}
        try:
            self._redis.publish(event)
        except TierUnavailable as error:
            log.warning("redis down: the announcement %s is queued until it is back (%s)",
                        name, error)
            self._queue(event)
            return False
        return True

    def on_announcement(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(name, arg)`` for every announcement made by another process."""
        self._listeners.append(listener)

    # -- following the stream ------------------------------------------------------------

    def _read(self, client: Any, last: str, block_ms: int | None) -> tuple[str, int]:
        """Apply the events after ``last``; the new position and how many were read."""
        reply = client.xread({EVENTS_STREAM: last}, count=256, block=block_ms)
        count = 0
        for _stream, entries in reply or ():
            for event_id, fields in entries:
                last = event_id.decode()
                count += 1
                self._on_event({k.decode(): v.decode() for k, v in fields.items()})
        if count and self._store is not None:
            with contextlib.suppress(TierUnavailable):
                self._store.set_meta(_POSITION, last)
        return last, count

    def _follow(self, client: Any, last: str | None) -> None:
        lost = last is None
        while not self._stop.is_set():
            try:
                if last is None:
                    last = self._start_position(client)
                wait = self._block if not self._outbox else min(self._block, 0.1)
                last, _count = self._read(client, last, int(wait * 1000))
                if lost:
                    self._reconnected(client, last)
                    lost = False
                else:
                    # The breaker may have refused the last replay, and a command sharing
                    # this disk may have queued events while Redis was away.
                    self._replay()
            except redis.RedisError as error:
                if not lost:
                    log.warning("cache events: redis unreachable (%s); retrying", error)
                lost = True
                self._stop.wait(0.2)
            except Exception:
                log.exception("cache events: failed to apply an event")
                self._stop.wait(0.2)
        client.close()

    def _start_position(self, client: Any) -> str:
        stored = None
        if self._store is not None:
            with contextlib.suppress(TierUnavailable):
                stored = self._store.get_meta(_POSITION)
        if stored is not None:
            if not _gap(client, stored):
                return stored  # catch up with what happened while this process was stopped
            log.warning("cache events: invalidations since %s were lost (Redis restarted or the "
                        "stream was trimmed); items on disk may predate them", stored)
            self._metrics.errors.labels("l2", "events_lost").inc()
        newest = client.xrevrange(EVENTS_STREAM, count=1)
        position = newest[0][0].decode() if newest else "0-0"
        if self._store is not None:
            with contextlib.suppress(TierUnavailable):
                self._store.set_meta(_POSITION, position)
        return str(position)

    def _reconnected(self, client: Any, last: str) -> None:
        """Redis is back: drop what may be stale and send what was queued meanwhile."""
        if _gap(client, last):
            log.warning("cache events: some invalidations were lost; dropping memory tier")
        # Whether or not the stream kept everything, salts and L1 copies made while cut off
        # may disagree with other nodes: they start afresh.
        self._on_reconnect()
        self._replay()

    def _on_event(self, event: dict[str, str]) -> None:
        if event.get("origin") == self.node_id:
            return
        op, arg = event.get("op", ""), event.get("arg", "")
        if op in ("tag", "forget"):
            self._apply(op, arg)
            self.applied += 1
        elif op.startswith(_APP):
            for listener in list(self._listeners):
                listener(op[len(_APP):], arg)


def _gap(client: Any, last: str) -> bool:
    """Were events after ``last`` trimmed away (or lost with a restarted Redis)?"""
    oldest = client.xrange(EVENTS_STREAM, count=1)
    if not oldest:
        return last != "0-0"
    first = oldest[0][0].decode()

    def as_tuple(i: str) -> tuple[int, ...]:
        return tuple(int(p) for p in i.split("-"))

    return as_tuple(first) > as_tuple(last) and last != "0-0"
