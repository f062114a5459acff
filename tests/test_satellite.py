"""``assistant satellite``: end of speech on files with a known speech end, the wake word on a
synthesised "okay nabu", and the whole way through a running service (a process of its own,
real mosquitto with the project's ACL, real redis-server), the satellite a process too."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.satellite.device import wav_of
from assistant.satellite.listen import RATE
from assistant.settings import SttSettings, TtsSettings
from assistant.speech.audio import resample
from assistant.speech.stt import Transcriber
from assistant.speech.tts import Speaker
from tests.helpers import until
from tests.servers import RedisServer
from tests.service import ROOT, Broker, Listener, ServiceProcess, service_config
from tests.speech_data import STEADY_VOICE


@pytest.fixture(scope="module")
def speaker() -> Iterator[Speaker]:
    with Speaker(TtsSettings(**STEADY_VOICE)) as voice:
        yield voice


def said(speaker: Speaker, text: str) -> np.ndarray:
    """``text`` spoken, as 16 kHz float samples."""
    with wave.open(io.BytesIO(speaker.speak(text).wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    return resample(samples.astype(np.float32) / 32768, rate, RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def pcm(*parts: np.ndarray) -> bytes:
    return (np.concatenate(parts) * 32767).astype("<i2").tobytes()


def speech_end(samples: np.ndarray, offset: float) -> float:
    """Seconds from the start where the speech in ``samples`` (placed at ``offset``) ends."""
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    return offset + (loud[-1] + 1) / RATE


def ears(tmp_path: Path, audio: bytes, *args: str) -> list[dict[str, Any]]:
    """The utterances ``Ears`` finds in ``audio``, run in a process of its own (as on the
    device: its native libraries never meet Whisper's or llama.cpp's in one process)."""
    path = tmp_path / f"ears-{len(list(tmp_path.iterdir()))}.wav"
    path.write_bytes(wav_of(audio))
    done = subprocess.run([sys.executable, "-m", "tests.satellite_ears", str(path), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("trailing", [0.3, 0.5, 0.8])
def test_the_end_of_speech_is_found_within_the_trailing_silence_and_100_ms(
        speaker: Speaker, trailing: float, tmp_path: Path) -> None:
    command = said(speaker, "Turn on the kitchen light.")
    found = ears(tmp_path, pcm(silence(0.4), command, silence(2.0)),
                 "--trailing", str(trailing))
    assert len(found) == 1 and found[0]["why"] == "press" and not found[0]["timed_out"]
    waited = found[0]["sent_at"] - speech_end(command, 0.4)
    assert trailing - 0.05 <= waited <= trailing + 0.1, (waited, trailing)


def test_a_long_request_is_cut_at_the_longest_allowed(speaker: Speaker, tmp_path: Path) -> None:
    command = said(speaker, "Turn on the kitchen light. " * 4)
    found = ears(tmp_path, pcm(command, silence(1.0)), "--max", "2", "--pre-roll", "0")
    assert found and found[0]["timed_out"]
    assert abs(found[0]["seconds"] - 2.0) < 0.05


def test_the_wake_word_starts_a_request_and_its_first_word_is_kept(
        speaker: Speaker, tmp_path: Path) -> None:
    wake = said(speaker, "Okay Nabu.")
    command = said(speaker, "Turn on the kitchen light.")
    found = ears(tmp_path, pcm(silence(0.5), wake, silence(0.15), command, silence(1.5)),
                 "--wake", "okay_nabu")
    assert len(found) == 1 and found[0]["why"] == "wake"
    # The whole command is in it: from before it began to its end.
    assert found[0]["seconds"] >= len(command) / RATE
    assert not ears(tmp_path, pcm(silence(0.5), command, silence(1.5)), "--wake", "okay_nabu")


def test_an_unknown_wake_word_is_refused(tmp_path: Path) -> None:
    found = ears(tmp_path, pcm(silence(0.5)), "--wake", "hey_computer")
    assert "okay_nabu" in found[0]["error"]


def test_the_satellite_imports_nothing_a_small_device_cannot_carry() -> None:
    code = ("import sys, assistant.cli, assistant.satellite.device; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'faster_whisper', 'ctranslate2', 'piper', 'llama_cpp', 'onnxruntime'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_spoken_request_goes_the_whole_way(
        speaker: Speaker, broker: Broker, redis_server: RedisServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("satellite")
    config = service_config(folder, broker=broker, redis_url=redis_server.url)
    request = folder / "request.wav"
    request.write_bytes(wav_of(pcm(silence(0.5), said(speaker, "Okay Nabu."), silence(0.15),
                                   said(speaker, "Turn on the kitchen light."),
                                   silence(1.5))))
    sees = Listener(broker.settings("assistant"), "home/kitchen/light/set",
                    "assistant/kitchen/satellite/state")
    service = ServiceProcess(config, speech=True).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "assistant", "--config", str(config), "satellite",
             "--site", "kitchen", "--user", "ann", "--password", "ann-pw",
             "--input", str(request), "--output", str(folder / "out")],
            capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "answer:" in done.stdout
        until(lambda: sees.on("home/kitchen/light/set"), "the light's command", 15)
        states = [json.loads(p.payload)["state"] for p in sees.on("/satellite/state")]
        assert [s for s in states if s in ("thinking", "speaking")] == ["thinking", "speaking"]
    finally:
        service.stop()
        sees.close()
    answers = sorted((folder / "out").glob("*.wav"))
    assert answers
    with Transcriber(SttSettings()) as transcriber:
        heard = transcriber.transcribe(answers[0].read_bytes()).text.casefold()
    assert "kitchen light" in heard, heard
