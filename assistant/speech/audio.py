"""Audio in: WAV or raw PCM checked against limits, then mixed and resampled to 16 kHz mono.

Everything that can be wrong with a request's audio is found here, before any model
sees it, and reported as an :class:`AudioError` with a code for the error topic:

==============  ==========================================================================
code            meaning
==============  ==========================================================================
``empty``       no bytes, or a WAV/PCM stream with no samples
``not_wav``     not a RIFF/WAVE file
``truncated``   a header or the sample data ends before it says it does
``bad_format``  a format this reader cannot decode, or a declared PCM format that does not
                fit the bytes (sample width, rate, channels)
``too_large``   more bytes than allowed (checked first, before anything is parsed)
``too_long``    longer than allowed (checked from the header, before decoding)
``silence``     nothing above the silence threshold
``no_speech``   audible, but no words were recognised in it (raised by :mod:`assistant.stt`)
==============  ==========================================================================

WAV files may be PCM (8-bit unsigned, 16, 24 or 32-bit signed), IEEE float (32 or
64-bit), or WAVE_FORMAT_EXTENSIBLE wrapping either; any sample rate from 4 to 384 kHz and
up to 16 channels. Channels are averaged; the rate is converted with libswresample
(through PyAV, which faster-whisper already uses to read audio).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from assistant.errors import AudioError

TARGET_RATE = 16000
"""The sample rate speech recognition works at."""

_FORMAT_PCM = 0x0001
_FORMAT_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE
_STREAMING_SIZES = (0xFFFFFFFF, 0x7FFFFFFF)
"""Data sizes written by recorders that stream a WAV before knowing its length."""
_MIN_RATE, _MAX_RATE = 4000, 384000
_MAX_CHANNELS = 16


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """How raw samples are laid out."""

    rate: int
    """Frames per second."""
    bits: int = 16
    """Bits per sample: 8 (unsigned), 16, 24, 32 (signed), or 32/64 with ``float``."""
    channels: int = 1
    """Interleaved channels per frame."""
    float: bool = False
    """IEEE float samples rather than integers."""

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.bits // 8 * self.channels

    def check(self) -> None:
        """Raise ``bad_format`` unless this format can be decoded."""
        allowed = (32, 64) if self.float else (8, 16, 24, 32)
        if self.bits not in allowed:
            kind = "float" if self.float else "integer"
            raise AudioError("bad_format", f"{self.bits}-bit {kind} samples are not supported "
                                           f"(use {', '.join(map(str, allowed))})")
        if not _MIN_RATE <= self.rate <= _MAX_RATE:
            raise AudioError("bad_format", f"sample rate {self.rate} Hz is outside "
                                           f"{_MIN_RATE}..{_MAX_RATE}")
        if not 1 <= self.channels <= _MAX_CHANNELS:
            raise AudioError("bad_format", f"{self.channels} channels: 1 to {_MAX_CHANNELS} "
                                           "are supported")

    def describe(self) -> str:
        """E.g. ``16 kHz 16-bit mono``."""
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels}-channel")
        kind = "float" if self.float else "bit"
        return f"{self.rate / 1000:g} kHz {self.bits}-{kind} {layout}"


@dataclass(frozen=True, slots=True)
class AudioLimits:
    """What a request's audio may be."""

    max_seconds: float = 30.0
    """Longest accepted duration."""
    max_bytes: int = 16 * 1024 * 1024
    """Largest accepted input, header included."""
    silence_dbfs: float = -50.0
    """Audio whose loudest sample is below this level (dB full scale) is silence."""


@dataclass(frozen=True, slots=True)
class Audio:
    """Speech ready for recognition."""

    samples: np.ndarray[Any, np.dtype[np.float32]]
    """16 kHz mono, float32 in [-1, 1]."""
    source: PcmFormat
    """The format it arrived in."""

    @property
    def seconds(self) -> float:
        """Duration."""
        return len(self.samples) / TARGET_RATE


