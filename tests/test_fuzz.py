"""Bad input, fuzzed (hypothesis, a bounded number of examples each): the Wyoming event
reader, the WAV and PCM reader, and the template loader raise only their own, documented
errors, whatever they are given. (The MQTT payload decoder is fuzzed in test_service.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
import tempfile
import wave
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.errors import AudioError, TemplateError
from assistant.speech.audio import AudioLimits, PcmFormat, decode, probe
from assistant.templates.loader import load_file
from assistant.transports.wyoming_events import EventTooLarge, read_event

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) |
                     st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) |
                     st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_HEADERS = st.fixed_dictionaries({}, optional={
    "type": st.text(max_size=12) | _JSON, "data": _JSON,
    "data_length": st.integers(-5, 70) | _JSON, "payload_length": st.integers(-5, 70) | _JSON,
    "version": _JSON})


def read(stream: bytes, limit: int = 64) -> Any:
    async def run() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        return await read_event(reader, limit)

    return asyncio.run(run())


@FUZZ
@given(header=_HEADERS | _JSON, tail=st.binary(max_size=80))
def test_the_wyoming_reader_refuses_any_malformed_event_with_its_own_errors(
        header: Any, tail: bytes) -> None:
    stream = json.dumps(header).encode() + b"\n" + tail
    try:
        event = read(stream)
    except (ValueError, EventTooLarge, asyncio.IncompleteReadError):
        return  # what the server answers with an error, or takes as the client gone
    assert event is None or (isinstance(event.type, str) and isinstance(event.data, dict))


@FUZZ
@given(stream=st.binary(max_size=200))
def test_the_wyoming_reader_takes_any_bytes(stream: bytes) -> None:
    with contextlib.suppress(ValueError, EventTooLarge, asyncio.IncompleteReadError):
        read(stream)


def wav(rate: int, width: int, channels: int, frames: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(frames)
    return out.getvalue()


LIMITS = AudioLimits(max_seconds=5.0, max_bytes=200_000, silence_dbfs=-50.0)


@FUZZ
@given(rate=st.integers(1, 200_000), width=st.sampled_from([1, 2, 3, 4]),
       channels=st.integers(1, 4), frames=st.binary(max_size=4000),
       cut=st.integers(0, 4100), flips=st.lists(st.tuples(st.integers(0, 60),
                                                          st.integers(0, 255)), max_size=6))
def test_the_wav_reader_refuses_any_broken_audio_with_an_audio_error(
        rate: int, width: int, channels: int, frames: bytes, cut: int,
        flips: list[tuple[int, int]]) -> None:
    data = bytearray(wav(rate, width, channels, frames)[:cut + 44])
    for at, value in flips:  # a header bent here and there
        if at < len(data):
            data[at] = value
    try:
        fmt, pcm = probe(bytes(data), LIMITS, None)
        decode(pcm, fmt, LIMITS)
    except AudioError:
        pass


@FUZZ
@given(data=st.binary(max_size=600), rate=st.integers(-5, 400_000),
       bits=st.sampled_from([0, 8, 16, 24, 32, 12]), channels=st.integers(-1, 9),
       is_float=st.booleans())
def test_raw_pcm_in_any_declared_format_is_read_or_refused(
        data: bytes, rate: int, bits: int, channels: int, is_float: bool) -> None:
    try:
        fmt = PcmFormat(rate=rate, bits=bits, channels=channels, float=is_float)
        found, pcm = probe(data, LIMITS, fmt)
        decode(pcm, found, LIMITS)
    except (AudioError, ValueError):
        pass


_YAML = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                max_size=300)
_TEMPLATE_BITS = st.lists(st.sampled_from([
    "language: en\n", "intents:\n", "  HassTurnOn:\n", "  MyIntent:\n", "    responses:\n",
    "      default:\n", "        - text: \"{{ slots.name }}\"\n", "        - text: \"{{\"\n",
    "        - generate: {prompt: \"x\", max_tokens: 5}\n", "    sentences:\n",
    "      - \"turn on {name}\"\n", "      - \"[(\"\n", "lists:\n", "  thing: {values: [a]}\n",
    "expansion_rules: {x: \"(a|b\"}\n", "skip_words: [a, 1, null]\n", "  - 3\n", ": :\n",
    "\t\n", "default_system_prompt: \"{{ nope(\"\n"]), max_size=12)


@FUZZ
@given(text=_YAML | _TEMPLATE_BITS.map("".join))
def test_the_template_loader_reports_any_bad_file_as_a_template_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(TemplateError):
            load_file(path, folder=Path(folder), builtin={"HassTurnOn"})


@pytest.mark.parametrize(("text", "error"), [
    ("?\n\n-", "not a single value"), ("? [a, b]\n: c\n", "not a single value"),
    ("{? {a: 1}: 2}", "not a single value"), ("5:\n-:\n", "unknown key")])
def test_keys_of_any_kind_are_a_template_error(text: str, error: str) -> None:
    # Found by make fuzz: the loader raised TypeError (a list as a key; keys of several
    # types, which could not be sorted to be named).
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(TemplateError, match=error):
            load_file(path, folder=Path(folder), builtin={"HassTurnOn"})


def test_a_wav_header_that_lies_about_its_size_is_refused() -> None:
    good = wav(16000, 2, 1, b"\x00\x01" * 800)
    lying = good[:40] + struct.pack("<I", 2**31) + good[44:]
    try:
        _fmt, pcm = probe(lying, LIMITS, None)
        assert len(pcm) <= LIMITS.max_bytes
    except AudioError:
        pass
