"""Rhasspy 2.5 satellites over Hermes: the messages a satellite sends, published to a real
mosquitto, answered by ``assistant serve`` running as a process of its own; the replies
checked field by field against the fields ``rhasspy-hermes`` defines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from assistant.protocol import Packet
from tests.helpers import until
from tests.servers import RedisServer
from tests.service import Broker, Listener, ServiceProcess, service_config

pytestmark = pytest.mark.slow

# rhasspyhermes.nlu.NluIntent, NluIntentNotRecognized and NluError; rhasspyhermes.intent.Slot
# and SlotRange; rhasspyhermes.tts.TtsSayFinished (camelCase, as they are sent).
NLU_INTENT = {"input", "intent", "siteId", "id", "slots", "sessionId", "customData",
              "asrTokens", "asrConfidence", "rawInput", "wakewordId", "lang"}
NOT_RECOGNIZED = {"input", "siteId", "id", "customData", "sessionId"}
SLOT = {"entity", "value", "slotName", "rawValue", "confidence", "range"}
RANGE = {"start", "end", "rawStart", "rawEnd"}
SAY_FINISHED = {"siteId", "id", "sessionId"}
ERROR = {"error", "siteId", "context", "sessionId"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, broker: Broker,
            redis_server: RedisServer) -> Iterator[ServiceProcess]:
    config = service_config(tmp_path_factory.mktemp("hermes"), broker=broker,
                            redis_url=redis_server.url, hermes=True)
    process = ServiceProcess(config, speech=True).start()
    yield process
    process.stop()


@pytest.fixture
def satellite(broker: Broker) -> Iterator[Listener]:
    """Rhasspy's side of the broker (signed in as the service account, as a Rhasspy base
    shares it)."""
    listener = Listener(broker.settings("assistant"), "hermes/intent/#", "hermes/nlu/#",
                        "hermes/tts/sayFinished", "hermes/audioServer/#", "hermes/error/#")
    yield listener
    listener.close()


def ask(satellite: Listener, topic: str, payload: dict[str, Any] | bytes, reply: str) -> Any:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    satellite.send(Packet(topic, data))
    found = until(lambda: [p for p in satellite.on(reply) if p.topic.startswith(reply)],
                  f"a message on {reply}", 30)
    return found[-1]


def test_a_query_gets_the_intent_with_its_slots(service: ServiceProcess,
                                                satellite: Listener) -> None:
    query = {"input": "set the kitchen light brightness to 40 percent", "siteId": "kitchen",
             "id": "q1", "sessionId": "s1", "intentFilter": None, "wakewordId": None,
             "lang": None, "customData": "mine"}
    packet = ask(satellite, "hermes/nlu/query", query, "hermes/intent/")
    assert packet.topic == "hermes/intent/HassLightSet"
    intent = json.loads(packet.payload)
    assert set(intent) == NLU_INTENT
    assert intent["input"] == query["input"] and intent["rawInput"] == query["input"]
    assert (intent["siteId"], intent["id"], intent["sessionId"], intent["customData"]) == \
        ("kitchen", "q1", "s1", "mine")
    assert intent["intent"] == {"intentName": "HassLightSet", "confidenceScore": 1.0}
    slots = {s["slotName"]: s for s in intent["slots"]}
    assert all(set(s) == SLOT for s in slots.values())
    brightness = slots["brightness"]
    assert brightness["value"] == {"kind": "Number", "value": 40}
    assert brightness["entity"] == "brightness" and brightness["confidence"] == 1.0
    name = slots["name"]
    assert name["value"]["value"] == "Kitchen Light"
    assert set(name["range"]) == RANGE
    start, end = name["range"]["start"], name["range"]["end"]
    assert query["input"][start:end].casefold() == "kitchen light"
    assert name["rawValue"].casefold() == "kitchen light"


def test_what_is_not_understood_or_filtered_out_is_not_recognized(
        service: ServiceProcess, satellite: Listener) -> None:
    for query in ({"input": "what is the capital of France", "siteId": "office", "id": "q2"},
                  {"input": "turn on the garage heater", "siteId": "office", "id": "q3"},
                  {"input": "turn on the kitchen light", "siteId": "office", "id": "q4",
                   "intentFilter": ["HassTurnOff"]}):
        satellite.send(Packet("hermes/nlu/query", json.dumps(query).encode()))
        replies = until(lambda q=query: [json.loads(p.payload)  # type: ignore[misc]
                                         for p in satellite.on(NOT_RECOGNIZED_TOPIC)
                                         if json.loads(p.payload)["id"] == q["id"]],
                        f"{query['input']!r} not recognized", 30)
        message = replies[-1]
        assert set(message) == NOT_RECOGNIZED
        assert (message["input"], message["siteId"]) == (query["input"], "office")
    assert not satellite.on("hermes/intent/")  # none of them taken for an intent


NOT_RECOGNIZED_TOPIC = "hermes/nlu/intentNotRecognized"


def test_say_plays_a_wav_on_the_site_then_says_it_finished(
        service: ServiceProcess, satellite: Listener) -> None:
    say = {"text": "The kitchen light is on.", "siteId": "kitchen", "id": "t1",
           "sessionId": "s2", "lang": None}
    played = ask(satellite, "hermes/tts/say", say, "hermes/audioServer/")
    assert played.topic == "hermes/audioServer/kitchen/playBytes/t1"
    assert played.payload[:4] == b"RIFF" and len(played.payload) > 20000
    finished = json.loads(until(lambda: satellite.on("hermes/tts/sayFinished"),
                                "sayFinished", 30)[-1].payload)
    assert set(finished) == SAY_FINISHED
    assert finished == {"id": "t1", "siteId": "kitchen", "sessionId": "s2"}


def test_a_message_that_cannot_be_read_gets_an_error(service: ServiceProcess,
                                                     satellite: Listener) -> None:
    packet = ask(satellite, "hermes/nlu/query", b"not json", "hermes/error/nlu")
    assert set(json.loads(packet.payload)) == ERROR
    packet = ask(satellite, "hermes/tts/say", {"siteId": "kitchen"}, "hermes/error/tts")
    error = json.loads(packet.payload)
    assert set(error) == ERROR and error["siteId"] == "kitchen" and "text" in error["error"]
    # And the bridge goes on answering.
    packet = ask(satellite, "hermes/nlu/query",
                 {"input": "turn off the kitchen light", "siteId": "kitchen"}, "hermes/intent/")
    assert packet.topic.endswith("/HassTurnOff")
