"""The assistant as a Home Assistant device: ``assistant serve`` as a process of its own, a
real mosquitto with the project's ACL (Home Assistant signed in as "homeassistant"), a real
redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assistant.protocol import Packet, Response
from assistant.settings import TtsSettings
from assistant.speech.tts import Speaker
from assistant.transports.mqtt_client import Asker
from tests.helpers import until
from tests.servers import RedisServer, free_port
from tests.service import ROOT, Broker, Listener, ServiceProcess, service_config
from tests.speech_data import STEADY_VOICE

pytestmark = pytest.mark.slow

CONFIG = "homeassistant/device/assistant/config"
STATE = "assistant/homeassistant/assistant/state"
PLATFORMS = {"sensor", "binary_sensor", "button"}
# The keys Home Assistant's MQTT discovery reads (homeassistant/components/mqtt/
# abbreviations.py and the device-discovery schema), as this device uses them.
SHARED = {"dev", "o", "cmps", "avty_t", "pl_avail", "pl_not_avail", "stat_t", "qos"}
COMPONENT = {"p", "name", "uniq_id", "val_tpl", "unit_of_meas", "dev_cla", "stat_cla", "ent_cat",
             "ic", "cmd_t", "pl_prs"}
DEVICE = {"ids", "name", "mf", "mdl", "sw", "cns", "cu", "sa", "hw", "sn"}
ORIGIN = {"name", "sw", "url"}
SENSOR_CLASSES = {"duration", "data_size", None}
ENTITY_CATEGORIES = {"config", "diagnostic", None}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, broker: Broker, redis_server: RedisServer,
           metrics_port: int) -> Path:
    return service_config(tmp_path_factory.mktemp("device"), broker=broker,
                          redis_url=redis_server.url, metrics_port=metrics_port, device=True,
                          transcripts=("kitchen",),
                          extra="requests_per_minute = 1000\n"
                                "[privacy.users.cal]\nprivate = true")


@pytest.fixture(scope="module")
def service(config: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(config, speech=True).start()
    yield process
    process.stop()


@pytest.fixture
def home_assistant(broker: Broker) -> Iterator[Listener]:
    listener = Listener(broker.settings("homeassistant"), "homeassistant/device/#",
                        "assistant/homeassistant/#", "assistant/status")
    yield listener
    listener.close()


def latest(listener: Listener, topic: str) -> Any:
    packets = [p for p in listener.on(topic) if p.topic == topic and p.payload]
    return json.loads(packets[-1].payload) if packets else None


def test_the_device_config_has_the_shape_home_assistant_parses(
        service: ServiceProcess, home_assistant: Listener) -> None:
    config = until(lambda: latest(home_assistant, CONFIG), "the retained config", 15)
    assert set(config) <= SHARED and {"dev", "o", "cmps"} <= set(config)
    assert set(config["dev"]) <= DEVICE and config["dev"]["ids"] and config["dev"]["name"]
    assert set(config["o"]) <= ORIGIN and config["o"]["name"]
    assert config["avty_t"] == "assistant/status"
    assert (config["pl_avail"], config["pl_not_avail"]) == ("online", "offline")
    assert config["stat_t"] == STATE
    unique = [c["uniq_id"] for c in config["cmps"].values()]
    assert len(set(unique)) == len(unique)
    for key, component in config["cmps"].items():
        assert set(component) <= COMPONENT, key
        assert component["p"] in PLATFORMS and component["name"], key
        assert component.get("ent_cat") in ENTITY_CATEGORIES
        if component["p"] == "button":
            assert component["cmd_t"].startswith("assistant/homeassistant/assistant/press/")
            assert component["pl_prs"] == "PRESS"
        else:
            assert "value_json." in component["val_tpl"], key
        if component["p"] == "sensor":
            assert component.get("dev_cla") in SENSOR_CLASSES
    platforms = {c["p"] for c in config["cmps"].values()}
    assert platforms == PLATFORMS
    assert {"l1_hit_ratio", "l2_hit_ratio", "l3_hit_ratio", "answer_p50_ms",
            "requests_per_minute", "disk_bytes", "redis", "purge", "reload"} <= \
        set(config["cmps"])


def test_the_states_follow_the_requests(service: ServiceProcess, broker: Broker,
                                        home_assistant: Listener) -> None:
    with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
        for _ in range(3):
            reply = ann.ask(text="turn on the kitchen light").reply
            assert isinstance(reply, Response)

    def busy() -> Any:
        state = latest(home_assistant, STATE)
        return state if state and state["requests_per_minute"] > 0 \
            and state["answer_p50_ms"] is not None else None

    state = until(busy, "the states after three requests", 15)
    assert state["redis_up"] is True
    assert state["l1_hit_ratio"] is not None and 0 <= state["l1_hit_ratio"] <= 100
    assert isinstance(state["disk_bytes"], int) and state["disk_bytes"] > 0


def test_the_last_transcript_shows_only_where_allowed_and_never_a_private_users(
        service: ServiceProcess, broker: Broker, home_assistant: Listener,
        config: Path) -> None:
    config_payload = until(lambda: latest(home_assistant, CONFIG), "the retained config", 15)
    sensors = {k: c for k, c in config_payload["cmps"].items() if k.startswith("transcript_")}
    assert list(sensors) == ["transcript_kitchen"]  # the one site allowed
    assert "transcripts[\"kitchen\"]" in sensors["transcript_kitchen"]["val_tpl"]
    with Speaker(TtsSettings(**STEADY_VOICE)) as voice:
        turn_on = voice.speak("Turn on the kitchen light.").wav
        turn_off = voice.speak("Turn off the kitchen light.").wav
    with Asker(broker.settings("cal"), user="cal", site="kitchen") as cal:
        assert isinstance(cal.ask(wav=turn_off, timeout=60).reply, Response)
    with Asker(broker.settings("ann"), user="ann", site="bedroom") as ann:
        assert isinstance(ann.ask(wav=turn_off, timeout=60).reply, Response)
    with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
        assert isinstance(ann.ask(wav=turn_on, timeout=60).reply, Response)

    def shown() -> Any:
        state = latest(home_assistant, STATE)
        return state if state and state.get("transcripts") else None

    state = until(shown, "the kitchen's transcript", 15)
    assert list(state["transcripts"]) == ["kitchen"]
    assert "turn on" in state["transcripts"]["kitchen"].casefold()  # ann's, not cal's
    # Forgetting ann takes her words off the device.
    done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                           "cache", "forget", "ann"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    until(lambda: latest(home_assistant, STATE).get("transcripts") == {},
          "the transcript gone", 15)


def invalidations(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('cache_invalidations_total{kind="tag"'))


def test_pressing_purge_purges_and_reload_reloads(
        service: ServiceProcess, broker: Broker, metrics_port: int) -> None:
    before = invalidations(metrics_port)
    presser = Listener(broker.settings("homeassistant"), "assistant/status")
    try:
        presser.send(Packet("assistant/homeassistant/assistant/press/purge", b"PRESS"))
        # Every intent's tag, and those of the unknown names, the generated answers, the
        # model's saved states, the transcripts and the spoken sentences.
        until(lambda: invalidations(metrics_port) >= before + 7, "the purge", 15)
        # Something else on the button's topic does nothing.
        presser.send(Packet("assistant/homeassistant/assistant/press/purge", b"nonsense"))
        presser.send(Packet("assistant/homeassistant/assistant/press/reload", b"PRESS"))
    finally:
        presser.close()
    assert service.alive()


def test_a_birth_message_announces_the_device_again(
        service: ServiceProcess, broker: Broker, home_assistant: Listener) -> None:
    until(lambda: latest(home_assistant, CONFIG), "the retained config", 15)
    seen = len(home_assistant.on(CONFIG))
    home_assistant.send(Packet("homeassistant/status", b"online"))
    until(lambda: len(home_assistant.on(CONFIG)) > seen, "the config sent again", 15)


def test_removing_leaves_an_empty_retained_config(
        service: ServiceProcess, broker: Broker, config: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                           "homeassistant", "remove"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert CONFIG in done.stdout
    late = Listener(broker.settings("homeassistant"), "homeassistant/device/#")
    try:
        # A newcomer gets nothing retained: the device is gone until announced again.
        time.sleep(1)
        assert not [p for p in late.on(CONFIG) if p.payload]
    finally:
        late.close()
