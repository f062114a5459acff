"""The satellites a broadcast reaches: the sites the service is configured with, and those
it has heard from since it started."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class Satellites:
    """The sites known to this process."""

    def __init__(self, sites: Iterable[str] = ()) -> None:
        self._sites = set(sites)
        self._lock = threading.Lock()
        self.sent = False
        """Does a transport send broadcasts now (the service, while it runs)? Without one,
        a broadcast is refused, never answered as done."""

    def heard(self, site: str) -> None:
        """A request came from ``site``."""
        if site not in self._sites:  # a set's membership test needs no lock
            with self._lock:
                self._sites.add(site)

    def others(self, site: str | None) -> tuple[str, ...]:
        """Every known site but ``site``, sorted."""
        with self._lock:
            return tuple(sorted(s for s in self._sites if s != site))


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A message for satellites, sent once the answer that asked for it is committed."""

    text: str
    """What to say there (the words someone said)."""
    sites: tuple[str, ...]
    """Where."""
    origin: str | None = None
    """The site it was said at (not told it)."""
    user: str | None = None
    """Who said it: their speech is cached as theirs."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def to_json(self) -> dict[str, Any]:
        """What a satellite reads: the message and the site it came from, not who said it."""
        return {"id": self.id, "text": self.text, "from": self.origin}
