"""Home Assistant MQTT discovery: the pure parsing, then the listener against a real mosquitto."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from paho.mqtt.client import Client, ConnectFlags
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.home import Area, Entity, Floor, Home, Registry
from assistant.home.discovery import DiscoveryError, expand, parse, slug, state_of
from assistant.home.listener import DiscoveryListener
from assistant.settings import HomeSettings, MqttSettings
from assistant.transports.mqtt import MqttUnavailable, connect_and_wait, make_client
from tests.servers import MosquittoServer, free_port

# -- expand ------------------------------------------------------------------------------------


def test_expand_spells_out_abbreviations_at_every_level() -> None:
    raw = {
        "name": "Lamp", "uniq_id": "l1", "obj_id": "lamp", "cmd_t": "a/set", "stat_t": "a/state",
        "pl_on": "ON", "pl_off": "OFF", "bri_cmd_t": "a/bri", "dev_cla": "light",
        "dev": {"ids": ["x"], "name": "Dev", "mf": "Acme", "mdl": "M1", "sw": "1.0", "hw": "r2",
                "sa": "Kitchen", "cu": "http://x"},
        "avty": [{"t": "a/avail", "pl_avail": "up"}],
    }
    assert expand(raw) == {
        "name": "Lamp", "unique_id": "l1", "object_id": "lamp", "command_topic": "a/set",
        "state_topic": "a/state", "payload_on": "ON", "payload_off": "OFF",
        "brightness_command_topic": "a/bri", "device_class": "light",
        "device": {"identifiers": ["x"], "name": "Dev", "manufacturer": "Acme", "model": "M1",
                   "sw_version": "1.0", "hw_version": "r2", "suggested_area": "Kitchen",
                   "configuration_url": "http://x"},
        "availability": [{"topic": "a/avail", "payload_available": "up"}],
    }


def test_expand_leaves_its_argument_alone() -> None:
    raw = {"~": "base", "cmd_t": "~/set", "dev": {"sa": "Kitchen"}, "avty": [{"t": "~/a"}]}
    copy = json.loads(json.dumps(raw))
    expand(raw)
    assert raw == copy


def test_tilde_at_the_start_is_the_base() -> None:
    out = expand({"~": "home/lamp", "cmd_t": "~/set", "stat_t": "~", "json_attr_t": "~/attrs"})
    assert out == {"command_topic": "home/lamp/set", "state_topic": "home/lamp",
                   "json_attributes_topic": "home/lamp/attrs"}


def test_tilde_at_the_end_is_the_base() -> None:
    assert expand({"~": "lamp", "cmd_t": "zigbee/set/~"}) == {"command_topic": "zigbee/set/lamp"}


def test_tilde_in_the_middle_is_left() -> None:
    assert expand({"~": "lamp", "cmd_t": "a/~/set"}) == {"command_topic": "a/~/set"}


def test_tilde_at_both_ends_follows_home_assistant() -> None:
    # Home Assistant checks both ends against the original value; the trailing one wins.
    assert expand({"~": "B", "stat_t": "~/x/~"}) == {"state_topic": "~/x/B"}


def test_tilde_only_in_keys_ending_with_topic() -> None:
    out = expand({"~": "lamp", "name": "~/x", "val_tpl": "~/y", "pl_on": "~", "modes": ["~/z"],
                  "cmd_t": ""})
    assert out == {"name": "~/x", "value_template": "~/y", "payload_on": "~", "modes": ["~/z"],
                   "command_topic": ""}


def test_tilde_without_a_base_is_left() -> None:
    assert expand({"cmd_t": "~/set"}) == {"command_topic": "~/set"}


def test_tilde_in_availability_entries() -> None:
    out = expand({"~": "dev1", "avty_t": "~/online",
                  "avty": [{"t": "~/avail"}, {"topic": "bridge/~"}, {"topic": "x/~/y"}, {"pl_avail": "1"}]})
    assert out == {
        "availability_topic": "dev1/online",
        "availability": [{"topic": "dev1/avail"}, {"topic": "bridge/dev1"}, {"topic": "x/~/y"},
                         {"payload_available": "1"}],
    }


def test_a_single_availability_entry_stays_single() -> None:
    assert expand({"~": "d", "avty": {"t": "~/a"}}) == {"availability": {"topic": "d/a"}}


# -- parse -------------------------------------------------------------------------------------


def config(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_parse_full_keys() -> None:
    update = parse("homeassistant/light/kitchen_ceiling/config", config(
        name="Kitchen Ceiling", unique_id="kc1", command_topic="k/set", state_topic="k/state",
        brightness_command_topic="k/bri", payload_on="ON", payload_off="OFF",
        supported_color_modes=["brightness"], device={"name": "Ceiling", "suggested_area": "Kitchen"},
    ))
    assert update is not None and update.entity is not None
    assert update.discovery_id == "light/kitchen_ceiling"
    assert update.suggested_area == "Kitchen"
    entity = update.entity
    assert entity.entity_id == "light.kitchen_ceiling"
    assert entity.name == "Kitchen Ceiling"
    assert (entity.command_topic, entity.state_topic) == ("k/set", "k/state")
    assert entity.area is None  # resolved against the registry by the listener
    assert entity.source == "discovery"
    assert entity.attributes["payload_on"] == "ON"
    assert entity.attributes["brightness_command_topic"] == "k/bri"
    assert entity.attributes["supported_color_modes"] == ("brightness",)
    assert entity.attributes["suggested_area"] == "Kitchen"
    assert "device" not in entity.attributes and "name" not in entity.attributes


def test_parse_node_id_topic() -> None:
    update = parse("homeassistant/sensor/node-7/temp/config",
                   config(name="Temperature", stat_t="n7/temp", unit_of_meas="°C", dev_cla="temperature"))
    assert update is not None and update.entity is not None
    assert update.discovery_id == "sensor/node-7/temp"
    assert update.entity.entity_id == "sensor.temperature"
    assert update.entity.device_class == "temperature"
    assert update.entity.attributes["unit_of_measurement"] == "°C"


def test_parse_other_prefix() -> None:
    update = parse("ha/switch/fan_plug/config", config(cmd_t="p/set"), prefix="ha")
    assert update is not None and update.entity is not None
    assert update.entity.entity_id == "switch.fan_plug"
    with pytest.raises(DiscoveryError):
        parse("homeassistant/switch/fan_plug/config", config(cmd_t="p/set"), prefix="ha")


@pytest.mark.parametrize("payload", [b"", b"{}"])
def test_parse_removal(payload: bytes) -> None:
    update = parse("homeassistant/light/n1/lamp/config", payload)
    assert update is not None
    assert (update.discovery_id, update.entity, update.suggested_area) == ("light/n1/lamp", None, None)


def test_object_id_wins_over_name() -> None:
    update = parse("homeassistant/light/x/config", config(object_id="Desk Lamp", name="Something"))
    assert update is not None and update.entity is not None
    assert (update.entity.entity_id, update.entity.name) == ("light.desk_lamp", "Something")


def test_name_is_slugged() -> None:
    update = parse("homeassistant/light/x/config", config(name="Küche: Lamp #2 "))
    assert update is not None and update.entity is not None
    assert update.entity.entity_id == "light.kuche_lamp_2"
    assert slug("  Living--Room  ") == "living_room"


def test_nameless_entity_is_named_after_its_device_or_topic() -> None:
    update = parse("homeassistant/switch/hall_lamp/config", config(cmd_t="h/set", dev={"name": "Hall Plug"}))
    assert update is not None and update.entity is not None
    assert (update.entity.entity_id, update.entity.name) == ("switch.hall_lamp", "Hall Plug")
    update = parse("homeassistant/switch/hall_lamp/config", config(cmd_t="h/set"))
    assert update is not None and update.entity is not None
    assert update.entity.name == "Hall Lamp"


def test_climate_and_cover_topics() -> None:
    climate = parse("homeassistant/climate/t/config",
                    config(name="T", temp_cmd_t="t/set", mode_stat_t="t/mode", curr_temp_t="t/cur"))
    assert climate is not None and climate.entity is not None
    assert (climate.entity.command_topic, climate.entity.state_topic) == ("t/set", "t/mode")
    assert climate.entity.attributes["current_temperature_topic"] == "t/cur"
    blind = parse("homeassistant/cover/b/config", config(name="B", set_pos_t="b/pos/set", pos_t="b/pos"))
    assert blind is not None and blind.entity is not None
    assert (blind.entity.command_topic, blind.entity.state_topic) == ("b/pos/set", "b/pos")
    both = parse("homeassistant/cover/c/config", config(name="C", cmd_t="c/set", set_pos_t="c/pos/set"))
    assert both is not None and both.entity is not None
    assert both.entity.command_topic == "c/set"
    assert both.entity.attributes["set_position_topic"] == "c/pos/set"


def test_unhandled_components_are_ignored() -> None:
    assert parse("homeassistant/device_automation/x/config", config(atype="trigger")) is None
    assert parse("homeassistant/tag/x/config", b"not even json") is None


@pytest.mark.parametrize(("topic", "payload", "words"), [
    ("homeassistant/light/lamp/config", b"{not json", "not valid JSON"),
    ("homeassistant/light/lamp/config", b"[1, 2]", "expected a JSON object"),
    ("homeassistant/light/lamp/config", b"\xff\xfe", "not UTF-8"),
    ("homeassistant/light/lamp/config", config(name=3), "'name' must be a string"),
    ("homeassistant/light/lamp/config", config(dev="x"), "'device' must be an object"),
    ("homeassistant/light/a/b/c/config", config(name="x"), "not a discovery topic"),
    ("homeassistant/light/lamp/state", config(name="x"), "not a discovery topic"),
])
def test_bad_discovery_names_the_topic(topic: str, payload: bytes, words: str) -> None:
    with pytest.raises(DiscoveryError) as caught:
        parse(topic, payload)
    assert caught.value.code == "bad_discovery"
    assert topic in str(caught.value)
    assert words in str(caught.value)


def test_state_of() -> None:
    assert state_of(b" ON\n") == "ON"
    assert state_of(b'{"state": "heat", "temperature": 20}') == "heat"
    assert state_of(b'{"state": 21.5}') == "21.5"
    assert state_of(b'{"temperature": 20}') == '{"temperature": 20}'
    assert state_of(b"{broken") == "{broken"


# -- against a real broker ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mosquitto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto")).start()
    yield server
    server.stop()


_numbers = itertools.count()


@pytest.fixture
def mqtt(mosquitto_server: MosquittoServer) -> MqttSettings:
    """Settings for the test broker, with client ids of this test's own."""
    return MqttSettings(host=mosquitto_server.host, port=mosquitto_server.port,
                        client_id=f"test-{next(_numbers)}")


