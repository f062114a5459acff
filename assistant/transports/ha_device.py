"""The assistant as a device in Home Assistant, by MQTT discovery.

One retained config on ``<discovery prefix>/device/<node>/config`` (Home Assistant's
device-based discovery: ``dev``, ``o``, ``cmps``) gives Home Assistant a device with

- sensors: the hit ratio of each cache tier, the median time to answer, requests per minute,
  the disk tier's size (diagnostic), and whether Redis is reachable (a connectivity binary
  sensor);
- buttons: purge the cache (every answer, transcript, spoken sentence and model state, on
  every tier and node; not the replies that keep a request from being answered twice) and
  reload the templates;
- for each site listed in ``[homeassistant] transcripts`` (its owner allowed it), the last
  transcript heard there, unless the speaker's policy is private; forgetting a user clears
  theirs.

Every component is available while the service is (``<prefix>/status``, "online" and
"offline", the service's last will). The states go out together as one JSON object on
``<prefix>/homeassistant/<node>/state`` when one has changed, at most every
``[homeassistant] interval`` seconds. The config is sent again whenever Home Assistant says
it came online (``<discovery prefix>/status``), and :meth:`HomeAssistantDevice.remove`
(``assistant homeassistant remove``) takes the device away with an empty retained config.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Self

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.reasoncodes import ReasonCode

from assistant import __version__
from assistant.settings import HomeAssistantSettings, MqttSettings
from assistant.transports.mqtt import connect_and_wait, make_client

log = logging.getLogger(__name__)

TIERS = ("l1", "l2", "l3")
PRESS = "PRESS"
MAX_STATE_CHARS = 255
"""Longest state Home Assistant keeps for a sensor."""


def node_id(name: str) -> str:
    """A discovery node id from a name: letters, digits, ``_`` and ``-`` only."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "assistant"


