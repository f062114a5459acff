"""The Wyoming server, with a client built on the ``wyoming`` package playing Home
Assistant's part, against ``assistant serve`` run as a process of its own (speech on, a real
mosquitto with the project's ACL, a real redis-server)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import wave
from collections.abc import Iterator
from io import BytesIO

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop, wav_to_chunks
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from assistant.settings import TtsSettings
from assistant.speech.tts import Speaker
from tests.helpers import until
from tests.servers import RedisServer, free_port
from tests.service import Broker, Listener, ServiceProcess, service_config
from tests.speech_data import STEADY_VOICE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, broker: Broker,
            redis_server: RedisServer, port: int) -> Iterator[ServiceProcess]:
    config = service_config(tmp_path_factory.mktemp("wyoming"), broker=broker,
                            redis_url=redis_server.url, wyoming_port=port, zeroconf=True,
                            extra="requests_per_minute = 1000")
    process = ServiceProcess(config, speech=True).start()
    yield process
    process.stop()


async def events_until(client: AsyncTcpClient, last: str, timeout: float = 60) -> list[Event]:
    """Events read until one of type ``last`` (included)."""
    found: list[Event] = []
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        assert event is not None, f"disconnected after {[e.type for e in found]}"
        found.append(event)
        if event.type == last:
            return found


async def exchange(port: int, *events: Event, until_type: str) -> list[Event]:
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        for event in events:
            await client.write_event(event)
        return await events_until(client, until_type)
    finally:
        await client.disconnect()


def test_describe_offers_speech_to_text_speech_and_a_home_agent(
        service: ServiceProcess, port: int) -> None:
    events = asyncio.run(exchange(port, Describe().event(), until_type="info"))
    info = Info.from_event(events[-1])
    assert len(info.asr) == 1 and info.asr[0].installed
    assert info.asr[0].models[0].languages == ["en"]
    assert len(info.tts) == 1 and info.tts[0].supports_synthesize_streaming
    assert info.tts[0].voices[0].name == "en_US-joe-medium"
    assert len(info.handle) == 1 and info.handle[0].supports_home_control
    assert info.handle[0].models[0].languages == ["en"]
    for program in (*info.asr, *info.tts, *info.handle):
        assert program.name and program.attribution.name and program.description


@pytest.fixture(scope="module")
def speaker() -> Iterator[Speaker]:
    with Speaker(TtsSettings(**STEADY_VOICE)) as voice:
        yield voice


def test_speech_in_chunks_of_any_rate_is_transcribed(
        service: ServiceProcess, port: int, speaker: Speaker) -> None:
    wav = speaker.speak("Turn on the kitchen light.").wav  # 22050 Hz, not the 16 kHz heard
    with wave.open(BytesIO(wav)) as reader:
        assert reader.getframerate() != 16000
        chunks = list(wav_to_chunks(reader, samples_per_chunk=1024))
    events = asyncio.run(exchange(
        port, Transcribe(language="en").event(),
        AudioStart(rate=chunks[0].rate, width=2, channels=1).event(),
        *(c.event() for c in chunks), AudioStop().event(), until_type="transcript"))
    assert "kitchen light" in Transcript.from_event(events[-1]).text.casefold()


def audio_of(events: list[Event]) -> tuple[list[str], bytes]:
    kinds = [e.type for e in events]
    audio = b"".join(AudioChunk.from_event(e).audio for e in events if e.type == "audio-chunk")
    return kinds, audio


def test_synthesize_gives_one_audio_start_its_chunks_and_one_audio_stop(
        service: ServiceProcess, port: int) -> None:
    events = asyncio.run(exchange(port, Synthesize(text="The kitchen light is on.").event(),
                                  until_type="audio-stop"))
    kinds, audio = audio_of(events)
    assert kinds[0] == "audio-start" and kinds.count("audio-start") == 1
    assert set(kinds[1:-1]) == {"audio-chunk"} and kinds[-1] == "audio-stop"
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    assert len(audio) / 2 / start.rate > 0.8  # seconds of speech


def test_a_stream_of_text_is_spoken_sentence_by_sentence(
        service: ServiceProcess, port: int) -> None:
    async def talk() -> tuple[list[Event], float]:
        client = AsyncTcpClient("127.0.0.1", port)
        await client.connect()
        try:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="The lights are off. The ").event())
            started = time.perf_counter()
            first = await asyncio.wait_for(client.read_event(), 60)  # before the stream ends
            waited = time.perf_counter() - started
            await client.write_event(SynthesizeChunk(text="door is locked.").event())
            # Home Assistant also sends the whole text, for servers that do not stream.
            await client.write_event(
                Synthesize(text="The lights are off. The door is locked.").event())
            await client.write_event(SynthesizeStop().event())
            assert first is not None
            return [first, *await events_until(client, "synthesize-stopped")], waited
        finally:
            await client.disconnect()

    events, waited = asyncio.run(talk())
    kinds, audio = audio_of(events)
    assert kinds[0] == "audio-start" and waited < 60
    assert kinds.count("audio-start") == 1 and kinds.count("audio-stop") == 1
    assert kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    assert SynthesizeStopped.is_type(events[-1].type)
    assert len(audio) / 2 / 22050 > 1.5  # both sentences, once


def test_a_transcript_is_handled_and_acts_on_the_home(
        service: ServiceProcess, port: int, broker: Broker) -> None:
    sees = Listener(broker.settings("assistant"), "home/kitchen/light/set")
    try:
        events = asyncio.run(exchange(
            port, Transcript(text="turn on the kitchen light",
                             context={"satellite_id": "kitchen"}).event(),
            until_type="handled"))
        handled = Handled.from_event(events[-1])
        assert handled.text and "kitchen light" in handled.text.casefold()
        assert handled.context == {"satellite_id": "kitchen"}
        published = until(lambda: sees.on("home/kitchen/light/set"), "the light's command", 15)
        assert published[0].payload in (b"ON", b'{"state": "ON"}') or \
            json.loads(published[0].payload).get("state") == "ON"
    finally:
        sees.close()


def test_bad_events_get_an_error_and_harm_no_other_connection(
        service: ServiceProcess, port: int) -> None:
    # An event of a type the server does not serve: an error, and the connection goes on.
    events = asyncio.run(exchange(port, Event(type="bogus"), Describe().event(),
                                  until_type="info"))
    assert Error.from_event(events[0]).code == "unexpected_event"
    # Audio with no transcription asked for: an error.
    events = asyncio.run(exchange(port, AudioStop().event(), Describe().event(),
                                  until_type="info"))
    assert Error.from_event(events[0]).code == "no_audio"

    # A line that is no event, and an event too large: an error, and that connection ends.
    def raw(data: bytes) -> list[dict[str, object]]:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(data)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        return [json.loads(line) for line in received.splitlines() if line.startswith(b"{")]

    # A client that goes away in the middle of its audio.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        start = AudioStart(rate=16000, width=2, channels=1).event()
        conn.sendall(json.dumps({"type": "transcribe", "data": {}}).encode() + b"\n")
        conn.sendall(json.dumps({"type": start.type, "data": start.data}).encode() + b"\n")
        conn.sendall(json.dumps({"type": "audio-chunk", "data": start.data,
                                 "payload_length": 32000}).encode() + b"\n" + bytes(1000))
    replies = raw(b"this is not json\n")
    assert replies and replies[0]["type"] == "error"
    replies = raw(json.dumps({"type": "audio-chunk", "payload_length": 10**9}).encode() + b"\n")
    assert replies and replies[0]["type"] == "error"
    # Meanwhile every other connection is served.
    events = asyncio.run(exchange(port, Describe().event(), until_type="info"))
    assert Info.from_event(events[-1]).handle


def test_the_server_is_announced_for_home_assistant_to_find(
        service: ServiceProcess, port: int) -> None:
    from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

    found: dict[str, int] = {}

    class Seen(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            info = zc.get_service_info(type_, name, timeout=3000)
            if info is not None:
                found[name] = info.port or 0

        def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            self.add_service(zc, type_, name)

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            pass

    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        ServiceBrowser(zc, "_wyoming._tcp.local.", Seen())
        until(lambda: found.get("assistant-test._wyoming._tcp.local."), "the announcement", 20)
    finally:
        zc.close()
    assert found["assistant-test._wyoming._tcp.local."] == port
