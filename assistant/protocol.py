"""The wire format over MQTT: topics and message types, the one place a request is decoded.

Every message is a dataclass that knows its topic and encodes itself into a
:class:`Packet` (topic, payload and MQTT v5 properties) and, for what comes in, decodes
itself from one; the transport only moves packets. Shared with the satellite.

Topics, under a prefix (``assistant``)::

    <prefix>/<site>/request/<user>          in   JSON {"id", "text", "area"?, "speak"?, "stream"?}
    <prefix>/<site>/audio/<user>            in   WAV bytes; id from correlation data or the
                                                 user property "id"; "area", "speak",
                                                 "stream" as user properties
    <prefix>/<site>/response/<user>         out  JSON {"id", "text", "transcript", "intent",
                                                 "slots", "actions", "fragments", "timings"}
    <prefix>/<site>/speech/<user>/<id>      out  WAV; with "stream", one per sentence, user
                                                 properties "seq" and "last"
    <prefix>/<site>/error/<user>            out  JSON {"id", "code", "message"}
    <prefix>/<site>/timer/<user>            out  JSON {"event", "id", "name", "seconds",
                                                 "seconds_left", ...}: the user's timers set
                                                 at the site (its speech, when one finishes,
                                                 on speech/<user>/timer-<id>)
    <prefix>/<site>/broadcast               out  JSON {"id", "text", "from"}: a broadcast for
                                                 the site; its speech on broadcast/<id>
    <prefix>/status                         out  "online" / "offline", retained
    <prefix>/<site>/satellite/state         in   JSON {"state"}, retained, from a satellite:
                                                 the service learns where broadcasts go
    <prefix>/<site>/satellite/listen/<user> --   push-to-talk for that user's satellite

The user is the topic's last segment, which the broker's ACL ties to the MQTT username; a
user named inside a payload is ignored. A request that sets an MQTT v5 response topic gets
its response (or error) there, with its correlation data.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assistant.errors import AssistantError
from cache.errors import CacheError
from cache.scope import check_user

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_JSON_BYTES = 64 * 1024
"""The largest text request accepted."""
MAX_TEXT_CHARS = 1000
"""The longest sentence accepted."""


class ProtocolError(AssistantError):
    """A message that cannot be understood; says why with a code, and whom to tell."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Packet:
    """One MQTT message, as the transport moves it."""

    topic: str
    payload: bytes
    correlation: bytes | None = None
    """MQTT v5 correlation data."""
    response_topic: str | None = None
    """MQTT v5 response topic: where the asker wants the answer."""
    properties: tuple[tuple[str, str], ...] = ()
    """MQTT v5 user properties."""
    content_type: str | None = None
    retain: bool = False

    def property(self, name: str) -> str | None:
        """The first user property called ``name``."""
        return next((v for k, v in self.properties if k == name), None)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one installation, under ``prefix``."""

    prefix: str = "assistant"

    def request(self, site: str, user: str) -> str:
        return f"{self.prefix}/{site}/request/{user}"

    def audio(self, site: str, user: str) -> str:
        return f"{self.prefix}/{site}/audio/{user}"

    def response(self, site: str, user: str) -> str:
        return f"{self.prefix}/{site}/response/{user}"

    def speech(self, site: str, user: str, request_id: str) -> str:
        return f"{self.prefix}/{site}/speech/{user}/{request_id}"

    def error(self, site: str, user: str) -> str:
        return f"{self.prefix}/{site}/error/{user}"

    def timer(self, site: str, user: str) -> str:
        return f"{self.prefix}/{site}/timer/{user}"

    def broadcast(self, site: str, message_id: str | None = None) -> str:
        """A site's broadcasts (JSON), or with ``message_id`` the speech of one."""
        topic = f"{self.prefix}/{site}/broadcast"
        return topic if message_id is None else f"{topic}/{message_id}"

    def satellite_state(self, site: str) -> str:
        """A satellite's state (JSON ``{"state": ...}``, retained; ``+``: every site's)."""
        return f"{self.prefix}/{site}/satellite/state"

    def satellite_listen(self, site: str, user: str) -> str:
        """Push-to-talk for ``user``'s satellite at ``site``: any message starts a request."""
        return f"{self.prefix}/{site}/satellite/listen/{user}"

    def satellite_site(self, topic: str) -> str | None:
        """The site of a satellite state topic, else ``None``."""
        parts = topic.split("/")
        head = self.prefix.split("/")
        if len(parts) != len(head) + 3 or parts[: len(head)] != head \
                or parts[len(head) + 1:] != ["satellite", "state"]:
            return None
        site = parts[len(head)]
        return site if _SITE.fullmatch(site) else None

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def requests(self) -> list[str]:
        """The filters the service subscribes to."""
        return [f"{self.prefix}/+/request/+", f"{self.prefix}/+/audio/+"]

    def replies(self, user: str, site: str = "+") -> list[str]:
        """The filters a client of ``user`` subscribes to for its answers."""
        return [self.response(site, user), self.error(site, user),
                f"{self.prefix}/{site}/speech/{user}/+"]

    def owns(self, topic: str, site: str, user: str) -> bool:
        """May ``topic`` carry replies for ``user`` at ``site``? Their response topic, or one
        below it, without wildcards (a response topic a request sets must be one)."""
        own = self.response(site, user)
        return ("+" not in topic and "#" not in topic
                and (topic == own or topic.startswith(own + "/")))

    def parse(self, topic: str) -> tuple[str, str, str] | None:
        """``(kind, site, user)`` of a request topic, else ``None``."""
        parts = topic.split("/")
        head = self.prefix.split("/")
        if len(parts) != len(head) + 3 or parts[: len(head)] != head:
            return None
        site, kind, user = parts[len(head):]
        return (kind, site, user) if kind in ("request", "audio") else None


