"""Sentences and the word error rate shared by the speech tests and ``bench/bench_speech.py``."""

from __future__ import annotations

import jiwer

HOME_SENTENCES = [
    "Turn on the kitchen light.",
    "Turn off the lights in the living room.",
    "Close the garage door.",
    "What is the weather like today?",
    "Dim the hallway lights.",
    "Lock the front door.",
    "Play some music in the office.",
    "Is the back door open?",
    "Turn up the heating in the bathroom.",
    "Open the blinds in the bedroom.",
]
"""Home-control requests, spoken by piper and transcribed back in the round-trip checks.

No numbers: Whisper writes "ten" as "10", which is right but counts as a word error.
"""

STEADY_VOICE = {"noise_scale": 0.0, "noise_w_scale": 0.0}
"""piper settings that make synthesis deterministic (no sampled noise): tests hear the same
audio on every run, so their outcome does not depend on the draw."""

_NORMALISE = jiwer.Compose([
    jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
    jiwer.ReduceToListOfListOfWords(),
])


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over a set, ignoring case and punctuation."""
    return float(jiwer.wer(references, hypotheses, reference_transform=_NORMALISE,
                           hypothesis_transform=_NORMALISE))
