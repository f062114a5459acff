"""Home Assistant MQTT discovery messages read into entities and states, without any I/O.

A device publishes a retained JSON config on ``<prefix>/<component>/[<node_id>/]<object_id>/config``
(an empty payload withdraws it). :func:`expand` and :func:`parse` turn one such message into an
:class:`~assistant.home.model.Entity`; :func:`state_of` and :func:`normalize_state` read a
state topic's payload. The listener that subscribes is :mod:`assistant.home.listener`.

Templates (``value_template`` and friends) are kept in the attributes but not evaluated: a
state is the payload as published, or the ``state`` key of a JSON object.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from assistant.errors import AssistantError
from assistant.home.abbreviations import ABBREVIATIONS, DEVICE_ABBREVIATIONS
from assistant.home.model import Entity

log = logging.getLogger(__name__)

COMPONENTS = frozenset({
    "binary_sensor", "button", "climate", "cover", "fan", "lawn_mower", "light", "lock", "number",
    "select", "sensor", "switch", "vacuum",
})
"""The discovery components that become entities; configs of others (device triggers, tags,
alarm panels...) are ignored."""

TOPIC_BASE = "~"

_TOPIC = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)

# Keys that become Entity fields (or say nothing about the entity) rather than attributes.
_NOT_ATTRIBUTES = frozenset({"name", "object_id", "device_class", "device", "origin", "platform"})


class DiscoveryError(AssistantError):
    """A discovery message that cannot be understood; the message names its topic."""

    code = "bad_discovery"


@dataclass(frozen=True, slots=True)
class DiscoveryUpdate:
    """What one discovery message says."""

    discovery_id: str
    """``<component>/[<node_id>/]<object_id>`` from the topic: finds the entity again on removal."""
    entity: Entity | None
    """The entity announced, without its area; ``None`` when the config was withdrawn."""
    suggested_area: str | None = None
    """The area name the device suggests, to be looked up among the home's areas."""


def _expand_keys(payload: dict[str, Any], table: Mapping[str, str]) -> None:
    # Iterate over a copy of the matching keys: the dict changes while we go.
    for key in [k for k in payload if k in table]:
        payload[table[key]] = payload.pop(key)


def _availability(payload: dict[str, Any]) -> list[Any]:
    value = payload.get("availability")
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of a discovery config with abbreviated keys spelled out and ``~`` replaced.

    Abbreviations are expanded in the config, in ``device`` and in each ``availability`` entry;
    then, when the config has a ``~`` key, its value (the base) is put in place of a ``~`` that
    starts or ends the value of any key ending in ``topic``, and of any availability entry's
    ``topic``. A ``~`` anywhere else is left alone. This follows Home Assistant, including its
    quirk that a value both starting and ending with ``~`` gets only the trailing one replaced.
    """
    out = dict(payload)
    _expand_keys(out, ABBREVIATIONS)
    if isinstance(out.get("device"), dict):
        out["device"] = dict(out["device"])
        _expand_keys(out["device"], DEVICE_ABBREVIATIONS)
    if "availability" in out:
        entries = [dict(e) if isinstance(e, dict) else e for e in _availability(out)]
        for entry in entries:
            if isinstance(entry, dict):
                _expand_keys(entry, ABBREVIATIONS)
        # A single entry stays a single entry: only its contents are rewritten.
        out["availability"] = entries if isinstance(out["availability"], list) else entries[0]
    if TOPIC_BASE not in out:
        return out
    base = out.pop(TOPIC_BASE)
    for key, value in out.items():
        if key.endswith("topic") and isinstance(value, str) and value:
            out[key] = _rebase(value, base)
    for entry in _availability(out):
        if isinstance(entry, dict):
            topic = entry.get("topic")
            if isinstance(topic, str) and topic:
                entry["topic"] = _rebase(topic, base)
    return out


def _rebase(value: str, base: Any) -> str:
    result = value
    if value[0] == TOPIC_BASE:
        result = f"{base}{value[1:]}"
    if value[-1] == TOPIC_BASE:
        result = f"{value[:-1]}{base}"
    return result


def slug(text: str) -> str:
    """``Living Room Lamp`` -> ``living_room_lamp``; accents dropped, other runs of symbols to ``_``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def _readable(object_id: str) -> str:
    words = re.split(r"[_\-\s]+", object_id)
    return " ".join(w[:1].upper() + w[1:] for w in words if w) or object_id