@pytest.fixture
def home_settings(tmp_path: Path) -> HomeSettings:
    """A discovery prefix of this test's own: retained configs of other tests stay out of sight."""
    return HomeSettings(entities_file=tmp_path / "entities.yaml",
                        discovery_prefix=f"ha{next(_numbers)}")


class Publisher:
    """A device: publishes and waits until the broker has each message."""

    def __init__(self, settings: MqttSettings) -> None:
        self.client = make_client(settings, client_id_suffix="-device")
        connect_and_wait(self.client, settings)

    def send(self, topic: str, payload: bytes | str | dict[str, Any], *, retain: bool = False) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(mqtt: MqttSettings) -> Iterator[Publisher]:
    publisher = Publisher(mqtt)
    yield publisher
    publisher.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def make_registry(*entities: Entity) -> Registry:
    return Registry(Home(
        floors={"ground": Floor("ground", "Ground Floor", level=0)},
        areas={"kitchen": Area("kitchen", "Kitchen", floor="ground"),
               "living_room": Area("living_room", "Living Room", ("lounge",), floor="ground")},
        entities={e.entity_id: e for e in entities},
    ))


@pytest.fixture
def run_listener() -> Iterator[Callable[[Registry, MqttSettings, HomeSettings], DiscoveryListener]]:
    started: list[DiscoveryListener] = []

    def run(registry: Registry, mqtt: MqttSettings, home: HomeSettings) -> DiscoveryListener:
        listener = DiscoveryListener(registry, mqtt, home)
        listener.start()
        started.append(listener)
        return listener

    yield run
    for listener in started:
        listener.close()