def parse_wav(data: bytes | memoryview, limits: AudioLimits) -> tuple[PcmFormat, memoryview]:
    """The format and sample bytes of a WAV file; :class:`AudioError` for anything wrong."""
    view = memoryview(data)
    _check_size(view, limits)
    if len(view) < 12 or bytes(view[0:4]) != b"RIFF" or bytes(view[8:12]) != b"WAVE":
        if len(view) < 12 and b"RIFF".startswith(bytes(view[0:4])):
            raise AudioError("truncated", "the WAV header ends early")
        raise AudioError("not_wav", "not a WAV file (no RIFF/WAVE header)")
    fmt: PcmFormat | None = None
    offset = 12
    while offset + 8 <= len(view):
        chunk_id = bytes(view[offset : offset + 4])
        (size,) = struct.unpack_from("<I", view, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt ":
            if body + size > len(view):
                raise AudioError("truncated", "the WAV format chunk ends early")
            fmt = _parse_fmt(view[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioError("bad_format", "the WAV data chunk comes before its format chunk")
            available = len(view) - body
            if size in _STREAMING_SIZES and size > available:
                size = available - available % fmt.frame_bytes
            elif size > available:
                raise AudioError("truncated", f"the WAV data chunk declares {size} bytes, "
                                              f"{available} are present")
            if size % fmt.frame_bytes:
                raise AudioError("truncated", f"the WAV data ends inside a frame "
                                              f"({size} bytes, frames of {fmt.frame_bytes})")
            return fmt, view[body : body + size]
        offset = body + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None:
        raise AudioError("truncated", "the WAV file has no format chunk")
    raise AudioError("truncated", "the WAV file has no data chunk")


def _parse_fmt(chunk: memoryview) -> PcmFormat:
    if len(chunk) < 16:
        raise AudioError("truncated", "the WAV format chunk is too short")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _FORMAT_EXTENSIBLE:
        if len(chunk) < 40:
            raise AudioError("truncated", "the WAV extensible format chunk is too short")
        (tag,) = struct.unpack_from("<H", chunk, 24)  # first two bytes of the sub-format GUID
    if tag not in (_FORMAT_PCM, _FORMAT_FLOAT):
        raise AudioError("bad_format", f"WAV sample format 0x{tag:04x} is not PCM or float")
    fmt = PcmFormat(rate=rate, bits=bits, channels=channels, float=tag == _FORMAT_FLOAT)
    fmt.check()
    if block_align != fmt.frame_bytes:
        raise AudioError("bad_format", f"WAV block size {block_align} does not match "
                                       f"{channels} channels of {bits} bits")
    return fmt


def _check_size(view: memoryview, limits: AudioLimits) -> None:
    if not len(view):
        raise AudioError("empty", "no audio bytes")
    if len(view) > limits.max_bytes:
        raise AudioError("too_large", f"{len(view)} bytes of audio; at most {limits.max_bytes} "
                                      "are accepted")


def check_pcm(data: bytes | memoryview, fmt: PcmFormat, limits: AudioLimits) -> memoryview:
    """Raw PCM bytes, checked against their declared format and the limits."""
    view = memoryview(data)
    _check_size(view, limits)
    fmt.check()
    if len(view) % fmt.frame_bytes:
        raise AudioError("bad_format", f"{len(view)} bytes is not a whole number of "
                                       f"{fmt.describe()} frames ({fmt.frame_bytes} bytes each)")
    return view


def probe(data: bytes | memoryview, limits: AudioLimits,
          fmt: PcmFormat | None = None) -> tuple[PcmFormat, memoryview]:
    """The format and sample bytes of ``data`` (a WAV file, or raw PCM in ``fmt``).

    Checks everything that can be checked without decoding a sample: size, header,
    declared format and duration.
    """
    if fmt is None:
        fmt, pcm = parse_wav(data, limits)
    else:
        pcm = check_pcm(data, fmt, limits)
    frames = len(pcm) // fmt.frame_bytes
    if not frames:
        raise AudioError("empty", "the audio has no samples")
    seconds = frames / fmt.rate
    if seconds > limits.max_seconds:
        raise AudioError("too_long", f"{seconds:.1f} s of audio; at most "
                                     f"{limits.max_seconds:g} s are accepted")
    return fmt, pcm


def decode(pcm: memoryview, fmt: PcmFormat, limits: AudioLimits) -> Audio:
    """Samples from :func:`probe` as 16 kHz mono; ``silence`` if nothing is loud enough."""
    mono = _mix(_to_float(pcm, fmt), fmt.channels)
    if not np.isfinite(mono).all():
        raise AudioError("bad_format", "the float samples include NaN or infinity")
    peak = float(np.max(np.abs(mono)))
    if peak <= 10 ** (limits.silence_dbfs / 20):
        level = "no signal" if peak == 0 else f"peak {20 * np.log10(peak):.0f} dBFS"
        raise AudioError("silence", f"the audio is silent ({level}, threshold "
                                    f"{limits.silence_dbfs:g} dBFS)")
    return Audio(samples=resample(mono, fmt.rate, TARGET_RATE), source=fmt)


def load(data: bytes | memoryview, limits: AudioLimits, fmt: PcmFormat | None = None) -> Audio:
    """``data`` (a WAV file, or raw PCM in ``fmt``) as 16 kHz mono samples.

    Size and duration limits are checked before any sample is decoded.
    """
    fmt, pcm = probe(data, limits, fmt)
    return decode(pcm, fmt, limits)


def _to_float(pcm: memoryview, fmt: PcmFormat) -> np.ndarray[Any, np.dtype[np.float32]]:
    if fmt.float:
        dtype = "<f4" if fmt.bits == 32 else "<f8"
        return np.frombuffer(pcm, dtype=dtype).astype(np.float32)
    if fmt.bits == 8:  # 8-bit WAV samples are unsigned
        return (np.frombuffer(pcm, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if fmt.bits == 24:
        raw = np.frombuffer(pcm, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        ints = np.where(ints & 0x800000, ints - 0x1000000, ints)
        return (ints / float(1 << 23)).astype(np.float32)
    dtype = "<i2" if fmt.bits == 16 else "<i4"
    scale = float(1 << (fmt.bits - 1))
    return (np.frombuffer(pcm, dtype=dtype).astype(np.float32) / scale).astype(np.float32)


def _mix(samples: np.ndarray[Any, np.dtype[np.float32]],
         channels: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    if channels == 1:
        return samples
    mixed: np.ndarray[Any, np.dtype[np.float32]] = samples.reshape(-1, channels).mean(
        axis=1, dtype=np.float32)
    return mixed


def resample(samples: np.ndarray[Any, np.dtype[np.float32]], rate: int,
             target: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Mono float samples converted from ``rate`` to ``target`` Hz (libswresample)."""
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import av  # faster-whisper's own dependency; loaded only when a rate needs converting

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt",
        layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    parts = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame),
                                                   *resampler.resample(None))]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def wav_bytes(pcm: bytes | memoryview, *, rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """Integer PCM wrapped in a canonical 44-byte WAV header."""
    size = len(pcm)
    block = channels * bits // 8
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + size, b"WAVE", b"fmt ", 16,
                         _FORMAT_PCM, channels, rate, rate * block, block, bits, b"data", size)
    return header + bytes(pcm)
