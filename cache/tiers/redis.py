"""L2: Redis, shared by processes and nodes.

Each value is ``expiry (8-byte float) | names length (2) | tag set names | sealed
blob`` under its cache key with ``PX``, so Redis drops it on time and a
promotion keeps the original expiry. Tags are Redis sets of keys, named by HMAC
so ``SCAN`` shows no tag or user names; adding to them and purging them is one
round trip each (Lua). A purge removes a member only if the item still names
that tag set in its own header: an item overwritten without the tag survives,
and since header and item are one Redis key, eviction can never split them. A circuit
breaker skips Redis while it is failing; redis-py reconnects by itself when it
is back. Item reads and writes, claims and counters (each request's) go over one
connection held per thread, as commands packed here (the rest use the pool); a read that
may lead to a compute fetches the purge epochs of the item's tags in the same round trip.
Their replies are polled for before the thread sleeps on them (:mod:`cache.tiers.poll`).

Invalidation events go on a Redis stream (not pub/sub): a node that was cut off
reads what it missed when it reconnects, instead of silently keeping stale
entries in memory. Events name users only by their refs (HMACs), and leave the
stream after ``events_ttl``.

Every purge also bumps the tag's epoch. A value computed after a miss is written
only if the epochs of its tags are still those read before the compute began, so
a compute that raced a purge on another node cannot put the purged answer back.
A forget leaves a tombstone, so a node that still holds the forgotten user's
salt on disk cannot publish it again. Items, tag sets, epochs and tombstones all
expire; the salts hash and the event stream do not, so with
``maxmemory-policy volatile-lru`` Redis never evicts them.
"""

from __future__ import annotations

import logging
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any, Self, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache.errors import TierUnavailable
from cache.scope import user_tag
from cache.tiers.base import Clock, Record, wall_clock
from cache.tiers.breaker import CircuitBreaker
from cache.tiers.poll import ReplyPoll

T = TypeVar("T")
log = logging.getLogger(__name__)
_HEADER = struct.Struct(">dH")
_GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"
EVENTS_STREAM = "v1:events"
SALTS_HASH = "v1:salts"

# KEYS: item, n tag sets, then (when ARGV[3] = 'cas') n epoch keys.
# ARGV: value, ttl ms, 'cas' or 'set', then n expected epochs.
_SET = """
local n = #KEYS - 1
if ARGV[3] == 'cas' then
  n = n / 2
  for i = 1, n do
    if (redis.call('GET', KEYS[1 + n + i]) or '0') ~= ARGV[3 + i] then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 2, n + 1 do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""

# KEYS: tag set, epoch, [salts hash, tombstone]. ARGV: epoch ttl ms, [salt field, tombstone ttl ms].
_PURGE = """
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local members = redis.call('SMEMBERS', KEYS[1])
local wanted = ' ' .. KEYS[1] .. ' '
local n = 0
for _, key in ipairs(members) do
  local size = redis.call('GETRANGE', key, 8, 9)
  if #size == 2 then
    local len = string.byte(size, 1) * 256 + string.byte(size, 2)
    local names = ' ' .. redis.call('GETRANGE', key, 10, 9 + len) .. ' '
    if string.find(names, wanted, 1, true) then
      n = n + redis.call('UNLINK', key)
    end
  end
