"""HassBroadcast: the message someone said, for every other satellite."""

from __future__ import annotations

from assistant.broadcast.satellites import Broadcast, Satellites
from assistant.handlers.registry import Asked, Handled

BROADCAST = "HassBroadcast"


class BroadcastIntents:
    """Turns a broadcast request into a :class:`Broadcast` for the transport to send."""

    intents = frozenset({BROADCAST})

    def __init__(self, satellites: Satellites) -> None:
        self.satellites = satellites

    def handle(self, asked: Asked) -> Handled:
        message = " ".join(str(asked.slot("message") or "").split())
        sites = self.satellites.others(asked.site)
        if not message:
            return Handled(error="no_message", otherwise="Sorry, what should I broadcast?")
        if asked.site is None or not self.satellites.sent:
            # Said where no satellite listens, or with nothing to send it (a command line
            # that asks once): never answered as done.
            return Handled(error="no_broadcast_support",
                           otherwise="Sorry, I can't broadcast from here.")
        effects = (Broadcast(message, sites, asked.site, asked.user),) if sites else ()
        return Handled(slots={"sites": list(sites)}, effects=effects, personal=True)
