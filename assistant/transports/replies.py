"""What the service answered, kept to answer a request sent again, and which node answers.

A reply is remembered twice: briefly in memory (the request's key, and the reply itself only
when nothing of the asker's is in it), and in the cache as the asker's own item, under their
privacy policy, for ``replay_ttl``: encrypted, in Redis for every node, on disk where their
policy allows, and gone with a forget. Without a shared subscription every node is sent
every request; the first to claim it in Redis answers it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Hashable

from assistant.protocol import ErrorReply, Reply, Response
from cache import CacheError, KeyBuilder, TieredCache, TierUnavailable, scope_of

log = logging.getLogger(__name__)

_RECENT = 4096
"""Requests answered lately, remembered in memory."""
_RECENT_SECONDS = 60.0


class Replies:
    """The replies sent, by request: ``(user, id, digest of what was asked)``."""

    def __init__(self, cache: TieredCache, keys: KeyBuilder, *, ttl: float) -> None:
        """``ttl``: seconds a reply is kept in the cache (``[service] replay_ttl``)."""
        self._cache = cache
        self._keys = keys
        self._ttl = ttl
        self._recent: collections.OrderedDict[Hashable, tuple[float, Reply | None]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Requests remembered in memory (those of the last minute, at most 4096)."""
        with self._lock:
            return len(self._recent)

    def _key(self, user: str, request: tuple[str, str, str]) -> str:
        return self._keys.key("reply", scope_of(user), request[1], request[2])

    def keep(self, request: tuple[str, str, str], reply: Reply, *, personal: bool,
             record: bool = True) -> None:
        """Remember ``reply`` to the request keyed ``request``; ``personal``: it holds
        something of the asker's (kept in the cache only, never in memory)."""
        kept = None if personal and isinstance(reply, Response) else reply
        now = time.monotonic()
        with self._lock:
            self._recent[request] = (now + _RECENT_SECONDS, kept)
            self._recent.move_to_end(request)
            # Oldest first: those past their time go, and beyond _RECENT the oldest anyway.
            while self._recent and (len(self._recent) > _RECENT
                                    or next(iter(self._recent.values()))[0] <= now):
                self._recent.popitem(last=False)
        if not record:
            return
        user = request[0]
        place = self._cache.policies.place(user, ttl=self._ttl, personal=True)
        kind = "response" if isinstance(reply, Response) else "error"
        try:
            self._cache.set(self._key(user, request), {"kind": kind, "reply": reply.to_json()},
                            ttl=place.ttl, user=place.owner, redis=place.redis,
                            disk=place.disk, tags=("reply",))
        except CacheError as error:
            log.warning("a reply was not recorded: %s", error)

    def sent(self, request: tuple[str, str, str], *, redelivered: bool) -> Reply | None:
        """The reply already sent to this request: from memory, or, for one seen before or
        delivered again by the broker (after a restart, say), from the cache."""
        with self._lock:
            until, recent = self._recent.get(request, (0.0, None))
        seen = until > time.monotonic()
        if recent is not None and seen:
            return recent
        if not (seen or redelivered):
            return None
        found = self._cache.get(self._key(request[0], request), user=request[0])
        if not isinstance(found, dict):
            return None
        data = found.get("reply") or {}
        return (Response.from_json(data) if found.get("kind") == "response"
                else ErrorReply.from_json(data))


class Claims:
    """Which node answers a request every node was sent: the first to claim it in Redis,
    by its client id (so a node restarted takes its own back)."""

    def __init__(self, cache: TieredCache, keys: KeyBuilder, *, owner: str,
                 ttl: float) -> None:
        self._redis = cache.redis
        self._keys = keys
        self._owner = owner.encode()
        self._ttl = ttl

    def _name(self, user: str, request_id: str) -> str:
        return self._keys.name("claim", f"{scope_of(user)}:{request_id}")

    def claim(self, user: str, request_id: str) -> bool:
        """Is it this node's to answer? (Yes, too, while Redis cannot tell.)"""
        if self._redis is None:
            return True
        try:
            return self._redis.claim(self._name(user, request_id), self._ttl, owner=self._owner)
        except TierUnavailable:
            return True

    def release(self, user: str, request_id: str) -> None:
        """Let the same request, sent again, be answered anew."""
        if self._redis is not None:
            with contextlib.suppress(TierUnavailable):
                self._redis.delete(self._name(user, request_id))
