"""Lists kept per user under their privacy policy, and the intents that change them."""

from assistant.lists.intents import ListIntents
from assistant.lists.store import SHOPPING_LIST, Item, ListStore

__all__ = ["SHOPPING_LIST", "Item", "ListIntents", "ListStore"]
