"""``assistant satellite``: hear a request, send it to the service, play the answer.

It imports only what a small device needs (the MQTT client, the wake word and VAD models):
no Whisper, piper or llama.cpp. Audio comes from a WAV file or standard input (raw 16 kHz
16-bit mono PCM), which is also how it runs headless and in tests; each request goes to the
service as a WAV on the audio topic (QoS 1, the socket with ``TCP_NODELAY``), asking for the
answer spoken sentence by sentence; each sentence's audio is written out as it arrives. Its
state (``idle``, ``listening``, ``thinking``, ``speaking``, ``error``) is published on
``<prefix>/<site>/satellite/state`` and printed.
"""

from __future__ import annotations

import io
import json
import sys
import time
import wave
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from assistant.protocol import ErrorReply, Response, SpeechChunk, Topics
from assistant.satellite.listen import RATE, SAMPLE_BYTES, Ears, Utterance
from assistant.settings import MqttSettings, SatelliteSettings
from assistant.transports.mqtt_client import Asker

STATES = ("idle", "listening", "thinking", "speaking", "error")
CHUNK_BYTES = 1024


def wav_of(pcm: bytes, rate: int = RATE) -> bytes:
    """16-bit mono PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(SAMPLE_BYTES)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return out.getvalue()


def read_source(path: str) -> Iterator[bytes]:
    """16 kHz 16-bit mono PCM in chunks: from a WAV file of that layout, or raw from standard
    input (``-``)."""
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk
        return
    with wave.open(path) as reader:
        if (reader.getframerate(), reader.getsampwidth(), reader.getnchannels()) != \
                (RATE, SAMPLE_BYTES, 1):
            raise ValueError(f"{path}: the satellite reads 16 kHz 16-bit mono WAV")
        while chunk := reader.readframes(CHUNK_BYTES // SAMPLE_BYTES):
            yield chunk


class Satellite:
    """One satellite: a site, a user, ears, and a connection to the service."""

    def __init__(self, settings: SatelliteSettings, mqtt: MqttSettings, *, site: str,
                 user: str, output: Path | None = None, prefix: str = "assistant",
                 push_to_talk: bool = False, say: Callable[[str], object] = print,
                 report: Path | None = None) -> None:
        """``report``: a file to write one JSON line per request to (where in the stream
        its speech was judged to end and it was sent, the seconds to the first answer audio
        and to the answer), then the process's peak memory: what ``make bench-satellite``
        reads, and how to measure a device."""
        self.settings = settings
        self.site, self.user = site, user
        self.output = output
        self.topics = Topics(prefix)
        self.state_topic = f"{prefix}/{site}/satellite/state"
        self.ears = Ears(wake_word=None if push_to_talk else settings.wake_word,
                         trailing_silence=settings.trailing_silence,
                         max_seconds=settings.max_seconds, pre_roll=settings.pre_roll,
                         vad_threshold=settings.vad_threshold)
        if push_to_talk:
            self.ears.press()
        self._asker = Asker(mqtt, user=user, site=site, topics=self.topics)
        self._say = say
        self.state = "idle"
        self.answers: list[str] = []
        self.played = 0
        self.report = report
        self._lines: list[dict[str, object]] = []

    def run(self, source: Iterable[bytes]) -> int:
        """Hear ``source`` to its end, answering every request in it; the number answered."""
        with self._asker:
            self._set("idle")
            for chunk in source:
                was = self.ears.listening
                for utterance in self.ears.hear(chunk):
                    self._answer(utterance)
                if self.ears.listening and not was:
                    self._set("listening")
            for utterance in self.ears.finish():
                self._answer(utterance)
            self._set("idle")
        if self.report is not None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            lines = [*self._lines, {"rss_mb": round(peak, 1)}]
            self.report.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return len(self.answers)

    def _set(self, state: str) -> None:
        self.state = state
        self._asker.publish(self.state_topic, json.dumps({"state": state}).encode(),
                            retain=True)
        self._say(f"[{self.site}] {state}")

    def _answer(self, utterance: Utterance) -> None:
        self._set("thinking")
        speaking = False

        def play(chunk: SpeechChunk) -> None:
            nonlocal speaking
            if not speaking:
                speaking = True
                self._set("speaking")
            self._play(chunk)

        asked = self._asker.ask(wav=wav_of(utterance.pcm), speak=True, stream=True,
                                timeout=self.settings.timeout, on_speech=play)
        reply = asked.reply
        self._lines.append({
            "speech_end": round(utterance.speech_end, 3), "sent_at": round(utterance.sent_at, 3),
            "why": utterance.why.value, "timed_out": utterance.timed_out,
            "first_audio_ms": None if asked.first_speech_seconds is None
            else round(asked.first_speech_seconds * 1000, 1),
            "answer_ms": round(asked.seconds * 1000, 1),
            "answered": isinstance(reply, Response)})
        if isinstance(reply, Response):
            self.answers.append(reply.text)
            self._say(f"[{self.site}] heard: {reply.transcript!r}; answer: {reply.text}")
        elif isinstance(reply, ErrorReply):
            self._set("error")
            self._say(f"[{self.site}] error [{reply.code}]: {reply.message}")
        else:
            self._set("error")
            self._say(f"[{self.site}] the assistant did not answer within "
                      f"{self.settings.timeout:g} s")
        if not self.ears.has_wake_word:  # push-to-talk: ready for the next request
            self.ears.press()
        self._set("idle")

    def _play(self, chunk: SpeechChunk) -> None:
        """One sentence's audio: written to the output folder (``<n>.wav``)."""
        self.played += 1
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / f"{self.played:03d}-{int(time.time() * 1000)}.wav").write_bytes(
                chunk.wav)
