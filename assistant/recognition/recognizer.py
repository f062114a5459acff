"""Intent recognition with hassil, fed the way Home Assistant's default agent feeds it.

Sentences: Home Assistant's English library for the built-in intents that have
a response template here, plus the users' own sentences from ``intents/``.
Slot lists: ``name`` (every entity's name and aliases; the value is the name,
the context its domain and device class), ``area`` and ``floor`` (names and
aliases). The satellite's area is the intent context, so "turn on the lights"
means the lights where it was said. Among several matches the users' own
sentences win, then matches that name an entity, as in Home Assistant.

The library is parsed once when a :class:`Recognizer` is built for a set of templates
(start-up and template reloads), so the first request is as fast as any other; a change
of the home reuses the parsed sentences. Matching a new sentence against the library takes
milliseconds; what hassil found for a sentence already heard is remembered (per version of
the templates and of the home's names), and only the entities are resolved again against
the current states.

A sentence is matched in stages, as Home Assistant's default agent does, and the match says
which (:attr:`Match.stage`): numbers and units are first written the way the library reads
them (:mod:`~assistant.recognition.normalise`); then ``strict``, word for word; then
``fuzzy``, a near miss corrected (:mod:`~assistant.recognition.tolerant`); then
``unknown_name``, a home command or question naming what the home does not have
(:mod:`~assistant.recognition.unknown`). Strict matching costs what it did before: the
later stages run only for sentences it did not match.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cachetools import LRUCache
from hassil import (
    Intents,
    RecognizeResult,
    SlotList,
    TextSlotList,
    filter_intents,
    recognize_best,
)
from hassil.models import MatchEntity
from hassil.util import merge_dict

from assistant.home import Home
from assistant.recognition.library import library
from assistant.recognition.match import CUSTOM, FUZZY, STAGES, STRICT, UNKNOWN_NAME, Match, Slot
from assistant.recognition.nearest import Nearest
from assistant.recognition.normalise import normalise
from assistant.recognition.pruning import HOME_LISTS, home_words, prunable, words_of
from assistant.recognition.targets import with_targets
from assistant.recognition.tolerant import Tolerant
from assistant.recognition.unknown import (
    OWN_STATE_INTENTS,
    SENTINEL,
    device_spans,
    sentinel_lists,
    trimmed,
    unknown_name,
    unmatched,
)
from assistant.recognition.vocabulary import home_names, template_words, words
from assistant.templates.model import TemplateSet

_UNSEEN: Any = object()
_RANK = {stage: rank for rank, stage in enumerate(STAGES)}
_NEAR_TRIES = 8
"""Readings of a sentence (as good as the best) whose unknown names are compared with the
home's."""
_SEEN_SIZE = 4096


def _unknown(text: str, result: RecognizeResult, error: tuple[str, dict[str, str]],
             matched: Mapping[str, MatchEntity]) -> Match:
    """The match of a sentence naming what the home does not have."""
    key, said = error
    slots = {name: Slot(e.value, str(e.text if e.text else e.value))
             for name, e in matched.items()}
    slots.update((name, Slot(value, value)) for name, value in said.items()
                 if name in ("name", "area", "floor"))
    if "entity" in said:
        slots["name"] = Slot(said["entity"], said["entity"])
    return Match(intent=result.intent.name, slots=slots, response=key, text=text,
                 metadata={"_context": {}, "error_args": dict(said)}, stage=UNKNOWN_NAME,
                 error=key)


def slot_lists(home: Home) -> dict[str, SlotList]:
    names: list[tuple[str, str, dict[str, Any]]] = []
    for entity in home.entities.values():
        context: dict[str, Any] = {"domain": entity.domain}
        if entity.device_class:
            context["device_class"] = entity.device_class
        for name in (entity.name, *entity.aliases):
            names.append((name, entity.name, context))
    areas = [(name, area.name) for area in home.areas.values()
             for name in (area.name, *area.aliases)]
    floors = [(name, floor.name) for floor in home.floors.values()
              for name in (floor.name, *floor.aliases)]
    return {
        "name": TextSlotList.from_tuples(names, allow_template=False, name="name"),
        "area": TextSlotList.from_tuples(areas, allow_template=False, name="area"),
        "floor": TextSlotList.from_tuples(floors, allow_template=False, name="floor"),
    }