class HomeAssistantDevice:
    """Announces the assistant to Home Assistant and keeps its sensors current."""

    def __init__(self, settings: HomeAssistantSettings, mqtt: MqttSettings, *, prefix: str,
                 discovery_prefix: str, stats: Callable[[], Mapping[str, Any]],
                 purge: Callable[[], object], reload: Callable[[], object],
                 private: Callable[[str], bool] = lambda user: True) -> None:
        """``prefix``: the service's topic prefix (its ``status`` topic); ``discovery_prefix``:
        Home Assistant's (``[home] discovery_prefix``); ``stats``: the figures of the moment
        (a :class:`Figures`); ``purge`` and ``reload``: what the buttons do; ``private``:
        is a user's policy private (their words are never shown)."""
        self.settings = settings
        self.mqtt = mqtt
        self.node = node_id(settings.node_id)
        self.status_topic = f"{prefix}/status"
        self.config_topic = f"{discovery_prefix}/device/{self.node}/config"
        self.state_topic = f"{prefix}/homeassistant/{self.node}/state"
        self.command_topic = f"{prefix}/homeassistant/{self.node}/press"
        self.birth_topic = f"{discovery_prefix}/status"
        self._stats, self._purge, self._reload = stats, purge, reload
        self._client: Client | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: str | None = None
        self._pressed: deque[str] = deque()
        self._wake = threading.Event()
        self._private = private
        self._sites = tuple(dict.fromkeys(settings.transcripts))
        self._heard: dict[str, tuple[str, str]] = {}
        """Site -> (user, their last transcript there), for the sites listed only."""
        self._heard_lock = threading.Lock()

    def heard(self, site: str, user: str, text: str) -> None:
        """A transcript heard at ``site`` from ``user``: shown if the site allows it and the
        user's policy is not private."""
        if site not in self._sites or self._private(user):
            return
        with self._heard_lock:
            self._heard[site] = (user, text[:MAX_STATE_CHARS])
        self._wake.set()

    def forgotten(self, ref: str, ref_of: Callable[[str], str | None]) -> None:
        """A user was forgotten (``ref``, their name in the cache as ``ref_of`` gives it):
        their transcripts are taken off the device."""
        with self._heard_lock:
            for site, (user, _) in list(self._heard.items()):
                if ref_of(user) == ref:
                    del self._heard[site]
        self._wake.set()

    def config(self) -> dict[str, Any]:
        """The discovery payload (Home Assistant's abbreviations)."""
        sw = __version__
        node = self.node

        def sensor(key: str, name: str, **more: Any) -> dict[str, Any]:
            return {"p": "sensor", "name": name, "uniq_id": f"{node}_{key}",
                    "val_tpl": f"{{{{ value_json.{key} }}}}", **more}

        components: dict[str, dict[str, Any]] = {}
        for tier in TIERS:
            components[f"{tier}_hit_ratio"] = sensor(
                f"{tier}_hit_ratio", f"{tier.upper()} hit ratio", unit_of_meas="%",
                stat_cla="measurement", ic="mdi:database-check")
        components["answer_p50_ms"] = sensor("answer_p50_ms", "Answer time (median)",
                                             unit_of_meas="ms", dev_cla="duration",
                                             stat_cla="measurement")
        components["requests_per_minute"] = sensor("requests_per_minute", "Requests per minute",
                                                   unit_of_meas="req/min",
                                                   stat_cla="measurement")
        components["disk_bytes"] = sensor("disk_bytes", "Disk cache size", unit_of_meas="B",
                                          dev_cla="data_size", stat_cla="measurement",
                                          ent_cat="diagnostic")
        components["redis"] = {"p": "binary_sensor", "name": "Redis", "uniq_id": f"{node}_redis",
                               "dev_cla": "connectivity", "ent_cat": "diagnostic",
                               "val_tpl": "{{ 'ON' if value_json.redis_up else 'OFF' }}"}
        for site in self._sites:
            key = f"transcript_{node_id(site)}"
            components[key] = {
                "p": "sensor", "name": f"Last transcript ({site})", "uniq_id": f"{node}_{key}",
                "ic": "mdi:text-box-outline",
                "val_tpl": f"{{{{ value_json.transcripts[{json.dumps(site)}] | default('') }}}}"}
        for key, name, icon in (("purge", "Purge the cache", "mdi:delete-sweep"),
                                ("reload", "Reload templates", "mdi:reload")):
            components[key] = {"p": "button", "name": name, "uniq_id": f"{node}_{key}",
                               "cmd_t": f"{self.command_topic}/{key}", "pl_prs": PRESS,
                               "ic": icon, "ent_cat": "config"}
        return {
            "dev": {"ids": [f"edge-assistant-{node}"], "name": self.settings.name,
                    "mf": "edge-assistant", "mdl": "Edge voice assistant", "sw": sw},
            "o": {"name": "edge-assistant", "sw": sw},
            "avty_t": self.status_topic, "pl_avail": "online", "pl_not_avail": "offline",
            "stat_t": self.state_topic,
            "qos": 1,
            "cmps": components,
        }

    def start(self) -> Self:
        client = make_client(self.mqtt, client_id_suffix="-homeassistant")
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        connect_and_wait(client, self.mqtt, 10.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="homeassistant", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remove(self) -> None:
        """Take the device out of Home Assistant: an empty retained config."""
        client = make_client(self.mqtt, client_id_suffix="-homeassistant-remove")
        connect_and_wait(client, self.mqtt, 10.0)
        try:
            client.publish(self.config_topic, b"", qos=1, retain=True).wait_for_publish(10)
            client.publish(self.state_topic, b"", qos=1, retain=True).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()

    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags,
                    reason: ReasonCode, properties: Any = None) -> None:
        if reason.is_failure:
            return
        client.subscribe([(self.birth_topic, 1), (f"{self.command_topic}/+", 1)])
        self._announce(client)

    def _announce(self, client: Client) -> None:
        client.publish(self.config_topic, json.dumps(self.config()).encode(), qos=1,
                       retain=True)
        self._last = None  # the states again too, after the config
        self._wake.set()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        if message.topic == self.birth_topic:
            if message.payload == b"online":
                log.info("Home Assistant came online: announcing the device again")
                self._announce(client)
            return
        button = message.topic.rsplit("/", 1)[-1]
        if message.payload == PRESS.encode() and button in ("purge", "reload"):
            self._pressed.append(button)  # done on the worker, not the network thread
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            while self._pressed:
                button = self._pressed.popleft()
                try:
                    (self._purge if button == "purge" else self._reload)()
                    log.info("Home Assistant pressed %s", button)
                except Exception:  # a button never stops the device
                    log.exception("the %s button failed", button)
                self._last = None
            self._publish_state()
            self._wake.wait(self.settings.interval)
            self._wake.clear()

    def _publish_state(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            figures = dict(self._stats())
            if self._sites:
                with self._heard_lock:
                    figures["transcripts"] = {site: text for site, (_, text)
                                              in self._heard.items()}
            payload = json.dumps(figures, sort_keys=True)
        except Exception:  # figures are best effort
            log.exception("the device's figures could not be read")
            return
        if payload != self._last:
            client.publish(self.state_topic, payload.encode(), qos=1, retain=True)
            self._last = payload


class Figures:
    """The device's figures from the service's metrics: ratios, the median time to answer
    and requests per minute (counted over the last minute)."""

    def __init__(self, *, tiers: Callable[[], Mapping[str, tuple[int, int]]],
                 requests: Callable[[], float], answer_p50_ms: Callable[[], float | None],
                 redis_up: Callable[[], bool | None], disk_bytes: Callable[[], int | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tiers, self._requests = tiers, requests
        self._p50, self._redis, self._disk = answer_p50_ms, redis_up, disk_bytes
        self._clock = clock
        self._seen: deque[tuple[float, float]] = deque()

    def __call__(self) -> dict[str, Any]:
        now, count = self._clock(), self._requests()
        self._seen.append((now, count))
        while len(self._seen) > 1 and self._seen[1][0] <= now - 60:
            self._seen.popleft()
        first_time, first_count = self._seen[0]
        span = max(now - first_time, 1.0)
        out: dict[str, Any] = {
            "requests_per_minute": round((count - first_count) * 60 / span, 1)
            if now - first_time >= 1 else 0.0}
        for tier, (hits, misses) in self._tiers().items():
            looked = hits + misses
            out[f"{tier}_hit_ratio"] = round(100 * hits / looked, 1) if looked else None
        p50 = self._p50()
        out["answer_p50_ms"] = None if p50 is None else round(p50, 2)
        out["redis_up"] = self._redis()
        out["disk_bytes"] = self._disk()
        return out
