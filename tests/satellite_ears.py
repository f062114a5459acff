"""Runs :class:`assistant.satellite.listen.Ears` over a WAV file in a process of its own, as
the satellite does (its native libraries never share a process with Whisper's or llama.cpp's
here), and prints each utterance found as one JSON line.

    python -m tests.satellite_ears FILE [--wake WORD] [--trailing S] [--early S] [--max S] [--pre-roll S]
"""

from __future__ import annotations

import argparse
import json
import wave

from assistant.satellite.listen import Ears


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--wake")
    parser.add_argument("--trailing", type=float, default=0.5)
    parser.add_argument("--early", type=float)
    parser.add_argument("--max", type=float, default=10.0)
    parser.add_argument("--pre-roll", type=float, default=0.3)
    args = parser.parse_args()
    try:
        ears = Ears(wake_word=args.wake, trailing_silence=args.trailing, max_seconds=args.max,
                    pre_roll=args.pre_roll, early_silence=args.early)
    except ValueError as error:
        print(json.dumps({"error": str(error)}))
        return
    if args.wake is None:
        ears.press()
    with wave.open(args.file) as reader:
        audio = reader.readframes(reader.getnframes())
    found = [u for k in range(0, len(audio), 640) for u in ears.hear(audio[k : k + 640])]
    found += list(ears.finish())
    for u in found:
        print(json.dumps({"why": u.why.value, "sent_at": u.sent_at, "speech_end": u.speech_end,
                          "timed_out": u.timed_out, "seconds": len(u.pcm) / 2 / 16000}))


if __name__ == "__main__":
    main()
