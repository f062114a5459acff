"""The home: floors, areas and entities, from ``configs/entities.yaml`` and MQTT discovery.

A :class:`Registry` holds the current :class:`Home`, an immutable snapshot that
readers take without locking. Every change makes a new snapshot and tells the
listeners which entities changed and whether the change was *structural* (names,
aliases, areas, floors: what recognition matches against) or only a state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from assistant.errors import ConfigError

log = logging.getLogger(__name__)


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


# -- the entities file ---------------------------------------------------------------------


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: aliases must be a string or a list of strings")


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def load_home(path: Path) -> Home:
    """Read an entities file; :class:`ConfigError` names the file and line of any mistake.

    The format::

        floors:   [{id, name, aliases?, level?}]
        areas:    [{id, name, aliases?, floor?}]
        entities: [{id: <domain>.<object>, name, aliases?, area?, device_class?,
                    command_topic?, state_topic?, state?, attributes?}]
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}, line 1: expected a mapping with floors, areas, entities")
    unknown = set(data) - {"floors", "areas", "entities"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    nodes = {k.value: v for k, v in root.value} if isinstance(root, yaml.MappingNode) else {}

    def items(section: str) -> list[tuple[int, dict[str, Any]]]:
        value = data.get(section) or []
        node = nodes.get(section)
        if not isinstance(value, list):
            raise ConfigError(f"{path}, line {_line(node)}: {section} must be a list")
        lines = [_line(n) for n in node.value] if isinstance(node, yaml.SequenceNode) else []
        out = []
        for index, item in enumerate(value):
            line = lines[index] if index < len(lines) else 0
            if not isinstance(item, dict):
                raise ConfigError(f"{path}, line {line}: each of {section} must be a mapping")
            out.append((line, item))
        return out

    def text_field(item: dict[str, Any], key: str, where: str, required: bool = True) -> Any:
        value = item.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: '{key}' must be a non-empty string")
        return value.strip()

    floors: dict[str, Floor] = {}
    for line, item in items("floors"):
        where = f"{path}, line {line}"
        floor = Floor(text_field(item, "id", where), text_field(item, "name", where),
                      _names(item.get("aliases"), where), item.get("level"))
        floors[floor.id] = floor
    areas: dict[str, Area] = {}
    for line, item in items("areas"):
        where = f"{path}, line {line}"
        area = Area(text_field(item, "id", where), text_field(item, "name", where),
                    _names(item.get("aliases"), where), text_field(item, "floor", where, False))
        if area.floor is not None and area.floor not in floors:
            raise ConfigError(f"{where}: area {area.id!r} is on unknown floor {area.floor!r}")
        areas[area.id] = area
    entities: dict[str, Entity] = {}
    allowed = {"id", "name", "aliases", "area", "device_class", "command_topic", "state_topic",
               "state", "attributes"}
    for line, item in items("entities"):
        where = f"{path}, line {line}"
        extra = set(item) - allowed
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        entity_id = text_field(item, "id", where)
        if "." not in entity_id:
            raise ConfigError(f"{where}: entity id {entity_id!r} must be <domain>.<object id>")
        area_id = text_field(item, "area", where, False)
        if area_id is not None and area_id not in areas:
            raise ConfigError(f"{where}: entity {entity_id!r} is in unknown area {area_id!r}")
        attributes = item.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ConfigError(f"{where}: attributes must be a mapping")
        state = item.get("state")
        if isinstance(state, bool):  # YAML reads a bare on/off as true/false
            state = "on" if state else "off"
        entities[entity_id] = Entity(
            entity_id=entity_id,
            name=text_field(item, "name", where),
            aliases=_names(item.get("aliases"), where),
            area=area_id,
            device_class=text_field(item, "device_class", where, False),
            command_topic=text_field(item, "command_topic", where, False),
            state_topic=text_field(item, "state_topic", where, False),
            state=None if state is None else str(state),
            attributes=MappingProxyType(dict(attributes)),
        )
    return Home(floors=floors, areas=areas, entities=entities)
