"""Rhasspy 2.5's Hermes protocol: the assistant as the NLU and text to speech of Rhasspy
satellites (``[hermes] enabled``, off by default).

- ``hermes/nlu/query`` ``{"input", "siteId", "id", "intentFilter", "sessionId", ...}`` ->
  ``hermes/intent/<intentName>`` with the recognised intent and its slots (``entity``,
  ``slotName``, ``value`` ``{"kind", "value"}``, ``rawValue``, ``confidence``, ``range``), or
  ``hermes/nlu/intentNotRecognized``. Recognition only: what an intent does is the intent
  handler's (Home Assistant's, or whatever listens on ``hermes/intent/#``), as in Rhasspy.
  A sentence naming what the home does not have is not recognised.
- ``hermes/tts/say`` ``{"text", "siteId", "id", "sessionId", ...}`` -> the WAV on
  ``hermes/audioServer/<siteId>/playBytes/<id>``, then ``hermes/tts/sayFinished``.

Payloads are camelCase JSON, with the fields ``rhasspy-hermes`` defines; a message that
cannot be read gets ``hermes/error/nlu`` or ``hermes/error/tts``. Work is done on a thread of
the bridge's own, never on the network thread.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any, Self

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.reasoncodes import ReasonCode

from assistant.errors import AssistantError
from assistant.recognition.match import FUZZY, STRICT, Match
from assistant.settings import HermesSettings, MqttSettings
from assistant.speech.tts import Speaker
from assistant.transports.mqtt import connect_and_wait, make_client

log = logging.getLogger(__name__)

QUERY = "hermes/nlu/query"
SAY = "hermes/tts/say"
NOT_RECOGNIZED = "hermes/nlu/intentNotRecognized"
SAY_FINISHED = "hermes/tts/sayFinished"
CONFIDENCE = {STRICT: 1.0, FUZZY: 0.8}
_SITE = re.compile(r"^[^/#+]{1,128}$")


class HermesBridge:
    """Answers Rhasspy's NLU queries and says its TTS requests."""

    def __init__(self, settings: HermesSettings, mqtt: MqttSettings, *,
                 recognize: Callable[[str, str | None], Match | None],
                 speaker: Speaker | None) -> None:
        """``recognize``: a sentence said at a site -> its match (the engine's, with the
        current home)."""
        self.settings = settings
        self.mqtt = mqtt
        self._recognize = recognize
        self._speaker = speaker
        self._client: Client | None = None
        self._work: queue.Queue[MQTTMessage | None] = queue.Queue(256)
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        client = make_client(self.mqtt, client_id_suffix="-hermes")
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        self._thread = threading.Thread(target=self._run, name="hermes", daemon=True)
        self._thread.start()
        connect_and_wait(client, self.mqtt, 10.0)
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if self._thread is not None:
            self._work.put(None)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags,
                    reason: ReasonCode, properties: Any = None) -> None:
        if not reason.is_failure:
            client.subscribe([(QUERY, 1), (SAY, 1)])

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        try:
            self._work.put_nowait(message)
        except queue.Full:
            log.warning("Hermes messages are coming faster than they are answered: one dropped")

    def _run(self) -> None:
        while (message := self._work.get()) is not None:
            kind = "nlu" if message.topic == QUERY else "tts"
            try:
                fields = json.loads(message.payload)
                if not isinstance(fields, dict):
                    raise ValueError("a Hermes message is a JSON object")
                if kind == "nlu":
                    self._query(fields)
                else:
                    self._say(fields)
            except (ValueError, TypeError, AssistantError) as error:
                self._error(kind, str(error), bytes(message.payload))

    def _publish(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        client = self._client
        if client is None:
            return
        data = payload if isinstance(payload, bytes) else json.dumps(
            payload, ensure_ascii=False).encode()
        client.publish(topic, data, qos=1)

    def _error(self, kind: str, error: str, payload: bytes) -> None:
        fields: dict[str, Any] = {}
        try:
            decoded = json.loads(payload)
            fields = decoded if isinstance(decoded, dict) else {}
        except ValueError:
            pass
        self._publish(f"hermes/error/{kind}", {
            "error": error, "siteId": _site(fields), "context": None,
            "sessionId": fields.get("sessionId")})

    def _query(self, fields: dict[str, Any]) -> None:
        text = fields.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("input must be a non-empty string")
        site = _site(fields)
        match = self._recognize(text, site)
        wanted = fields.get("intentFilter")
        known = match is not None and match.stage in CONFIDENCE and (
            not wanted or match.intent in wanted)
        common = {"input": text, "siteId": site, "id": fields.get("id"),
                  "customData": fields.get("customData"), "sessionId": fields.get("sessionId")}
        if not known or match is None:
            self._publish(NOT_RECOGNIZED, common)
            return
        confidence = CONFIDENCE[match.stage]
        self._publish(f"hermes/intent/{match.intent}", {
            **common,
            "intent": {"intentName": match.intent, "confidenceScore": confidence},
            "slots": [_slot(name, slot.value, slot.text, text, confidence)
                      for name, slot in match.slots.items()],
            "asrTokens": None, "asrConfidence": fields.get("asrConfidence"),
            "rawInput": text, "wakewordId": fields.get("wakewordId"),
            "lang": fields.get("lang"),
        })

    def _say(self, fields: dict[str, Any]) -> None:
        text = fields.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        if self._speaker is None:
            raise AssistantError("speech synthesis is not running here")
        site = _site(fields)
        request_id = fields.get("id") or uuid.uuid4().hex
        if not isinstance(request_id, str) or not _SITE.match(request_id):
            raise ValueError("id must be a string without / + #")
        wav = self._speaker.speak(text, user=self.settings.user, personal=True).wav
        self._publish(f"hermes/audioServer/{site}/playBytes/{request_id}", wav)
        self._publish(SAY_FINISHED, {"id": fields.get("id"), "siteId": site,
                                     "sessionId": fields.get("sessionId")})


def _site(fields: dict[str, Any]) -> str:
    site = fields.get("siteId", "default")
    if not isinstance(site, str) or not _SITE.match(site):
        return "default"
    return site


def _slot(name: str, value: Any, said: str, text: str, confidence: float) -> dict[str, Any]:
    """A slot as rhasspy-hermes writes it: where it was said in ``text``, if it was."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    start = text.casefold().find(said.casefold()) if said else -1
    where = None if start < 0 else {"start": start, "end": start + len(said),
                                    "rawStart": start, "rawEnd": start + len(said)}
    return {"entity": name, "slotName": name,
            "value": {"kind": "Number" if number else "Unknown", "value": value},
            "rawValue": said or str(value), "confidence": confidence, "range": where}
