"""Sound in and out for the satellite.

In: 16 kHz 16-bit mono PCM, in chunks, from the microphone (ALSA, through ``arecord``), a
WAV file, or standard input (``arecord ... | assistant satellite --input -``). Out: speech
played as it arrives (ALSA, through ``aplay``), or written to a folder as WAV files. Both
use alsa-utils, which every Raspberry Pi OS has, so no audio library is loaded into the
satellite's memory; each device is named as ALSA names it (``default``, ``plughw:1,0``,
or a PCM of the user's ``.asoundrc``).

A :class:`Player` plays one stream at a time (an answer's sentences, a timer's ring, a
broadcast), off the caller's thread: what arrives for another stream meanwhile waits its
turn, so an announcement never cuts into an answer.
"""

from __future__ import annotations

import io
import logging
import queue
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from assistant.errors import AssistantError
from assistant.satellite.listen import RATE, SAMPLE_BYTES

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024
"""32 ms of audio: what a source yields at a time."""


class SoundError(AssistantError):
    """A sound device that cannot be used (no such device, arecord or aplay missing)."""


def wav_of(pcm: bytes, rate: int = RATE) -> bytes:
    """16-bit mono PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(SAMPLE_BYTES)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return out.getvalue()


# -- in ------------------------------------------------------------------------------------


class Source(Protocol):
    """Where the satellite hears from."""

    live: bool
    """Is it a microphone (audio heard while the satellite speaks is its own voice, and
    is let go), or a recording (every chunk is heard)?"""

    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class WavFile:
    """A 16 kHz 16-bit mono WAV file."""

    live = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def chunks(self) -> Iterator[bytes]:
        try:
            reader = wave.open(str(self.path))  # noqa: SIM115 (closed by the with below)
        except (OSError, EOFError, wave.Error) as error:
            raise SoundError(f"{self.path}: not a WAV file ({error})") from error
        with reader:
            if (reader.getframerate(), reader.getsampwidth(), reader.getnchannels()) != \
                    (RATE, SAMPLE_BYTES, 1):
                raise SoundError(f"{self.path}: the satellite reads 16 kHz 16-bit mono WAV")
            while chunk := reader.readframes(CHUNK_BYTES // SAMPLE_BYTES):
                yield chunk

    def close(self) -> None:
        pass


class Stdin:
    """Raw 16 kHz 16-bit mono PCM on standard input."""

    live = False

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream or sys.stdin.buffer

    def chunks(self) -> Iterator[bytes]:
        while chunk := self._stream.read(CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        pass


class Microphone:
    """An ALSA capture device, read through ``arecord`` at 16 kHz, 16-bit, mono (ALSA's
    ``plug`` layer converts what the device gives)."""

    live = True

    def __init__(self, device: str = "default") -> None:
        self.device = device
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return ["arecord", "-q", "-D", self.device, "-t", "raw", "-f", "S16_LE",
                "-r", str(RATE), "-c", "1"]

    def chunks(self) -> Iterator[bytes]:
        try:
            process = self._process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        except FileNotFoundError as error:
            raise SoundError("arecord is missing: install alsa-utils") from error
        assert process.stdout is not None
        try:
            while chunk := process.stdout.read(CHUNK_BYTES):
                yield chunk
        finally:
            self.close()
        if process.returncode not in (0, -15):
            why = process.stderr.read().decode(errors="replace").strip() \
                if process.stderr is not None else ""
            raise SoundError(f"the microphone {self.device!r} failed: {why or 'no audio'}")

    def close(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def open_source(spec: str, device: str = "default") -> Source:
    """``-``: standard input; ``alsa`` or ``alsa:DEVICE``: a microphone (``device`` when none
    is named); anything else: a WAV file."""
    if spec == "-":
        return Stdin()
    if spec == "alsa" or spec.startswith("alsa:"):
        return Microphone(spec.partition(":")[2] or device)
    return WavFile(Path(spec))


# -- out -----------------------------------------------------------------------------------


class Sink(Protocol):
    """Where a stream of audio goes: ``start``, ``write`` any number of times, ``end``."""

    def start(self, key: str, rate: int, channels: int, width: int) -> None: ...

    def write(self, pcm: bytes) -> None: ...

    def end(self) -> None: ...


class Speaker:
    """An ALSA playback device, through one ``aplay`` per stream (its sentences played
    back to back, without a gap or a click between them)."""

    def __init__(self, device: str = "default") -> None:
        self.device = device
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, key: str, rate: int, channels: int, width: int) -> None:
        formats = {1: "U8", 2: "S16_LE", 4: "S32_LE"}
        command = ["aplay", "-q", "-D", self.device, "-t", "raw", "-f", formats[width],
                   "-r", str(rate), "-c", str(channels)]
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
        except FileNotFoundError as error:
            raise SoundError("aplay is missing: install alsa-utils") from error

    def write(self, pcm: bytes) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(pcm)
            process.stdin.flush()
        except BrokenPipeError:
            self._failed(process)

    def end(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
        except BrokenPipeError:
            pass
        process.wait()
        if process.returncode:
            self._failed(process)

    def _failed(self, process: subprocess.Popen[bytes]) -> None:
        why = process.stderr.read().decode(errors="replace").strip() \
            if process.stderr is not None else ""
        log.error("the speaker %r failed: %s", self.device, why or process.returncode)


class Folder:
    """Each stream written to ``folder`` as one WAV file, ``<n>-<stream>.wav``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0
        self._writer: wave.Wave_write | None = None

    def start(self, key: str, rate: int, channels: int, width: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written += 1
        path = self.folder / f"{self.written:03d}-{key}.wav"
        writer = self._writer = wave.open(str(path), "wb")  # noqa: SIM115 (closed by end)
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)

    def write(self, pcm: bytes) -> None:
        if self._writer is not None:
            self._writer.writeframes(pcm)

    def end(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


class Player:
    """Plays streams of WAV chunks through a :class:`Sink`, one stream at a time, on a
    thread of its own."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._queue: queue.Queue[tuple[str, bytes, bool] | None] = queue.Queue()
        self._done: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="player", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Is something playing or waiting to?"""
        return self._busy.is_set() or not self._queue.empty()

    def play(self, key: str, wav: bytes, *, last: bool = True) -> None:
        """Queue one chunk of the stream ``key`` (``last``: the stream ends with it)."""
        self._event(key)
        self._busy.set()
        self._queue.put((key, wav, last))

    def wait(self, key: str, timeout: float) -> bool:
        """Until the stream ``key`` has been played (False: not within ``timeout``)."""
        done = self._event(key).wait(timeout)
        if done:
            with self._lock:
                self._done.pop(key, None)
        return done

    def close(self) -> None:
        """Play what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _event(self, key: str) -> threading.Event:
        with self._lock:
            return self._done.setdefault(key, threading.Event())

    def _run(self) -> None:
        current: str | None = None
        waiting: dict[str, list[tuple[bytes, bool]]] = {}  # other streams, in arrival order
        while True:
            item = self._queue.get()
            if item is None:
                break
            self._busy.set()
            key, wav, last = item
            if current is not None and key != current:
                waiting.setdefault(key, []).append((wav, last))
                continue
            finished = self._chunk(key, wav, last, started=current == key)
            current = None if finished else key
            while current is None and waiting:
                key, chunks = next(iter(waiting.items()))
                del waiting[key]
                for n, (wav, last) in enumerate(chunks):
                    finished = self._chunk(key, wav, last, started=n > 0)
                current = None if finished else key
            if current is None and self._queue.empty():
                self._busy.clear()
        if current is not None:
            self.sink.end()

    def _chunk(self, key: str, wav: bytes, last: bool, *, started: bool) -> bool:
        """Play one chunk; True when its stream is over."""
        try:
            with wave.open(io.BytesIO(wav)) as reader:
                params = (reader.getframerate(), reader.getnchannels(), reader.getsampwidth())
                pcm = reader.readframes(reader.getnframes())
        except (EOFError, wave.Error):
            log.warning("a chunk of %s that is not a WAV was not played", key)
            params, pcm = None, b""
        try:
            if not started and params is not None:
                self.sink.start(key, *params)
                started = True
            if pcm:
                self.sink.write(pcm)
            if last and started:
                self.sink.end()
        except (OSError, AssistantError) as error:
            log.error("playing %s failed: %s", key, error)
        if last:
            self._event(key).set()
        return last


# -- sounds of its own ---------------------------------------------------------------------


def tone(kind: str, rate: int = 22050) -> bytes:
    """A short sound of the satellite's own, as WAV: ``lost`` (the assistant cannot be
    reached: two falling notes), ``back`` (reached again: two rising), ``ring`` (a timer is
    done: three beeps), ``error`` (no answer: one low note)."""
    notes = {"lost": [(660, 0.15), (440, 0.25)], "back": [(440, 0.12), (660, 0.18)],
             "ring": [(880, 0.15), (0, 0.1)] * 3, "error": [(330, 0.3)]}[kind]
    parts = []
    for frequency, seconds in notes:
        t = np.arange(round(seconds * rate)) / rate
        fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # no clicks at the edges
        parts.append(0.3 * np.sin(2 * np.pi * frequency * t) * fade)
    samples = (np.concatenate(parts) * 32767).astype("<i2")
    return wav_of(samples.tobytes(), rate)
