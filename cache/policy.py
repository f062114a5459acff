"""Per-user privacy policies: how long items live, whether they touch disk, how they are scoped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cache.scope import SHARED, scope_of


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

    def scope(self, requested: str, user: str | None) -> str:
        """``shared`` or ``user:<id>`` for an item a template scoped as ``requested``."""
        if user is None:
            return SHARED
        if requested == "user" or self.for_user(user).private:
            return scope_of(user)
        return SHARED