LIGHT = {
    "name": "Kitchen Ceiling", "unique_id": "kc1",
    "command_topic": "home/kitchen/ceiling/set", "state_topic": "home/kitchen/ceiling/state",
    "brightness_command_topic": "home/kitchen/ceiling/brightness/set", "brightness_scale": 255,
    "payload_on": "ON", "payload_off": "OFF",
    "device": {"identifiers": ["ceiling-1"], "name": "Ceiling Light", "suggested_area": "kitchen"},
}

CLIMATE = {
    "~": "home/living/thermostat", "name": "Thermostat", "uniq_id": "th1",
    "temp_cmd_t": "~/target/set", "temp_stat_t": "~/target", "curr_temp_t": "~/current",
    "mode_cmd_t": "~/mode/set", "mode_stat_t": "~/mode", "modes": ["off", "heat", "auto"],
    "min_temp": 7, "max_temp": 30, "temp_unit": "C", "avty_t": "~/status",
    "dev": {"ids": ["th-1"], "name": "Wall Thermostat", "mf": "Acme", "sa": "Living Room"},
}


def test_listener_follows_discovery_and_states(
    mqtt: MqttSettings, home_settings: HomeSettings, device: Publisher,
    run_listener: Callable[[Registry, MqttSettings, HomeSettings], DiscoveryListener],
) -> None:
    prefix = home_settings.discovery_prefix
    device.send(f"{prefix}/light/kitchen_ceiling/config", LIGHT, retain=True)
    device.send(f"{prefix}/climate/hvac/thermostat/config", CLIMATE, retain=True)
    device.send("home/kitchen/ceiling/state", "ON", retain=True)
    registry = make_registry()
    listener = run_listener(registry, mqtt, home_settings)

    entities = lambda: registry.home.entities  # noqa: E731
    wait_until(lambda: {"light.kitchen_ceiling", "climate.thermostat"} <= set(entities()),
               "both retained configs")
    light = entities()["light.kitchen_ceiling"]
    assert light.name == "Kitchen Ceiling"
    assert light.area == "kitchen"  # "kitchen" names the area "Kitchen": case does not matter
    assert light.command_topic == "home/kitchen/ceiling/set"
    assert light.state_topic == "home/kitchen/ceiling/state"
    assert light.attributes["brightness_scale"] == 255
    assert light.source == "discovery"
    climate = entities()["climate.thermostat"]
    assert climate.name == "Thermostat"
    assert climate.area == "living_room"
    assert climate.command_topic == "home/living/thermostat/target/set"
    assert climate.state_topic == "home/living/thermostat/mode"
    assert climate.attributes["current_temperature_topic"] == "home/living/thermostat/current"
    assert climate.attributes["availability_topic"] == "home/living/thermostat/status"
    assert climate.attributes["modes"] == ("off", "heat", "auto")
    assert climate.attributes["temperature_unit"] == "C"

    # The retained state came with the subscription the new entity caused.
    # In Home Assistant's words: the device's ON is the state "on".
    wait_until(lambda: entities()["light.kitchen_ceiling"].state == "on", "the retained light state")
    device.send("home/kitchen/ceiling/state", "OFF")
    wait_until(lambda: entities()["light.kitchen_ceiling"].state == "off", "the light turning off")
    # Retained: the thermostat's subscription may not be confirmed yet, the light's is.
    device.send("home/living/thermostat/mode", {"state": "heat", "since": 3}, retain=True)
    wait_until(lambda: entities()["climate.thermostat"].state == "heat", "the thermostat's mode")

    # Removal: an empty retained config.
    device.send(f"{prefix}/light/kitchen_ceiling/config", b"", retain=True)
    wait_until(lambda: "light.kitchen_ceiling" not in entities(), "the light's removal")
    assert "climate.thermostat" in entities()

    # A broken config is counted and logged; the listener carries on.
    device.send(f"{prefix}/switch/broken/config", b'{"name": "Broken", ', retain=True)
    wait_until(lambda: listener.errors == 1, "the bad config to be counted")
    device.send(f"{prefix}/switch/coffee/config", {"name": "Coffee Maker", "cmd_t": "coffee/set",
                                                   "stat_t": "coffee/state"})
    wait_until(lambda: "switch.coffee_maker" in entities(), "a config after the bad one")
    device.send("coffee/state", "on", retain=True)
    wait_until(lambda: entities()["switch.coffee_maker"].state == "on", "the coffee maker's state")
    assert listener.errors == 1
    assert entities()["switch.coffee_maker"].area is None


