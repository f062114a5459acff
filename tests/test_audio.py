"""Audio in: WAV parsing, limits, format conversion and resampling (no model needed)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from assistant.errors import AudioError
from assistant.speech.audio import (
    TARGET_RATE,
    AudioLimits,
    PcmFormat,
    load,
    parse_wav,
    probe,
    resample,
    wav_bytes,
)

LIMITS = AudioLimits()


def tone(seconds: float, rate: int, freq: float = 440.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_of(samples: np.ndarray, rate: int, *, bits: int = 16, channels: int = 1,
           fmt_tag: int = 1, extensible: bool = False) -> bytes:
    """A WAV file of float samples (interleaved when ``channels`` > 1) in the given layout."""
    if fmt_tag == 3:
        data = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = np.clip(samples * 128 + 128, 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.clip(samples * (1 << 23), -(1 << 23), (1 << 23) - 1).astype("<i4")
        data = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in ints)
    else:
        dtype = "<i2" if bits == 16 else "<i4"
        scale = float(1 << (bits - 1))
        data = np.clip(samples * scale, -scale, scale - 1).astype(dtype).tobytes()
    block = channels * bits // 8
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22,
                          bits, 0) + struct.pack("<H", fmt_tag) + guid_tail
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # an odd-sized chunk, padded
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize(("bits", "fmt_tag", "extensible"), [
    (8, 1, False), (16, 1, False), (24, 1, False), (32, 1, False), (32, 3, False), (64, 3, False),
    (16, 1, True), (32, 3, True),
])
def test_every_sample_layout_decodes_to_the_same_signal(bits: int, fmt_tag: int,
                                                        extensible: bool) -> None:
    signal = tone(0.5, TARGET_RATE)
    audio = load(wav_of(signal, TARGET_RATE, bits=bits, fmt_tag=fmt_tag, extensible=extensible),
                 LIMITS)
    assert audio.samples.dtype == np.float32
    assert len(audio.samples) == len(signal)
    tolerance = 1 / 100 if bits == 8 else 1 / 10000
    assert np.max(np.abs(audio.samples - signal)) < tolerance


def test_stereo_is_mixed_and_44k_resampled_to_16k() -> None:
    rate = 44100
    left, right = tone(1.0, rate, 440), tone(1.0, rate, 440, level=0.3)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    audio = load(wav_of(stereo, rate, channels=2), LIMITS)
    assert audio.source == PcmFormat(rate=rate, bits=16, channels=2)
    assert abs(len(audio.samples) - TARGET_RATE) <= 32
    assert audio.seconds == pytest.approx(1.0, abs=0.01)
    # Still a 440 Hz tone at the mean level of the two channels.
    spectrum = np.abs(np.fft.rfft(audio.samples[1000:-1000]))
    peak_hz = np.argmax(spectrum) * TARGET_RATE / (len(audio.samples) - 2000)
    assert peak_hz == pytest.approx(440, abs=3)
    assert np.max(np.abs(audio.samples[1000:-1000])) == pytest.approx(0.4, abs=0.01)


def test_raw_pcm_with_its_declared_format() -> None:
    signal = tone(0.25, 8000)
    pcm = (signal * 32767).astype("<i2").tobytes()
    audio = load(pcm, LIMITS, PcmFormat(rate=8000))
    assert abs(len(audio.samples) - TARGET_RATE // 4) <= 16


def test_resample_keeps_the_pitch() -> None:
    out = resample(tone(1.0, 48000, 1000), 48000, TARGET_RATE)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * TARGET_RATE / len(out) == pytest.approx(1000, abs=3)


def test_a_streamed_wav_with_an_unknown_length_is_read_to_its_end() -> None:
    wav = bytearray(wav_of(tone(0.5, TARGET_RATE), TARGET_RATE))
    data_at = wav.index(b"data") + 4
    wav[data_at : data_at + 4] = struct.pack("<I", 0xFFFFFFFF)
    fmt, pcm = parse_wav(bytes(wav) + b"\x01", LIMITS)  # and a stray trailing byte
    assert fmt.rate == TARGET_RATE and len(pcm) == TARGET_RATE // 2 * 2


def test_canonical_wav_round_trips() -> None:
    pcm = (tone(0.1, 22050) * 32767).astype("<i2").tobytes()
    wav = wav_bytes(pcm, rate=22050)
    fmt, data = parse_wav(wav, LIMITS)
    assert fmt == PcmFormat(rate=22050) and bytes(data) == pcm
    assert struct.unpack_from("<I", wav, 4)[0] == len(wav) - 8


def code_of(data: bytes, limits: AudioLimits = LIMITS, fmt: PcmFormat | None = None) -> str:
    with pytest.raises(AudioError) as caught:
        load(data, limits, fmt)
    assert str(caught.value)  # always says why
    return caught.value.code


def test_bad_audio_gets_a_code() -> None:
    good = wav_of(tone(1.0, TARGET_RATE), TARGET_RATE)
    assert code_of(b"") == "empty"
    assert code_of(wav_of(np.zeros(0, np.float32), TARGET_RATE)) == "empty"
    assert code_of(b"hello, this is not audio at all") == "not_wav"
    assert code_of(b"RIFF\x00\x00\x00\x00AVI LIST") == "not_wav"
    assert code_of(b"RIF") == "truncated"
    assert code_of(good[:30]) == "truncated"  # inside the format chunk
    assert code_of(good[:-1001]) == "truncated"  # the data ends early
    assert code_of(good[:-1]) == "truncated"
    assert code_of(wav_of(np.zeros(16000, np.float32), TARGET_RATE)) == "silence"
    assert code_of(wav_of(tone(1.0, TARGET_RATE, level=0.001), TARGET_RATE)) == "silence"
    assert code_of(wav_of(tone(1.0, TARGET_RATE), TARGET_RATE, fmt_tag=2)) == "bad_format"  # ADPCM
    assert code_of(wav_of(tone(1.0, TARGET_RATE), TARGET_RATE, bits=16, fmt_tag=3)) == "bad_format"
    assert code_of(wav_of(tone(1.0, 1000), 1000)) == "bad_format"  # rate out of range
    nan = tone(0.1, TARGET_RATE)
    nan[5] = np.nan
    assert code_of(wav_of(nan, TARGET_RATE, bits=32, fmt_tag=3)) == "bad_format"


def test_declared_formats_that_do_not_fit() -> None:
    pcm = (tone(0.5, TARGET_RATE) * 32767).astype("<i2").tobytes()
    assert code_of(pcm + b"\x00", fmt=PcmFormat(rate=TARGET_RATE)) == "bad_format"
    assert code_of(pcm[:-2], fmt=PcmFormat(rate=TARGET_RATE, channels=2)) == "bad_format"
    assert code_of(pcm, fmt=PcmFormat(rate=TARGET_RATE, bits=12)) == "bad_format"
    assert code_of(pcm, fmt=PcmFormat(rate=0)) == "bad_format"
    assert code_of(pcm, fmt=PcmFormat(rate=TARGET_RATE, channels=0)) == "bad_format"


def test_limits_are_checked_before_decoding() -> None:
    long = wav_of(tone(31.0, 8000), 8000)
    assert code_of(long) == "too_long"
    assert code_of(long, AudioLimits(max_bytes=100_000)) == "too_large"
    # The duration comes from the header: a file declaring more than it holds is not decoded.
    with pytest.raises(AudioError) as caught:
        probe(wav_of(tone(2.0, 8000), 8000), AudioLimits(max_seconds=1.5))
    assert caught.value.code == "too_long"
