"""Broadcasts: what someone says, sent to every other satellite."""

from assistant.broadcast.intents import BroadcastIntents
from assistant.broadcast.satellites import Broadcast, Satellites

__all__ = ["Broadcast", "BroadcastIntents", "Satellites"]