class _Lazy:
    """A :class:`Nearest` made once, on first use, by whichever thread needs it first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: Nearest | None = None

    def get(self, make: Callable[[], Nearest]) -> Nearest:
        with self._lock:
            if self._value is None:
                self._value = make()
            return self._value


class Recognizer:
    """Matches sentences against the templates' intents over one snapshot of the home."""

    def __init__(self, templates: TemplateSet, home: Home, *, language: str = "en",
                 previous: Recognizer | None = None) -> None:
        """Build and warm up: a few hundred milliseconds, done off the request path.

        ``previous``: a recognizer of the same templates over an earlier snapshot of the
        home; its parsed sentences are reused (and, where the home's names are the same, the
        sentences already matched), which makes the build take milliseconds.
        """
        self.templates = templates
        self.language = language
        self._home = home
        self._all_intents: Intents
        self._intents: Intents
        self._prune: list[tuple[str, int, frozenset[str]]]
        self._variants: dict[frozenset[str], Intents]
        self._slot_lists: dict[str, SlotList]
        self._seen: LRUCache[tuple[str, str | None], Match | None]
        self._seen_lock: threading.Lock
        self._vocabulary: frozenset[str]
        self._home_words: dict[str, frozenset[str]]
        self._tolerant: Tolerant
        self._name_words: frozenset[str]
        self._names: frozenset[str]
        self._nearest: _Lazy
        same = previous is not None and previous.templates is templates
        if previous is not None and same:
            self._all_intents = previous._all_intents
            self._vocabulary = previous._vocabulary
        else:
            self._all_intents = self._parse(templates, language)
            self._vocabulary = template_words(self._all_intents)
        domains = {e.domain for e in home.entities.values()}
        if previous is not None and same and domains == {
                e.domain for e in previous.home.entities.values()}:
            self._intents, self._prune = previous._intents, previous._prune
            self._variants = previous._variants
        else:
            # Sentence blocks that need a domain this home has no entity of can never match:
            # leaving them out saves a good part of the matching time.
            self._intents = filter_intents(self._all_intents, domains=domains)
            self._prune = prunable(self._intents)
            self._variants = {}
        self._sentinel_lists: dict[str, SlotList] | None = None
        if previous is not None and same and home.version == previous.home.version:
            # Only states changed: same names, same matches, same corrections.
            self._slot_lists, self._seen = previous._slot_lists, previous._seen
            self._seen_lock = previous._seen_lock
            self._home_words, self._tolerant = previous._home_words, previous._tolerant
            self._name_words, self._names = previous._name_words, previous._names
            self._sentinel_lists = previous._sentinel_lists
            self._nearest = previous._nearest
        else:
            self._nearest = _Lazy()
            self._home_words = home_words(home)
            self._tolerant = Tolerant(self._vocabulary, home)
            self._name_words = frozenset().union(*self._home_words.values())
            self._names = frozenset(" ".join(words(n)) for n in home_names(home))
            self._slot_lists = slot_lists(home)
            self._seen = LRUCache(_SEEN_SIZE)
            self._seen_lock = threading.Lock()
            if not same:
                for entity in list(home.entities.values())[:1]:
                    self.match(f"turn on the {entity.name}")

    @staticmethod
    def _parse(templates: TemplateSet, language: str) -> Intents:
        wanted = set(templates.intents)
        base = library(language)
        data: dict[str, Any] = {
            "language": language,
            "intents": {name: copy.deepcopy(value) for name, value in base["intents"].items()
                        if name in wanted},
            "lists": copy.deepcopy(base.get("lists", {})),
            "expansion_rules": copy.deepcopy(base.get("expansion_rules", {})),
            "skip_words": list(base.get("skip_words", [])),
        }
        merge_dict(data, copy.deepcopy(dict(templates.sentences)))
        data.pop("default_system_prompt", None)
        intents: Intents = Intents.from_dict(data)
        # hassil parses sentence templates lazily; parse them all now, not on a request.
        rules = intents.expansion_rules
        for intent in intents.intents.values():
            for block in intent.data:
                for sentence in block.sentences:
                    sentence.get_required_clauses({**rules, **block.expansion_rules})
        return intents

    @property
    def home(self) -> Home:
        """The snapshot of the home the slot lists were made from."""
        return self._home

    @property
    def intents(self) -> Intents:
        """The intents served, as hassil parsed them."""
        return self._intents

    @property
    def slot_lists(self) -> dict[str, SlotList]:
        """The lists sentences are matched with: the templates' own, then the home's."""
        return {**self._intents.slot_lists, **self._slot_lists}

    @property
    def nearest(self) -> Nearest:
        """The sentences of these templates nearest to a transcript, over this home's names
        (built on first use, a quarter of a second for the default templates, unless made
        ahead: see :func:`assistant.speech.grammar.prepare`)."""
        return self._nearest.get(lambda: Nearest(self._intents, self._slot_lists))

    def with_home(self, home: Home) -> Recognizer:
        """This recognizer over another snapshot of the home (same parsed sentences)."""
        return Recognizer(self.templates, home, language=self.language, previous=self)

    def recognize(self, text: str, *, area: str | None = None,
                  remember: bool = True) -> Match | None:
        """The best match for ``text``, said in the area with id ``area`` (if known), with
        the entities it is about. ``remember=False`` keeps nothing of ``text`` (the sentence
        of someone whose policy is private)."""
        key = (" ".join(text.casefold().split()), area)
        with self._seen_lock:
            found = self._seen.get(key, _UNSEEN)
        if found is _UNSEEN:
            found = self.understand(text, area=area)
            # Free text someone said (a wildcard slot) is theirs: not kept in a memory that
            # outlives the request and that forgetting them could not reach.
            if remember and (found is None or
                             not any(slot.wildcard for slot in found.slots.values())):
                with self._seen_lock:
                    self._seen[key] = found
        match: Match | None = found
        if match is None or match.stage == UNKNOWN_NAME:
            return match  # names nothing the home has: no targets, whatever else it says
        return with_targets(match, self._home, match.metadata.get("_context", {}), area)

    def understand(self, text: str, *, area: str | None = None) -> Match | None:
        """``text`` matched in stages (no memory, no entities resolved): strict, then a near
        miss corrected, then a home sentence naming what the home does not have."""
        said = normalise(text)
        found = self.match(said, area=area)
        if found is not None:
            return dataclasses.replace(found, text=text) if said != text else found
        candidates = unmatched(said, self._all_intents, self._slot_lists, self._context(area),
                               self.language)
        best = candidates[0].result.text_chunks_matched if candidates else 0
        tried = {said}
        for candidate in candidates[:_NEAR_TRIES]:
            if not candidate.said or candidate.result.text_chunks_matched < best:
                continue
            corrected = said
            for slot, heard in candidate.said.items():
                near = self._tolerant.near_name(heard, slot)
                if near is None:
                    break
                corrected = corrected.replace(near[0], near[1], 1)
            else:
                if corrected in tried:
                    continue
                tried.add(corrected)
                found = self.match(corrected, area=area)
                if found is not None:
                    return dataclasses.replace(found, text=text, stage=FUZZY)
        for corrected in self._tolerant.corrections(said):
            found = self.match(corrected, area=area)
            if found is not None:
                return dataclasses.replace(found, text=text, stage=FUZZY)
        # Only as good a reading as the best: a sentence whose best reading is not about the
        # home is not made one by a worse reading.
        for candidate in (c for c in candidates
                          if c.result.text_chunks_matched == candidates[0].result.text_chunks_matched):
            intent = candidate.result.intent.name
            template = self.templates.intents.get(intent)
            acts = template is not None and template.action is not None
            error = unknown_name(candidate, acts=acts or intent in OWN_STATE_INTENTS,
                                 home_words=self._name_words, home_names=self._names)
            if error is not None:
                result = candidate.result
                return _unknown(text, result, error, {
                    e.name: e for e in result.entities_list
                    if e.name not in result.unmatched_entities})
        return self._device_named(said, text, area)

    def _device_named(self, said: str, text: str, area: str | None) -> Match | None:
        """A sentence of the templates once a span naming a kind of device ("the front door")
        is taken for a name: that device is one the home does not have."""
        spans = device_spans(said)
        if not spans:
            return None
        if self._sentinel_lists is None:
            self._sentinel_lists = sentinel_lists(self._all_intents, self._slot_lists)
        parts = said.split()
        best: tuple[tuple[int, int], RecognizeResult, str] | None = None
        for start, end in spans:
            candidate = " ".join([*parts[:start], SENTINEL, *parts[end:]])
            result = recognize_best(candidate, self._all_intents,
                                    slot_lists=self._sentinel_lists,
                                    intent_context=self._context(area), language=self.language,
                                    best_slot_name="name")
            if result is None or result.entities.get("name") is None or \
                    result.entities["name"].value != SENTINEL:
                continue
            # The fewest words taken by other slots ("open", not "door open"), then the
            # shortest name.
            other = sum(len(str(e.text or "").split()) for e in result.entities_list
                        if e.name != "name")
            rank = (other, end - start)
            if best is None or rank < best[0]:
                best = (rank, result, " ".join(parts[start:end]))
        if best is None:
            return None
        _, result, span = best
        name = " ".join(w.strip(".,!?;:") for w in trimmed(span, self._name_words).split())
        if " ".join(words(name)) in self._names:
            return None  # a name the home has, in a sentence that did not fit
        matched = {k: e for k, e in result.entities.items() if k != "name"}
        error: tuple[str, dict[str, str]]
        if "area" in matched:
            error = ("no_entity_in_area", {"entity": name, "area": str(matched["area"].value)})
        elif "floor" in matched:
            error = ("no_entity_in_floor", {"entity": name,
                                            "floor": str(matched["floor"].value)})
        else:
            error = ("no_entity", {"entity": name})
            return _unknown(text, result, error, matched)
        return None

    def _context(self, area: str | None) -> dict[str, Any] | None:
        if area is not None and area in self._home.areas:
            name = self._home.areas[area].name
            return {"area": {"value": name, "text": name}}
        return None

    def recognize_any(self, texts: Sequence[str], *, area: str | None = None,
                      remember: bool = True, chosen: str | None = None) -> Match | None:
        """The best match among several hypotheses of what was said (best first): a strict
        match of any beats a tolerant one, which beats an unknown name; among equals the
        earlier hypothesis wins. ``None`` if none matched.

        ``chosen``: the sentence of the templates that the speech model judged was said when
        none of its hypotheses is one (see :mod:`assistant.speech.grammar`). Its strict match
        comes after a hypothesis's strict match and before any correction of one, and it is
        reported as ``fuzzy``: a near miss corrected."""
        best: Match | None = None
        loose: Match | None = None
        for text in dict.fromkeys(t for t in texts if t.strip()):
            found = self.recognize(text, area=area, remember=remember)
            if found is None:
                continue
            if found.stage == STRICT:
                if chosen and any(slot.wildcard for slot in found.slots.values()):
                    # Matched only by taking misheard words as free text (a timer "named"
                    # "4 behind seconds"): the sentence the model judged was said comes first.
                    loose = loose or found
                    continue
                return found
            if best is None or _RANK[found.stage] < _RANK[best.stage]:
                best = found
        if chosen:
            found = self.recognize(chosen, area=area, remember=remember)
            if found is not None and found.stage == STRICT:
                return dataclasses.replace(found, stage=FUZZY)
        return loose or best

    def _candidates(self, text: str) -> Intents:
        """The sentence blocks that could match ``text``.

        Most of the library's blocks need an entity, area or floor name in the sentence; one
        whose needed list has no word in ``text`` cannot match, and matching it costs as much
        as the rest together. There are only eight combinations, each built once.
        """
        words = words_of(text)
        present = frozenset(name for name in HOME_LISTS if words & self._home_words[name])
        variant = self._variants.get(present)
        if variant is None:
            drop: dict[str, set[int]] = {}
            for name, index, needed in self._prune:
                if not needed <= present:
                    drop.setdefault(name, set()).add(index)
            intents = {
                name: dataclasses.replace(intent, data=[d for i, d in enumerate(intent.data)
                                                        if i not in drop.get(name, ())])
                for name, intent in self._intents.intents.items()
            }
            variant = self._variants[present] = dataclasses.replace(self._intents,
                                                                    intents=intents)
        return variant

    def match(self, text: str, *, area: str | None = None) -> Match | None:
        """What hassil makes of ``text`` word for word (no memory, no entities resolved)."""
        result = recognize_best(
            text, self._candidates(text), slot_lists=self._slot_lists,
            intent_context=self._context(area),
            language=self.language, best_metadata_key=CUSTOM, best_slot_name="name",
        )
        if result is None:
            return None
        slots = {
            e.name: Slot(e.value, str(e.text if e.text else e.value), bool(e.is_wildcard))
            for e in result.entities_list
        }
        metadata = dict(result.intent_metadata or {})
        metadata["_context"] = dict(result.context or {})
        return Match(
            intent=result.intent.name,
            slots=slots,
            response=result.response or "default",
            custom=bool(metadata.get(CUSTOM)),
            text=text,
            metadata=metadata,
        )


