"""Benchmark of speech in and out with the packaged models, next to the raw model calls.

Measures, in one run on this machine:

- ``stt_rtf``: faster-whisper (tiny.en, int8, the configured defaults) processing time over
  audio duration, for the home-control sentences spoken by piper, uncached; the median of
  the per-round ratios (total time / total audio of a round);
- ``stt_full_window_rtf``: the same with Whisper's fixed 30 s window for every request
  (``short_window = false``), the baseline of the fitted window, with its own
  ``roundtrip_wer_full_window``; the two take turns in each round;
- ``stt_cached_ms``: the same request again (a redelivered MQTT message): from L1;
- ``tts_rtf``: piper synthesis time over the duration of what it said, uncached;
- ``tts_cached_ms``: a 3-sentence answer entirely from the cache (L1), to one stitched WAV,
  next to ``tts_uncached_ms``, the same answer synthesised (``Speaker.synthesize`` per
  sentence, no cache), and ``tts_cached_l2_ms``, the answer from Redis (L1 emptied first);
- ``tts_first_audio_ms``: streaming a 3-sentence answer whose first sentence is not cached:
  time until the first sentence's audio is in hand, next to ``tts_whole_answer_ms``, the
  time until all three are;
- ``roundtrip_wer``: word error rate of the spoken sentences transcribed back.

The cache is real: a private redis-server (no persistence) on a free loopback port and a
sqlite file in a temporary folder, removed at the end, under a fresh random master key.
Latencies are medians over repetitions. Goals are reported as met or not met, never
asserted. The last line of output is one JSON object with every number.

Run it with ``make bench-speech``; ``--quick`` runs fewer repetitions, as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assistant.settings import SttSettings, TtsSettings  # noqa: E402
from assistant.speech.stt import Transcriber  # noqa: E402
from assistant.speech.tts import Speaker  # noqa: E402
from bench.report import finish  # noqa: E402
from cache import KeyBuilder, Keyring, MemoryTier, RedisTier, SqliteTier, TieredCache  # noqa: E402
from tests.servers import RedisServer  # noqa: E402
from tests.speech_data import HOME_SENTENCES, wer  # noqa: E402

ANSWER = "The kitchen light is on. The living room is at twenty one degrees. Anything else?"
SUBJECTS = ("kitchen", "hallway", "garage", "office", "bedroom", "porch", "attic", "cellar",
            "studio", "pantry", "nursery", "laundry", "balcony", "library", "garden", "den")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def run(rounds: int, repeats: int, workdir: Path) -> dict[str, Any]:
    server = RedisServer(workdir / "redis").start()
    keyring = Keyring({1: os.urandom(32)})
    keys = KeyBuilder(keyring.naming_secret())
    cache = TieredCache(keyring=keyring, memory=MemoryTier(256 * 1024 * 1024),
                        redis_tier=RedisTier(server.url, namer=keys.name),
                        sqlite_tier=SqliteTier(workdir / "cache.db"), listen=False).start()
    try:
        (speaker, tts_load) = timed(lambda: Speaker(TtsSettings(), cache=cache, keys=keys).start())
        (transcriber, stt_load) = timed(
            lambda: Transcriber(SttSettings(), cache=cache, keys=keys).start())
        raw_stt = Transcriber(SttSettings()).start()  # no cache: every call runs the model
        # Whisper's own 30 s window for every request: the baseline of the fitted window.
        full_stt = Transcriber(SttSettings(short_window=False)).start()

        # Speech out, uncached: each sentence synthesised straight from the voice.
        speaker.synthesize(HOME_SENTENCES[0])  # warm-up
        tts_ratios = []
        clips: list[bytes] = []
        for _ in range(rounds):
            took, audio = 0.0, 0.0
            clips = []
            for sentence in HOME_SENTENCES:
                pcm, seconds = timed(lambda s=sentence: speaker.synthesize(s))
                took += seconds
                audio += len(pcm) / 2 / speaker.rate
                clips.append(speaker.stitch([pcm]))
            tts_ratios.append(took / audio)

        # Speech in, uncached, on what piper said.
        def listen(transcriber: Transcriber) -> tuple[float, list[str]]:
            took, audio, heard = 0.0, 0.0, []
            for wav in clips:
                result = transcriber.transcribe(wav)
                took += result.seconds
                audio += result.audio_seconds
                heard.append(result.text)
            return took / audio, heard

        raw_stt.transcribe(clips[0])  # warm-ups
        full_stt.transcribe(clips[0])
        stt_ratios, full_ratios = [], []
        heard: list[str] = []
        heard_full: list[str] = []
        for _ in range(rounds):  # the two paths take turns
            ratio, heard = listen(raw_stt)
            stt_ratios.append(ratio)
            ratio, heard_full = listen(full_stt)
            full_ratios.append(ratio)
        roundtrip_wer = wer(HOME_SENTENCES, heard)

        # A redelivered request: the transcript from the cache.
        transcriber.transcribe(clips[0], user="bench")
        stt_cached = [transcriber.transcribe(clips[0], user="bench") for _ in range(repeats)]
        assert all(r.source == "l1" for r in stt_cached)

        # A 3-sentence answer: synthesised, then from L1, then from Redis.
        sentences = [s.text for s in speaker.speak(ANSWER).sentences]
        uncached = [timed(lambda: speaker.stitch([speaker.synthesize(s) for s in sentences]))[1]
                    for _ in range(max(3, rounds))]
        cached = []
        for _ in range(repeats):
            speech, seconds = timed(lambda: speaker.speak(ANSWER))
            assert all(s.source == "l1" for s in speech.sentences)
            cached.append(seconds)
        from_l2 = []
        for _ in range(max(5, repeats // 20)):
            cache.memory.clear()
            speech, seconds = timed(lambda: speaker.speak(ANSWER))
            assert all(s.source == "l2" for s in speech.sentences)
            from_l2.append(seconds)

        # Streaming with the first sentence new each time, the rest cached.
        first_audio, whole = [], []
        for subject in SUBJECTS[: max(4, min(len(SUBJECTS), rounds * 4))]:
            text = f"The {subject} light is now on. The door is locked. Good night."
            speaker.speak("The door is locked. Good night.")
            started = time.perf_counter()
            stream = speaker.stream(text)
            first = next(stream)
            first_audio.append(time.perf_counter() - started)
            assert first.source == "computed"
            list(stream)
            whole.append(time.perf_counter() - started)

        results = {
            "stt_rtf": round(statistics.median(stt_ratios), 4),
            "stt_cached_ms": ms(statistics.median(r.seconds for r in stt_cached)),
            "stt_uncached_ms": ms(statistics.median(
                raw_stt.transcribe(clips[0]).seconds for _ in range(3))),
            "stt_full_window_rtf": round(statistics.median(full_ratios), 4),
            "roundtrip_wer_full_window": round(wer(HOME_SENTENCES, heard_full), 4),
            "tts_rtf": round(statistics.median(tts_ratios), 4),
            "tts_cached_ms": ms(statistics.median(cached)),
            "tts_cached_l2_ms": ms(statistics.median(from_l2)),
            "tts_uncached_ms": ms(statistics.median(uncached)),
            "tts_first_audio_ms": ms(statistics.median(first_audio)),
            "tts_whole_answer_ms": ms(statistics.median(whole)),
            "roundtrip_wer": round(roundtrip_wer, 4),
            "stt_model_load_s": round(stt_load, 3),
            "tts_voice_load_s": round(tts_load, 3),
        }
        results["ratio_tts_uncached_cached"] = round(
            results["tts_uncached_ms"] / results["tts_cached_ms"], 1)
        results["ratio_stt_full_fitted"] = round(
            results["stt_full_window_rtf"] / results["stt_rtf"], 2)
        results["ratio_stt_uncached_cached"] = round(
            results["stt_uncached_ms"] / results["stt_cached_ms"], 1)
        results["heard"] = heard
        return results
    finally:
        cache.close()
        server.stop()


def report(results: dict[str, Any], quick: bool) -> None:
    print(f"speech benchmark on {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}{' (quick)' if quick else ''}\n")
    rows = [
        ("stt_rtf", "", "faster-whisper tiny.en int8, uncached, fitted window"),
        ("stt_full_window_rtf", "", "the same with Whisper's 30 s window"),
        ("stt_uncached_ms", "ms", "one sentence transcribed"),
        ("stt_cached_ms", "ms", "the same request again (L1)"),
        ("tts_rtf", "", "piper en_US-joe-medium, uncached"),
        ("tts_uncached_ms", "ms", "3-sentence answer synthesised"),
        ("tts_cached_ms", "ms", "the same answer from L1, stitched"),
        ("tts_cached_l2_ms", "ms", "the same answer from Redis, stitched"),
        ("tts_first_audio_ms", "ms", "streaming: first (uncached) sentence ready"),
        ("tts_whole_answer_ms", "ms", "streaming: whole answer ready"),
        ("roundtrip_wer", "", "piper -> whisper, home sentences"),
        ("roundtrip_wer_full_window", "", "the same with Whisper's 30 s window"),
    ]
    print(f"{'name':24}{'value':>12}  what")
    for name, unit, what in rows:
        print(f"{name:24}{results[name]:>12} {unit:2} {what}")
    print(f"\ntts_uncached/tts_cached   {results['ratio_tts_uncached_cached']}x")
    print(f"stt_uncached/stt_cached   {results['ratio_stt_uncached_cached']}x")
    print(f"stt_full_window/fitted    {results['ratio_stt_full_fitted']}x")
    finish(results, [("stt_rtf <= 0.3", results["stt_rtf"] <= 0.3),
                     ("tts_rtf <= 0.3", results["tts_rtf"] <= 0.3),
                     ("tts_cached_ms <= 2", results["tts_cached_ms"] <= 2)],
           quick=quick, omit=("heard",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    args = parser.parse_args()
    rounds, repeats = (1, 20) if args.quick else (3, 400)
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as folder:
        results = run(rounds, repeats, Path(folder))
    report(results, args.quick)


if __name__ == "__main__":
    main()