def test_configured_entities_follow_their_state_topics(
    mqtt: MqttSettings, home_settings: HomeSettings, device: Publisher,
    run_listener: Callable[[Registry, MqttSettings, HomeSettings], DiscoveryListener],
) -> None:
    device.send("home/kitchen/temperature", "21.5", retain=True)
    registry = make_registry(
        Entity("sensor.kitchen_temperature", "Kitchen Temperature", area="kitchen",
               state_topic="home/kitchen/temperature"),
        Entity("light.hall", "Hall Light", command_topic="home/hall/set"),
    )
    run_listener(registry, mqtt, home_settings)
    sensor = lambda: registry.home.entities["sensor.kitchen_temperature"]  # noqa: E731
    wait_until(lambda: sensor().state == "21.5", "the retained temperature")
    device.send("home/kitchen/temperature", '{"state": "22.0"}')
    wait_until(lambda: sensor().state == "22.0", "the new temperature")

    # An entity that appears later through the registry is followed too.
    registry.put(Entity("sensor.hall_humidity", "Hall Humidity", state_topic="home/hall/humidity"))
    # Retained, since the subscription may reach the broker before or after the message.
    device.send("home/hall/humidity", "40", retain=True)
    wait_until(lambda: registry.home.entities["sensor.hall_humidity"].state == "40", "the humidity")


