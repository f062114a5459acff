"""Speech recognition that chooses among the sentences the templates allow.

Whisper writes what it hears as free text, and a request spoken unclearly, or in a voice
unlike those it learnt from, comes out as a near miss of what the templates allow ("A Newt
track in the area" for "unmute track in the area", "Stand us on my 31 minute timer" for
"status of my 31-minutes timer"). When none of its hypotheses is a sentence of the
templates, :class:`Grammar` takes the sentences nearest to them
(:attr:`Recognizer.nearest <assistant.recognition.recognizer.Recognizer.nearest>`) and asks
the same model how likely the audio is to say each one (forced decoding: the log
probability of the sentence's tokens given the audio, see
:meth:`~assistant.speech.whisper_window.FittedWindow.score`). The likeliest is chosen only
when

- it is nearly as likely as what the model wrote freely (at most :data:`MAX_GAP_PER_TOKEN`
  nats less per token): a question about the world is not bent into a home command, since
  no sentence of the templates explains its audio half as well as its own words do;
- and it is clearly likelier than the likeliest sentence that means something else (by
  :data:`MIN_MARGIN` nats): between "turn on" and "turn off" heard alike, nothing is chosen.

A hypothesis that is a sentence of the templates only through a wildcard (free text: a
timer's name, a message, a search) does not stop the choice: misheard words make such
"sentences" easily ("cancel the timer for 4 behind seconds"), and the recognizer takes the
choice before it.

The thresholds were set on ``make bench-understanding``'s spoken requests and questions
(see the README for what they gave). The choice is made where the audio is, inside the
transcriber, and cached with the transcript; the recognizer takes it after any hypothesis
that matches strictly and reports it as ``fuzzy``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from assistant.recognition.match import STRICT
from assistant.recognition.nearest import Candidate

Meaning = tuple[str, frozenset[tuple[str, str]]]
"""An intent and its slot values."""

if TYPE_CHECKING:
    from assistant.recognition.recognizer import Recognizer
    from assistant.speech.whisper_window import Score

log = logging.getLogger(__name__)

CANDIDATES = 12
"""Nearest sentences judged per request."""
MAX_GAP_PER_TOKEN = 1.25
"""How much less likely per token (nats) a sentence may be than the model's own transcript."""
MIN_MARGIN = 1.0
"""How much likelier (nats) the chosen sentence must be than one meaning something else."""
MIN_MARGIN_SAME_THINGS = 2.0
"""... than one doing something else to the same things ("pause the TV" against "unpause
the TV", "turn on" against "turn off"): the words that tell them apart are short."""
RULES = 2
"""The version of the rules above (2: a hypothesis matched only through a wildcard's free
text no longer stops the choice): part of every cached choice's key."""
_QUESTION_WORDS = frozenset((
    "what", "whats", "what's", "how", "hows", "how's", "is", "are", "which", "who", "where",
    "when", "does", "do", "can", "any", "tell", "will", "did"))


@dataclass(frozen=True, slots=True)
class Choice:
    """The sentence judged to have been said."""

    text: str
    gap: float
    """Nats per token it is less likely than the model's own transcript."""
    margin: float
    """Nats to spare over the margin asked against each sentence of another meaning (inf:
    none)."""
    judged: int
    """Sentences judged."""


def written(text: str) -> str:
    """``text`` as Whisper writes a sentence: a capital first, lower case, a full stop or a
    question mark (the spelling it finds likeliest, so candidates are judged on their words
    and not on their case)."""
    words = text.strip().casefold().split()
    if not words:
        return ""
    end = "?" if words[0] in _QUESTION_WORDS else "."
    sentence = " ".join(words)
    return sentence[:1].upper() + sentence[1:] + end


