"""The satellite, end to end: a spoken request after the wake word, to the first audio of
its answer.

One run starts a mosquitto (the project's config, on a free loopback port), a redis-server
and ``assistant serve`` with every model loaded, as processes of their own; the requests are
WAV files made by piper (the wake word "Okay Nabu.", a pause, a command, then silence), each
fed to ``assistant satellite --report`` run as a process of its own, as on a device. It
measures:

- ``end_of_speech_ms``: from where the command's speech really ends in the file (its last
  sample above 0.02) to where the satellite had the whole request and sent it (the default
  ``trailing_silence`` decides most of it);
- ``first_audio_cached_ms``: from sending the request to the first audio of the answer,
  for a command asked before (its answer and speech cached; a new recording, so it is
  transcribed again: transcription dominates);
- ``first_audio_uncached_ms``: the same for commands never asked before;
- ``satellite_rss_mb``: the satellite process's peak resident memory.

Goals are reported, never asserted; the last line is JSON. ``make bench-satellite``.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assistant.satellite.sound import wav_of  # noqa: E402
from assistant.settings import TtsSettings  # noqa: E402
from assistant.speech.audio import resample  # noqa: E402
from assistant.speech.tts import Speaker  # noqa: E402
from bench.report import finish  # noqa: E402
from tests.servers import RedisServer  # noqa: E402
from tests.service import Broker, ServiceProcess, service_config  # noqa: E402

RATE = 16000
ASKED_BEFORE = "Turn on the kitchen light."
NEVER_ASKED = ["Turn off the hallway light.", "Turn on the coffee maker.",
               "Turn off the coffee maker.", "Open the blinds.", "Close the blinds."]
CACHED_RUNS = 5


def spoken(speaker: Speaker, text: str) -> np.ndarray:
    with wave.open(io.BytesIO(speaker.speak(text).wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    return resample(samples.astype(np.float32) / 32768, rate, RATE)


def request_file(folder: Path, name: str, wake: np.ndarray, command: np.ndarray,
                 lead: float) -> tuple[Path, float]:
    """A request WAV, and where in it the command's speech ends (seconds)."""
    parts = [np.zeros(round(lead * RATE), np.float32), wake,
             np.zeros(round(0.15 * RATE), np.float32)]
    start = sum(len(p) for p in parts)
    loud = np.flatnonzero(np.abs(command) > 0.02)
    end = float(start + loud[-1] + 1) / RATE
    audio = np.concatenate([*parts, command, np.zeros(2 * RATE, np.float32)])
    path = folder / f"{name}.wav"
    path.write_bytes(wav_of((audio * 32767).astype("<i2").tobytes()))
    return path, end


def run_satellite(config: Path, request: Path, report: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "assistant", "--config", str(config), "satellite",
         "--site", "kitchen", "--user", "ann", "--password", "ann-pw", "--input", str(request),
         "--report", str(report)], capture_output=True, text=True, cwd=ROOT, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"the satellite failed: {done.stdout}{done.stderr}")
    return [json.loads(line) for line in report.read_text().splitlines()]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-satellite-") as name:
        folder = Path(name)
        with Speaker(TtsSettings(noise_scale=0.0, noise_w_scale=0.0)) as speaker:
            wake = spoken(speaker, "Okay Nabu.")
            before = spoken(speaker, ASKED_BEFORE)
            never = [spoken(speaker, text) for text in NEVER_ASKED]
        broker = Broker(folder / "broker").start()
        redis_server = RedisServer(folder / "redis").start()
        config = service_config(folder, broker=broker, redis_url=redis_server.url,
                                extra="requests_per_minute = 0\naudio_seconds_per_minute = 0")
        service = ServiceProcess(config, speech=True).start()
        waited: list[float] = []
        cached: list[float] = []
        uncached: list[float] = []
        rss: list[float] = []
        try:
            warm, _ = request_file(folder, "warm", wake, before, 0.5)
            run_satellite(config, warm, folder / "warm.jsonl")  # the answer, cached
            runs = [(f"cached-{k}", before, cached) for k in range(CACHED_RUNS)]
            runs += [(f"new-{k}", command, uncached) for k, command in enumerate(never)]
            for k, (label, command, into) in enumerate(runs):
                # A new lead-in each time: new bytes, so the audio is transcribed again.
                path, end = request_file(folder, label, wake, command, 0.4 + 0.01 * k)
                lines = run_satellite(config, path, folder / f"{label}.jsonl")
                asked = [line for line in lines if "sent_at" in line]
                if len(asked) != 1 or not asked[0]["answered"]:
                    raise RuntimeError(f"{label}: {lines}")
                waited.append((asked[0]["sent_at"] - end) * 1000)
                if asked[0]["first_audio_ms"] is not None:
                    into.append(asked[0]["first_audio_ms"])
                rss += [line["rss_mb"] for line in lines if "rss_mb" in line]
        finally:
            service.stop()
            redis_server.stop()
            broker.stop()
    results = {
        "end_of_speech_ms": round(statistics.median(waited), 1),
        "end_of_speech_max_ms": round(max(waited), 1),
        "first_audio_cached_ms": round(statistics.median(cached), 1),
        "first_audio_uncached_ms": round(statistics.median(uncached), 1),
        "satellite_rss_mb": round(max(rss), 1),
        "requests": len(waited),
    }
    print("bench_satellite: the satellite and the service as processes of their own, piper's "
          "voice, mosquitto and redis-server on loopback")
    for key, value in results.items():
        print(f"{key:28} {value}")
    finish(results, [
        ("end_of_speech_ms <= 400", results["end_of_speech_ms"] <= 400),
        ("first_audio_cached_ms <= 350", results["first_audio_cached_ms"] <= 350),
        ("satellite_rss_mb <= 150", results["satellite_rss_mb"] <= 150),
    ], quick=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