def test_entity_ids_do_not_collide(
    mqtt: MqttSettings, home_settings: HomeSettings, device: Publisher,
    run_listener: Callable[[Registry, MqttSettings, HomeSettings], DiscoveryListener],
) -> None:
    prefix = home_settings.discovery_prefix
    registry = make_registry(Entity("switch.kettle", "Kettle", command_topic="kettle/set"))
    listener = run_listener(registry, mqtt, home_settings)
    entities = lambda: registry.home.entities  # noqa: E731
    device.send(f"{prefix}/sensor/bedroom/temp/config", {"name": "Temperature", "stat_t": "b/t"})
    wait_until(lambda: "sensor.temperature" in entities(), "the first sensor")
    device.send(f"{prefix}/sensor/garage/temp/config", {"name": "Temperature", "stat_t": "g/t"})
    wait_until(lambda: "sensor.temperature_2" in entities(), "the second sensor, renamed")
    assert entities()["sensor.temperature"].state_topic == "b/t"
    assert entities()["sensor.temperature_2"].state_topic == "g/t"

    # An updated config keeps the id it was given.
    device.send(f"{prefix}/sensor/garage/temp/config",
                {"name": "Temperature", "stat_t": "g/t", "unit_of_meas": "°C"})
    wait_until(lambda: entities()["sensor.temperature_2"].attributes.get("unit_of_measurement") == "°C",
               "the updated config")
    # A config that renames its object id replaces the old entity.
    device.send(f"{prefix}/sensor/bedroom/temp/config",
                {"name": "Temperature", "obj_id": "bedroom_temperature", "stat_t": "b/t"})
    wait_until(lambda: "sensor.bedroom_temperature" in entities(), "the renamed sensor")
    wait_until(lambda: "sensor.temperature" not in entities(), "the old id to go")

    # The entities file wins over discovery for an id it holds.
    device.send(f"{prefix}/switch/kettle/config", {"name": "Kettle", "cmd_t": "other/set"})
    device.send(f"{prefix}/switch/toaster/config", {"name": "Toaster", "cmd_t": "toaster/set"})
    wait_until(lambda: "switch.toaster" in entities(), "a later config")
    assert entities()["switch.kettle"].command_topic == "kettle/set"
    assert entities()["switch.kettle"].source == "config"
    assert listener.errors == 0


def test_listener_start_fails_without_a_broker(home_settings: HomeSettings) -> None:
    settings = MqttSettings(port=free_port(), client_id="nobody")
    listener = DiscoveryListener(make_registry(), settings, home_settings, timeout=2.0)
    with pytest.raises(MqttUnavailable):
        listener.start()
    assert not [t.name for t in threading.enumerate() if t.name == "discovery" or "nobody" in t.name]
    listener.close()  # harmless after a failed start


