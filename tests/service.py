"""The service as tests run it: a real ``assistant serve`` process, a real broker, real clients."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, MQTTMessage

from assistant.protocol import Packet, Topics
from assistant.settings import MqttSettings
from assistant.transports.broker import EmbeddedBroker
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish
from tests.helpers import write_config
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


PEOPLE = ("homeassistant", "ann", "cal", "dan", "eve", "fay", "gus", "hal", "ida", "jo", "kim",
          "lu", "mo", "ned", "ola", "pam", "per", "quinn", "rex", "bartholomew", "wilhelmina")
"""The test users, each with an account of their own (password: ``<name>-pw``)."""


class Broker:
    """mosquitto with the project's own config (configs/mosquitto.conf and its ACL): every
    client signs in, and the ACL keeps each person to their own topics."""

    def __init__(self, folder: Path, people: Iterable[str] = PEOPLE) -> None:
        """``people``: who has an account (password ``<name>-pw``); the test users unless told."""
        self.port = free_port()
        self.folder = folder
        self.service_password = secrets.token_urlsafe(12)
        self.accounts = {"assistant": self.service_password,
                         **{user: f"{user}-pw" for user in people}}
        self._broker = EmbeddedBroker(self.settings("assistant"),
                                      config=ROOT / "configs" / "mosquitto.conf",
                                      accounts=self.accounts)

    def settings(self, user: str) -> MqttSettings:
        """A client's settings, signed in as ``user``."""
        return MqttSettings(host="127.0.0.1", port=self.port, username=user,
                            password=self.accounts[user], broker_dir=self.folder,
                            client_id=f"test-{secrets.token_hex(4)}")

    def start(self) -> Broker:
        self._broker.start()
        return self

    def stop(self) -> None:
        self._broker.close()


def service_config(folder: Path, *, broker: Broker, redis_url: str, intents: Path | None = None,
                   extra: str = "", metrics_port: int = 0, key_file: Path | None = None,
                   wyoming_port: int | None = None, zeroconf: bool = False,
                   device: bool = False, transcripts: tuple[str, ...] = (),
                   hermes: bool = False, console_port: int | None = None,
                   console_transcripts: tuple[str, ...] = ()) -> Path:
    """A settings file for a service of its own in ``folder`` (``key_file``: a master key
    shared with other nodes; ``extra``: more of the ``[service]`` section, then sections;
    ``wyoming_port``: where its Wyoming server listens, None for none; ``device``: announce
    it to Home Assistant, every second at most, showing the last transcript of the sites in
    ``transcripts``); ``hermes``: answer Rhasspy's Hermes topics); ``console_port``: where
    its web console listens (None: no console), showing the text of requests from
    ``console_transcripts``."""
    wyoming = "enabled = false" if wyoming_port is None else \
        f"port = {wyoming_port}\nzeroconf = {str(zeroconf).lower()}\nname = \"assistant-test\""
    return write_config(folder, redis_url, key_file=key_file, extra=f"""
[wyoming]
{wyoming}
[homeassistant]
device = {str(device).lower()}
interval = 1
transcripts = {json.dumps(list(transcripts))}
[hermes]
enabled = {str(hermes).lower()}
[console]
enabled = {str(console_port is not None).lower()}
port = {console_port or 0}
transcripts = {json.dumps(list(console_transcripts))}
[mqtt]
port = {broker.port}
password = "{broker.service_password}"
broker_dir = "{broker.folder}"
[intents]
folder = "{intents or ROOT / 'intents'}"
[home]
entities_file = "{ROOT / 'configs' / 'entities.yaml'}"
[service]
metrics_port = {metrics_port}
{extra}
""")


class ServiceProcess:
    """``assistant serve`` in a process of its own."""

    def __init__(self, config: Path, *, speech: bool = False, client_id: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.speech = speech
        self.client_id = client_id or f"assistant-{secrets.token_hex(4)}"
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.parent / f"{self.client_id}.log"

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
        environ.update({"ASSISTANT_MQTT__CLIENT_ID": self.client_id, **self.env})
        args = [sys.executable, "-m", "assistant", "--config", str(self.config), "serve"]
        if not self.speech:
            args.append("--no-speech")
        with self.log.open("w") as errors:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=environ, text=True,
                                         stdout=subprocess.PIPE, stderr=errors)
        assert self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("ready"):
            self.stop()
            raise RuntimeError(f"the service did not start: {self.log.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Listener:
    """A plain MQTT client that records every message on its filters."""

    def __init__(self, settings: MqttSettings, *filters: str) -> None:
        self.messages: list[tuple[float, Packet]] = []
        self._lock = threading.Lock()
        self.client: Client = make_client(settings, client_id=f"listen-{secrets.token_hex(4)}")
        self.refused: list[str] = []
        self.published: dict[int, Any] = {}
        self._acked = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        connect_and_wait(self.client, settings)
        if filters:
            self.client.subscribe([(f, 1) for f in filters])
            assert self._acked.wait(5)

    def _on_subscribe(self, client: Client, userdata: Any, mid: int, reasons: list[Any],
                      properties: Any) -> None:
        self.refused = [str(r) for r in reasons if r.is_failure]
        self._acked.set()

    def _on_publish(self, client: Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self.published[mid] = reason

    def subscribe(self, topic: str) -> list[str]:
        """Subscribe; the broker's refusals (empty: granted)."""
        self._acked.clear()
        self.client.subscribe(topic, qos=1)
        assert self._acked.wait(5)
        return self.refused

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.perf_counter(), packet_of(message)))

    def on(self, topic_part: str) -> list[Packet]:
        with self._lock:
            return [p for _, p in self.messages if topic_part in p.topic]

    def send(self, packet: Packet, qos: int = 1) -> Any:
        info = publish(self.client, packet, qos=qos)
        info.wait_for_publish(5)
        return info

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def topics(prefix: str = "assistant") -> Topics:
    return Topics(prefix)
