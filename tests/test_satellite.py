"""``assistant satellite``: end of speech on files with a known speech end, the wake word on a
synthesised "okay nabu", and the whole way through a running service (a process of its own,
real mosquitto with the project's ACL, real redis-server), the satellite a process too."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.protocol import Packet, Response
from assistant.satellite.listen import RATE
from assistant.satellite.sound import wav_of
from assistant.settings import SttSettings, TtsSettings
from assistant.speech.audio import resample
from assistant.speech.stt import Transcriber
from assistant.speech.tts import Speaker
from assistant.transports.mqtt_client import Asker
from tests.helpers import until
from tests.servers import RedisServer
from tests.service import ROOT, Broker, Listener, ServiceProcess, service_config
from tests.speech_data import STEADY_VOICE


@pytest.fixture(scope="module")
def speaker() -> Iterator[Speaker]:
    with Speaker(TtsSettings(**STEADY_VOICE)) as voice:
        yield voice


STEADY_SERVICE_VOICE = "\n[tts]\n" + "".join(f"{k} = {v}\n" for k, v in STEADY_VOICE.items())
"""The service's voice without sampled noise: its answers transcribe the same every run."""


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


def voiced(samples: np.ndarray) -> np.ndarray:
    """``samples`` from their first loud sample to their last (no silence around)."""
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    return samples[loud[0] : loud[-1] + 1]


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


