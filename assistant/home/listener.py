"""The discovery listener: keeps the registry in step with MQTT discovery and state topics."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Any, Self

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, topic_matches_sub
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.home.discovery import DiscoveryError, normalize_state, parse, state_of
from assistant.home.model import Home
from assistant.home.registry import Registry
from assistant.settings import HomeSettings, MqttSettings
from assistant.transports.mqtt import MqttUnavailable, connect_and_wait, make_client

log = logging.getLogger(__name__)


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
        self._registry.listen(self._on_home)
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
            self.close()
            raise MqttUnavailable(problem)

    def close(self) -> None:
        """Disconnect and finish applying the messages already received (harmless when not
        started, and it may be started again)."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self._halt_worker()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _halt_worker(self) -> None:
        self._active = False
        self._registry.unlisten(self._on_home)
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