class Grammar:
    """What the templates allow, for the transcriber to choose from."""

    def __init__(self, recognizer: Recognizer) -> None:
        # Weakly: grammars are kept by recognizer, and must not keep theirs alive.
        self._recognizer = weakref.ref(recognizer)
        templates = recognizer.templates
        key = repr((recognizer.home.version, templates.language,
                    sorted(templates.versions().items()), CANDIDATES, MAX_GAP_PER_TOKEN,
                    MIN_MARGIN, RULES))
        self.version = hashlib.sha256(key.encode()).hexdigest()[:16]
        """Part of the cache key of every transcript chosen with it."""
        areas = sorted(recognizer.home.areas)
        self._some_area = areas[0] if areas else None

    def allows(self, text: str) -> bool:
        """Is ``text`` a sentence of the templates (said anywhere, or in some area)?"""
        return self._meaning(text) is not None

    def _fixed(self, text: str) -> bool:
        """Is ``text`` a sentence of the templates without free text in it (a wildcard's
        slot can take misheard words: "cancel the timer for 4 behind seconds" is a timer
        named "4 behind seconds")?"""
        recognizer = self._recognizer()
        if recognizer is None:
            return False
        for area in dict.fromkeys((None, self._some_area)):
            found = recognizer.recognize(text, area=area, remember=False)
            if found is not None and found.stage == STRICT:
                return not any(slot.wildcard for slot in found.slots.values())
        return False

    def _meaning(self, text: str) -> tuple[str, frozenset[tuple[str, str]]] | None:
        """What ``text`` asks, matched strictly (its intent and slot values; aliases of one
        thing mean the same), None if it is no sentence of the templates."""
        recognizer = self._recognizer()
        if recognizer is None:
            return None
        for area in dict.fromkeys((None, self._some_area)):
            found = recognizer.recognize(text, area=area, remember=False)
            if found is not None and found.stage == STRICT:
                here = _value(found.metadata.get("_context", {}).get("area")) \
                    if area is not None else None
                # The area the sentence is said in is not part of what it means.
                return found.intent, frozenset(
                    (k, "<here>" if v == here else str(v).casefold())
                    for k, v in found.slot_values().items())
        return None

    def choose(self, texts: Sequence[str],
               score: Callable[[Sequence[str]], list[Score]]) -> Choice | None:
        """The sentence of the templates said, judged by ``score`` (the model's likelihood
        of each text for the audio that gave ``texts``, its hypotheses best first); None
        when a hypothesis is a sentence of the templates already, or none is clearly said."""
        heard = [t for t in dict.fromkeys(t.strip() for t in texts) if t]
        recognizer = self._recognizer()
        if recognizer is None or not heard or any(self._fixed(t) for t in heard):
            return None
        candidates: dict[str, tuple[Candidate, Meaning]] = {}
        for candidate in recognizer.nearest.near(heard, limit=CANDIDATES):
            # Only sentences that account for every word heard (but the small ones), say a
            # word of their own (never a name alone, which is "turn it on"), and are not
            # mostly a wildcard's (a message to broadcast made of a misheard question).
            if candidate.unexplained or not candidate.fixed or candidate.free > candidate.fixed:
                continue
            text = written(candidate.text)
            meaning = None if text in candidates else self._meaning(candidate.text)
            if meaning is not None:
                candidates[text] = (candidate, meaning)
        if not candidates:
            return None
        scores = score([*heard, *candidates])
        free = max(s.total for s in scores[: len(heard)])
        judged = sorted(zip(scores[len(heard):], candidates.values(), strict=True),
                        key=lambda pair: -pair[0].total)
        best_score, (best, meaning) = judged[0]
        margin = float("inf")
        for other, (_, rival) in judged[1:]:
            if rival == meaning:
                continue
            need = MIN_MARGIN_SAME_THINGS if rival[1] == meaning[1] else MIN_MARGIN
            margin = min(margin, best_score.total - other.total - need)
        gap = (free - best_score.total) / best_score.tokens
        # What was said is the speaker's: only numbers are logged.
        log.debug("nearest sentences judged: %s; best gap %.2f margin %.2f", len(judged), gap,
                  margin)
        if gap > MAX_GAP_PER_TOKEN or margin < 0:
            return None
        return Choice(best.text, round(gap, 3), round(margin, 3), len(judged))


def _value(context: object) -> object:
    """A context entry's value (hassil keeps ``{"value": ..., "text": ...}`` or the value)."""
    return context.get("value") if isinstance(context, dict) else context


_BY_RECOGNIZER: weakref.WeakKeyDictionary[Recognizer, Grammar] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def grammar_for(recognizer: Recognizer) -> Grammar:
    """The grammar of ``recognizer``'s templates and home, made once per recognizer (its
    nearest-sentence index is shared by recognizers of the same templates and names)."""
    with _LOCK:
        found = _BY_RECOGNIZER.get(recognizer)
        if found is None:
            found = _BY_RECOGNIZER[recognizer] = Grammar(recognizer)
        return found


def prepare(recognizer: Recognizer) -> None:
    """Build ``recognizer``'s nearest-sentence index now rather than on the first request
    that needs it (the default templates: a quarter of a second and 18 MB). Recognizers that
    differ only in the home's states share it, so most changes of the home cost nothing here;
    the :class:`Grammar` itself is cheap and left to the first spoken request."""
    recognizer.nearest  # noqa: B018 - built on first use
