"""Home Assistant MQTT discovery: devices announce their entities, the registry learns them.

A device publishes a retained JSON config on ``<prefix>/<component>/[<node_id>/]<object_id>/config``
(an empty payload withdraws it). :func:`expand` and :func:`parse` turn one such message into an
:class:`~assistant.home.Entity` without any I/O; :class:`DiscoveryListener` subscribes to the
configs and to the entities' state topics and keeps a :class:`~assistant.home.Registry` current.

Templates (``value_template`` and friends) are kept in the attributes but not evaluated: a
state is the payload as published, or the ``state`` key of a JSON object.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, topic_matches_sub
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.errors import AssistantError
from assistant.home import Entity, Home, Registry
from assistant.mqtt import MqttUnavailable, connect_and_wait, make_client
from assistant.settings import HomeSettings, MqttSettings

log = logging.getLogger(__name__)

COMPONENTS = frozenset({
    "binary_sensor", "button", "climate", "cover", "fan", "light", "lock", "number", "select",
    "sensor", "switch",
})
"""The discovery components that become entities; configs of others (device triggers, tags,
alarm panels...) are ignored."""

# Home Assistant's abbreviations (homeassistant/components/mqtt/abbreviations.py), limited to
# the keys the components above use. An unknown abbreviation is left as it is, as HA does.
ABBREVIATIONS: Mapping[str, str] = MappingProxyType({
    # every component
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ic": "icon",
    "json_attr": "json_attributes",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "obj_id": "object_id",
    "opt": "optimistic",
    "pl": "payload",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "ret": "retain",
    "stat_off": "state_off",
    "stat_on": "state_on",
    "stat_t": "state_topic",
    "stat_tpl": "state_template",
    "stat_val_tpl": "state_value_template",
    "t": "topic",
    "uniq_id": "unique_id",
    "val_tpl": "value_template",
    # sensor, binary_sensor
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "lrst_t": "last_reset_topic",
    "lrst_val_tpl": "last_reset_value_template",
    "off_dly": "off_delay",
    "stat_cla": "state_class",
    "unit_of_meas": "unit_of_measurement",
    # light
    "b_tpl": "blue_template",
    "bri_cmd_t": "brightness_command_topic",
    "bri_cmd_tpl": "brightness_command_template",
    "bri_scl": "brightness_scale",
    "bri_stat_t": "brightness_state_topic",
    "bri_tpl": "brightness_template",
    "bri_val_tpl": "brightness_value_template",
    "clr_temp_cmd_t": "color_temp_command_topic",
    "clr_temp_cmd_tpl": "color_temp_command_template",
    "clr_temp_stat_t": "color_temp_state_topic",
    "clr_temp_tpl": "color_temp_template",
    "clr_temp_val_tpl": "color_temp_value_template",
    "clrm": "color_mode",
    "clrm_stat_t": "color_mode_state_topic",
    "clrm_val_tpl": "color_mode_value_template",
    "cmd_off_tpl": "command_off_template",
    "cmd_on_tpl": "command_on_template",
    "flsh_tlng": "flash_time_long",
    "flsh_tsht": "flash_time_short",
    "fx_cmd_t": "effect_command_topic",
    "fx_cmd_tpl": "effect_command_template",
    "fx_list": "effect_list",
    "fx_stat_t": "effect_state_topic",
    "fx_tpl": "effect_template",
    "fx_val_tpl": "effect_value_template",
    "g_tpl": "green_template",
    "hs_cmd_t": "hs_command_topic",
    "hs_stat_t": "hs_state_topic",
    "hs_val_tpl": "hs_value_template",
    "max_mirs": "max_mireds",
    "min_mirs": "min_mireds",
    "on_cmd_type": "on_command_type",
    "r_tpl": "red_template",
    "rgb_cmd_t": "rgb_command_topic",
    "rgb_cmd_tpl": "rgb_command_template",
    "rgb_stat_t": "rgb_state_topic",
    "rgb_val_tpl": "rgb_value_template",
    "rgbw_cmd_t": "rgbw_command_topic",
    "rgbw_cmd_tpl": "rgbw_command_template",
    "rgbw_stat_t": "rgbw_state_topic",
    "rgbw_val_tpl": "rgbw_value_template",
    "rgbww_cmd_t": "rgbww_command_topic",
    "rgbww_cmd_tpl": "rgbww_command_template",
    "rgbww_stat_t": "rgbww_state_topic",
    "rgbww_val_tpl": "rgbww_value_template",
    "sup_clrm": "supported_color_modes",
    "whit_cmd_t": "white_command_topic",
    "whit_scl": "white_scale",
    "xy_cmd_t": "xy_command_topic",
    "xy_stat_t": "xy_state_topic",
    "xy_val_tpl": "xy_value_template",
    # fan
    "osc_cmd_t": "oscillation_command_topic",
    "osc_cmd_tpl": "oscillation_command_template",
    "osc_stat_t": "oscillation_state_topic",
    "osc_val_tpl": "oscillation_value_template",
    "pct_cmd_t": "percentage_command_topic",
    "pct_cmd_tpl": "percentage_command_template",
    "pct_stat_t": "percentage_state_topic",
    "pct_val_tpl": "percentage_value_template",
    "pl_osc_off": "payload_oscillation_off",
    "pl_osc_on": "payload_oscillation_on",
    "pl_rst_pct": "payload_reset_percentage",
    "pl_rst_pr_mode": "payload_reset_preset_mode",
    "pr_mode_cmd_t": "preset_mode_command_topic",
    "pr_mode_cmd_tpl": "preset_mode_command_template",
    "pr_mode_stat_t": "preset_mode_state_topic",
    "pr_mode_val_tpl": "preset_mode_value_template",
    "pr_modes": "preset_modes",
    "spd_rng_max": "speed_range_max",
    "spd_rng_min": "speed_range_min",
    # climate
    "act_t": "action_topic",
    "act_tpl": "action_template",
    "curr_temp_t": "current_temperature_topic",
    "curr_temp_tpl": "current_temperature_template",
    "fan_mode_cmd_t": "fan_mode_command_topic",
    "fan_mode_cmd_tpl": "fan_mode_command_template",
    "fan_mode_stat_t": "fan_mode_state_topic",
    "fan_mode_stat_tpl": "fan_mode_state_template",
    "hum_cmd_t": "target_humidity_command_topic",
    "hum_cmd_tpl": "target_humidity_command_template",
    "hum_stat_t": "target_humidity_state_topic",
    "hum_state_tpl": "target_humidity_state_template",
    "max_hum": "max_humidity",
    "min_hum": "min_humidity",
    "mode_cmd_t": "mode_command_topic",
    "mode_cmd_tpl": "mode_command_template",
    "mode_stat_t": "mode_state_topic",
    "mode_stat_tpl": "mode_state_template",
    "pow_cmd_t": "power_command_topic",
    "swing_mode_cmd_t": "swing_mode_command_topic",
    "swing_mode_cmd_tpl": "swing_mode_command_template",
    "swing_mode_stat_t": "swing_mode_state_topic",
    "swing_mode_stat_tpl": "swing_mode_state_template",
    "temp_cmd_t": "temperature_command_topic",
    "temp_cmd_tpl": "temperature_command_template",
    "temp_hi_cmd_t": "temperature_high_command_topic",
    "temp_hi_cmd_tpl": "temperature_high_command_template",
    "temp_hi_stat_t": "temperature_high_state_topic",
    "temp_hi_stat_tpl": "temperature_high_state_template",
    "temp_lo_cmd_t": "temperature_low_command_topic",
    "temp_lo_cmd_tpl": "temperature_low_command_template",
    "temp_lo_stat_t": "temperature_low_state_topic",
    "temp_lo_stat_tpl": "temperature_low_state_template",
    "temp_stat_t": "temperature_state_topic",
    "temp_stat_tpl": "temperature_state_template",
    "temp_unit": "temperature_unit",
    # cover
    "pl_cls": "payload_close",
    "pl_open": "payload_open",
    "pl_stop": "payload_stop",
    "pos_clsd": "position_closed",
    "pos_open": "position_open",
    "pos_t": "position_topic",
    "pos_tpl": "position_template",
    "set_pos_t": "set_position_topic",
    "set_pos_tpl": "set_position_template",
    "stat_closing": "state_closing",
    "stat_clsd": "state_closed",
    "stat_open": "state_open",
    "stat_opening": "state_opening",
    "stat_stopped": "state_stopped",
    "tilt_clsd_val": "tilt_closed_value",
    "tilt_cmd_t": "tilt_command_topic",
    "tilt_cmd_tpl": "tilt_command_template",
    "tilt_inv_stat": "tilt_invert_state",
    "tilt_max": "tilt_max",
    "tilt_min": "tilt_min",
    "tilt_opnd_val": "tilt_opened_value",
    "tilt_opt": "tilt_optimistic",
    "tilt_status_t": "tilt_status_topic",
    "tilt_status_tpl": "tilt_status_template",
    # number, select, button, lock
    "ops": "options",
    "pl_lock": "payload_lock",
    "pl_prs": "payload_press",
    "pl_unlk": "payload_unlock",
    "stat_locked": "state_locked",
    "stat_unlocked": "state_unlocked",
})
"""Abbreviated key -> full key, for the config itself and its availability entries."""

DEVICE_ABBREVIATIONS: Mapping[str, str] = MappingProxyType({
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mf": "manufacturer",
    "sa": "suggested_area",
    "sw": "sw_version",
})
"""Abbreviated key -> full key, inside ``device``."""

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


class DiscoveryListener:
    """Keeps a registry in step with MQTT discovery and with its entities' state topics.

    paho's network thread only queues the messages; one worker thread parses them and
    changes the registry, so a slow registry listener never stalls the MQTT connection.
    """

    def __init__(self, registry: Registry, mqtt: MqttSettings, home: HomeSettings, *,
                 timeout: float = 5.0) -> None:
        """``timeout``: seconds :meth:`start` waits for the broker."""
        self._registry = registry
        self._mqtt = mqtt
        self._prefix = home.discovery_prefix
        self._timeout = timeout
        self._filters = (f"{self._prefix}/+/+/config", f"{self._prefix}/+/+/+/config")
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._client: Client | None = None
        self._worker: threading.Thread | None = None
        self._listening = False
        self._active = False
        self._lock = threading.Lock()
        # Both maps below are guarded by _lock: the registry calls _on_home from any thread.
        self._topic_of: dict[str, str] = {}
        self._entities_on: dict[str, set[str]] = {}
        # discovery id -> (entity id the config asks for, entity id given); worker thread only.
        self._ids: dict[str, tuple[str, str]] = {}
        self._subscribe_mid = -1
        self._subscribed = threading.Event()
        self._refused: list[str] = []
        self.errors = 0
        """Messages that could not be used since the start (bad configs, undecodable states)."""

    def start(self) -> None:
        """Connect, subscribe, and start applying messages.

        Returns once the broker has confirmed the subscriptions, so a config published after
        that is seen. Raises :class:`MqttUnavailable` if the broker cannot be reached, does not
        confirm in time, or refuses the discovery subscriptions.
        """
        if self._client is not None:
            raise RuntimeError("the discovery listener is already running")
        client = make_client(self._mqtt, client_id_suffix="-discovery")
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._subscribed.clear()
        self._refused.clear()
        self._active = True
        if not self._listening:
            # The registry has no way to unregister a listener, so it is added once and
            # made inert by _active while stopped.
            self._registry.listen(self._on_home)
            self._listening = True
        home = self._registry.home
        self._on_home(home, frozenset(home.entities), True)
        self._worker = threading.Thread(target=self._work, name="discovery", daemon=True)
        self._worker.start()
        self._client = client
        deadline = time.monotonic() + self._timeout
        try:
            connect_and_wait(client, self._mqtt, self._timeout)
        except BaseException:
            self._client = None
            self._halt_worker()
            raise
        where = f"MQTT broker {self._mqtt.host}:{self._mqtt.port}"
        problem = None
        if not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
            problem = f"{where} did not confirm the discovery subscriptions in time"
        elif self._refused:
            problem = f"{where} refused the subscriptions to {', '.join(self._refused)}"
        if problem is not None:
            self.stop()
            raise MqttUnavailable(problem)

    def stop(self) -> None:
        """Disconnect and finish applying the messages already received."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self._halt_worker()

    def _halt_worker(self) -> None:
        self._active = False
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        with self._lock:
            self._topic_of.clear()
            self._entities_on.clear()

    # -- paho's network thread: nothing here may block ------------------------------------

    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            return
        # Subscribed again on every connection: the broker keeps no session for us.
        with self._lock:
            topics = [(f, 1) for f in self._filters] + [(t, 0) for t in self._entities_on]
            try:
                _, mid = client.subscribe(topics)
            except (ValueError, UnicodeError) as error:  # never raise in paho's thread
                self.errors += 1
                log.error("discovery: could not subscribe: %s", error)
                return
            self._subscribe_mid = -1 if mid is None else mid

    def _on_subscribe(self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        with self._lock:
            if mid != self._subscribe_mid:
                return
        # The discovery filters come first in that SUBSCRIBE.
        refused = [f for f, r in zip(self._filters, reasons, strict=False) if r.is_failure]
        for topic_filter in refused:
            log.error("discovery: the broker refused the subscription to %s", topic_filter)
        self._refused[:] = refused
        self._subscribed.set()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload)))

    # -- the registry's listener: keeps one subscription per state topic in use -------------

    def _on_home(self, home: Home, changed: frozenset[str], structural: bool) -> None:
        if not self._active:
            return
        added: list[str] = []
        dropped: list[str] = []
        with self._lock:
            for entity_id in changed:
                entity = home.entities.get(entity_id)
                new = entity.state_topic if entity is not None else None
                if new is not None and ("+" in new or "#" in new):
                    new = None  # a wildcard would need matching, not lookup; not a state topic
                old = self._topic_of.get(entity_id)
                if new == old:
                    continue
                if old is not None:
                    self._topic_of.pop(entity_id)
                    users = self._entities_on[old]
                    users.discard(entity_id)
                    if not users:
                        del self._entities_on[old]
                        dropped.append(old)
                if new is not None:
                    self._topic_of[entity_id] = new
                    if new not in self._entities_on:
                        self._entities_on[new] = set()
                        added.append(new)
                    self._entities_on[new].add(entity_id)
            client = self._client
            if client is not None and client.is_connected():
                # Queued by paho, never waited for; a lost one is redone by _on_connect.
                try:
                    if added:
                        client.subscribe([(t, 0) for t in added])
                    if dropped:
                        client.unsubscribe(dropped)
                except (ValueError, UnicodeError) as error:
                    self.errors += 1
                    log.error("discovery: could not follow state topics: %s", error)

    # -- the worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            topic, payload = item
            try:
                if any(topic_matches_sub(f, topic) for f in self._filters):
                    self._apply_discovery(topic, payload)
                with self._lock:
                    entity_ids = sorted(self._entities_on.get(topic, ()))
                if entity_ids:
                    self._apply_state(topic, payload, entity_ids)
            except Exception:
                # One bad message, or a failing registry listener, must not end discovery.
                self.errors += 1
                log.exception("discovery: failed to apply the message on %s", topic)

    def _apply_discovery(self, topic: str, payload: bytes) -> None:
        try:
            update = parse(topic, payload, self._prefix)
        except DiscoveryError as error:
            self.errors += 1
            log.warning("discovery: ignored: %s", error)
            return
        if update is None:
            return
        if update.entity is None:
            known = self._ids.pop(update.discovery_id, None)
            if known is not None:
                self._forget(known[1])
            return
        entity = update.entity
        home = self._registry.home
        entity_id = self._claim(update.discovery_id, entity.entity_id, home)
        if entity_id is None:
            return
        area = home.area_named(update.suggested_area) if update.suggested_area else None
        self._registry.put(replace(entity, entity_id=entity_id, area=area.id if area else None))

    def _claim(self, discovery_id: str, wanted: str, home: Home) -> str | None:
        """The entity id for a discovered config: the one it asks for, or with ``_2``, ``_3``...
        when another config already holds that id; ``None`` when an entities-file entry does
        (the file is the user's word, and most likely describes the same device)."""
        known = self._ids.get(discovery_id)
        if known is not None and known[0] == wanted:
            held = home.entities.get(known[1])
            if held is None or held.source == "discovery":
                return known[1]
            # The entities file has taken this id since: the file wins.
            del self._ids[discovery_id]
            return None
        if known is not None:
            # The config now asks for another id: the old entity goes.
            del self._ids[discovery_id]
            self._forget(known[1])
        configured = home.entities.get(wanted)
        if configured is not None and configured.source != "discovery":
            log.info("discovery: %s is in the entities file; the discovered config is ignored",
                     wanted)
            return None
        taken = {given for _, given in self._ids.values()}
        taken.update(k for k, e in home.entities.items() if e.source != "discovery")
        given, n = wanted, 2
        while given in taken:
            given, n = f"{wanted}_{n}", n + 1
        self._ids[discovery_id] = (wanted, given)
        return given

    def _forget(self, entity_id: str) -> None:
        # An entities-file entry loaded since under the same id is not discovery's to remove.
        entity = self._registry.home.entities.get(entity_id)
        if entity is not None and entity.source == "discovery":
            self._registry.remove(entity_id)

    def _apply_state(self, topic: str, payload: bytes, entity_ids: list[str]) -> None:
        try:
            state = state_of(payload)
        except UnicodeDecodeError:
            self.errors += 1
            log.warning("discovery: ignored a state on %s that is not UTF-8 text", topic)
            return
        if not state:
            return  # an empty retained message only clears the broker's copy
        home = self._registry.home
        for entity_id in entity_ids:
            entity = home.entities.get(entity_id)
            if entity is not None:
                self._registry.set_state(entity_id, normalize_state(entity, state))
