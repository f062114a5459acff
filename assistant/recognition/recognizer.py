"""Intent recognition with hassil, fed the way Home Assistant's default agent feeds it.

Sentences: Home Assistant's English library for the built-in intents that have
a response template here, plus the users' own sentences from ``intents/``.
Slot lists: ``name`` (every entity's name and aliases; the value is the name,
the context its domain and device class), ``area`` and ``floor`` (names and
aliases). The satellite's area is the intent context, so "turn on the lights"
means the lights where it was said. Among several matches the users' own
sentences win, then matches that name an entity, as in Home Assistant.

The library is parsed once when a :class:`Recognizer` is built (start-up and
template reloads), so the first request is as fast as any other. Matching a new
sentence against the library takes milliseconds; what hassil found for a
sentence already heard is remembered (per recognizer, so per version of the
templates and of the home's names), and only the entities are resolved again
against the current states.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from hassil import Intents, SlotList, TextSlotList, filter_intents, recognize_best
from hassil.expression import Alternative, Expression, Group, ListReference, RuleReference, Sentence
from hassil.util import merge_dict
from home_assistant_intents import get_intents

from assistant.errors import ConfigError
from assistant.home import Entity, Home
from assistant.templates import TemplateSet, load_templates

CUSTOM = "custom"
"""Metadata key marking the users' own sentences (they win ties)."""

_LIBRARY: dict[str, dict[str, Any]] = {}
_LIBRARY_LOCK = threading.Lock()


def library(language: str) -> dict[str, Any]:
    """Home Assistant's sentence library for ``language`` (read once per process)."""
    with _LIBRARY_LOCK:
        if language not in _LIBRARY:
            data = get_intents(language, json_load=json.load)
            if data is None:
                raise ConfigError(f"no sentence library for language {language!r}")
            _LIBRARY[language] = data
        return _LIBRARY[language]


def builtin_intents(language: str) -> frozenset[str]:
    """The intents the library has sentences for."""
    return frozenset(library(language)["intents"])


def load_intent_templates(folder: Path, language: str = "en") -> TemplateSet:
    """The templates under ``folder``, checked against the library's intents, lists and rules."""
    data = library(language)
    return load_templates(folder, builtin=builtin_intents(language), language=language,
                          known_lists=data.get("lists", {}),
                          known_rules=data.get("expansion_rules", {}))


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot of a match."""

    value: Any
    """What it means: a name, an area name, a number..."""
    text: str
    """What was said."""
    wildcard: bool = False
    """Free text captured by a wildcard: whatever the person said, so private to them."""


@dataclass(frozen=True, slots=True)
class Match:
    """A recognised sentence, with the entities it is about."""

    intent: str
    """The intent name."""
    slots: Mapping[str, Slot]
    """Slots by name (``name``, ``area``, ``floor``, ``domain``, ``brightness``...)."""
    response: str
    """hassil's response key (``default``, ``lights_area``...)."""
    targets: tuple[Entity, ...] = ()
    """The entities meant, resolved from name, area, floor, domain and the satellite's area."""
    custom: bool = False
    """Matched one of the users' own sentences."""
    text: str = ""
    """The sentence as recognised."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """hassil's metadata of the matched sentence block."""

    def slot_values(self) -> dict[str, Any]:
        """Slot name -> value, for templates."""
        return {name: slot.value for name, slot in self.slots.items()}


_HOME_LISTS = ("name", "area", "floor")
_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


def _home_words(home: Home) -> dict[str, frozenset[str]]:
    """Every word of the home's names, areas and floors (aliases included), by list."""
    return {
        "name": frozenset(w for e in home.entities.values() for n in (e.name, *e.aliases)
                          for w in _words(n)),
        "area": frozenset(w for a in home.areas.values() for n in (a.name, *a.aliases)
                          for w in _words(n)),
        "floor": frozenset(w for f in home.floors.values() for n in (f.name, *f.aliases)
                           for w in _words(n)),
    }


def _required_lists(expression: Expression, rules: Mapping[str, Sentence],
                    seen: frozenset[str] = frozenset()) -> frozenset[str]:
    """The lists every way of saying ``expression`` mentions."""
    if isinstance(expression, ListReference):
        return frozenset({expression.list_name})
    if isinstance(expression, RuleReference):
        rule = rules.get(expression.rule_name)
        if rule is None or expression.rule_name in seen:
            return frozenset()
        return _required_lists(rule.expression, rules, seen | {expression.rule_name})
    if isinstance(expression, Alternative):
        if expression.is_optional or not expression.items:
            return frozenset()
        found = [_required_lists(item, rules, seen) for item in expression.items]
        return frozenset.intersection(*found)
    if isinstance(expression, Group):
        return frozenset().union(*(_required_lists(i, rules, seen) for i in expression.items))
    return frozenset()


def _prunable(intents: Intents) -> list[tuple[str, int, frozenset[str]]]:
    """(intent, block index, home lists every sentence of the block needs), for blocks that
    need at least one: they cannot match a sentence without a word of that list."""
    out = []
    for name, intent in intents.intents.items():
        for index, data in enumerate(intent.data):
            rules = {**intents.expansion_rules, **data.expansion_rules}
            needed = [(_required_lists(s.expression, rules) & set(_HOME_LISTS))
                      - set(data.slots) for s in data.sentences]
            common = frozenset.intersection(*needed) if needed else frozenset()
            if common:
                out.append((name, index, common))
    return out


