"""Lists kept per user (the shopping list, and one per to-do list the home names), through
the tiered cache under the owner's privacy policy.

A list is one cache item of its owner's: keyed by their scope, sealed under their data key
on Redis and disk, on disk only if their policy allows, living as long as their policy
allows after its last change, and gone everywhere when they are forgotten. Nobody else's
key can reach it. Changes are read-modify-write under a lock of this process (several
service nodes changing one person's list at the same instant may lose one of the changes).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cache import KeyBuilder, TieredCache, check_user, scope_of

LIST_TTL = 365 * 24 * 3600.0
"""How long a list lives after its last change, before its owner's policy caps it."""

SHOPPING_LIST = "shopping_list"
"""The id of the shopping list (Home Assistant's ``todo.shopping_list``)."""


def normalize_item(text: str) -> str:
    """An item as compared: case and spacing do not matter."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class Item:
    """One thing on a list."""

    summary: str
    """What was said."""
    complete: bool = False
    """Checked off."""


class ListStore:
    """Every user's lists, in the cache."""

    def __init__(self, cache: TieredCache, keys: KeyBuilder, *, ttl: float = LIST_TTL) -> None:
        self.cache = cache
        self.keys = keys
        self.ttl = ttl
        self._lock = threading.Lock()

    def keeps(self, user: str) -> bool:
        """May anything of ``user``'s be kept at all (a policy with no time to live may not)?"""
        return self.cache.policies.place(user, ttl=self.ttl, personal=True).ttl > 0

    def _key(self, user: str, list_id: str) -> str:
        return self.keys.key("list", list_id, scope_of(user))

    def items(self, user: str, list_id: str) -> list[Item]:
        """What is on ``user``'s list ``list_id``, oldest first."""
        check_user(user)
        found = self.cache.lookup(self._key(user, list_id), user=user)
        if found is None or not isinstance(found.value, dict):
            return []
        return [Item(str(i["summary"]), bool(i.get("complete", False)))
                for i in found.value.get("items", ())]

    def _save(self, user: str, list_id: str, items: list[Item]) -> None:
        place = self.cache.policies.place(user, ttl=self.ttl, personal=True)
        value: dict[str, Any] = {"items": [{"summary": i.summary, "complete": i.complete}
                                           for i in items]}
        self.cache.set(self._key(user, list_id), value, ttl=place.ttl, user=place.owner,
                       redis=place.redis, disk=place.disk)

    def add(self, user: str, list_id: str, summary: str) -> Item:
        """Put ``summary`` on the list (at the end)."""
        item = Item(" ".join(summary.split()))
        with self._lock:
            items = self.items(user, list_id)
            items.append(item)
            self._save(user, list_id, items)
        return item

    def complete(self, user: str, list_id: str, summary: str) -> Item | None:
        """Check off the first unchecked item called ``summary``; ``None`` if there is none."""
        wanted = normalize_item(summary)
        with self._lock:
            items = self.items(user, list_id)
            for index, item in enumerate(items):
                if not item.complete and normalize_item(item.summary) == wanted:
                    items[index] = Item(item.summary, complete=True)
                    self._save(user, list_id, items)
                    return items[index]
        return None

    def remove(self, user: str, list_id: str, summary: str) -> Item | None:
        """Take the first item called ``summary`` off the list; ``None`` if there is none."""
        wanted = normalize_item(summary)
        with self._lock:
            items = self.items(user, list_id)
            for index, item in enumerate(items):
                if normalize_item(item.summary) == wanted:
                    del items[index]
                    self._save(user, list_id, items)
                    return item
        return None
