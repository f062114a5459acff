"""The tiered cache: memory (L1) -> Redis (L2) -> sqlite (L3) -> compute.

A hit is promoted into memory with its remaining TTL. (An L3 hit is not copied
into Redis: this node's disk may still hold an item another node has just
purged, and Redis is what every node shares.) Concurrent misses on one key
compute once (single flight); errors from ``compute`` are never cached. A tier
that fails is skipped and counted: the caller still gets an answer.

Tag purges and forgets are applied to every tier here, lowest first, and sent to
every other process by :mod:`cache.events`. A value computed across a purge is
returned but not stored: locally a memory generation tells, across nodes the
purged tags' epochs in Redis do (the write is a compare-and-set on them).
Maintenance (GC, key rotation, stats) is :mod:`cache.maintenance`'s.

Values held in memory are returned as they are: ``str`` and ``bytes`` are
immutable, and other (JSON) values are kept serialized and decoded per read, so
a caller that modifies what it got cannot change the cache.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from cache import maintenance
from cache.codec import Codec, frozen, thawed
from cache.crypto import Keyring
from cache.errors import BlobError, CacheError, TierUnavailable
from cache.events import EventBus
from cache.keys import KeyBuilder, UserRefs
from cache.metrics import CacheMetrics
from cache.policy import PolicyBook
from cache.salts import Salts
from cache.tiers.base import Clock, Record, Tier, wall_clock
from cache.tiers.memory import MemoryTier
from cache.tiers.redis import RedisTier
from cache.tiers.sqlite import SqliteTier

log = logging.getLogger(__name__)

COMPUTED = "computed"
SHARED_FLIGHT = "waited"
ROTATE_DB = "rotate-db"
"""The announcement that asks the process holding a disk tier to rotate it
(argument: ``<host name>|<absolute path>|<token>``: nodes share Redis, not disks)."""
ROTATED = "rotated"
"""The meta row a rotation is acknowledged in."""


@dataclass(slots=True)
class Outcome:
    """A value and where it came from."""

    value: Any
    """The cached or computed value."""
    source: str
    """``l1``, ``l2``, ``l3``, ``computed``, or ``waited`` (another thread computed it)."""
    seconds: float = 0.0
    """Time taken to produce it, lookup and compute included."""


@dataclass(slots=True)
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class TieredCache:
    """Reads L1 -> L2 -> L3, writes to every tier the item's privacy policy allows.

    The constructor only stores the parts; :meth:`start` (or ``with``) opens the tiers,
    applies the privacy policies to what is on disk, and starts following other
    processes' purges; :meth:`close` stops it all.
    """

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
        memory_max_item: int | None = None,
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
            memory_max_item: values larger than this (bytes, encoded) are not kept in memory
                when a tier below holds them (this node's disk, where the user's policy lets
                it, or Redis): a model's saved state of a megabyte would crowd out a thousand
                answers, and is read from disk in a millisecond or two. ``None``: every
                value is kept in memory too.
        """
        self.keyring = keyring
        self.memory = memory
        self.memory_max_item = memory_max_item
        self.redis = redis_tier
        self.sqlite = sqlite_tier
        self.policies = policies or PolicyBook()
        self.clock = clock
        self.metrics = metrics or CacheMetrics()
        self.node_id = uuid.uuid4().hex
        self._m = self.metrics.tiers
        self._l1 = self._m["l1"]
        self.salts = Salts(disk=sqlite_tier, redis=redis_tier,
                           on_redis_down=lambda: self._m["l2"].error("unavailable"))
        self.codec = Codec(keyring, self.salts, level=zstd_level,
                           compress_min_bytes=compress_min_bytes)
        self._names = KeyBuilder(keyring.naming_secret())
        self.ref_of = UserRefs(self._names)
        """The name a user goes by below this class (see :meth:`KeyBuilder.user_ref`)."""
        self.events = None if redis_tier is None else EventBus(
            redis_tier, node_id=self.node_id, store=sqlite_tier, metrics=self.metrics,
            apply=self._apply_remote,
            on_reconnect=self._reconnected, listen=listen, block=listen_block)
        self._flights: dict[str, _Flight] = {}
        self._flight_lock = threading.Lock()
        self._started = False
        self._forget_listeners: list[Callable[[str], None]] = []
        self.metrics.track_evictions(self._evictions)
        self.metrics.track_stores(self._store_figures)
        self.on_announcement(self._rotation_asked)

    def start(self) -> Self:
        """Open the tiers, apply the policies to the disk tier, catch up with other
        processes' purges and follow them. A disk tier that cannot be opened is left out
        (reported and counted); Redis, when down, is skipped until it is back."""
        if self._started:
            return self
        self._started = True
        self.memory.start()
        if self.redis is not None:
            self.redis.start()
        if self.sqlite is not None:
            try:
                self.sqlite.start()
            except TierUnavailable as error:
                # Answers still come from memory and Redis; the disk tier is back after a
                # restart.
                log.error("disk cache unavailable, running without it: %s", error)
                self._m["l3"].error("unavailable")
                self.sqlite = None  # the salts and events see it closed, and do without
            else:
                maintenance.enforce_policies(self.sqlite, self.policies, self.clock(),
                                             ref=self._names.user_ref)
        if self.events is not None:
            self.events.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def lookup(self, key: str, *, user: str | None = None, redis: bool = True) -> Outcome | None:
        """The value at ``key`` and the tier it came from, or ``None`` on a miss everywhere.

        ``redis=False`` skips Redis, for items that are never stored there (see :meth:`set`).
        """
        started = time.perf_counter()
        generation = self.memory.generation
        record = self.memory.get(key)
        if record is not None:
            self._l1.hits += 1
            return Outcome(thawed(record.payload), "l1", time.perf_counter() - started)
        return self._below(key, user, redis, started, generation, None)[0]

    def _below(self, key: str, user: str | None, redis: bool, started: float, generation: int,
               tags: tuple[str, ...] | None) -> tuple[Outcome | None, list[str] | None]:
        """After an L1 miss: L2, then L3. With ``tags`` (a compute may follow), the purge
        epochs of the item's tags are read in the same round trip as the L2 read; they
        come back with a miss (None: not read, or Redis is not used)."""
        self._l1.misses += 1
        ref = self.ref_of(user)
        epochs: list[str] | None = None
        shared = self.redis if redis else None
        if shared is not None:
            if tags is None:
                found = self._read(shared, key, ref)
            else:
                wanted = RedisTier.all_tags(tuple(self.ref_of.tag(t) for t in tags), ref)
                read: list[list[str]] = []

                def get() -> Record | None:
                    record, now = shared.get_with_epochs(key, wanted)
                    read.append(now)
                    return record

                found = self._read(shared, key, ref, get)
                epochs = read[0] if read else None
            if found is not None:
                self._promote(shared, key, found[1], user, generation)
                return Outcome(found[0], shared.name, time.perf_counter() - started), None
        if self.sqlite is not None:
            found = self._read(self.sqlite, key, ref)
            if found is not None:
                self._promote(self.sqlite, key, found[1], user, generation)
                return Outcome(found[0], "l3", time.perf_counter() - started), None
        return None, epochs

    def _read(self, tier: Tier, key: str, ref: str | None,
              get: Callable[[], Record | None] | None = None) -> tuple[Any, Record] | None:
        """The value at ``key`` in ``tier`` and its record, the record's payload the value as
        memory keeps it (:func:`~cache.codec.frozen`); None for a miss, the tier down or an
        unreadable blob."""
        m = self._m[tier.name]
        started = time.perf_counter()
        try:
            record = tier.get(key) if get is None else get()
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
            value, record.payload, record.tags, record.size = self.codec.decode_kept(
                key, record.payload, ref)
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
        record.user = ref
        return value, record

    def _promote(self, tier: Tier, key: str, record: Record, user: str | None,
                 generation: int) -> None:
        """Copy what was read below into memory, as it was decoded (a JSON value stays
        serialized: it is parsed once, for the caller, not parsed and encoded again)."""
        policy = self.policies.for_user(user)
        if tier is self.sqlite and not policy.persist and self.sqlite is not None:
            # The user no longer allows disk: this copy goes now, not when it expires.
            with contextlib.suppress(TierUnavailable):
                self.sqlite.delete(key)
        # A policy tightened since the item was stored applies from now on. Not stored if a
        # purge ran since the read began: the copy read may be what it purged.
        record.expires_at = min(record.expires_at, self.clock() + policy.max_ttl)
        if self._kept_below(record.size) and (tier is not self.sqlite or policy.persist):
            return  # read from below each time: too large for memory
        self.memory.set(key, record, generation)

    def _kept_below(self, size: int) -> bool:
        """Is a value of ``size`` bytes kept on disk only (see ``memory_max_item``)?"""
        return self.memory_max_item is not None and size > self.memory_max_item

    def get(self, key: str, *, user: str | None = None, default: Any = None) -> Any:
        """The value at ``key``, or ``default``."""
        record = self.memory.get(key)
        if record is not None:  # the hot path: no timing, no Outcome
            self._l1.hits += 1
            return thawed(record.payload)
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
        ref = self.ref_of(user)
        tags = tuple(self.ref_of.tag(tag) for tag in tags)
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
            blob = self.codec.seal(key, body, ref)
            record = Record(blob, expires_at, tags, ref, len(blob))
            below = False  # written to a tier below (not skipped: that tier was down)
            if to_redis is not None:
                shared: RedisTier = to_redis
                written = self._write(shared,
                                      lambda: shared.set_unless_purged(key, record, epochs))
                if written is False:
                    self.metrics.errors.labels("l2", "purged_meanwhile").inc()
                    return False
                below = bool(written)
            if to_disk and self.sqlite is not None:
                local: SqliteTier = self.sqlite
                below = bool(self._write(local, lambda: local.set(key, record))) or below
            if below and self._kept_below(len(body)):
                self.memory.discard(key)  # an older copy must not be read instead
                if generation is not None and generation != self.memory.generation:
                    self.delete(key)  # a purge arrived while writing, as below
                    return False
                return True
        stored = self.memory.set(key, Record(frozen(value), expires_at, tags, ref, len(body)),
                                 generation)
        if not stored and generation is not None and generation != self.memory.generation:
            # A purge arrived while writing: what was written below may predate it.
            self.delete(key)
            return False
        self._l1.sets += 1
        return True

    def _write(self, tier: Tier, write: Callable[[], bool | None]) -> bool | None:
        """Run one tier's ``write``, timed and counted: True when it wrote, False when it
        refused (a purge intervened), None when the tier was down (skipped)."""
        m = self._m[tier.name]
        started = time.perf_counter()
        try:
            if write() is False:
                return False
        except TierUnavailable as error:
            m.error("unavailable")
            log.debug("%s write skipped: %s", tier.name, error)
            return None
        finally:
            m.set_seconds.observe(time.perf_counter() - started)
        m.sets += 1
        return True

    def get_or_compute(self, key: str, compute: Callable[[], Any], *, ttl: float,
                       tags: Iterable[str] = (), user: str | None = None, redis: bool = True,
                       disk: bool = True) -> Any:
        """The cached value at ``key``, or ``compute()`` stored under it (errors are not stored)."""
        return self.fetch(key, compute, ttl=ttl, tags=tags, user=user, redis=redis,
                          disk=disk).value

    def fetch(self, key: str, compute: Callable[[], Any], *, ttl: float,
              tags: Iterable[str] = (), user: str | None = None, redis: bool = True,
              disk: bool = True) -> Outcome:
        """Like :meth:`get_or_compute`, and says which tier answered and how long it took.

        ``redis`` and ``disk`` as for :meth:`set` (a :class:`~cache.policy.Placement` says
        all four of ``ttl``, ``user``, ``redis`` and ``disk``)."""
        started = time.perf_counter()
        generation = self.memory.generation
        record = self.memory.get(key)
        if record is not None:
            self._l1.hits += 1
            return Outcome(thawed(record.payload), "l1", time.perf_counter() - started)
        tags = tuple(tags)
        found, epochs = self._below(key, user, redis, started, generation, tags)
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
            # A leader that finished just before this one took over has filled L1 (or queued
            # for the disk a value too large for memory).
            again = self.memory.get(key)
            if again is not None:
                flight.value = thawed(again.payload)
                return Outcome(flight.value, "l1", time.perf_counter() - started)
            local = self.sqlite
            queued = local.queued(key) if local is not None else None
            if local is not None and queued is not None:  # in the disk tier's queue: no I/O
                kept = self._read(local, key, self.ref_of(user), lambda: queued)
                if kept is not None:
                    flight.value = kept[0]
                    return Outcome(kept[0], "l3", time.perf_counter() - started)
            if epochs is None and redis:  # not read with the miss (Redis was down then)
                epochs = self._epochs(tuple(self.ref_of.tag(t) for t in tags),
                                      self.ref_of(user))
            self.metrics.computes.inc()
            try:
                value = compute()
            except BaseException as error:
                self.metrics.compute_errors.inc()
                flight.error = error
                raise
            flight.value = value
            self._store(key, value, ttl=ttl, tags=tags, user=user, generation=generation,
                        epochs=epochs, redis=redis, disk=disk)
            return Outcome(value, COMPUTED, time.perf_counter() - started)
        finally:
            with self._flight_lock:
                del self._flights[key]
            flight.done.set()

    def _epochs(self, tags: tuple[str, ...], ref: str | None) -> list[str] | None:
        """The purge epochs of an item's tags before its compute (None: write unconditionally)."""
        if self.redis is None:
            return None
        try:
            return self.redis.epochs(RedisTier.all_tags(tags, ref))
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
        return self._apply_local("tag", self.ref_of.tag(tag), origin="local")

    def forget_user(self, user: str) -> dict[str, int]:
        """Remove every item of ``user`` everywhere and destroy their data keys; counts per tier.

        The user is named by their ref everywhere, the event other processes read included.
        """
        return self._apply_local("forget", self.ref_of(user) or "", origin="local")

    def _apply_local(self, op: str, arg: str, *, origin: str) -> dict[str, int]:
        """Apply a tag purge (``tag``) or a forget (``forget``) to L3, then (when it starts
        here) to L2 and the other processes, then to L1: lowest first, so no copy read from
        below outlives it."""
        counts = {"l3": 0, "l2": 0, "l1": 0}
        if self.sqlite is not None:
            try:
                counts["l3"] = (self.sqlite.invalidate_tag(arg) if op == "tag"
                                else self.sqlite.forget_user(arg))
            except TierUnavailable as error:
                self._m["l3"].error("unavailable")
                log.warning("l3 %s not applied: %s", op, error, exc_info=error)
        if origin == "local" and self.events is not None:
            counts["l2"] = self.events.send(
                op, arg, (lambda r: r.invalidate_tag(arg)) if op == "tag"
                else (lambda r: r.forget_user(arg)))
        if op == "tag":
            counts["l1"] = self.memory.invalidate_tag(arg)
        else:
            counts["l1"] = self.memory.forget_user(arg)
            self.salts.forget(arg)
            self.keyring.forget(arg)
            for listener in list(self._forget_listeners):
                try:
                    listener(arg)
                except Exception:
                    log.exception("a forget listener failed")
        self.metrics.invalidations.labels(op, origin).inc()
        return counts

    def _apply_remote(self, op: str, arg: str) -> None:
        """A purge or forget another process made: applied to this process's tiers."""
        self._apply_local(op, arg, origin="remote")

    def _reconnected(self) -> None:
        """Redis is back after an outage: what memory holds may have been purged elsewhere
        meanwhile, and salts made meanwhile may differ from the shared ones."""
        self.memory.clear()
        self.salts.reshare()

    @property
    def pending_events(self) -> int:
        """Purges and forgets not yet applied everywhere: Redis was unreachable, or rows of a
        forgotten user are still on this node's disk (their salt is already gone)."""
        disk = 0 if self.sqlite is None else len(self.sqlite.pending_forgets)
        return (0 if self.events is None else self.events.pending) + disk

    def announce(self, name: str, arg: str = "") -> bool:
        """Tell every other process sharing Redis something (e.g. templates were reloaded);
        false when Redis is unreachable or not used."""
        return self.events is not None and self.events.announce(name, arg)

    def on_announcement(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(name, arg)`` for every announcement made by another process."""
        if self.events is not None:
            self.events.on_announcement(listener)

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(ref)`` after every forget applied here, made in this process or
        another: ``ref`` is the forgotten user's ref (:attr:`ref_of`), for what a caller
        keeps of users outside the cache."""
        self._forget_listeners.append(listener)

    def rotate_disk(self) -> int | None:
        """Give the disk tier a clean slate (see :meth:`SqliteTier.rotate`); the items
        dropped, None without a disk tier."""
        return None if self.sqlite is None else self.sqlite.rotate()

    def _rotation_asked(self, name: str, arg: str) -> None:
        """``assistant cache rotate-db`` asked the process holding this disk tier (this
        host's, at this path) to rotate it: done here, and acknowledged in the new file
        (``rotated`` = token:rows)."""
        host, _, rest = arg.partition("|")
        path, _, token = rest.partition("|")
        sqlite = self.sqlite
        if name != ROTATE_DB or sqlite is None or host != socket.gethostname() \
                or path != str(sqlite.path.resolve()):
            return
        try:
            rows = sqlite.rotate()
            sqlite.set_meta(ROTATED, f"{token}:{rows}")
        except TierUnavailable as error:
            log.error("the disk tier could not be rotated: %s", error)

    def _store_figures(self) -> dict[str, float]:
        """What the memory tier holds, and what Redis and the disk tier say of themselves
        (for the metrics; a store that does not answer is left out, never waited for beyond
        its timeout)."""
        out: dict[str, float] = {"memory_bytes": float(self.memory.bytes_used),
                                 "memory_items": float(len(self.memory))}
        if self.redis is not None and not self.redis.breaker.is_open:
            with contextlib.suppress(TierUnavailable):
                out.update(self.redis.server_figures())
        if self.sqlite is not None:
            with contextlib.suppress(TierUnavailable):
                stats = self.sqlite.stats()
                out["disk_bytes"] = float(stats["file_bytes"] + stats["wal_bytes"])
                out["disk_items"] = float(stats["rows"])
        return out

    def _evictions(self) -> dict[str, int]:
        counts = {"l1": self.memory.evictions}
        if self.sqlite is not None:
            counts["l3"] = self.sqlite.evictions
        return counts

    def close(self) -> None:
        """Stop following other processes, keep unsent purges on disk, flush L3 and close
        every tier."""
        if self.events is not None:
            self.events.close()
        for tier in (self.sqlite, self.redis):
            if tier is not None:
                with contextlib.suppress(CacheError):
                    tier.close()
        self.memory.close()
