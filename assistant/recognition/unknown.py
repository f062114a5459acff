"""Sentences shaped like a home command or question whose name, area or floor the home does
not have ("turn on the garage heater", "is the front door locked" in a home with no lock).

The sentences are matched again with names allowed to be anything (hassil's unmatched
entities), over every intent served, including those of domains the home has none of. The
best such match is chosen as Home Assistant's default agent chooses it (most literal text
matched, then most slots filled, then fewest left unfilled, then one about a name), and it
is answered with the library's own error response ("Sorry, I am not aware of any device
called garage heater"), never a generated guess.

hassil lets a name swallow anything, so a match only counts when it looks like the home's:
nothing but a name, area or floor is left unfilled, the name is a few words once the
command's own words are taken off its front, and it names a kind of device, or the
sentence acts on the home, or another of its slots was filled (a state, a brightness, an
area). "What is the capital of France" is none of these and goes on to the generator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from hassil import Intents, RecognizeResult, SlotList, TextSlotList, recognize_all
from hassil.intents import TextSlotValue
from hassil.models import UnmatchedRangeEntity, UnmatchedTextEntity
from hassil.recognize import MISSING_ENTITY

from assistant.recognition.match import CUSTOM
from assistant.recognition.vocabulary import DEVICE_NOUNS, words

HOME_SLOTS = ("name", "area", "floor")
MAX_NAME_WORDS = 4
MAX_PLACE_WORDS = 3
OWN_STATE_INTENTS = frozenset({
    "HassStartTimer", "HassCancelTimer", "HassCancelAllTimers", "HassIncreaseTimer",
    "HassDecreaseTimer", "HassPauseTimer", "HassUnpauseTimer", "HassTimerStatus",
    "HassShoppingListAddItem", "HassShoppingListCompleteItem", "HassListAddItem",
    "HassListCompleteItem", "HassListRemoveItem",
})
"""Intents about the assistant's own state in the home (timers where they were set, lists):
an area they name is one of the home's, as for a command."""

_DETERMINERS = frozenset({"the", "a", "an", "my", "our", "your", "all", "any", "this", "that",
                          "these", "those", "every"})


@dataclass(frozen=True, slots=True)
class Unmatched:
    """The best match of a sentence with names allowed to be anything."""

    result: RecognizeResult
    said: Mapping[str, str]
    """What was said for each home slot nothing of the home matched (``name``, ``area``,
    ``floor``), as said."""


def _counts(result: RecognizeResult) -> tuple[int, int, int]:
    """(slots filled, slots left unfilled, ranges out of range) of an unmatched match."""
    filled = sum(1 for e in result.entities_list if e.name not in result.unmatched_entities)
    unfilled = ranges = 0
    for entity in result.unmatched_entities_list:
        if isinstance(entity, UnmatchedTextEntity):
            if entity.text != MISSING_ENTITY:
                unfilled += 1
        else:
            unfilled += 1
            ranges += isinstance(entity, UnmatchedRangeEntity)
    return filled, unfilled, ranges


def _better(result: RecognizeResult, best: RecognizeResult) -> bool:
    """Is ``result`` a better unmatched match than ``best``? Home Assistant's order."""
    filled, unfilled, ranges = _counts(result)
    best_filled, best_unfilled, best_ranges = _counts(best)
    if result.text_chunks_matched != best.text_chunks_matched:
        return result.text_chunks_matched > best.text_chunks_matched
    if filled != best_filled:
        return filled > best_filled
    if unfilled != best_unfilled:
        return unfilled < best_unfilled
    if ranges != best_ranges:
        return ranges > best_ranges
    named = "name" in result.entities or "name" in result.unmatched_entities
    best_named = "name" in best.entities or "name" in best.unmatched_entities
    if named != best_named:
        return named
    # an area before a floor: there are more of them
    if "area" in result.unmatched_entities and "floor" in best.unmatched_entities:
        return True
    # the library's sentences before the templates' own (which say the same of fewer things)
    return not _own(result) and _own(best)


def _own(result: RecognizeResult) -> bool:
    return bool((result.intent_metadata or {}).get(CUSTOM))


def unmatched(text: str, intents: Intents, slot_lists: Mapping[str, SlotList],
              context: dict[str, Any] | None, language: str) -> list[Unmatched]:
    """The matches of ``text`` with unknown names allowed that matched literal text, best
    first."""
    found = [result for result in recognize_all(
        text, intents, slot_lists=dict(slot_lists), intent_context=context, language=language,
        allow_unmatched_entities=True) if result.text_chunks_matched >= 1]
    found.sort(key=cmp_to_key(lambda a, b: -1 if _better(a, b) else 1 if _better(b, a) else 0))
    return [Unmatched(result, {
        name: entity.text.strip() for name, entity in result.unmatched_entities.items()
        if isinstance(entity, UnmatchedTextEntity) and entity.text != MISSING_ENTITY
        and name in HOME_SLOTS}) for result in found]


SENTINEL = "unknowndevice"
"""The name put in the place of a span a sentence may name a device with, to find whether
the rest is a sentence of the templates."""


