"""The pieces of an answer: whose each is, and the static ones rendered through the cache.

Static fragments are rendered in the template sandbox and cached as text, keyed by the
template's version and everything the template can see (slots, the target entities with
their states, the time bucket it declared, and the user when it mentions the user), so an
edit, a changed state or another user never meets an old answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from assistant.answers.context import BUCKET_SECONDS, render
from assistant.home import entity_tag
from assistant.recognition.match import Match
from assistant.templates.model import Fragment, IntentTemplate
from cache import KeyBuilder, Placement, PolicyBook, TieredCache, scope_of

MEMO_SIZE = 4096
"""Entries a responder memo holds before it starts again."""


def remember(memo: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    """Keep ``value`` in a memo (a plain dict: a get or set is atomic), emptied when full:
    cheaper to consult than an LRU with its lock, and a miss only costs what it saves."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


@dataclass(frozen=True, slots=True)
class FragmentResult:
    """How one fragment was produced."""

    kind: str
    """``text`` or ``generate``."""
    text: str
    """What it said."""
    source: str
    """``l1``, ``l2``, ``l3``, ``computed``, ``waited``, ``uncached`` (generated, not
    reproducible) or ``fallback``."""
    seconds: float
    """Time it took."""
    personal: bool = False
    """Is it the asker's own (cached for them alone)? Then so is its speech."""


def said_freely(match: Match | None) -> bool:
    """Does ``match`` carry words someone said freely (a wildcard slot)?"""
    return match is not None and any(s.wildcard for s in match.slots.values())


def placement(policies: PolicyBook, user: str | None, *, ttl: float, reads: frozenset[str],
              personal: bool = False, free_text: bool = False) -> Placement:
    """Where a piece of an answer computed for ``user`` lives: ``user``'s own when it is
    ``personal`` (``scope: user``), reads who asks, or reads slots holding words said freely
    (``free_text``), or when their policy is private; shared otherwise. Their policy caps
    its life and tiers either way (see :meth:`PolicyBook.place`)."""
    return policies.place(user, ttl=ttl, personal=personal or "user" in reads or (
        "slots" in reads and free_text))


class StaticFragments:
    """Static text fragments rendered through the cache."""

    def __init__(self, cache: TieredCache | None, keys: KeyBuilder | None, *,
                 ttl: float) -> None:
        """``ttl``: seconds a rendered fragment is kept (less when it varies by time)."""
        self.cache = cache
        self.keys = keys
        self.ttl = ttl
        self.policies = cache.policies if cache is not None else PolicyBook()
        # Keys of shared fragments by what decides them: the key is canonical JSON under an
        # HMAC, while this memo only has to tell contexts apart within the process, which
        # their repr does at a fraction of the cost. Nothing of a user's is kept here.
        self._keys_made: dict[tuple[Any, ...], str] = {}

    def fetch(self, template: IntentTemplate, match: Match, index: int, fragment: Fragment,
              context: Mapping[str, Any], user: str | None) -> tuple[FragmentResult, str | None]:
        """One static fragment, and its cache key when it is shared (else ``None``)."""
        started = time.perf_counter()
        assert fragment.text is not None
        source = fragment.text
        where = f"{template.file}, line {fragment.line} ({template.name})"

        def rendered() -> str:
            return render(source, context, where=where)

        if self.cache is None or self.keys is None:
            return FragmentResult("text", rendered(), "computed",
                                  time.perf_counter() - started), None
        free_text = said_freely(match)
        ttl = BUCKET_SECONDS.get(template.vary_by or "", self.ttl)
        place = placement(self.policies, user, ttl=ttl, reads=fragment.uses, free_text=free_text)
        owner = place.owner
        # Only what the template reads goes into its key, so an answer that does not depend on
        # who asks, or where, is cached once for everyone.
        seen = {k: v for k, v in context.items() if k in fragment.uses and k != "time"}
        bucket = context["time"].isoformat() if "time" in context else ""
        shared = owner is None and not ("slots" in fragment.uses and free_text)
        memo = (fragment, template.version, match.response, index, repr(seen),
                bucket) if shared else None
        key = self._keys_made.get(memo) if memo is not None else None
        if key is None:
            visible = json.dumps(seen, sort_keys=True, default=str, ensure_ascii=False)
            key = self.keys.key("frag", template.name, template.version, match.response, index,
                                visible, bucket, scope_of(owner))
            if memo is not None:
                remember(self._keys_made, memo, key)
        tags = (*template.tags, *(entity_tag(e.entity_id) for e in match.targets))
        outcome = self.cache.fetch(key, rendered, ttl=place.ttl, tags=tags, user=owner,
                                   redis=place.redis, disk=place.disk)
        return FragmentResult("text", str(outcome.value), outcome.source,
                              time.perf_counter() - started, owner is not None), \
            key if owner is None else None