def _request_id(value: Any, correlation: bytes | None, prop: str | None,
                made: str | None = None) -> str:
    """A request's id: the one given (checked), else one made from the correlation data, else
    ``made`` (from what it asks, so a redelivery has the same), else a new one."""
    if value is None:
        value = prop
    if value is None and correlation:
        try:
            text = correlation.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        value = text if _ID.fullmatch(text) else correlation.hex()[:64]
    if value is None:
        return made or uuid.uuid4().hex
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProtocolError("bad_request", "id must be 1 to 64 letters, digits or . _ : -, "
                                           "starting with a letter or digit")
    return value


def _flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise ProtocolError("bad_request", f"{name} must be true or false")


def _area(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ProtocolError("bad_request", "area must be a string of 1 to 64 characters")
    return _utf8(value, "area")


def _utf8(text: str, name: str) -> str:
    """``text``, if it can be written out again (JSON lets a lone surrogate in)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad_request", f"{name} is not valid Unicode text") from None
    return text


@dataclass(frozen=True, slots=True)
class Request:
    """What every request has: whose, where, which, and how to answer."""

    id: str
    site: str
    user: str
    area: str | None = None
    """The area it was said in (the site's, unless the request names one)."""
    speak: bool = False
    """Publish the answer as speech too."""
    stream: bool = False
    """Speech as one WAV per sentence, each as soon as it is ready."""
    reply_to: str | None = None
    """The MQTT v5 response topic the asker set."""
    correlation: bytes | None = None
    """The MQTT v5 correlation data the asker set."""


@dataclass(frozen=True, slots=True)
class TextRequest(Request):
    """A sentence to answer."""

    text: str = ""


@dataclass(frozen=True, slots=True)
class AudioRequest(Request):
    """Speech to transcribe and answer (a WAV file)."""

    audio: bytes = b""


def decode_request(packet: Packet, topics: Topics, *, max_audio_bytes: int,
                   sites: Sequence[str] = (), made_id: str | None = None
                   ) -> TextRequest | AudioRequest:
    """The request a packet carries; :class:`ProtocolError` (with its code, and the request
    id where it could be read) for anything wrong with it.

    ``sites``: the sites served (empty: any). ``made_id``: the id of a request that names
    none (made from its content, so that a redelivery of it is known as one).
    """
    where = topics.parse(packet.topic)
    if where is None:
        raise ProtocolError("bad_topic", f"not a request topic: {packet.topic!r}")
    kind, site, user = where
    request_id: str | None = None
    try:
        if kind == "audio":
            request_id = _request_id(None, packet.correlation, packet.property("id"), made_id)
        else:
            request_id = _given_id(packet.payload) or (
                _request_id(None, packet.correlation, packet.property("id"))
                if packet.correlation or packet.property("id") else None)
        try:
            check_user(user)
        except CacheError as error:
            raise ProtocolError("bad_user", str(error)) from None
        if not _SITE.fullmatch(site):
            raise ProtocolError("unknown_site", f"site {site!r} is not a valid name")
        if sites and site not in sites:
            raise ProtocolError("unknown_site", f"site {site!r} is not served here")
        if packet.response_topic is not None and not topics.owns(packet.response_topic, site,
                                                                 user):
            raise ProtocolError("bad_request", "a response topic must be the asker's own "
                                               f"({topics.response(site, user)}[/...])")
        common: dict[str, Any] = {"site": site, "user": user, "reply_to": packet.response_topic,
                                  "correlation": packet.correlation}
        if kind == "audio":
            if len(packet.payload) > max_audio_bytes:
                raise ProtocolError("too_large", f"{len(packet.payload)} bytes of audio; at most "
                                                 f"{max_audio_bytes} are accepted")
            return AudioRequest(id=request_id or uuid.uuid4().hex,
                                area=_area(packet.property("area")),
                                speak=_flag(packet.property("speak"), "speak", True),
                                stream=_flag(packet.property("stream"), "stream", False),
                                audio=packet.payload, **common)
        return _text_request(packet.payload, request_id or made_id, common)
    except ProtocolError as error:
        error.request_id = error.request_id or request_id
        raise


def _given_id(payload: bytes) -> str | None:
    """The id a text request names, if it can be read at all (for its error reply)."""
    if len(payload) > MAX_JSON_BYTES:
        return None
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _text_request(payload: bytes, request_id: str | None,
                  common: Mapping[str, Any]) -> TextRequest:
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"{len(payload)} bytes; a request is at most "
                                         f"{MAX_JSON_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError("bad_json", f"not a JSON object: {error}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", f"expected a JSON object, got {type(data).__name__}")
    if request_id is None or "id" in data:
        given = _request_id(data.get("id"), None, None) if "id" in data else None
        request_id = given or request_id or uuid.uuid4().hex
    try:
        unknown = set(data) - {"id", "text", "area", "speak", "stream", "user"}
        if unknown:
            raise ProtocolError("bad_request", f"unknown field(s) {sorted(unknown)}")
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad_request", "text must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError("too_large", f"text of {len(text)} characters; at most "
                                             f"{MAX_TEXT_CHARS}")
        _utf8(text, "text")
        return TextRequest(id=request_id, area=_area(data.get("area")),
                           speak=_flag(data.get("speak"), "speak", False),
                           stream=_flag(data.get("stream"), "stream", False), text=text,
                           **common)
    except ProtocolError as error:
        error.request_id = request_id
        raise


def encode_text_request(topics: Topics, *, site: str, user: str, text: str,
                        request_id: str, area: str | None = None, speak: bool = False,
                        stream: bool = False) -> Packet:
    """A text request as a client publishes it."""
    body: dict[str, Any] = {"id": request_id, "text": text}
    if area is not None:
        body["area"] = area
    if speak:
        body["speak"] = True
    if stream:
        body["stream"] = True
    return Packet(topics.request(site, user), json.dumps(body).encode(),
                  correlation=request_id.encode(), content_type="application/json")


def encode_audio_request(topics: Topics, *, site: str, user: str, wav: bytes,
                         request_id: str, area: str | None = None, speak: bool = True,
                         stream: bool = False) -> Packet:
    """An audio request as a client publishes it."""
    props = [("id", request_id), ("speak", "1" if speak else "0"),
             ("stream", "1" if stream else "0")]
    if area is not None:
        props.append(("area", area))
    return Packet(topics.audio(site, user), wav, correlation=request_id.encode(),
                  properties=tuple(props), content_type="audio/wav")


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to a request."""

    id: str
    text: str
    transcript: str | None = None
    """What was heard, for an audio request."""
    intent: str | None = None
    slots: Mapping[str, Any] = field(default_factory=dict)
    actions: Sequence[Mapping[str, Any]] = ()
    """The device commands published: entity, topic, payload."""
    fragments: Sequence[Mapping[str, Any]] = ()
    """Per piece of the answer: text, source (l1, l2, l3, computed...), ms."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Milliseconds per stage (stt, recognise, answer, publish, total)."""
    match: str = "none"
    """How it was understood: strict, fuzzy, unknown_name, generated, none."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "transcript": self.transcript,
                "intent": self.intent, "match": self.match, "slots": dict(self.slots),
                "actions": [dict(a) for a in self.actions],
                "fragments": [dict(f) for f in self.fragments], "timings": dict(self.timings)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Response:
        return Response(id=str(data["id"]), text=str(data["text"]),
                        transcript=data.get("transcript"), intent=data.get("intent"),
                        slots=data.get("slots") or {}, actions=data.get("actions") or (),
                        fragments=data.get("fragments") or (),
                        timings=data.get("timings") or {},
                        match=str(data.get("match") or "none"))


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Why a request gets no answer."""

    id: str | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "message": self.message}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ErrorReply:
        return ErrorReply(id=data.get("id"), code=str(data["code"]), message=str(data["message"]))


Reply = Response | ErrorReply


def reply_packet(topics: Topics, reply: Reply, *, site: str, user: str,
                 reply_to: str | None = None, correlation: bytes | None = None) -> Packet:
    """The packet of a final reply: to the asker's response topic (``reply_to``) when they
    set one, else to the user's response or error topic."""
    kind = "response" if isinstance(reply, Response) else "error"
    payload = json.dumps(reply.to_json(), default=str, ensure_ascii=False).encode()
    topic = reply_to or (topics.response(site, user) if kind == "response"
                         else topics.error(site, user))
    return Packet(topic, payload, correlation=correlation, properties=(("kind", kind),),
                  content_type="application/json")


def decode_reply(packet: Packet) -> Reply:
    """A reply as a client reads it (from the response or error topic, or its own)."""
    data = json.loads(packet.payload)
    kind = packet.property("kind") or ("error" if "/error/" in packet.topic else "response")
    return ErrorReply.from_json(data) if kind == "error" else Response.from_json(data)


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """Speech of an answer: the whole of it, or one sentence of it when streamed."""

    id: str
    wav: bytes
    seq: int = 0
    """The sentence's place (0 when the whole answer is one WAV)."""
    last: bool = True
    """No more chunks follow."""

    def packet(self, topics: Topics, request: Request) -> Packet:
        return Packet(topics.speech(request.site, request.user, self.id), self.wav,
                      correlation=request.correlation,
                      properties=(("seq", str(self.seq)), ("last", "1" if self.last else "0")),
                      content_type="audio/wav")

    @staticmethod
    def from_packet(packet: Packet) -> SpeechChunk:
        return SpeechChunk(id=packet.topic.rsplit("/", 1)[-1], wav=packet.payload,
                           seq=int(packet.property("seq") or 0),
                           last=(packet.property("last") or "1") == "1")