def test_listener_restarts(
    mqtt: MqttSettings, home_settings: HomeSettings, device: Publisher,
    run_listener: Callable[[Registry, MqttSettings, HomeSettings], DiscoveryListener],
) -> None:
    prefix = home_settings.discovery_prefix
    registry = make_registry()
    listener = run_listener(registry, mqtt, home_settings)
    device.send(f"{prefix}/fan/attic/config", {"name": "Attic Fan", "cmd_t": "attic/set",
                                               "stat_t": "attic/state", "dev": {"sa": "Lounge"}},
                retain=True)
    fan = lambda: registry.home.entities["fan.attic_fan"]  # noqa: E731
    wait_until(lambda: "fan.attic_fan" in registry.home.entities, "the fan")
    assert fan().area == "living_room"  # found by the area's alias
    listener.close()
    device.send("attic/state", "on", retain=True)
    listener.start()
    wait_until(lambda: fan().state == "on", "the fan's state after a restart")
    device.send("attic/state", b"", retain=True)  # clears the retained copy, not the state
    device.send("attic/state", "off")
    wait_until(lambda: fan().state == "off", "the fan's next state")
    assert listener.errors == 0


# -- the client helper -------------------------------------------------------------------------


def test_connect_and_wait_fails_fast_when_nothing_listens() -> None:
    port = free_port()
    settings = MqttSettings(port=port, client_id="lonely")
    client = make_client(settings)
    began = time.monotonic()
    with pytest.raises(MqttUnavailable) as caught:
        connect_and_wait(client, settings, timeout=2.0)
    assert time.monotonic() - began < 1.0
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_connect_and_wait_times_out_on_a_silent_server() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        settings = MqttSettings(port=port, client_id="patient")
        client = make_client(settings)
        began = time.monotonic()
        with pytest.raises(MqttUnavailable, match="did not answer"):
            connect_and_wait(client, settings, timeout=0.3)
        assert time.monotonic() - began < 2.0
        peer, _ = server.accept()
        peer.close()


def test_client_sockets_have_no_delay_and_on_connect_is_kept(mqtt: MqttSettings) -> None:
    client = make_client(mqtt, client_id_suffix="-nodelay")
    called = threading.Event()

    def on_connect(client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
                   properties: Properties | None) -> None:
        called.set()

    client.on_connect = on_connect
    connect_and_wait(client, mqtt)
    try:
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert called.is_set()
        assert client.on_connect is on_connect
    finally:
        client.disconnect()
        client.loop_stop()


def test_states_are_put_in_home_assistant_words() -> None:
    from assistant.home import Entity
    from assistant.home.discovery import normalize_state

    porch = Entity("light.porch", "Porch", attributes=MappingProxyType({"payload_on": "1",
                                                                        "payload_off": "0"}))
    assert normalize_state(porch, "1") == "on" and normalize_state(porch, "0") == "off"
    assert normalize_state(Entity("switch.fan", "Fan"), "ON") == "on"
    assert normalize_state(Entity("cover.blinds", "Blinds"), "CLOSED") == "closed"
    assert normalize_state(Entity("sensor.t", "T"), "OFF") == "OFF"  # a sensor's value as sent


def test_a_topic_mqtt_cannot_carry_is_refused_not_subscribed() -> None:
    from assistant.home.discovery import DiscoveryError, parse

    config = b'{"name": "Bad", "stat_t": "bad/\\ud800", "cmd_t": "ok/set"}'
    with pytest.raises(DiscoveryError, match="state_topic"):
        parse("homeassistant/light/bad/config", config)


def test_a_closed_listener_is_no_longer_told_about_the_home(
    mqtt: MqttSettings, home_settings: HomeSettings,
    run_listener: Callable[[Registry, MqttSettings, HomeSettings], DiscoveryListener],
) -> None:
    registry = make_registry()
    listeners = len(registry._listeners)
    listener = run_listener(registry, mqtt, home_settings)
    assert len(registry._listeners) == listeners + 1
    listener.close()
    assert len(registry._listeners) == listeners
    listener.start()
    assert len(registry._listeners) == listeners + 1  # once again, not twice
