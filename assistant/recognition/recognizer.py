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
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Any

from cachetools import LRUCache
from hassil import Intents, SlotList, TextSlotList, filter_intents, recognize_best
from hassil.util import merge_dict

from assistant.home import Home
from assistant.recognition.library import library
from assistant.recognition.match import CUSTOM, Match, Slot
from assistant.recognition.pruning import HOME_LISTS, home_words, prunable, words_of
from assistant.recognition.targets import with_targets
from assistant.templates.model import TemplateSet

_UNSEEN: Any = object()
_SEEN_SIZE = 4096


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
        same = previous is not None and previous.templates is templates
        if previous is not None and same:
            self._all_intents = previous._all_intents
        else:
            self._all_intents = self._parse(templates, language)
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
        self._home_words = home_words(home)
        if previous is not None and same and home.version == previous.home.version:
            # Only states changed: same names, same matches.
            self._slot_lists, self._seen = previous._slot_lists, previous._seen
            self._seen_lock = previous._seen_lock
        else:
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
            found = self.match(text, area=area)
            # Free text someone said (a wildcard slot) is theirs: not kept in a memory that
            # outlives the request and that forgetting them could not reach.
            if remember and (found is None or
                             not any(slot.wildcard for slot in found.slots.values())):
                with self._seen_lock:
                    self._seen[key] = found
        if found is None:
            return None
        return with_targets(found, self._home, found.metadata.get("_context", {}), area)

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
        """What hassil makes of ``text`` (no cache, no entities resolved)."""
        home = self._home
        context = None
        if area is not None and area in home.areas:
            name = home.areas[area].name
            context = {"area": {"value": name, "text": name}}
        result = recognize_best(
            text, self._candidates(text), slot_lists=self._slot_lists, intent_context=context,
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


