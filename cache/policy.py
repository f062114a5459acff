"""Per-user privacy policies: how long items live, whether they touch disk, how they are scoped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cache.scope import check_user, scope_of


@dataclass(frozen=True, slots=True)
class PrivacyPolicy:
    """What a user allows the cache to keep."""

    max_ttl: float = 7 * 24 * 3600.0
    """Upper bound in seconds on how long any of the user's items live, in every tier."""
    persist: bool = True
    """May the user's items reach the on-disk tier (L3)?"""
    private: bool = False
    """Key even shareable answers per user, so nothing the user asks is served to others."""

    def __post_init__(self) -> None:
        if self.max_ttl < 0:
            raise ValueError("max_ttl must be >= 0")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an item may live: whose it is, for how long, in which tiers."""

    owner: str | None
    """The user it belongs to (keyed and sealed for them alone), or ``None``: shared."""
    ttl: float
    """Seconds it may live, in every tier."""
    redis: bool = True
    """May it be kept in Redis?"""
    disk: bool = True
    """May it reach the disk tier?"""

    @property
    def scope(self) -> str:
        """``shared`` or ``user:<id>``: the scope field of its cache key."""
        return scope_of(self.owner)


@dataclass(frozen=True, slots=True)
class PolicyBook:
    """The policy of every user: named ones, a default for the rest, and one for shared items."""

    default: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    """The policy of users without one of their own."""
    shared: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    """The policy of items cached once for everyone."""
    users: Mapping[str, PrivacyPolicy] = field(default_factory=dict)
    """Policies by user id."""

    def for_user(self, user: str | None) -> PrivacyPolicy:
        """The policy that governs an item of ``user`` (``None``: a shared item)."""
        if user is None:
            return self.shared
        found = self.users.get(user)
        if found is None:
            # Environment variable names are case-insensitive, so policies set there arrive
            # lower-cased: match them case-insensitively rather than drop them.
            found = self.users.get(user.casefold(), self.default)
        return found

    def ttl(self, ttl: float, user: str | None) -> float:
        """The effective TTL: the smaller of the item's and the policy's."""
        return min(ttl, self.for_user(user).max_ttl)

    def place(self, user: str | None, *, ttl: float, personal: bool = False,
              redis: bool = True, disk: bool = True) -> Placement:
        """Where an item computed for ``user`` (``None``: for nobody in particular) lives:
        the one decision every cached step (transcripts, speech, generated parts, answers)
        takes from the policies.

        Args:
            user: who asked; checked (:class:`~cache.errors.CacheError` for a malformed id).
            ttl: how long the item itself would live.
            personal: is the item theirs by what it holds (their words, their name)?
            redis: may the item be kept in Redis at all (a large local state may not).
            disk: may the item reach the disk tier at all.

        The item is the user's own when it is personal or their policy is ``private``; else
        it is shared. Either way its life is capped by the asker's ``max_ttl`` and its
        owner's (the shared policy for a shared item), and it reaches disk only if both
        allow: an item computed for someone never outlives or outreaches their policy.
        """
        check_user(user)
        asker = self.shared if user is None else self.for_user(user)
        owner = user if user is not None and (personal or asker.private) else None
        holder = self.for_user(owner)
        return Placement(owner=owner, ttl=min(ttl, asker.max_ttl, holder.max_ttl), redis=redis,
                         disk=disk and asker.persist and holder.persist)

    def scope(self, requested: str, user: str | None) -> str:
        """``shared`` or ``user:<id>`` for an item a template scoped as ``requested``."""
        return self.place(user, ttl=0.0, personal=requested == "user").scope
