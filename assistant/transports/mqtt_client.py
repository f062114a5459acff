"""A client of the MQTT service: send one request, collect its reply and its speech.

A long-lived client (the satellite) also follows other topics of its user and site (its
timers, broadcasts, the service's status), hears speech nobody waits for (a timer said when
it finishes), and is told when its connection to the broker is lost and back: paho
reconnects by itself, and every (re)connection subscribes again."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import Client, DisconnectFlags, MQTTMessage, topic_matches_sub
from paho.mqtt.reasoncodes import ReasonCode

from assistant.errors import AssistantError
from assistant.protocol import (
    ErrorReply,
    Packet,
    Reply,
    SpeechChunk,
    Topics,
    decode_reply,
    encode_audio_request,
    encode_text_request,
)
from assistant.settings import MqttSettings
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish


@dataclass
class Asked:
    """What came back for one request."""

    reply: Reply | None = None
    """The answer or the error (None: nothing came within the time allowed)."""
    speech: list[SpeechChunk] = field(default_factory=list)
    """Speech chunks, in the order they came."""
    seconds: float = 0.0
    """From publishing the request to its reply."""
    first_speech_seconds: float | None = None
    """From publishing the request to its first speech chunk."""


class Asker:
    """One connection to the broker, asking as one user at one site."""

    def __init__(self, settings: MqttSettings, *, user: str, site: str = "default",
                 topics: Topics | None = None, client_id: str | None = None,
                 follow: dict[str, Callable[[Packet], None]] | None = None,
                 on_unasked_speech: Callable[[SpeechChunk], None] | None = None,
                 on_link: Callable[[bool], None] | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        """``follow``: more topic filters, each with what to do with its messages (on the
        network thread); ``on_unasked_speech``: speech on the user's topics that answers no
        request waited for here; ``on_link``: told True on each connection to the broker
        and False on each loss; ``will``: a retained message the broker publishes if this
        client vanishes (topic, payload)."""
        self.settings = settings
        self.user = user
        self.site = site
        self.topics = topics or Topics()
        self._client_id = client_id or f"ask-{uuid.uuid4().hex[:12]}"
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[Asked, threading.Event, float, bool]] = {}
        self._subscribed = threading.Event()
        self._on_speech: dict[str, Callable[[SpeechChunk], None]] = {}
        self._follow = dict(follow or {})
        self._on_unasked_speech = on_unasked_speech
        self._on_link = on_link
        self._will = will
        self.connected = False
        """Is the connection to the broker up (subscriptions sent)?"""

    def start(self, *, wait: bool = True) -> Asker:
        """Connect and subscribe. ``wait``: until the broker has confirmed (raising
        :class:`~assistant.transports.mqtt.MqttUnavailable` if it cannot be reached);
        otherwise return at once and keep trying in the background, as a device does."""
        client = make_client(self.settings, client_id=self._client_id)
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        if self._will is not None:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        self._client = client
        if not wait:
            client.connect_async(self.settings.host, self.settings.port,
                                 keepalive=self.settings.keepalive)
            client.loop_start()
            return self
        connect_and_wait(client, self.settings)
        if not self._subscribed.wait(5):
            raise AssistantError("the broker did not confirm the reply subscriptions")
        return self

    def _on_connect(self, client: Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(t, 1) for t in [*self.topics.replies(self.user, self.site),
                                           *self._follow]])
        self.connected = True
        if self._on_link is not None:
            self._on_link(True)

    def _on_disconnect(self, client: Client, userdata: Any, flags: DisconnectFlags,
                       reason: ReasonCode, properties: Any) -> None:
        was, self.connected = self.connected, False
        if was and self._on_link is not None and self._client is not None:
            self._on_link(False)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        packet = packet_of(message)
        now = time.perf_counter()
        for pattern, handle in self._follow.items():
            if topic_matches_sub(pattern, packet.topic):
                handle(packet)
                return
        if "/speech/" in packet.topic:
            chunk = SpeechChunk.from_packet(packet)
            with self._lock:
                waiting = self._waiting.get(chunk.id)
            if waiting is not None:
                asked, event, started, speak = waiting
                if asked.first_speech_seconds is None:
                    asked.first_speech_seconds = now - started
                asked.speech.append(chunk)
                listener = self._on_speech.get(chunk.id)
                if listener is not None:
                    listener(chunk)
                if chunk.last and asked.reply is not None:
                    event.set()
            elif self._on_unasked_speech is not None:
                self._on_unasked_speech(chunk)
            return
        try:
            reply = decode_reply(packet)
        except (ValueError, KeyError):
            return
        with self._lock:
            waiting = self._waiting.get(reply.id or "") if reply.id else None
            if waiting is None and packet.correlation is not None:
                waiting = self._waiting.get(packet.correlation.decode("utf-8", "replace"))
        if waiting is None:
            return
        asked, event, started, speak = waiting
        asked.reply = reply
        asked.seconds = now - started
        if not speak or isinstance(reply, ErrorReply) or (asked.speech and asked.speech[-1].last):
            event.set()

    def ask(self, *, text: str | None = None, wav: bytes | None = None, area: str | None = None,
            speak: bool = False, stream: bool = False, timeout: float = 30.0,
            request_id: str | None = None,
            on_speech: Callable[[SpeechChunk], None] | None = None) -> Asked:
        """Send one request (text, or a WAV) and wait for its reply (and speech, if asked);
        ``on_speech`` is given each speech chunk as it arrives (on the network thread)."""
        if self._client is None:
            raise RuntimeError("the asker is not started")
        request_id = request_id or uuid.uuid4().hex[:16]
        if wav is not None:
            packet: Packet = encode_audio_request(self.topics, site=self.site, user=self.user,
                                                  wav=wav, request_id=request_id, area=area,
                                                  speak=speak, stream=stream)
        else:
            packet = encode_text_request(self.topics, site=self.site, user=self.user,
                                         text=text or "", request_id=request_id, area=area,
                                         speak=speak, stream=stream)
        asked, event = Asked(), threading.Event()
        with self._lock:
            self._waiting[request_id] = (asked, event, time.perf_counter(), speak)
            if on_speech is not None:
                self._on_speech[request_id] = on_speech
        publish(self._client, packet)
        event.wait(timeout)
        with self._lock:
            self._waiting.pop(request_id, None)
            self._on_speech.pop(request_id, None)
        return asked

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish something else on this connection (QoS 1): a satellite's state. Nothing
        while the connection is down (a state is only true when it is said)."""
        if self._client is not None and self.connected:
            self._client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Asker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
