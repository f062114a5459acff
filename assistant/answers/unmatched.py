"""Sentences no template answers: what of the home the generator may speak of, and the check
that it said nothing of the home that the registry does not hold.

The generator is a small model; asked "is the front door locked" in a home with no lock it
will say that it is. So it is shown the states of the entities the sentence is about (by the
words of their names and areas, at most :data:`MAX_SEEN`), told to speak of nothing else of
the home, and its answer is checked: a sentence of it that gives a device a state must name
one of those entities and give it the state the registry holds (or deny one it does not
have). Otherwise, and for a question about the home when none of its entities is in
sight, the answer is "I don't know".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from assistant.home import Entity, Home
from assistant.recognition.vocabulary import DEVICE_NOUNS, words
from assistant.speech.sentences import split_sentences

DONT_KNOW = "I don't know."
MAX_SEEN = 12
"""Entities shown to the generator at most."""

STATE_WORDS = frozenset({
    "on", "off", "open", "opened", "closed", "shut", "locked", "unlocked", "opening",
    "closing", "playing", "paused", "idle", "heating", "cooling", "running", "home", "away",
    "jammed", "standby", "docked", "cleaning", "mowing", "charging", "armed", "disarmed",
    "triggered", "active", "inactive", "detected", "clear", "wet", "dry", "unavailable",
})
"""Words that give a device a state."""

_SYNONYMS = {"opened": "open", "shut": "closed", "active": "on", "inactive": "off",
             "detected": "on", "clear": "off"}
_NEGATIONS = frozenset({"not", "never", "neither", "nor", "none"})
_STOP = frozenset({"the", "a", "an", "is", "are", "of", "in", "on", "off", "to", "my", "it",
                   "what", "how", "which", "and", "or", "any", "there", "do", "does", "i",
                   "you", "me", "at", "for", "with", "all"})
_DOMAIN_WORDS = {
    "light": {"light", "lights", "lamp", "lamps"}, "switch": {"switch", "switches", "plug"},
    "fan": {"fan", "fans"}, "cover": {"blind", "blinds", "curtain", "curtains", "cover",
                                      "shade", "shades", "shutter", "shutters", "garage"},
    "lock": {"lock", "locks", "locked", "unlocked", "door"}, "climate": {
        "thermostat", "heating", "temperature", "warm", "cold", "heat"},
    "media_player": {"tv", "television", "music", "speaker", "playing"},
    "vacuum": {"vacuum"}, "weather": {"weather", "rain", "sunny", "outside"},
}


def relevant(text: str, home: Home) -> list[Entity]:
    """The entities ``text`` is about: a word of their name, alias or area, or of their kind
    ("lights", "thermostat"), in ``text``; at most :data:`MAX_SEEN`, the closest first."""
    said = set(words(text)) - _STOP
    if not said:
        return []
    scored: list[tuple[int, str, Entity]] = []
    for entity in home.entities.values():
        own = {w for n in (entity.name, *entity.aliases) for w in words(n)} - _STOP
        area = home.area_of(entity)
        place = {w for n in ((area.name, *area.aliases) if area else ()) for w in words(n)}
        kind = _DOMAIN_WORDS.get(entity.domain, set()) | set(words(entity.domain))
        score = 3 * len(said & own) + 2 * len(said & place) + len(said & kind)
        if said & own or said & kind:
            scored.append((-score, entity.entity_id, entity))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [entity for _, _, entity in scored[:MAX_SEEN]]


def about_the_home(text: str, home: Home) -> bool:
    """Does ``text`` ask about a device, or a place of the home?"""
    said = set(words(text))
    places = {w for a in home.areas.values() for n in (a.name, *a.aliases) for w in words(n)}
    return bool(said & DEVICE_NOUNS or said & (places - _STOP))


def seen_states(entities: Sequence[Entity], home: Home) -> str:
    """The lines the generator's prompt gets: one per entity, name, area and state."""
    lines = []
    for entity in entities:
        area = home.area_of(entity)
        where = f" in the {area.name}" if area else ""
        unit = entity.attributes.get("unit_of_measurement")
        state = f"{entity.state} {unit}" if unit else str(entity.state)
        lines.append(f"- {entity.name}{where}: {state}")
    return "\n".join(lines)


def _state(word: str) -> str:
    return _SYNONYMS.get(word, word)


def _named(sentence: str, entities: Iterable[Entity]) -> list[Entity]:
    folded = " ".join(words(sentence))
    found = []
    for entity in entities:
        for name in (entity.name, *entity.aliases):
            said = " ".join(words(name))
            if said and re.search(rf"\b{re.escape(said)}\b", folded):
                found.append(entity)
                break
    return found


def holds_to(answer: str, seen: Sequence[Entity], home: Home) -> bool:
    """Does ``answer`` give no device a state the registry does not hold?

    Each sentence that gives a state (a word of :data:`STATE_WORDS`) to something must name
    an entity it was shown, and the state must be that entity's (or, denied, not be it).
    """
    everyone = list(home.entities.values())
    for sentence in split_sentences(answer):
        said = words(sentence)
        states = {_state(w) for w in said if w in STATE_WORDS}
        if not states:
            continue
        named = _named(sentence, everyone)
        if not named:
            if DEVICE_NOUNS.intersection(said):
                return False  # a state of a device the registry does not know
            continue
        shown = {e.entity_id for e in seen}
        denied = bool(_NEGATIONS.intersection(said)) or any(w.endswith("n't") for w in said)
        for entity in named:
            if entity.entity_id not in shown:
                return False
            actual = _state(str(entity.state).casefold())
            if denied:
                if states == {actual}:
                    return False
            elif actual not in states:
                return False
    return True