def _check_topic(value: str, topic: str, key: str) -> None:
    """Refuse a topic MQTT cannot carry: subscribing to it would fail in paho's thread."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise DiscoveryError(f"{topic}: {key} is not valid UTF-8") from None
    if size > 65535 or "\x00" in value:
        raise DiscoveryError(f"{topic}: {key} is not a valid MQTT topic")


def _text(config: Mapping[str, Any], key: str, topic: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DiscoveryError(f"{topic}: {key!r} must be a string, not {type(value).__name__}")
    return value.strip() or None


def _freeze(value: Any) -> Any:
    # Entities are shared, immutable snapshots: nested JSON must not be changeable either.
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def parse(topic: str, payload: bytes, prefix: str = "homeassistant") -> DiscoveryUpdate | None:
    """Read one discovery message.

    ``topic``: ``<prefix>/<component>/[<node_id>/]<object_id>/config``.
    ``payload``: the JSON config; empty (or ``{}``) withdraws the entity.
    ``prefix``: the discovery prefix the topic starts with.

    Returns ``None`` for a component the assistant does not handle. The entity id is
    ``<component>.<slug>`` of the config's ``object_id``, else of its ``name``, else of the
    topic's object id. Raises :class:`DiscoveryError`, naming the topic, for a topic of the
    wrong shape or a payload that is not a JSON object of the expected types.
    """
    head = f"{prefix}/"
    match = _TOPIC.fullmatch(topic[len(head):]) if topic.startswith(head) else None
    if match is None:
        raise DiscoveryError(
            f"{topic}: not a discovery topic ({prefix}/<component>/[<node_id>/]<object_id>/config)"
        )
    component, node_id, object_id = match.group("component", "node_id", "object_id")
    if component not in COMPONENTS:
        return None
    discovery_id = "/".join(p for p in (component, node_id, object_id) if p)
    if not payload:
        return DiscoveryUpdate(discovery_id, None)
    try:
        raw = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise DiscoveryError(f"{topic}: payload is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise DiscoveryError(
            f"{topic}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(raw, dict):
        raise DiscoveryError(f"{topic}: expected a JSON object, got {type(raw).__name__}")
    if not raw:
        # Home Assistant treats an empty config like an empty payload.
        return DiscoveryUpdate(discovery_id, None)
    config = expand(raw)
    for key, value in config.items():
        if key.endswith("topic") and isinstance(value, str):
            _check_topic(value, topic, key)

    device = config.get("device")
    if device is not None and not isinstance(device, dict):
        raise DiscoveryError(f"{topic}: 'device' must be an object")
    device = device or {}
    name = _text(config, "name", topic)
    wanted = _text(config, "object_id", topic)
    local_id = (slug(wanted) if wanted else "") or (slug(name) if name else "") or slug(object_id)
    if not local_id:
        raise DiscoveryError(f"{topic}: no usable object id")
    suggested_area = _text(device, "suggested_area", topic)

    command_topic = _text(config, "command_topic", topic)
    state_topic = _text(config, "state_topic", topic)
    if component == "climate":
        # A thermostat has no plain command topic; its target temperature is what is set,
        # and the HVAC mode is what Home Assistant reports as its state.
        command_topic = command_topic or _text(config, "temperature_command_topic", topic)
        state_topic = state_topic or _text(config, "mode_state_topic", topic)
    elif component == "cover":
        # command_topic takes OPEN/CLOSE/STOP; a cover that only has a position takes numbers.
        command_topic = command_topic or _text(config, "set_position_topic", topic)
        state_topic = state_topic or _text(config, "position_topic", topic)
    elif component == "lawn_mower":
        # A mower has a topic per command (each optional) and reports its activity.
        command_topic = command_topic or next(
            (t for k in ("start_mowing_command_topic", "dock_command_topic",
                         "pause_command_topic") if (t := _text(config, k, topic))), None)
        state_topic = state_topic or _text(config, "activity_state_topic", topic)

    attributes = {k: _freeze(v) for k, v in config.items() if k not in _NOT_ATTRIBUTES}
    if suggested_area:
        attributes["suggested_area"] = suggested_area
    entity = Entity(
        entity_id=f"{component}.{local_id}",
        name=name or _text(device, "name", topic) or _readable(wanted or object_id),
        device_class=_text(config, "device_class", topic),
        command_topic=command_topic,
        state_topic=state_topic,
        attributes=MappingProxyType(attributes),
        source="discovery",
    )
    return DiscoveryUpdate(discovery_id, entity, suggested_area)


def state_of(payload: bytes) -> str:
    """An entity's state from a state-topic payload: the text, or a JSON object's ``state``.

    Raises :class:`UnicodeDecodeError` for a payload that is not UTF-8.
    """
    text = payload.decode("utf-8").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(data, dict) and "state" in data:
            value = data["state"]
            return value if isinstance(value, str) else json.dumps(value)
    return text


_STATE_KEYS = {
    "on": ("state_on", "payload_on"), "off": ("state_off", "payload_off"),
    "open": ("state_open", "payload_open"), "closed": ("state_closed", "payload_close"),
    "opening": ("state_opening",), "closing": ("state_closing",),
    "locked": ("state_locked", "payload_lock"), "unlocked": ("state_unlocked", "payload_unlock"),
}
_DEFAULT_STATES = {"ON": "on", "OFF": "off", "OPEN": "open", "CLOSED": "closed",
                   "LOCKED": "locked", "UNLOCKED": "unlocked"}


def normalize_state(entity: Entity, state: str) -> str:
    """A published state in Home Assistant's words (``on``, ``off``, ``open``...), using the
    payloads the device announced (``payload_on: "1"``) and MQTT's usual upper-case ones."""
    for word, keys in _STATE_KEYS.items():
        if any(entity.attributes.get(k) == state for k in keys):
            return word
    if entity.domain in ("light", "switch", "fan", "binary_sensor", "cover", "lock", "valve"):
        return _DEFAULT_STATES.get(state, state)
    return state


