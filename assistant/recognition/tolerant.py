"""Tolerant matching: a transcript that is a near miss of what the templates allow.

Two kinds of near miss are corrected, and the corrected sentence must then match strictly:

- a name said almost right ("the living room pan" for the Living Room Fan): the span that
  matched no name is compared with the home's names (and "area name" pairs), and taken for
  the closest only when it is close and no other name is as close;
- a misheard word ("start at 5 minute timer", "which madroom curtains are closed"): a word
  the templates and the home never use is replaced by the words of the templates nearest to
  it in spelling (never by a word of the home's names), a few at a time, and a few
  confusions that cannot change what is done ("at" for "a") are undone.

Words the templates know are never replaced by other words they know (beyond those few): "on"
is never heard as "off", nor "bedroom" as "bedside". Names are never dropped or invented: a
correction that does not match strictly is no match at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from assistant.home import Home
from assistant.recognition.vocabulary import WORD, home_names, words

NAME_SCORE = 85.0
"""How close (0-100, rapidfuzz's ratio) a span must be to a name to be taken for it."""
NAME_MARGIN = 6.0
"""And by how much closer than the next name."""
MAX_ATTEMPTS = 24
"""Corrected sentences tried at most, cheapest first."""
MAX_UNKNOWN_ATTEMPTS = 12
"""Of which, combinations of replacements of unknown words."""
SMALL_WORDS = frozenset({"a", "an", "the", "in", "on", "of", "to", "at", "for", "by", "my",
                         "our", "your", "and", "is", "are"})
"""Words too small to name anything, which speech recognition often gets wrong."""
SMALL_TARGETS = ("the", "in", "of", "to", "a", "my", "at", "for", "by")
"""What such a word may have been ("on" and "off" are never made: they decide the command)."""
INSERTED = ("the", "in", "of", "to")
"""Small words that may have been lost."""
MAX_CANDIDATES = 3
"""Known words tried in place of one unknown word."""

HARMLESS = {"at": ("a",), "of": ("off",), "an": ("a",), "lite": ("light",),
            "lites": ("lights",), "thermostats": ("thermostat",)}
"""Known words Whisper writes for others, undone only where nothing else matched; none of
them can turn one command into another."""


class Tolerant:
    """Corrections of near misses over one snapshot of the home and one set of templates."""

    def __init__(self, vocabulary: frozenset[str], home: Home) -> None:
        named = frozenset(w for n in home_names(home) for w in words(n))
        self._known = vocabulary | named
        # A misheard word becomes a word of the templates, never of the home's names: "dining
        # room" must not become the living room. Names are corrected whole (near_name), where
        # a near miss is told from another name.
        self._choices = sorted(w for w in vocabulary if len(w) > 1)
        names: dict[str, list[str]] = {"name": [], "area": [], "floor": []}
        for entity in home.entities.values():
            own = (entity.name, *entity.aliases)
            names["name"].extend(own)
            area = home.areas.get(entity.area or "")
            if area is not None:
                names["name"].extend(f"{place} {name}" for place in (area.name, *area.aliases)
                                     for name in own)
        for area in home.areas.values():
            names["area"].extend((area.name, *area.aliases))
        for floor in home.floors.values():
            names["floor"].extend((floor.name, *floor.aliases))
        self._names = {slot: sorted(set(found)) for slot, found in names.items()}

    @property
    def known(self) -> frozenset[str]:
        """The words of the templates and the home."""
        return self._known

    def near_name(self, said: str, slot: str) -> tuple[str, str] | None:
        """``(span, name)``: the end of ``said`` that is a near miss of one of the home's names
        for ``slot`` (``name``, ``area``, ``floor``), and that name; ``None`` if none is close
        enough, or two are."""
        choices = self._names.get(slot) or []
        if not choices:
            return None
        parts = said.split()
        best: tuple[float, str, str] | None = None
        for start in range(len(parts)):
            span = " ".join(parts[start:])
            found = process.extract(span, choices, scorer=fuzz.ratio, limit=2,
                                    processor=str.casefold)
            if not found:
                continue
            score = found[0][1]
            runner_up = found[1][1] if len(found) > 1 else 0.0
            if score >= NAME_SCORE and score - runner_up >= NAME_MARGIN and (
                    best is None or score > best[0]):
                best = (score, span, found[0][0])
        if best is None or best[1].casefold() == best[2].casefold():
            return None
        return best[1], best[2]

    def corrections(self, text: str) -> Iterator[str]:
        """Sentences ``text`` may have been, cheapest first (at most :data:`MAX_ATTEMPTS`):
        unknown words replaced by the known words nearest them, then harmless confusions
        undone."""
        tokens = text.split()
        options: list[list[str]] = []
        unknown: list[int] = []
        confusions: list[int] = []
        for index, token in enumerate(tokens):
            said = words(token)
            if len(said) != 1 or said[0] in self._known:
                if len(said) == 1 and said[0] in HARMLESS:
                    confusions.append(index)
                options.append([token])
                continue
            word = said[0]
            if word in HARMLESS:
                unknown.append(index)
                options.append([WORD.sub(w, token, count=1) for w in HARMLESS[word]])
                continue
            near = process.extract(word, self._choices, scorer=Levenshtein.distance,
                                   score_cutoff=max(1, len(word) // 3), limit=MAX_CANDIDATES)
            replacements = [WORD.sub(choice, token, count=1)
                            for choice, _, _ in sorted(near, key=lambda n: (n[1], n[0]))]
            if not replacements:
                return  # a word nothing is near: a name the home does not have, not a slip
            unknown.append(index)
            options.append(replacements)
        base = [options[i][0] for i in range(len(tokens))]
        seen = {text}
        made = 0
        for sentence in self._edits(tokens, options, unknown, confusions, base):
            if sentence in seen:
                continue
            seen.add(sentence)
            yield sentence
            made += 1
            if made >= MAX_ATTEMPTS:
                return

    @staticmethod
    def _edits(tokens: list[str], options: list[list[str]], unknown: list[int],
               confusions: list[int], base: list[str]) -> Iterator[str]:
        """Every correction, cheapest first; :meth:`corrections` keeps the first few."""
        if unknown:
            for made, choice in enumerate(itertools.product(*options)):
                if made >= MAX_UNKNOWN_ATTEMPTS:
                    break
                yield " ".join(choice)
        for index in confusions:
            for replacement in HARMLESS[words(tokens[index])[0]]:
                fixed = list(base)
                fixed[index] = WORD.sub(replacement, tokens[index], count=1)
                yield " ".join(fixed)
        # A small word misheard, dropped or heard where there was none ("set the temperature
        # kitchen", "make temp on my thermostat"): never "on", "off" or "not" made or undone.
        small = [i for i, token in enumerate(base) if " ".join(words(token)) in SMALL_WORDS]
        for index in small:
            for other in SMALL_TARGETS:
                if other != " ".join(words(base[index])):
                    yield " ".join([*base[:index], other, *base[index + 1:]])
        for index in small:
            yield " ".join([*base[:index], *base[index + 1:]])
        for index in range(1, len(base)):
            for other in INSERTED:
                yield " ".join([*base[:index], other, *base[index:]])