end
redis.call('UNLINK', KEYS[1])
if KEYS[3] then
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
end
return n
"""

# KEYS: salts hash, tombstone. ARGV: field, candidate, 'local' (a salt read from disk) or 'new'.
_SALT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then return current end
if ARGV[3] == 'local' and redis.call('EXISTS', KEYS[2]) == 1 then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""


# KEYS: the claim. ARGV: owner, ttl ms.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the counter. ARGV: amount, ttl ms (set only when the counter is new).
_COUNT = """
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
return total
"""


def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RedisTier:
    """L2 over redis-py with a connection pool, short timeouts and a circuit breaker."""

    name = "l2"

    def __init__(
        self,
        url: str,
        *,
        namer: Callable[[str, str], str],
        timeout: float = 0.2,
        breaker: CircuitBreaker | None = None,
        clock: Clock = wall_clock,
        epoch_ttl: float = 86400.0,
        tombstone_ttl: float = 30 * 86400.0,
        events_ttl: float = 7 * 86400.0,
        spin: float = 100e-6,
    ) -> None:
        """
        Args:
            url: ``redis://host:port/db``.
            namer: ``(namespace, value) -> opaque name`` for tag sets and salt fields.
            timeout: socket connect/read timeout in seconds; keep it short, Redis is local.
            breaker: the circuit breaker (a default one when omitted).
            clock: the clock expiries are measured on.
            epoch_ttl: seconds a tag's purge epoch is kept: longer than any compute runs.
            tombstone_ttl: seconds a forget is remembered: longer than any item of the user
                may live on any node's disk (the largest ``max_ttl`` of the policies).
            events_ttl: seconds an invalidation event stays on the stream for processes
                that were away to catch up on (one away longer drops its memory tier).
            spin: seconds a thread polls for a reply before it sleeps until the reply comes
                (0: it sleeps at once). The polling costs that much CPU at most per command,
                and none while polls keep running out; a reply that comes within it is
                read 30-40 µs sooner on an idle machine.
        """
        self.url = url
        self._poll = ReplyPoll(spin)
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self._timeout = timeout
        self._namer = namer
        self._clock = clock
        self._epoch_ms = str(int(epoch_ttl * 1000))
        self._tombstone_ms = str(int(tombstone_ttl * 1000))
        self._events_ttl = events_ttl
        # Reads of items go over one connection per thread, held, not checked out of the
        # pool per command: on a loopback GET that halves redis-py's own cost (about 60 µs
        # of a 120 µs GET here), which is most of what an L2 hit costs.
        self._local = threading.local()
        self._readers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._epoch_names: dict[str, str] = {}
        self._tag_names: dict[str, str] = {}

    def start(self) -> Self:
        """Make the connection pool and register the scripts (connections open on first use:
        a Redis that is down now is skipped, and used once it is up)."""
        if self._client is None:
            client = _client(self.url, self._timeout)
            self._scripts = {name: client.register_script(source) for name, source in
                             (("set", _SET), ("purge", _PURGE), ("salt", _SALT),
                              ("claim", _CLAIM), ("count", _COUNT))}
            self._client = client
        return self

    @property
    def client(self) -> redis.Redis:
        """The pooled client (after :meth:`start`)."""
        if self._client is None:
            raise TierUnavailable("the redis tier is not started")
        return self._client

    def _call(self, op: Callable[[], T]) -> T:
        if not self.breaker.allow():
            raise TierUnavailable("redis is being skipped after repeated failures")
        try:
            result = op()
        except redis.RedisError as error:
            self.breaker.failure()
            raise TierUnavailable(f"redis: {error}") from error
        except Exception as error:  # never leave the breaker's trial call hanging
            self.breaker.failure()
            log.exception("redis call failed unexpectedly")
            raise TierUnavailable(f"redis: {error!r}") from error
        self.breaker.success()
        return result

    def tag_name(self, tag: str) -> str:
        """The Redis set holding the keys of ``tag`` (names are remembered)."""
        name = self._tag_names.get(tag)
        if name is None:
            if len(self._tag_names) >= 4096:
                self._tag_names.clear()
            name = self._tag_names[tag] = self._namer("tag", tag)
        return name

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.add(conn)
        return conn

    def _exchange(self, packed: list[bytes], replies: int = 1, *,
                  resend: bool = True) -> list[Any]:
        """Send ``packed`` commands over this thread's held connection at once; their replies.

        A reply that is an error is raised (after every reply was read). A connection the
        server closed is made again and the commands sent once more, unless they were sent
        already and ``resend`` is false (a command not to run twice: a counter's add)."""
        conn = self._reader()
        for attempt in (1, 2):
            sent = False
            try:
                conn.send_packed_command(packed, check_health=False)
                sent = True
                self._poll.wait(conn._get_socket())
                out = []
                failed: Exception | None = None
                for _ in range(replies):
                    try:
                        out.append(conn.read_response())
                    except redis.ResponseError as error:  # read; the next reply follows
                        failed = failed or error
                        out.append(None)
                if failed is not None:
                    raise failed
                return out
            except redis.ConnectionError:
                # The server closed this held connection (a restart, an idle timeout): as
                # the pool would, connect again once before calling it a failure.
                conn.disconnect()
                if attempt == 2 or (sent and not resend):
                    raise
            except redis.ResponseError:
                raise
            except BaseException:
                conn.disconnect()  # a half-read reply must not meet the next command
                raise
        raise AssertionError("unreachable")

    def _command(self, *args: Any, resend: bool = True) -> Any:
        """One command over the held connection (see :meth:`_exchange`)."""
        return self._exchange([b"".join(self._reader().pack_command(*args))],
                              resend=resend)[0]

    def _script(self, name: str, keys: list[str], args: list[Any], *,
                resend: bool = True) -> Any:
        """A registered script run over the held connection (loaded first if Redis has
        forgotten it: a restart, ``SCRIPT FLUSH``); ``resend`` as for :meth:`_exchange`."""
        script = self._scripts[name]
        try:
            return self._command("EVALSHA", script.sha, len(keys), *keys, *args, resend=resend)
        except redis.exceptions.NoScriptError:
            self._command("SCRIPT", "LOAD", script.script)
            return self._command("EVALSHA", script.sha, len(keys), *keys, *args, resend=resend)

    def _read(self, key: str) -> bytes | None:
        encoded = key.encode()
        return cast("bytes | None", self._exchange([_GET % (len(encoded), encoded)])[0])

    def get(self, key: str) -> Record | None:
        return self._record(self._call(lambda: self._read(key)))

    def get_with_epochs(self, key: str, tags: list[str]) -> tuple[Record | None, list[str]]:
        """The live record at ``key`` and the purge epochs of ``tags`` (as from
        :meth:`all_tags`, for :meth:`set_unless_purged` after a miss), in one round trip."""
        if not tags:
            return self.get(key), []
        encoded = key.encode()
        conn = self._reader()
        packed = [_GET % (len(encoded), encoded),
                  b"".join(conn.pack_command("MGET", *(self.epoch_name(t) for t in tags)))]
        raw, values = self._call(lambda: self._exchange(packed, 2))
        return self._record(raw), [v.decode() if v is not None else "0" for v in values]

    def _record(self, raw: bytes | None) -> Record | None:
        if raw is None or len(raw) < _HEADER.size:
            return None
        expires_at, names = _HEADER.unpack_from(raw)
        if expires_at <= self._clock():
            return None
        blob = memoryview(raw)[_HEADER.size + names :]
        return Record(blob, expires_at, size=len(blob))

    def epoch_name(self, tag: str) -> str:
        """The Redis key holding the purge epoch of ``tag`` (names are remembered)."""
        name = self._epoch_names.get(tag)
        if name is None:
            if len(self._epoch_names) >= 4096:
                self._epoch_names.clear()
            name = self._epoch_names[tag] = self._namer("epoch", tag)
        return name

    @staticmethod
    def all_tags(tags: tuple[str, ...], user: str | None) -> list[str]:
        """The tags an item is filed under here: its own and its user's, sorted."""
        found = set(tags)
        if user is not None:
            found.add(user_tag(user))
        return sorted(found)

    def epochs(self, tags: list[str]) -> list[str]:
        """The current purge epochs of ``tags`` (as from :meth:`all_tags`), for :meth:`set`."""
        if not tags:
            return []
        names = [self.epoch_name(t) for t in tags]
        values = cast("list[bytes | None]", self._call(lambda: self.client.mget(names)))
        return [v.decode() if v is not None else "0" for v in values]

    def set(self, key: str, record: Record) -> None:
        self.set_unless_purged(key, record, None)

    def set_unless_purged(self, key: str, record: Record, epochs: list[str] | None) -> bool:
        """Store ``record`` only if no tag of it was purged since ``epochs`` (from
        :meth:`epochs`) were read; with ``epochs=None``, unconditionally.

        False when a purge intervened (nothing was written).
        """
        ttl_ms = int(record.ttl(self._clock()) * 1000)
        if ttl_ms <= 0:
            return False
        tags = self.all_tags(record.tags, record.user)
        names = [self.tag_name(t) for t in tags]
        joined = " ".join(names).encode()
        value = _HEADER.pack(record.expires_at, len(joined)) + joined + bytes(record.payload)
        if epochs is not None and tags:
            keys = [key, *names, *(self.epoch_name(t) for t in tags)]
            args: list[bytes | str | int] = [value, ttl_ms, "cas", *epochs]
            return bool(self._call(lambda: self._script("set", keys, args)))
        if names:
            self._call(lambda: self._script("set", [key, *names], [value, ttl_ms, "set"]))
        else:
            self._call(lambda: self._command("SET", key, value, "PX", ttl_ms))
        return True

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda: self.client.unlink(key)))

    def invalidate_tag(self, tag: str) -> int:
        keys = [self.tag_name(tag), self.epoch_name(tag)]
        purge = self._scripts["purge"]
        return int(self._call(lambda: purge(keys=keys, args=[self._epoch_ms])))

    def forget_user(self, user: str) -> int:
        tag = user_tag(user)
        keys = [self.tag_name(tag), self.epoch_name(tag), SALTS_HASH,
                self._namer("forgotten", user)]
        args = [self._epoch_ms, self._namer("salt", user), self._tombstone_ms]
        purge = self._scripts["purge"]
        return int(self._call(lambda: purge(keys=keys, args=args)))

    def salt(self, user: str, candidate: bytes, *, from_disk: bool) -> bytes | None:
        """The user's salt shared by every node: the stored one, or ``candidate`` stored now.

        ``None`` when ``candidate`` came from this node's disk (``from_disk``) but the user
        was forgotten since: that salt must die with the rest of their data.
        """
        field = self._namer("salt", user)
        keys = [SALTS_HASH, self._namer("forgotten", user)]
        args: list[bytes | str] = [field, candidate, "local" if from_disk else "new"]
        script = self._scripts["salt"]
        found = self._call(lambda: script(keys=keys, args=args))
        return None if found is None else bytes(found)

    def publish(self, fields: dict[str, str], maxlen: int = 10000) -> str:
        """Append an invalidation event to the stream; its id.

        The stream keeps at most about ``maxlen`` events, none older than ``events_ttl``.
        """
        oldest = f"{int((self._clock() - self._events_ttl) * 1000)}-0"

        def append() -> Any:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(EVENTS_STREAM, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.xtrim(EVENTS_STREAM, minid=oldest, approximate=False)
                return pipe.execute()[0]

        event_id = self._call(append)
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def claim(self, name: str, ttl: float, *, owner: bytes = b"1") -> bool:
        """Take ``name`` (an opaque name from the namer) for ``ttl`` seconds unless someone
        else holds it: true when ``owner`` now does (again, if it held it already)."""
        ms = max(1, int(ttl * 1000))
        return bool(self._call(lambda: self._script("claim", [name], [owner, ms])))

    def count(self, name: str, amount: float, ttl: float) -> float:
        """Add ``amount`` to the counter ``name`` (made with a life of ``ttl`` seconds when
        new); its total now."""
        ms = max(1, int(ttl * 1000))
        # Not sent again after a lost reply: it may have been added already.
        return float(self._call(lambda: self._script("count", [name], [repr(amount), ms],
                                                     resend=False)))

    def listener(self, block_seconds: float) -> redis.Redis:
        """A separate client for blocking stream reads (its timeout outlasts the block)."""
        return _client(self.url, block_seconds + 2.0)

    def info(self) -> dict[str, Any]:
        """Memory and key counts from ``INFO`` for ``stats``."""
        info = self._call(lambda: self.client.info("memory"))
        keys = self._call(lambda: self.client.dbsize())
        return {"used_memory": info.get("used_memory"), "keys": keys,
                "maxmemory": info.get("maxmemory"),
                "maxmemory_policy": info.get("maxmemory_policy"),
                "polls_run_out": self.spins_missed}

    @property
    def spins_missed(self) -> int:
        """Polls for a reply that ran out before it came (see :class:`ReplyPoll`)."""
        return self._poll.missed

    def server_figures(self) -> dict[str, float]:
        """``used_memory``, ``evicted_keys``, ``keyspace_hits``, ``keyspace_misses`` from
        ``INFO`` (for the metrics endpoint)."""
        info = self._call(lambda: self.client.info())
        return {k: float(info[k]) for k in ("used_memory", "evicted_keys", "keyspace_hits",
                                            "keyspace_misses") if k in info}

    def close(self) -> None:
        with self._readers_lock:
            readers = list(self._readers)
        for conn in readers:
            conn.disconnect()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
