"""The one spelling of an item's scope (``shared`` or ``user:<id>``) and of a user's tag.

Every cache key that can differ per person carries its scope as a field, and every item of
a user carries the user's tag in every tier, so that a forget finds it. Both are spelled
here and nowhere else.
"""

from __future__ import annotations

SHARED = "shared"
"""The scope of an item cached once for everyone."""

_USER = "user:"


def scope_of(user: str | None) -> str:
    """``shared`` for ``None``, else ``user:<id>``: the scope field of a cache key."""
    return SHARED if user is None else _USER + user


def user_tag(user: str) -> str:
    """The tag every item of ``user`` carries (``user:<id>``)."""
    return _USER + user


def tag_user(tag: str) -> str | None:
    """The user a tag names, when it is a user's tag; else ``None``."""
    return tag[len(_USER):] if tag.startswith(_USER) else None


def is_scope(scope: str) -> bool:
    """Is ``scope`` spelled ``shared`` or ``user:<id>`` with a non-empty id?"""
    return scope == SHARED or (scope.startswith(_USER) and len(scope) > len(_USER))
