"""The list intents of Home Assistant's library (the shopping list, and to-do lists the home
names as ``todo`` entities), over a :class:`ListStore`: each person's lists are their own."""

from __future__ import annotations

from assistant.handlers.registry import Asked, Handled
from assistant.lists.store import SHOPPING_LIST, ListStore

SHOPPING_ADD = "HassShoppingListAddItem"
SHOPPING_COMPLETE = "HassShoppingListCompleteItem"
LIST_ADD = "HassListAddItem"
LIST_COMPLETE = "HassListCompleteItem"
LIST_REMOVE = "HassListRemoveItem"

ANONYMOUS = "Sorry, I only keep lists for people I know, and I don't know who is asking."
NOT_KEPT = "Sorry, your privacy settings don't let me keep a list for you."


class ListIntents:
    """Adds, checks off and removes items of the asker's own lists."""

    intents = frozenset({SHOPPING_ADD, SHOPPING_COMPLETE, LIST_ADD, LIST_COMPLETE, LIST_REMOVE})

    def __init__(self, store: ListStore) -> None:
        self.store = store

    def handle(self, asked: Asked) -> Handled:
        user = asked.user
        if user is None:
            return Handled(error="anonymous", otherwise=ANONYMOUS)
        if not self.store.keeps(user):
            return Handled(error="not_kept", otherwise=NOT_KEPT)
        list_id, list_name = self._list(asked)
        item = str(asked.slot("item") or "").strip()
        slots = {"list": list_name, "item": item}
        intent = asked.match.intent
        if intent in (SHOPPING_ADD, LIST_ADD):
            self.store.add(user, list_id, item)
            return Handled(slots=slots, personal=True)
        if intent in (SHOPPING_COMPLETE, LIST_COMPLETE):
            done = self.store.complete(user, list_id, item)
        else:
            done = self.store.remove(user, list_id, item)
        if done is None:
            return Handled(slots=slots, error="item_not_found", personal=True,
                           otherwise=f"Sorry, I couldn't find {item} on your {list_name}.")
        return Handled(slots=slots, personal=True)

    @staticmethod
    def _list(asked: Asked) -> tuple[str, str]:
        """The list meant: the shopping list, or the to-do entity the sentence named."""
        if asked.match.intent.startswith("HassShoppingList"):
            return SHOPPING_LIST, "shopping list"
        lists = [e for e in asked.match.targets if e.domain == "todo"]
        name = lists[0].name if lists else str(asked.slot("name") or "to-do")
        list_id = lists[0].entity_id.split(".", 1)[1] if lists else "_".join(
            name.casefold().split())
        spoken = " ".join(name.casefold().split())
        return list_id, spoken if spoken.endswith("list") else spoken + " list"
