"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that reads bytes from outside:
the MQTT request decoder, the Wyoming event reader, the WAV reader and the template loader.

Each target must raise only its own, documented errors, whatever bytes it is given; any
other exception is a crash libFuzzer reports with the input that made it. ``make fuzz``
runs every target for ``FUZZ_SECONDS`` each (atheris is installed there, on x86-64 and
arm64 alike); by hand: ``python -m tests.fuzz_atheris <target> -max_total_time=60``.
The hypothesis tests in tests/test_fuzz.py and tests/test_service.py cover the same readers
in every ``make test``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from assistant.errors import AudioError, TemplateError
    from assistant.protocol import Packet, ProtocolError, Topics, decode_request
    from assistant.speech.audio import AudioLimits, decode, probe
    from assistant.templates.loader import load_file
    from assistant.transports.wyoming_events import EventTooLarge, read_event

TOPICS = Topics()
LIMITS = AudioLimits(max_seconds=5.0, max_bytes=200_000, silence_dbfs=-50.0)
_TOPIC_NAMES = ("assistant/kitchen/request/ann", "assistant/kitchen/audio/ann",
                "assistant/x y/request/ann", "assistant/kitchen/request/", "elsewhere/a/b/c")


def request(data: bytes) -> None:
    """A request as the broker hands it over: any topic, payload and properties."""
    fuzzed = atheris.FuzzedDataProvider(data)
    topic = _TOPIC_NAMES[fuzzed.ConsumeIntInRange(0, len(_TOPIC_NAMES) - 1)]
    response = fuzzed.ConsumeUnicodeNoSurrogates(40) if fuzzed.ConsumeBool() else None
    props = tuple((fuzzed.ConsumeUnicodeNoSurrogates(8), fuzzed.ConsumeUnicodeNoSurrogates(12))
                  for _ in range(fuzzed.ConsumeIntInRange(0, 3)))
    packet = Packet(topic, fuzzed.ConsumeBytes(fuzzed.remaining_bytes()),
                    response_topic=response, properties=props)
    with contextlib.suppress(ProtocolError):
        decode_request(packet, TOPICS, max_audio_bytes=100_000, sites=())


def wyoming(data: bytes) -> None:
    """Bytes from a Wyoming client, read event after event to the end."""
    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        while await read_event(reader, 4096) is not None:
            pass

    with contextlib.suppress(ValueError, EventTooLarge, asyncio.IncompleteReadError):
        asyncio.run(run())


def wav(data: bytes) -> None:
    """A WAV file as a request carries it, read and decoded."""
    try:
        fmt, pcm = probe(data, LIMITS, None)
        decode(pcm, fmt, LIMITS)
    except AudioError:
        pass


_FOLDER = Path(tempfile.mkdtemp(prefix="fuzz-templates-"))


def template(data: bytes) -> None:
    """A template file as someone might save it."""
    path = _FOLDER / "fuzz.yaml"
    path.write_bytes(data)
    with contextlib.suppress(TemplateError):
        load_file(path, folder=_FOLDER, builtin={"HassTurnOn"})


TARGETS: dict[str, Callable[[bytes], None]] = {
    "request": request, "wyoming": wyoming, "wav": wav, "template": template}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: python -m tests.fuzz_atheris {{{','.join(TARGETS)}}} "
                         "[libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
