"""The tiered cache: memory (L1) -> Redis (L2) -> sqlite (L3) -> compute.

A hit is promoted into memory with its remaining TTL. (An L3 hit is not copied
into Redis: this node's disk may still hold an item another node has just
purged, and Redis is what every node shares.) Concurrent misses on one key
compute once (single flight); errors from ``compute`` are never cached. A tier
that fails is skipped and counted: the caller still gets an answer.

Tag purges and forgets are applied to every tier, lowest first, and announced
on a Redis stream, which every other process reads to drop the same items; one
that was cut off from Redis catches up when it reconnects, and purges made
while Redis was down are sent when it is back (kept on disk across restarts).
A value computed across a purge is returned but not stored: locally a memory
generation tells, across nodes the purged tags' epochs in Redis do.

Values held in memory are returned as they are: ``str`` and ``bytes`` are
immutable, and other (JSON) values are kept serialized and decoded per read, so
a caller that modifies what it got cannot change the cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from cache.codec import Codec, deserialize, serialize
from cache.crypto import Keyring, new_salt
from cache.errors import BlobError, CacheError, TierUnavailable
from cache.memory import MemoryTier
from cache.metrics import CacheMetrics
from cache.policy import PolicyBook
from cache.redis_tier import EVENTS_STREAM, RedisTier
from cache.sqlite_tier import SqliteTier
from cache.tier import Clock, Record, wall_clock

log = logging.getLogger(__name__)

COMPUTED = "computed"
SHARED_FLIGHT = "waited"


@dataclass(slots=True)
class Outcome:
    """A value and where it came from."""

    value: Any
    """The cached or computed value."""
    source: str
    """``l1``, ``l2``, ``l3``, ``computed``, or ``waited`` (another thread computed it)."""
    seconds: float = 0.0
    """Time taken to produce it, lookup and compute included."""


@dataclass(frozen=True, slots=True)
class _Frozen:
    """A JSON value held in memory as its serialized bytes."""

    data: bytes


def _freeze(value: Any) -> Any:
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return _Frozen(serialize(value))


def _thaw(payload: Any) -> Any:
    return deserialize(payload.data) if type(payload) is _Frozen else payload


@dataclass(slots=True)
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class TieredCache:
    """Reads L1 -> L2 -> L3, writes to every tier the item's privacy policy allows."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        memory: MemoryTier,
        redis_tier: RedisTier | None = None,
        sqlite_tier: SqliteTier | None = None,
        policies: PolicyBook | None = None,
        clock: Clock = wall_clock,
        metrics: CacheMetrics | None = None,
        zstd_level: int = 3,
        compress_min_bytes: int = 4096,
        listen: bool = True,
        listen_block: float = 1.0,
    ) -> None:
        """
        Args:
            keyring: master keys; seals blobs for L2 and L3.
            memory: L1.
            redis_tier: L2, or ``None`` to run without Redis.
            sqlite_tier: L3, or ``None`` to run without disk.
            policies: privacy policies (defaults when omitted).
            clock: the clock every expiry is measured on.
            metrics: where counters go (a private registry when omitted).
            zstd_level: compression level of sealed blobs.
            compress_min_bytes: smaller values are sealed uncompressed.
            listen: read invalidation events of other processes from Redis.
            listen_block: seconds one blocking read of the event stream waits.
        """
        self.keyring = keyring
        self.memory = memory
        self.redis = redis_tier
        self.sqlite = sqlite_tier
        self.policies = policies or PolicyBook()
        self.clock = clock
        self.metrics = metrics or CacheMetrics()
        self.node_id = uuid.uuid4().hex
        self.codec = Codec(keyring, self._salt_for, level=zstd_level,
                           compress_min_bytes=compress_min_bytes)
        self._m = self.metrics.tiers
        self._l1 = self._m["l1"]
        self._flights: dict[str, _Flight] = {}
        self._flight_lock = threading.Lock()
        self._salts: dict[str, bytes] = {}
        self._salts_unshared: set[str] = set()
        self._salt_lock = threading.Lock()
        self._outbox: list[dict[str, str]] = []
        self._outbox_lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._announcement_listeners: list[Callable[[str, str], None]] = []
        self.events_applied = 0
        self.metrics.track_evictions(self._evictions)
        if sqlite_tier is not None:
            self._enforce_policies(sqlite_tier)
            self._load_outbox(sqlite_tier)
        if redis_tier is not None and self._outbox:
            self._replay_outbox()
        if listen and redis_tier is not None:
            self._start_listening(listen_block)

    # -- reading -----------------------------------------------------------------------------

    def lookup(self, key: str, *, user: str | None = None, redis: bool = True) -> Outcome | None:
        """The value at ``key`` and the tier it came from, or ``None`` on a miss everywhere.

        ``redis=False`` skips Redis, for items that are never stored there (see :meth:`set`).
        """
        started = time.perf_counter()
        generation = self.memory.generation
        record = self.memory.get(key)
        m = self._m["l1"]
        if record is not None:
            m.hits += 1
            return Outcome(_thaw(record.payload), "l1", time.perf_counter() - started)
        m.misses += 1
        for tier in (self.redis if redis else None, self.sqlite):
            if tier is None:
                continue
            found = self._read(tier, key, user)
            if found is not None:
                value, record = found
                self._promote(tier, key, value, record, user, generation)
                return Outcome(value, tier.name, time.perf_counter() - started)
        return None

    def _read(self, tier: RedisTier | SqliteTier, key: str,
              user: str | None) -> tuple[Any, Record] | None:
        m = self._m[tier.name]
        started = time.perf_counter()
        try:
            record = tier.get(key)
        except TierUnavailable as error:
            m.error("unavailable")
            log.debug("%s skipped: %s", tier.name, error)
            return None
        finally:
            m.get_seconds.observe(time.perf_counter() - started)
        if record is None:
            m.misses += 1
            return None
        if Codec.key_id(record.payload) not in self.keyring:
            # Sealed under a key this process has not loaded yet (rotated elsewhere): a miss,
            # but not corrupt, so it is left for the processes that can read it.
            m.error("unknown_key")
            m.misses += 1
            return None
        try:
            value, tags, size = self.codec.decode(key, record.payload, user)
        except BlobError as error:
            m.error("corrupt")
            m.misses += 1
            log.warning("%s: unreadable blob (%s)", tier.name, error)
            if tier is self.sqlite:
                # Only this node's disk is cleaned: in Redis the blob may be another node's,
                # readable there (a salt this node has not seen yet); it expires by itself.
                with contextlib.suppress(TierUnavailable):
                    tier.delete(key)
            return None
        m.hits += 1
        record.tags, record.user, record.size = tags, user, size
        return value, record

    def _promote(self, tier: RedisTier | SqliteTier, key: str, value: Any, record: Record,
                 user: str | None, generation: int) -> None:
        policy = self.policies.for_user(user)
        if tier is self.sqlite and not policy.persist and self.sqlite is not None:
            # The user no longer allows disk: this copy goes now, not when it expires.
            with contextlib.suppress(TierUnavailable):
                self.sqlite.delete(key)
        # A policy tightened since the item was stored applies from now on. Not stored if a
        # purge ran since the read began: the copy read may be what it purged.
        expires_at = min(record.expires_at, self.clock() + policy.max_ttl)
        self.memory.set(key, Record(_freeze(value), expires_at, record.tags, user, record.size),
                        generation)

    def get(self, key: str, *, user: str | None = None, default: Any = None) -> Any:
        """The value at ``key``, or ``default``."""
        record = self.memory.get(key)
        if record is not None:  # the hot path: no timing, no Outcome
            self._l1.hits += 1
            return _thaw(record.payload)
        found = self.lookup(key, user=user)
        return default if found is None else found.value

    # -- writing -----------------------------------------------------------------------------

    def set(self, key: str, value: Any, *, ttl: float, tags: Iterable[str] = (),
            user: str | None = None, redis: bool = True, disk: bool = True) -> None:
        """Store ``value`` for ``ttl`` seconds (capped by the user's policy) in every allowed tier.

        ``redis=False`` keeps it out of Redis and ``disk=False`` off the disk tier, for items
        that are large or only of use to this node (a model's saved state, say).
        """
        self._store(key, value, ttl=ttl, tags=tuple(tags), user=user, generation=None,
                    epochs=None, redis=redis, disk=disk)

    def _store(self, key: str, value: Any, *, ttl: float, tags: tuple[str, ...],
               user: str | None, generation: int | None, epochs: list[str] | None,
               redis: bool = True, disk: bool = True) -> bool:
        """Write to every allowed tier; with ``generation``/``epochs`` (read before a compute),
        only if no purge happened meanwhile. False when a purge intervened."""
        policy = self.policies.for_user(user)
        ttl = min(ttl, policy.max_ttl)
        if ttl <= 0:
            return True
        expires_at = self.clock() + ttl
        body = self.codec.plaintext(value, tags)
        if generation is not None and generation != self.memory.generation:
            return False
        to_disk = disk and policy.persist and self.sqlite is not None
        to_redis = self.redis if redis else None
        if to_redis is not None or to_disk:
            blob = self.codec.seal(key, body, user)
            record = Record(blob, expires_at, tags, user, len(blob))
            if to_redis is not None and not self._write(to_redis, key, record, epochs):
                self.metrics.errors.labels("l2", "purged_meanwhile").inc()
                return False
            if to_disk and self.sqlite is not None:
                self._write(self.sqlite, key, record)
        stored = self.memory.set(key, Record(_freeze(value), expires_at, tags, user, len(body)),
                                 generation)
        if not stored and generation is not None and generation != self.memory.generation:
            # A purge arrived while writing: what was written below may predate it.
            self.delete(key)
            return False
        self._l1.sets += 1
        return True

    def _write(self, tier: RedisTier | SqliteTier, key: str, record: Record,
               epochs: list[str] | None = None) -> bool:
        """Write to one tier; false only when Redis refused because of a purge."""
        m = self._m[tier.name]
        started = time.perf_counter()
        try:
            if isinstance(tier, RedisTier):
                if not tier.set(key, record, epochs):
                    return False
            else:
                tier.set(key, record)
        except TierUnavailable as error:
            m.error("unavailable")
            log.debug("%s write skipped: %s", tier.name, error)
            return True
        finally:
            m.set_seconds.observe(time.perf_counter() - started)
        m.sets += 1
        return True

    def get_or_compute(self, key: str, compute: Callable[[], Any], *, ttl: float,
                       tags: Iterable[str] = (), user: str | None = None) -> Any:
        """The cached value at ``key``, or ``compute()`` stored under it (errors are not stored)."""
        return self.fetch(key, compute, ttl=ttl, tags=tags, user=user).value

    def fetch(self, key: str, compute: Callable[[], Any], *, ttl: float,
              tags: Iterable[str] = (), user: str | None = None) -> Outcome:
        """Like :meth:`get_or_compute`, and says which tier answered and how long it took."""
        started = time.perf_counter()
        generation = self.memory.generation
        found = self.lookup(key, user=user)
        if found is not None:
            return found
        with self._flight_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return Outcome(flight.value, SHARED_FLIGHT, time.perf_counter() - started)
        try:
            # A leader that finished just before this one took over has filled L1.
            again = self.memory.get(key)
            if again is not None:
                flight.value = _thaw(again.payload)
                return Outcome(flight.value, "l1", time.perf_counter() - started)
            tags = tuple(tags)
            epochs = self._epochs(tags, user)
            self.metrics.computes.inc()
            try:
                value = compute()
            except BaseException as error:
                self.metrics.compute_errors.inc()
                flight.error = error
                raise
            flight.value = value
            self._store(key, value, ttl=ttl, tags=tags, user=user, generation=generation,
                        epochs=epochs)
            return Outcome(value, COMPUTED, time.perf_counter() - started)
        finally:
            with self._flight_lock:
                del self._flights[key]
            flight.done.set()

    def _epochs(self, tags: tuple[str, ...], user: str | None) -> list[str] | None:
        """The purge epochs of an item's tags before its compute (None: write unconditionally)."""
        if self.redis is None:
            return None
        try:
            return self.redis.epochs(RedisTier.all_tags(tags, user))
        except TierUnavailable:
            self._m["l2"].error("unavailable")
            return None

    # -- removing ----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Remove ``key`` from every tier here, lowest first (other processes' L1 copies
        expire or are purged)."""
        for tier in (self.sqlite, self.redis):
            if tier is not None:
                try:
                    tier.delete(key)
                except TierUnavailable:
                    self._m[tier.name].error("unavailable")
        self.memory.delete(key)

    def invalidate_tag(self, tag: str) -> dict[str, int]:
        """Remove every item tagged ``tag`` from every tier and every process; counts per tier."""
        return self._apply_local("tag", tag, origin="local",
                                 remote=lambda r: r.invalidate_tag(tag))

    def forget_user(self, user: str) -> dict[str, int]:
        """Remove every item of ``user`` everywhere and destroy their data keys; counts per tier."""
        return self._apply_local("forget", user, origin="local",
                                 remote=lambda r: r.forget_user(user))

    def _apply_local(self, op: str, arg: str, *, origin: str,
                     remote: Callable[[RedisTier], int] | None = None) -> dict[str, int]:
        """Apply a tag purge (``tag``) or a forget (``forget``) to L3, then (when it starts
        here) to L2, then to L1: lowest first, so no copy read from below outlives it."""
        counts = {"l3": 0, "l2": 0, "l1": 0}
        if self.sqlite is not None:
            try:
                counts["l3"] = (self.sqlite.invalidate_tag(arg) if op == "tag"
                                else self.sqlite.forget_user(arg))
            except TierUnavailable as error:
                self._m["l3"].error("unavailable")
                log.warning("l3 %s %s not applied: %s", op, arg, error)
        if remote is not None:
            counts["l2"] = self._remote(op, arg, remote)
        if op == "tag":
            counts["l1"] = self.memory.invalidate_tag(arg)
        else:
            counts["l1"] = self.memory.forget_user(arg)
            with self._salt_lock:
                self._salts.pop(arg, None)
                self._salts_unshared.discard(arg)
            self.keyring.forget(arg)
        self.metrics.invalidations.labels(op, origin).inc()
        return counts

    def _remote(self, op: str, arg: str, purge: Callable[[RedisTier], int]) -> int:
        """Purge L2 and announce the event; keep both for later when Redis is down."""
        if self.redis is None:
            return 0
        event = {"op": op, "arg": arg, "origin": self.node_id}
        try:
            count = purge(self.redis)
            self.redis.publish(event)
        except TierUnavailable as error:
            self._m["l2"].error("unavailable")
            log.warning("redis down: %s %s queued until it is back (%s)", op, arg, error)
            with self._outbox_lock:
                self._outbox.append(event)
            return 0
        return count

    @property
    def pending_events(self) -> int:
        """Purges and forgets not yet applied everywhere: Redis was unreachable, or rows of a
        forgotten user are still on this node's disk (their salt is already gone)."""
        disk = 0 if self.sqlite is None else len(self.sqlite.pending_forgets)
        return len(self._outbox) + disk

    def _replay_outbox(self) -> None:
        assert self.redis is not None
        with self._outbox_lock:
            queued, self._outbox = self._outbox, []
        for number, event in enumerate(queued):
            try:
                if event["op"] == "tag":
                    self.redis.invalidate_tag(event["arg"])
                else:
                    self.redis.forget_user(event["arg"])
                self.redis.publish(event)
            except TierUnavailable:
                with self._outbox_lock:
                    self._outbox[:0] = queued[number:]
                return

    # -- salts -------------------------------------------------------------------------------

    def _salt_for(self, user: str) -> bytes:
        salt = self._salts.get(user)
        if salt is not None:
            return salt
        with self._salt_lock:
            salt = self._salts.get(user)
            if salt is not None:
                return salt
            local: bytes | None = None
            if self.sqlite is not None:
                with contextlib.suppress(TierUnavailable):
                    local = self.sqlite.get_salt(user)
            candidate = local or new_salt()
            shared = False
            if self.redis is not None:
                try:
                    found = self.redis.salt(user, candidate, from_disk=local is not None)
                    if found is None:
                        # Forgotten elsewhere since this disk last saw them: their salt and
                        # rows here go, and they start afresh.
                        log.warning("user forgotten elsewhere: dropping their items on this disk")
                        found = self.redis.salt(user, new_salt(), from_disk=False)
                    candidate = found or new_salt()
                    shared = found is not None
                except TierUnavailable:
                    self._m["l2"].error("unavailable")
            if self.sqlite is not None and candidate != local:
                with contextlib.suppress(TierUnavailable):
                    if local is not None:  # rows sealed under the old salt can't be read now
                        self.sqlite.forget_user(user)
                    candidate = self.sqlite.put_salt(user, candidate)
            self._salts[user] = candidate
            if not shared:
                self._salts_unshared.add(user)
            return candidate

    # -- events from other processes ---------------------------------------------------------

    def _start_listening(self, block: float) -> None:
        """Apply what was announced while this process was stopped, then follow the stream."""
        assert self.redis is not None
        client: Any = self.redis.listener(block)
        last: str | None = None
        try:
            last = self._start_position(client)
            # Catch up before serving: an L3 row purged elsewhere meanwhile must not be read.
            while True:
                last, count = self._read_events(client, last, None)
                if not count:
                    break
        except redis.RedisError as error:
            log.warning("cache events: redis unreachable at start (%s); retrying", error)
        self._listener = threading.Thread(target=self._listen, args=(client, last, block),
                                          name="cache-events", daemon=True)
        self._listener.start()

    def _read_events(self, client: Any, last: str, block_ms: int | None) -> tuple[str, int]:
        """Apply the events after ``last``; the new position and how many were read."""
        reply = client.xread({EVENTS_STREAM: last}, count=256, block=block_ms)
        count = 0
        for _stream, entries in reply or ():
            for event_id, fields in entries:
                last = event_id.decode()
                count += 1
                self._on_event({k.decode(): v.decode() for k, v in fields.items()})
        if count and self.sqlite is not None:
            with contextlib.suppress(TierUnavailable):
                self.sqlite.set_meta("events.last", last)
        return last, count

    def _listen(self, client: Any, last: str | None, block: float) -> None:
        lost = last is None
        while not self._stop.is_set():
            try:
                if last is None:
                    last = self._start_position(client)
                wait = block if not self._outbox else min(block, 0.1)
                last, _count = self._read_events(client, last, int(wait * 1000))
                if lost:
                    self._reconnected(client, last)
                    lost = False
                elif self._outbox:
                    self._replay_outbox()  # the breaker may have refused the first replay
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
        if self.sqlite is not None:
            with contextlib.suppress(TierUnavailable):
                stored = self.sqlite.get_meta("events.last")
        if stored is not None:
            if not self._gap(client, stored):
                return stored  # catch up with what happened while this process was stopped
            log.warning("cache events: invalidations since %s were lost (Redis restarted or the "
                        "stream was trimmed); items on disk may predate them", stored)
            self.metrics.errors.labels("l2", "events_lost").inc()
        newest = client.xrevrange(EVENTS_STREAM, count=1)
        position = newest[0][0].decode() if newest else "0-0"
        if self.sqlite is not None:
            with contextlib.suppress(TierUnavailable):
                self.sqlite.set_meta("events.last", position)
        return str(position)

    @staticmethod
    def _gap(client: Any, last: str) -> bool:
        """Were events after ``last`` trimmed away (or lost with a restarted Redis)?"""
        oldest = client.xrange(EVENTS_STREAM, count=1)
        if not oldest:
            return last != "0-0"
        first = oldest[0][0].decode()
        def as_tuple(i: str) -> tuple[int, ...]:
            return tuple(int(p) for p in i.split("-"))
        return as_tuple(first) > as_tuple(last) and last != "0-0"

    def _reconnected(self, client: Any, last: str) -> None:
        """Redis is back: drop what may be stale and send what was queued meanwhile."""
        if self._gap(client, last):
            log.warning("cache events: some invalidations were lost; dropping memory tier")
        # Whether or not the stream kept everything, salts and L1 copies made while cut off
        # may disagree with other nodes: start them afresh.
        self.memory.clear()
        with self._salt_lock:
            for user in self._salts_unshared:
                self._salts.pop(user, None)
            self._salts_unshared.clear()
        self._replay_outbox()

    def _on_event(self, event: dict[str, str]) -> None:
        if event.get("origin") == self.node_id:
            return
        op, arg = event.get("op", ""), event.get("arg", "")
        if op in ("tag", "forget"):
            self._apply_local(op, arg, origin="remote")
            self.events_applied += 1
        elif op.startswith("app:"):
            for listener in list(self._announcement_listeners):
                listener(op[4:], arg)

    def announce(self, name: str, arg: str = "") -> bool:
        """Tell every other process sharing Redis something (e.g. templates were reloaded);
        false when Redis is unreachable."""
        if self.redis is None:
            return False
        try:
            self.redis.publish({"op": f"app:{name}", "arg": arg, "origin": self.node_id})
        except TierUnavailable:
            return False
        return True

    def on_announcement(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(name, arg)`` for every announcement made by another process."""
        self._announcement_listeners.append(listener)

    # -- maintenance -------------------------------------------------------------------------

    def gc(self) -> int:
        """Remove expired rows from L3 (memory and Redis expire by themselves)."""
        return 0 if self.sqlite is None else self.sqlite.gc()

    def rotate(self) -> int:
        """Re-encrypt every L3 blob under the keyring's current key id; the number rewritten."""
        if self.sqlite is None:
            return 0

        def reseal(key: str, blob: bytes, user: str | None) -> bytes | None:
            try:
                return self.codec.seal(key, self.codec.open(key, blob, user), user)
            except BlobError:
                return None

        return self.sqlite.reseal(reseal, current_key_id=self.keyring.current_id)

    def stats(self) -> dict[str, Any]:
        """Counters of every tier and the state of each."""
        out: dict[str, Any] = {
            "l1": {"entries": len(self.memory), "bytes": self.memory.bytes_used,
                   "max_bytes": self.memory.max_bytes, "evictions": self.memory.evictions},
            "metrics": self.metrics.snapshot(),
        }
        if self.redis is not None:
            try:
                out["l2"] = {**self.redis.info(), "breaker_open": self.redis.breaker.is_open,
                             "breaker_opened": self.redis.breaker.opened,
                             "events_applied": self.events_applied,
                             "events_pending": len(self._outbox)}
            except TierUnavailable as error:
                out["l2"] = {"error": str(error), "breaker_open": self.redis.breaker.is_open}
        if self.sqlite is not None:
            try:
                out["l3"] = self.sqlite.stats()
            except TierUnavailable as error:
                out["l3"] = {"error": str(error)}
        return out

    def _evictions(self) -> dict[str, int]:
        counts = {"l1": self.memory.evictions}
        if self.sqlite is not None:
            counts["l3"] = self.sqlite.evictions
        return counts

    def _enforce_policies(self, sqlite: SqliteTier) -> None:
        """Apply the policies in force now to what an earlier run left on disk."""
        now = self.clock()
        book = self.policies
        try:
            for user, policy in book.users.items():
                sqlite.restrict(users=[user], expires_by=now + policy.max_ttl,
                                keep=policy.persist)
            sqlite.restrict(others_than=list(book.users), expires_by=now + book.default.max_ttl,
                            keep=book.default.persist)
            sqlite.restrict(users=None, expires_by=now + book.shared.max_ttl,
                            keep=book.shared.persist)
        except TierUnavailable as error:
            log.error("could not apply privacy policies to the disk tier: %s", error)

    def _load_outbox(self, sqlite: SqliteTier) -> None:
        """Purges a previous run could not send to Redis: they are sent now."""
        with contextlib.suppress(TierUnavailable, ValueError):
            saved = json.loads(sqlite.get_meta("events.outbox") or "[]")
            self._outbox = [dict(event) for event in saved]
            if self._outbox:
                log.warning("%d purges or forgets from the last run still go to Redis",
                            len(self._outbox))

    def close(self) -> None:
        """Stop listening, keep unsent purges on disk, flush L3 and close every tier."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        if self.redis is not None and self._outbox:
            self._replay_outbox()
        if self.sqlite is not None:
            try:
                self.sqlite.set_meta("events.outbox", json.dumps(self._outbox))
            except TierUnavailable as error:
                log.error("%d purges for Redis are lost: %s", len(self._outbox), error)
        for tier in (self.sqlite, self.redis):
            if tier is not None:
                with contextlib.suppress(CacheError):
                    tier.close()
        self.memory.close()

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