def sentinel_lists(intents: Intents, slot_lists: Mapping[str, SlotList]) -> dict[str, SlotList]:
    """``slot_lists`` with :data:`SENTINEL` added to the names, once for every domain and
    device class a sentence requires of its name, so it fits any of them."""
    contexts: set[tuple[tuple[str, str], ...]] = {()}
    for intent in intents.intents.values():
        for block in intent.data:
            required = block.requires_context or {}
            domains: list[str | None] = [*_values(required.get("domain"))] or [None]
            classes: list[str | None] = [*_values(required.get("device_class"))] or [None]
            for domain in domains:
                for device_class in classes:
                    contexts.add(tuple((k, v) for k, v in (("domain", domain),
                                                            ("device_class", device_class))
                                       if v is not None))
    name_list = slot_lists["name"]
    assert isinstance(name_list, TextSlotList)
    extra = [TextSlotValue.from_tuple((SENTINEL, SENTINEL, dict(context)), False)
             for context in sorted(contexts)]
    names = TextSlotList(name="name", values=[*name_list.values, *extra])
    return {**slot_lists, "name": names}


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return _values(value.get("value"))
    return [str(v) for v in value]


def head_noun(said: list[str]) -> str:
    """What a name is of: its last word, or the one before "of" ("the speed of light" is a
    speed, "the light of the porch" a light)."""
    if "of" in said[1:]:
        return said[said.index("of", 1) - 1]
    return said[-1] if said else ""


def device_spans(text: str, *, longest: int = MAX_NAME_WORDS) -> list[tuple[int, int]]:
    """(start, end) word spans of ``text`` that may be the name of a device: what they name
    is a kind of device, they are not the first word (the command), at most ``longest``
    words; shortest first."""
    parts = text.split()
    spans = []
    for start in range(1, len(parts)):
        for end in range(start + 1, min(len(parts), start + longest) + 1):
            said = words(" ".join(parts[start:end]))
            if said and said[0] not in _DETERMINERS and head_noun(said) in DEVICE_NOUNS:
                spans.append((start, end))
    spans.sort(key=lambda span: (span[1] - span[0], span[0]))
    return spans


def trimmed(said: str, known: Iterable[str]) -> str:
    """``said`` without the words of the sentence's own that a name swallowed at its front
    ("dim the bedroom lamp" -> "bedroom lamp"): leading determiners and words the templates
    know that are neither a device noun nor a word of the home's names."""
    parts = said.split()
    keep = frozenset(known)
    while len(parts) > 1:
        word = " ".join(words(parts[0]))
        if word in _DETERMINERS or (word not in keep and word in _COMMAND_WORDS):
            parts.pop(0)
        else:
            break
    return " ".join(parts)


_COMMAND_WORDS = frozenset({
    "turn", "switch", "set", "dim", "brighten", "raise", "lower", "open", "close", "shut",
    "lock", "unlock", "start", "stop", "pause", "resume", "toggle", "is", "are", "was", "what",
    "what's", "whats", "which", "how", "please", "can", "could", "would", "you", "make",
    "change", "put", "activate", "deactivate", "enable", "disable", "on", "off", "of", "in",
    "to", "up", "down", "and", "it", "me", "tell", "check",
})


def unknown_name(found: Unmatched, *, acts: bool, home_words: frozenset[str],
                 home_names: frozenset[str] = frozenset()) -> tuple[str, dict[str, str]] | None:
    """The library's error key and its arguments for ``found``, or ``None`` when it does not
    look like a sentence about the home (see the module's doc).

    ``acts``: the intent matched acts on the home (turn on, set, open...).
    ``home_words``: the words of the home's names, which a trimmed name may start with.
    ``home_names``: the home's names, case-folded: one of them said is no unknown name (the
    sentence did not fit, "turn the kitchen light").
    """
    result = found.result
    for name, entity in result.unmatched_entities.items():
        if isinstance(entity, UnmatchedTextEntity) and entity.text == MISSING_ENTITY:
            continue
        if name not in HOME_SLOTS:
            return None  # a brightness, a colour, a state... that is not one: not ours
    said = {k: trimmed(v, home_words) for k, v in found.said.items()}
    if not said or not all(said.values()):
        return None
    if any(" ".join(words(v)) in home_names for v in said.values()):
        return None
    matched = {e.name: str(e.text or e.value).strip() for e in result.entities_list
               if e.name not in result.unmatched_entities}
    # A device noun in an area, a floor or a state ("the bedroom lamp" taken for an area,
    # "door open" for a state) is a name split the wrong way.
    if any(DEVICE_NOUNS.intersection(words(v)) for k, v in said.items() if k != "name") or \
            any(DEVICE_NOUNS.intersection(words(v)) for k, v in matched.items()
                if k not in (*HOME_SLOTS, "domain", "device_class")):
        return None
    if any(len(said[k].split()) > MAX_PLACE_WORDS for k in ("area", "floor") if k in said):
        return None
    filled = {k for k, v in matched.items() if v}
    if "name" in said:
        # Every name it leaves unfilled must look like a device's, whatever else it lacks.
        named = words(said["name"])
        if not named or len(said["name"].split()) > MAX_NAME_WORDS:
            return None
        # A device's name ends with a kind of device, or is short and acted on.
        device = head_noun(named) in DEVICE_NOUNS
        if not (device or (acts and len(named) <= 2) or filled - {"domain"}):
            return None
    elif not (acts or filled):
        return None  # "the temperature in London": a question about the world
    if "area" in said:
        return "no_area", {"area": said["area"]}
    if "floor" in said:
        return "no_floor", {"floor": said["floor"]}
    name = said["name"]
    if matched.get("area"):
        return "no_entity_in_area", {"entity": name, "area": matched["area"]}
    if matched.get("floor"):
        return "no_entity_in_floor", {"entity": name, "floor": matched["floor"]}
    return "no_entity", {"entity": name}
