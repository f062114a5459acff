"""The current home: a thread-safe holder of snapshots that tells listeners what changed.

A :class:`Registry` holds the current :class:`~assistant.home.model.Home`, an immutable
snapshot that readers take without locking. Every change makes a new snapshot and tells
the listeners which entities changed and whether the change was *structural* (names,
aliases, areas, floors: what recognition matches against) or only a state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace

from assistant.home.model import Entity, Home

log = logging.getLogger(__name__)


Listener = Callable[[Home, frozenset[str], bool], None]
"""Called with the new home, the ids of the entities that changed, and whether the change
was structural."""


class Registry:
    """The current home; thread-safe; tells listeners about every change."""

    def __init__(self, home: Home | None = None) -> None:
        self._home = home or Home()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @property
    def home(self) -> Home:
        """The current snapshot (read it once per request)."""
        return self._home

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` after every change."""
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _publish(self, home: Home, changed: Iterable[str], structural: bool) -> None:
        """Call the listeners; outside the lock, so a listener may change the home itself.
        One that fails is logged and the others are still called."""
        ids = frozenset(changed)
        for listener in list(self._listeners):
            try:
                listener(home, ids, structural)
            except Exception:
                log.exception("a listener of the home failed")

    def replace_config(self, config: Home) -> None:
        """Swap in a newly loaded entities file; discovered entities stay."""
        with self._lock:
            old = self._home
            entities = {k: e for k, e in old.entities.items() if e.source == "discovery"}
            for entity_id, entity in config.entities.items():
                known = old.entities.get(entity_id)
                state = entity.state if entity.state is not None else (known.state if known else None)
                entities[entity_id] = replace(entity, state=state)
            home = self._home = Home(floors=dict(config.floors), areas=dict(config.areas),
                                     entities=entities)
            changed = {k for k in set(old.entities) | set(entities)
                       if old.entities.get(k) != entities.get(k)}
        self._publish(home, changed, home.version != old.version)

    def put(self, entity: Entity) -> None:
        """Add or replace one entity (from discovery); its state is kept if it had one."""
        with self._lock:
            old = self._home
            known = old.entities.get(entity.entity_id)
            if known is not None and entity.state is None:
                entity = replace(entity, state=known.state)
            if known == entity:
                return
            entities = {**old.entities, entity.entity_id: entity}
            structural = known is None or known.structure() != entity.structure()
            home = self._home = replace(old, entities=entities)
        self._publish(home, {entity.entity_id}, structural)

    def remove(self, entity_id: str) -> bool:
        """Remove one entity; true when it was there."""
        with self._lock:
            old = self._home
            if entity_id not in old.entities:
                return False
            entities = {k: e for k, e in old.entities.items() if k != entity_id}
            home = self._home = replace(old, entities=entities)
        self._publish(home, {entity_id}, True)
        return True

    def set_state(self, entity_id: str, state: str) -> bool:
        """Record an entity's new state; true when it changed."""
        with self._lock:
            old = self._home
            entity = old.entities.get(entity_id)
            if entity is None or entity.state == state:
                return False
            entities = {**old.entities, entity_id: replace(entity, state=state)}
            home = self._home = replace(old, entities=entities)
        self._publish(home, {entity_id}, False)
        return True