def _slot_lists(home: Home) -> dict[str, SlotList]:
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

    def __init__(self, templates: TemplateSet, home: Home, *, language: str = "en") -> None:
        """Build and warm up; takes a few hundred milliseconds, done off the request path."""
        self.templates = templates
        self.language = language
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
        self._all_intents = Intents.from_dict(data)
        self._warm_up(self._all_intents)
        self._home = home
        self._intents = self._for_home(home)
        self._slot_lists = _slot_lists(home)
        self._home_words = _home_words(home)
        self._variants: dict[frozenset[str], Intents] = {}
        self._prune = _prunable(self._intents)
        self._seen: LRUCache[tuple[str, str | None], Match | None] = LRUCache(4096)
        self._seen_lock = threading.Lock()
        for entity in list(home.entities.values())[:1]:
            self.match(f"turn on the {entity.name}")

    def _for_home(self, home: Home) -> Intents:
        # Sentence blocks that need a domain this home has no entity of can never match:
        # leaving them out saves a good part of the matching time.
        return filter_intents(self._all_intents,
                              domains={e.domain for e in home.entities.values()})

    @staticmethod
    def _warm_up(intents: Intents) -> None:
        # hassil parses sentence templates lazily; parse them all now, not on a request.
        rules = intents.expansion_rules
        for intent in intents.intents.values():
            for data in intent.data:
                for sentence in data.sentences:
                    sentence.get_required_clauses({**rules, **data.expansion_rules})

    @property
    def home(self) -> Home:
        """The snapshot of the home the slot lists were made from."""
        return self._home

    def with_home(self, home: Home) -> Recognizer:
        """This recognizer over another snapshot of the home (same parsed sentences)."""
        other = object.__new__(Recognizer)
        other.templates = self.templates
        other.language = self.language
        other._all_intents = self._all_intents
        same_domains = ({e.domain for e in home.entities.values()}
                        == {e.domain for e in self._home.entities.values()})
        other._intents = self._intents if same_domains else self._for_home(home)
        other._prune = self._prune if same_domains else _prunable(other._intents)
        other._variants = self._variants if same_domains else {}
        other._home_words = _home_words(home)
        other._home = home
        if home.version == self._home.version:  # only states changed: same names, same matches
            other._slot_lists, other._seen = self._slot_lists, self._seen
        else:
            other._slot_lists, other._seen = _slot_lists(home), LRUCache(4096)
        other._seen_lock = self._seen_lock
        return other

    def recognize(self, text: str, *, area: str | None = None) -> Match | None:
        """The best match for ``text``, said in the area with id ``area`` (if known), with
        the entities it is about."""
        key = (" ".join(text.casefold().split()), area)
        with self._seen_lock:
            found = self._seen.get(key, _UNSEEN)
        if found is _UNSEEN:
            found = self.match(text, area=area)
            # Free text someone said (a wildcard slot) is theirs: not kept in a memory that
            # outlives the request and that forgetting them could not reach.
            if found is None or not any(slot.wildcard for slot in found.slots.values()):
                with self._seen_lock:
                    self._seen[key] = found
        if found is None:
            return None
        return _with_targets(found, self._home, found.metadata.get("_context", {}), area)

    def _candidates(self, text: str) -> Intents:
        """The sentence blocks that could match ``text``.

        Most of the library's blocks need an entity, area or floor name in the sentence; one
        whose needed list has no word in ``text`` cannot match, and matching it costs as much
        as the rest together. There are only eight combinations, each built once.
        """
        words = _words(text)
        present = frozenset(name for name in _HOME_LISTS if words & self._home_words[name])
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


def _with_targets(match: Match, home: Home, context: Mapping[str, Any],
                  said_in: str | None) -> Match:
    """Resolve the entities a match is about, the way Home Assistant's handlers do."""
    slots = match.slots
    domains = _as_set(slots["domain"].value) if "domain" in slots else _as_set(
        context.get("domain")) or set(_IMPLIED_DOMAINS.get(match.intent, ()))
    device_class = _as_set(slots["device_class"].value) if "device_class" in slots else set()
    area = home.area_named(str(slots["area"].value)) if "area" in slots else None
    floor = home.floor_named(str(slots["floor"].value)) if "floor" in slots else None

    def fits(entity: Entity) -> bool:
        return ((not domains or entity.domain in domains)
                and (not device_class or entity.device_class in device_class))

    if "name" in slots:
        candidates = [e for e in home.named(str(slots["name"].value)) if fits(e)]
        if area is not None:  # "the lamp in the bedroom": only that one, or none
            candidates = [e for e in candidates if e.area == area.id]
        elif floor is not None:
            on_floor = {e.entity_id for e in home.on_floor(floor.id)}
            candidates = [e for e in candidates if e.entity_id in on_floor]
        elif said_in is not None and len(candidates) > 1:
            candidates = [e for e in candidates if e.area == said_in] or candidates
    elif area is not None:
        candidates = [e for e in home.in_area(area.id) if fits(e)]
    elif floor is not None:
        candidates = [e for e in home.on_floor(floor.id) if fits(e)]
    elif domains or device_class:
        candidates = [e for e in home.entities.values() if fits(e)]
        if said_in is not None:
            candidates = [e for e in candidates if e.area == said_in] or candidates
    else:
        candidates = []
    candidates.sort(key=lambda e: e.entity_id)
    return Match(match.intent, match.slots, match.response, tuple(candidates), match.custom,
                 match.text, match.metadata)


_UNSEEN: Any = object()

_IMPLIED_DOMAINS: dict[str, set[str]] = {
    "HassGetWeather": {"weather"},
    "HassClimateGetTemperature": {"climate"},
    "HassClimateSetTemperature": {"climate"},
    "HassMediaPause": {"media_player"},
    "HassMediaUnpause": {"media_player"},
    "HassSetVolume": {"media_player"},
}


def _as_set(value: Any) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, Iterable):
        return {str(v) for v in value}
    return {str(value)}
