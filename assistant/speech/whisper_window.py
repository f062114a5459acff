"""Whisper in a window fitted to a short request: the one place that reaches into
faster-whisper's internals.

Whisper reads audio in fixed 30-second windows; a spoken command lasts one to three
seconds, so most of the encoder's work is on padding (about 0.4 s of the 0.55 s a
1.3-second command costs on two cores). Here audio is encoded in a window fitted to it (at
least :data:`MIN_WINDOW_FRAMES`, 10 s, below which tiny.en starts to repeat itself) and
decoded by the same CTranslate2 model.

faster-whisper has no public call for this, so it uses what ``WhisperModel`` keeps inside:
``model`` (the CTranslate2 ``Whisper``: ``generate``, ``is_multilingual``),
``hf_tokenizer`` and ``feature_extractor``, and ``faster_whisper.tokenizer.Tokenizer``.
These are known to work in the faster-whisper versions :data:`KNOWN_VERSIONS` (the range
``pyproject.toml`` pins); :func:`check_internals` says what is missing in any other, and the
tests fail loudly when it does. Where they are missing the transcriber takes the usual way.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

KNOWN_VERSIONS = (">=1.1", "<1.3")
"""faster-whisper versions whose internals this module is written against."""

MIN_WINDOW_FRAMES = 1000
"""Smallest fitted window, in 10 ms feature frames."""
_FULL_WINDOW_FRAMES = 3000
_TAIL_FRAMES = 200
"""Silence kept after the speech inside a fitted window (2 s)."""
MAX_COMPRESSION = 2.4
"""Above this gzip ratio a transcript is repetition, not speech (Whisper's own threshold)."""
_MIN_REPEAT_WORDS = 3
MAX_PROMPT_TOKENS = 223
"""Longest prompt Whisper is given (half its 448-token context, less one), as faster-whisper
keeps it: the prompt's end."""
_PROMPTS_KEPT = 16
_CONTEXT_TOKENS = 448


def installed_version() -> str:
    """The installed faster-whisper's version."""
    return version("faster-whisper")


def check_internals(model: Any) -> list[str]:
    """What this module needs of a loaded ``WhisperModel`` that it lacks (empty: all there)."""
    missing = [name for name in ("model", "hf_tokenizer", "feature_extractor")
               if not hasattr(model, name)]
    inner = getattr(model, "model", None)
    if inner is not None:
        missing += [f"model.{name}" for name in ("generate", "is_multilingual")
                    if not hasattr(inner, name)]
    try:
        from faster_whisper.tokenizer import Tokenizer
    except ImportError:
        missing.append("faster_whisper.tokenizer.Tokenizer")
    else:
        missing += [f"Tokenizer.{name}" for name in ("sot_sequence", "sot_prev", "no_timestamps",
                                                     "encode", "decode")
                    if not hasattr(Tokenizer, name)]
    return missing


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


@dataclass(frozen=True, slots=True)
class Encoded:
    """Audio as Whisper's encoder read it."""

    states: Any
    """The encoder's output (a CTranslate2 ``StorageView``, batch of one)."""
    frames: int
    """Feature frames (10 ms) of audio in it, padding excluded."""


@dataclass(frozen=True, slots=True)
class Score:
    """How likely a text is to be what some audio says."""

    total: float
    """The sum of the log probabilities of its tokens and of the end of text."""
    tokens: int
    """How many tokens that is (the end of text included)."""


class FittedWindow:
    """Transcribes short audio in a window fitted to it, with a loaded ``WhisperModel``."""

    def __init__(self, model: Any, *, language: str | None, beam_size: int) -> None:
        """``model``: a loaded ``WhisperModel`` that passes :func:`check_internals`;
        ``language``: its language (required for a multilingual model)."""
        from faster_whisper.tokenizer import Tokenizer

        self._model = model
        self._beam_size = beam_size
        self._prompts: dict[str, list[int]] = {}
        multilingual = bool(model.model.is_multilingual)
        self._tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe",
                                    language=language if multilingual else None)

    @staticmethod
    def usable(model: Any, language: str | None) -> list[str]:
        """Why the fitted window cannot be used with ``model`` (empty: it can)."""
        missing = check_internals(model)
        if missing:
            return [f"faster-whisper {installed_version()} lacks {', '.join(missing)}"]
        if model.model.is_multilingual and not language:
            return ["the language has to be detected"]
        return []

    def transcribe(self, samples: np.ndarray[Any, np.dtype[np.float32]], *,
                   prompt: str | None = None, hypotheses: int = 1) -> list[str] | None:
        """The words in 16 kHz ``samples``, best first: up to ``hypotheses`` different
        transcripts (beam search keeps at least that many). None when the best looks
        unreliable (nothing, repetition, or the token limit reached): the usual way decides
        then. ``prompt``: text the decoder takes as said before the audio (the home's names).
        """
        return self.decode(self.encode(samples), prompt=prompt, hypotheses=hypotheses)

    def encode(self, samples: np.ndarray[Any, np.dtype[np.float32]]) -> Encoded:
        """The encoder's reading of 16 kHz ``samples`` in a window fitted to them."""
        import ctranslate2

        features = self._model.feature_extractor(samples)
        frames = features.shape[-1]
        window = min(_FULL_WINDOW_FRAMES,
                     max(MIN_WINDOW_FRAMES, -(-(frames + _TAIL_FRAMES) // 100) * 100))
        padded = np.zeros((1, features.shape[0], window), dtype=np.float32)
        padded[0, :, : min(frames, window)] = features[:, :window]
        states = self._model.model.encode(ctranslate2.StorageView.from_array(padded))
        return Encoded(states, min(frames, window))

    def decode(self, encoded: Encoded, *, prompt: str | None = None,
               hypotheses: int = 1) -> list[str] | None:
        """:meth:`transcribe` of audio already :meth:`encode`-d."""
        frames = encoded.frames
        tokenizer = self._tokenizer
        start = [*self._context(prompt), *tokenizer.sot_sequence, tokenizer.no_timestamps]
        # A generous bound on tokens: about 8 per second of audio is fast speech.
        # max_length counts the prompt too; Whisper's context is 448 tokens.
        limit = min(_CONTEXT_TOKENS, len(start) + min(224, 20 + frames * 8 // 100))
        results = self._model.model.generate(
            encoded.states, [start],
            beam_size=max(self._beam_size, hypotheses), num_hypotheses=hypotheses,
            max_length=limit, suppress_blank=True, suppress_tokens=[-1])[0]
        texts: list[str] = []
        for number, tokens in enumerate(results.sequences_ids):
            text = str(tokenizer.decode(tokens)).strip()
            if not _reliable(text, len(tokens) + len(start), limit):
                if number == 0:
                    return None
                continue
            if all(_plain(text) != _plain(seen) for seen in texts):
                texts.append(text)
        return texts

    def score(self, encoded: Encoded, texts: Sequence[str]) -> list[Score]:
        """How likely the model finds that the audio of ``encoded`` says each of ``texts``
        (and nothing after it), with no prompt: comparable between texts of the same audio
        only."""
        if not texts:
            return []
        import ctranslate2

        tokenizer = self._tokenizer
        tokens = [[*tokenizer.encode(" " + text.strip()), tokenizer.eot] for text in texts]
        states = np.asarray(encoded.states)
        batch = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(np.repeat(states, len(texts), axis=0)))
        start = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        results = self._model.model.align(batch, start, tokens,
                                          [encoded.frames // 2] * len(texts))
        return [Score(float(sum(math.log(max(p, 1e-12)) for p in result.text_token_probs)),
                      len(tokens[number]))
                for number, result in enumerate(results)]

    def _context(self, prompt: str | None) -> list[int]:
        """The tokens of "what came before": ``<|startofprev|>`` and the prompt's last
        :data:`MAX_PROMPT_TOKENS` tokens (as faster-whisper does); none without a prompt."""
        if not prompt:
            return []
        found = self._prompts.get(prompt)
        if found is None:
            tokens = self._tokenizer.encode(" " + prompt.strip())[-MAX_PROMPT_TOKENS:]
            found = [self._tokenizer.sot_prev, *tokens]
            if len(self._prompts) >= _PROMPTS_KEPT:
                self._prompts.clear()
            self._prompts[prompt] = found
        return list(found)


def _reliable(text: str, tokens: int, limit: int) -> bool:
    """Is a decoded ``text`` speech (not nothing, not cut off where its sequence of
    ``tokens`` tokens, prompt included, reached ``limit``, not a loop)?"""
    encoded = text.encode()
    return bool(encoded) and tokens < limit and not repeats_itself(text) and (
        len(encoded) / len(zlib.compress(encoded)) <= MAX_COMPRESSION)


def _plain(text: str) -> str:
    """``text`` as recognition reads it: lower case, words only."""
    return " ".join("".join(c for c in word if c.isalnum()) for word in text.casefold().split())
