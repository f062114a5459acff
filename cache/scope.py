"""The one spelling of an item's scope (``shared`` or ``user:<id>``), of a user's tag, and of
what a user id may be.

Every cache key that can differ per person carries its scope as a field, and every item of
a user carries the user's tag in every tier, so that a forget finds it. Both are spelled
here and nowhere else. A user id is checked here too, where it enters: one to 64 letters,
digits or ``. _ - @``, starting with a letter or digit; an empty id is not "nobody".
"""

from __future__ import annotations

import re

from cache.errors import CacheError

_USER_ID = re.compile(r"[^\W_][\w.@-]{0,63}")

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


def check_user(user: str | None) -> str | None:
    """``user`` itself when it is ``None`` (nobody in particular) or a well-formed user id;
    :class:`CacheError` otherwise (an empty id, spaces, slashes, MQTT wildcards...)."""
    if user is None or (isinstance(user, str) and _USER_ID.fullmatch(user)):
        return user
    raise CacheError(f"invalid user id {user!r}: 1 to 64 letters, digits or . _ - @, "
                     "starting with a letter or digit")
