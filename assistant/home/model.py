"""The home as the assistant sees it: floors, areas and entities, in immutable snapshots."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def entity_tag(entity_id: str) -> str:
    """The tag every cached answer about entity ``entity_id`` carries (purged when it changes)."""
    return f"entity:{entity_id}"


@dataclass(frozen=True, slots=True)
class Floor:
    """A floor of the home."""

    id: str
    """Stable identifier, e.g. ``ground``."""
    name: str
    """What people call it, e.g. ``Ground Floor``."""
    aliases: tuple[str, ...] = ()
    """Other names, e.g. ``downstairs``."""
    level: int | None = None
    """Storey number, 0 for the ground floor."""


@dataclass(frozen=True, slots=True)
class Area:
    """A room or zone."""

    id: str
    """Stable identifier, e.g. ``living_room``."""
    name: str
    """What people call it, e.g. ``Living Room``."""
    aliases: tuple[str, ...] = ()
    """Other names, e.g. ``lounge``."""
    floor: str | None = None
    """The id of the floor it is on."""


@dataclass(frozen=True, slots=True)
class Entity:
    """A thing the assistant can ask about or act on."""

    entity_id: str
    """``<domain>.<object id>``, e.g. ``light.kitchen_light``."""
    name: str
    """What people call it, e.g. ``Kitchen Light``."""
    aliases: tuple[str, ...] = ()
    """Other names."""
    area: str | None = None
    """The id of its area."""
    device_class: str | None = None
    """Home Assistant's device class (``temperature``, ``blind``, ...)."""
    command_topic: str | None = None
    """Where commands to it are published."""
    state_topic: str | None = None
    """Where it publishes its state."""
    state: str | None = None
    """Its current state, as last seen (``on``, ``off``, ``21.5``...)."""
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Other facts: unit of measurement, brightness, supported options, discovery payload keys."""
    source: str = "config"
    """``config`` (the entities file) or ``discovery`` (MQTT discovery)."""

    @property
    def domain(self) -> str:
        """The part before the dot: ``light``, ``climate``, ``cover``..."""
        return self.entity_id.split(".", 1)[0]

    def structure(self) -> tuple[Any, ...]:
        """What recognition depends on (not the state)."""
        return (self.entity_id, self.name, self.aliases, self.area, self.device_class)


@dataclass(frozen=True, slots=True)
class Home:
    """An immutable snapshot of the home."""

    floors: Mapping[str, Floor] = field(default_factory=dict)
    areas: Mapping[str, Area] = field(default_factory=dict)
    entities: Mapping[str, Entity] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """A hash of the structure (names, aliases, areas, floors), not of states."""
        parts = [
            sorted((f.id, f.name, f.aliases, f.level) for f in self.floors.values()),
            sorted((a.id, a.name, a.aliases, a.floor) for a in self.areas.values()),
            sorted(e.structure() for e in self.entities.values()),
        ]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def area_of(self, entity: Entity) -> Area | None:
        """The area an entity is in."""
        return self.areas.get(entity.area) if entity.area else None

    def area_named(self, name: str) -> Area | None:
        """The area called ``name`` (or one of its aliases), case-insensitively."""
        wanted = name.casefold()
        for area in self.areas.values():
            if wanted in (n.casefold() for n in (area.name, *area.aliases)):
                return area
        return None

    def floor_named(self, name: str) -> Floor | None:
        """The floor called ``name`` (or one of its aliases), case-insensitively."""
        wanted = name.casefold()
        for floor in self.floors.values():
            if wanted in (n.casefold() for n in (floor.name, *floor.aliases)):
                return floor
        return None

    def named(self, name: str) -> list[Entity]:
        """Entities called ``name`` (or with it as an alias), case-insensitively."""
        wanted = name.casefold()
        return [e for e in self.entities.values()
                if wanted in (n.casefold() for n in (e.name, *e.aliases))]

    def in_area(self, area_id: str, domain: str | None = None) -> list[Entity]:
        """Entities in an area, optionally of one domain."""
        return [e for e in self.entities.values()
                if e.area == area_id and (domain is None or e.domain == domain)]

    def on_floor(self, floor_id: str, domain: str | None = None) -> list[Entity]:
        """Entities in the areas of a floor, optionally of one domain."""
        areas = {a.id for a in self.areas.values() if a.floor == floor_id}
        return [e for e in self.entities.values()
                if e.area in areas and (domain is None or e.domain == domain)]
