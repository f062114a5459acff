"""The entities file (``configs/entities.yaml``): the home as its owner describes it."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from assistant.errors import ConfigError
from assistant.home.model import Area, Entity, Floor, Home
from assistant.yamlfile import key_line, line_of, load_yaml


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: aliases must be a string or a list of strings")


def load_home(path: Path) -> Home:
    """Read an entities file; :class:`ConfigError` names the file and line of any mistake.

    The format::

        floors:   [{id, name, aliases?, level?}]
        areas:    [{id, name, aliases?, floor?}]
        entities: [{id: <domain>.<object>, name, aliases?, area?, device_class?,
                    command_topic?, state_topic?, state?, attributes?}]
    """
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}, line 1: expected a mapping with floors, areas, entities")
    unknown = set(data) - {"floors", "areas", "entities"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown, key=str)}")

    def items(section: str) -> list[tuple[int, dict[str, Any]]]:
        value = data.get(section) or []
        if not isinstance(value, list):
            raise ConfigError(f"{path}, line {key_line(data, section)}: {section} must be a list")
        out = []
        for item in value:
            line = line_of(item, line_of(value))
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
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra, key=str)}")
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
