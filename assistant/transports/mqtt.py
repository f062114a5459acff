"""MQTT clients set up the way this service needs them: MQTT v5, callback API v2, no Nagle.

With Nagle's algorithm on, a QoS 1 round trip through a local mosquitto takes ~88 ms
instead of ~0.6 ms, so every client socket gets ``TCP_NODELAY`` as soon as it opens
(the broker's own side needs ``set_tcp_nodelay true``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from paho.mqtt.client import CallbackOnConnect_v2, Client, ConnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.errors import AssistantError
from assistant.protocol import Packet
from assistant.settings import MqttSettings
from assistant.transports.broker import service_password

if TYPE_CHECKING:
    # Defined by paho only for type checkers.
    from paho.mqtt.client import SocketLike


class MqttUnavailable(AssistantError):
    """The broker cannot be reached, refused the connection, or did not answer in time."""

    code = "mqtt_unavailable"


def _no_delay(client: Client, userdata: Any, sock: SocketLike) -> None:
    # paho calls this again on every reconnect, so reconnected sockets are fast too.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


RECONNECT_DELAY = (1, 2)
"""Seconds between attempts to reach a lost broker: the first, and the most (paho doubles
the wait after each failed attempt)."""


def make_client(settings: MqttSettings, *, client_id_suffix: str = "",
                client_id: str | None = None, manual_ack: bool = False) -> Client:
    """A client for the broker in ``settings``, not yet connected.

    ``client_id_suffix``: appended to ``settings.client_id``, so that several clients of one
    process (the request transport, discovery) do not take each other's session over;
    ``client_id``: another id altogether. ``manual_ack``: QoS 1 messages are acknowledged
    by the application (:meth:`Client.ack`), once it has dealt with them.
    """
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id if client_id is not None else settings.client_id + client_id_suffix,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    # The broker is on this machine or next to it: after a restart it is back in seconds,
    # and each second waited beyond that is a second of requests answered late.
    client.reconnect_delay_set(min_delay=RECONNECT_DELAY[0], max_delay=RECONNECT_DELAY[1])
    if settings.username is not None:
        client.username_pw_set(settings.username, service_password(settings))
    client.on_socket_open = _no_delay
    return client


def connect_and_wait(client: Client, settings: MqttSettings, timeout: float = 5.0, *,
                     clean_start: bool = True, properties: Properties | None = None) -> None:
    """Connect ``client`` to the broker in ``settings``, start its network thread, await CONNACK.

    ``timeout``: seconds for the TCP connection and the broker's answer together;
    ``clean_start`` and ``properties``: those of the MQTT v5 CONNECT (a persistent session
    is ``clean_start=False`` with a session expiry interval).

    Raises :class:`MqttUnavailable` when nothing listens, the broker refuses (bad credentials,
    say) or no CONNACK comes in time; the network thread is stopped again in that case.
    Any ``on_connect`` already set on the client is still called.
    """
    where = f"MQTT broker {settings.host}:{settings.port}"
    answered = threading.Event()
    answer: list[ReasonCode] = []
    chained = client.on_connect

    def on_connect(client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
                   properties: Properties | None) -> None:
        if not answered.is_set():
            answer.append(reason)
            answered.set()
        if chained is not None:
            cast(CallbackOnConnect_v2, chained)(client, userdata, flags, reason, properties)

    deadline = time.monotonic() + timeout
    client.on_connect = on_connect
    client.connect_timeout = timeout
    try:
        try:
            client.connect(settings.host, settings.port, keepalive=settings.keepalive,
                           clean_start=clean_start, properties=properties)
        except (OSError, ValueError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise MqttUnavailable(f"cannot connect to {where}: {reason}") from None
        client.loop_start()
        if not answered.wait(max(0.0, deadline - time.monotonic())):
            _abandon(client)
            raise MqttUnavailable(f"{where} did not answer within {timeout:g} s")
        if answer[0].is_failure:
            _abandon(client)
            raise MqttUnavailable(f"{where} refused the connection: {answer[0]}")
    finally:
        client.on_connect = chained


def _abandon(client: Client) -> None:
    # Without this the network thread would keep reconnecting in the background.
    client.disconnect()
    client.loop_stop()


def packet_of(message: MQTTMessage) -> Packet:
    """A received MQTT message as the protocol reads it."""
    props = getattr(message, "properties", None)
    correlation = getattr(props, "CorrelationData", None)
    response_topic = getattr(props, "ResponseTopic", None)
    user = tuple((str(k), str(v)) for k, v in (getattr(props, "UserProperty", None) or []))
    content_type = getattr(props, "ContentType", None)
    return Packet(message.topic, bytes(message.payload),
                  correlation=bytes(correlation) if correlation is not None else None,
                  response_topic=str(response_topic) if response_topic else None,
                  properties=user, content_type=str(content_type) if content_type else None,
                  retain=bool(message.retain))


def publish(client: Client, packet: Packet, *, qos: int = 1) -> MQTTMessageInfo:
    """Publish ``packet`` with its MQTT v5 properties (never blocks: paho queues it)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if packet.correlation is not None:
        props.CorrelationData = packet.correlation
    if packet.response_topic is not None:
        props.ResponseTopic = packet.response_topic
    if packet.properties:
        props.UserProperty = list(packet.properties)
    if packet.content_type is not None:
        props.ContentType = packet.content_type
    return client.publish(packet.topic, packet.payload, qos=qos, retain=packet.retain,
                          properties=props)