def test_a_pause_in_the_first_words_does_not_end_the_request(
        speaker: Speaker, tmp_path: Path) -> None:
    start, rest = voiced(said(speaker, "Turn on")), voiced(said(speaker, "the kitchen light."))
    audio = pcm(silence(0.4), start, silence(0.4), rest, silence(1.5))
    whole = ears(tmp_path, audio, "--trailing", "0.3", "--early", "0.6")
    assert len(whole) == 1 and whole[0]["seconds"] >= (len(start) + len(rest)) / RATE + 0.4
    # Without the longer wait early on, the pause would have ended it.
    cut = ears(tmp_path, audio, "--trailing", "0.3")
    assert cut[0]["seconds"] < len(start) / RATE + 0.4 + 0.4  # ended before the rest


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
    code = ("import sys, assistant.cli, assistant.satellite.device, assistant.satellite.sound; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'faster_whisper', 'ctranslate2', 'piper', 'llama_cpp', 'onnxruntime', 'redis', "
            "'cryptography', 'zstandard', 'hassil', 'jinja2', 'prometheus_client'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_spoken_request_goes_the_whole_way(
        speaker: Speaker, broker: Broker, redis_server: RedisServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("satellite")
    config = service_config(folder, broker=broker, redis_url=redis_server.url,
                            extra=STEADY_SERVICE_VOICE)
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
    assert "turned on the kitchen" in heard, heard


class SatelliteProcess:
    """``assistant satellite`` as a process, its audio written to its standard input as a
    microphone would give it, what it prints collected line by line."""

    def __init__(self, config: Path, output: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant", "--config", str(config), "satellite",
             "--site", "kitchen", "--user", "ann", "--password", "ann-pw", "--input", "-",
             "--output", str(output), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
            env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    def feed(self, audio: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(audio)
        self.proc.stdin.flush()

    def saw(self, text: str, timeout: float = 20.0, *, after: int = 0) -> int:
        """Wait for a line (from line ``after`` on) containing ``text``; its index."""
        def found() -> int | None:
            return next((n for n, line in enumerate(self.lines) if n >= after and text in line),
                        None)
        until(lambda: found() is not None, f"{text!r} from the satellite", timeout)
        index = found()
        assert index is not None
        return index

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def heard_in(path: Path) -> str:
    with Transcriber(SttSettings()) as transcriber:
        return transcriber.transcribe(path.read_bytes()).text.casefold()


@pytest.mark.slow
def test_the_microphone_and_the_speaker_are_alsa_devices(
        speaker: Speaker, broker: Broker, redis_server: RedisServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """arecord and aplay on ALSA PCMs of the user's .asoundrc: the file plugin, reading a
    recording as the microphone and writing what is played (no sound card here)."""
    folder = tmp_path_factory.mktemp("alsa")
    (folder / "mic.raw").write_bytes(pcm(silence(0.5), said(speaker, "Okay Nabu."),
                                         silence(0.15), said(speaker, "Turn on the kitchen "
                                                                      "light."), silence(1.0)))
    (folder / ".asoundrc").write_text(f"""
pcm.testmic {{ type file; slave.pcm "null"; file "/dev/null";
              infile "{folder / 'mic.raw'}"; format "raw" }}
pcm.testspeaker {{ type file; slave.pcm "null"; file "{folder / 'played.wav'}";
                  format "wav" }}
""")
    config = service_config(folder, broker=broker, redis_url=redis_server.url,
                            extra=STEADY_SERVICE_VOICE + '[satellite]\ninput_device = "testmic"\n'
                                  'output_device = "testspeaker"\n')
    service = ServiceProcess(config, speech=True).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "assistant", "--config", str(config), "satellite",
             "--site", "kitchen", "--user", "ann", "--password", "ann-pw", "--count", "1"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
            env={**os.environ, "HOME": str(folder)})
    finally:
        service.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answer: Turned on the Kitchen Light." in done.stdout
    assert "turned on the kitchen" in heard_in(folder / "played.wav")


@pytest.mark.slow
def test_timers_ring_broadcasts_play_and_a_press_starts_a_request_at_the_satellite(
        speaker: Speaker, broker: Broker, redis_server: RedisServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("satellite-events")
    config = service_config(folder, broker=broker, redis_url=redis_server.url)
    out = folder / "out"
    service = ServiceProcess(config, speech=True).start()
    device = SatelliteProcess(config, out)
    sees = Listener(broker.settings("assistant"), "home/kitchen/light/set")
    presses = Listener(broker.settings("ann"))  # her own satellite's button
    try:
        device.saw("[kitchen] idle")
        # The service learns the site from the satellite's state, before it asks anything.
        with Asker(broker.settings("cal"), user="cal", site="hall") as cal:
            told = until(lambda: cal.ask(text="broadcast that dinner is ready", timeout=10)
                         .reply, "an answer", 20)
        assert isinstance(told, Response) and told.text == "Done."
        device.saw("[kitchen] broadcast from hall: dinner is ready")
        until(lambda: list(out.glob("*-broadcast-*.wav")), "the broadcast played", 20)

        with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
            started = ann.ask(text="set a timer for 2 seconds", timeout=20).reply
        assert isinstance(started, Response) and started.text == "Timer set for 2 seconds."
        device.saw("[kitchen] timer 2 second: started")
        device.saw("[kitchen] timer 2 second: finished", 10)
        ring = until(lambda: list(out.glob("*-ring-*.wav")), "the ring", 10)
        said_done = until(lambda: list(out.glob("*-timer-*.wav")), "the timer said", 20)
        assert ring[0].name < said_done[0].name  # rung, then said
        assert "timer is done" in heard_in(said_done[0])

        # Push-to-talk: no wake word in the audio, a message on the listen topic instead.
        presses.send(Packet("assistant/kitchen/satellite/listen/ann", b"{}"))
        device.saw("[kitchen] push-to-talk")
        device.feed(pcm(silence(0.3), said(speaker, "Turn on the kitchen light."),
                        silence(1.0)))
        device.saw("answer: Turned on the Kitchen Light.")
        until(lambda: sees.on("home/kitchen/light/set"), "the light's command", 10)
    finally:
        code = device.close()
        sees.close()
        presses.close()
        service.stop()
    assert code == 0, device.lines


@pytest.mark.slow
def test_a_lost_broker_and_service_are_said_and_the_satellite_comes_back(
        speaker: Speaker, redis_server: RedisServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("satellite-lost")
    own = Broker(folder / "broker").start()
    config = service_config(folder, broker=own, redis_url=redis_server.url)
    request = pcm(silence(0.3), said(speaker, "Okay Nabu."), silence(0.15),
                  said(speaker, "Turn on the kitchen light."), silence(1.0))
    service = ServiceProcess(config, speech=True).start()
    device = SatelliteProcess(config, folder / "out")
    try:
        device.saw("[kitchen] idle")
        own.stop()
        lost = device.saw("lost the connection to the broker")
        device.feed(request)  # heard while nobody can be reached: refused at once
        device.saw("the assistant cannot be reached", 5, after=lost)
        assert not any("answer:" in line for line in device.lines)
        own.start()
        back = device.saw("connected again", 20, after=lost)
        until(lambda: service.alive, "the service", 5)
        device.feed(request)
        device.saw("answer: Turned on the Kitchen Light.", 30, after=back)
        assert list((folder / "out").glob("*-lost-*.wav"))  # the sound it made
        service.stop()
        device.saw("the assistant is offline", 20, after=back)
    finally:
        code = device.close()
        service.stop()
        own.stop()
    assert code == 0, device.lines
