"""``assistant transcribe`` and ``assistant say``: speech in and out, through the cache."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from assistant.settings import Settings

if TYPE_CHECKING:
    from cache import KeyBuilder, TieredCache


@contextlib.contextmanager
def _speech_cache(settings: Settings,
                  no_cache: bool) -> Iterator[tuple[TieredCache | None, KeyBuilder | None]]:
    from assistant.app import cache_of

    if no_cache:
        yield None, None
        return
    cache, keys = cache_of(settings, listen=False)
    with cache:
        yield cache, keys


def transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.speech.audio import PcmFormat
    from assistant.speech.stt import Transcriber

    fmt = None
    if args.rate is not None:
        fmt = PcmFormat(rate=args.rate, bits=args.bits, channels=args.channels, float=args.float)
    with args.file.open("rb") as handle:  # no more than the limit (plus one to tell) is read
        data = handle.read(settings.stt.max_bytes + 1)
    with _speech_cache(settings, args.no_cache) as (cache, keys):
        transcriber = Transcriber(settings.stt, cache=cache, keys=keys).start()
        result = transcriber.transcribe(data, fmt=fmt, user=args.user)
    print(result.text)
    print(f"source={result.source} audio={result.audio_seconds:.2f}s "
          f"took={result.seconds * 1000:.1f}ms rtf={result.seconds / result.audio_seconds:.3f} "
          f"model_load={transcriber.load_seconds:.2f}s", file=sys.stderr)
    return 0


def say(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.speech.tts import Speaker

    with _speech_cache(settings, args.no_cache) as (cache, keys), \
            Speaker(settings.tts, cache=cache, keys=keys) as speaker:
        started = time.perf_counter()
        if args.stream:
            spoken = []
            for sentence in speaker.stream(args.text, user=args.user):
                print(f"{(time.perf_counter() - started) * 1000:8.1f}ms ready: "
                      f"{sentence.source:8} {sentence.text}", file=sys.stderr)
                spoken.append(sentence)
            wav = speaker.stitch([s.pcm for s in spoken])
        else:
            speech = speaker.speak(args.text, user=args.user)
            spoken, wav = list(speech.sentences), speech.wav
            for sentence in spoken:
                print(f"{sentence.seconds * 1000:8.1f}ms {sentence.source:8} {sentence.text}",
                      file=sys.stderr)
        took = time.perf_counter() - started
    if str(args.output) == "-":
        sys.stdout.buffer.write(wav)
    else:
        args.output.write_bytes(wav)
    audio = (len(wav) - 44) / 2 / speaker.rate
    hits = sum(s.source not in ("computed", "waited") for s in spoken)
    print(f"cached={hits}/{len(spoken)} audio={audio:.2f}s took={took * 1000:.1f}ms "
          f"rtf={took / audio:.3f} voice_load={speaker.load_seconds:.2f}s", file=sys.stderr)
    return 0
