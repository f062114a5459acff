"""The words recognition knows: every literal word of the templates, of the library's lists,
and of the home's names. A word of a transcript outside them was misheard or is a name the
home does not have."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from hassil import Intents
from hassil.expression import Expression, Group, ListReference, RuleReference, TextChunk
from hassil.intents import TextSlotList

from assistant.home import Home

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
"""A word: letters, with an inner apostrophe (what's, don't); digits are numbers, not words."""

DEVICE_NOUNS = frozenset({
    "light", "lights", "lamp", "lamps", "bulb", "bulbs", "switch", "switches", "plug",
    "plugs", "socket", "outlet", "fan", "fans", "heater", "heaters", "heating", "radiator",
    "thermostat", "boiler", "kettle", "oven", "stove", "fridge", "freezer", "dishwasher",
    "washer", "dryer", "washing", "machine", "tv", "television", "speaker", "speakers",
    "radio", "stereo", "player", "receiver", "projector", "console", "lock", "locks",
    "door", "doors", "gate", "gates", "window", "windows", "blind", "blinds",
    "curtain", "curtains", "shade", "shades", "shutter", "shutters", "awning", "valve",
    "sprinkler", "sprinklers", "pump", "vacuum", "mower", "camera", "alarm", "siren",
    "sensor", "sensors", "detector", "battery", "humidifier", "dehumidifier", "purifier",
    "conditioning", "conditioner", "ac", "aircon", "cooler", "charger", "doorbell", "strip",
    "lantern", "chandelier", "spotlight", "spotlights", "sconce", "led", "leds",
})
"""Words that name a kind of device: a name holding one is a device's, even one the home
does not have ("the garage heater"), and not a question about the world."""


def words(text: str) -> list[str]:
    """The words of ``text``, case-folded, in order."""
    return WORD.findall(text.casefold())


def _chunks(expression: Expression, rules: dict[str, object],
            seen: frozenset[str] = frozenset()) -> Iterator[str]:
    if isinstance(expression, TextChunk):
        yield expression.text
    elif isinstance(expression, Group):
        for item in expression.items:
            yield from _chunks(item, rules, seen)
    elif isinstance(expression, RuleReference):
        rule = rules.get(expression.rule_name)
        if rule is not None and expression.rule_name not in seen:
            yield from _chunks(rule.expression, rules,  # type: ignore[attr-defined]
                               seen | {expression.rule_name})
    elif isinstance(expression, ListReference):
        return


def template_words(intents: Intents) -> frozenset[str]:
    """Every literal word the templates, their rules and the library's text lists can say."""
    found: set[str] = set()
    rules: dict[str, object] = dict(intents.expansion_rules)
    for intent in intents.intents.values():
        for block in intent.data:
            local = {**rules, **block.expansion_rules}
            for sentence in block.sentences:
                for chunk in _chunks(sentence.expression, local):
                    found.update(words(chunk))
    for slot_list in intents.slot_lists.values():
        if isinstance(slot_list, TextSlotList):
            for value in slot_list.values:
                for chunk in _chunks(value.text_in, rules):
                    found.update(words(chunk))
    found.update(words(" ".join(intents.skip_words)))
    return frozenset(found)


def home_names(home: Home) -> Iterable[str]:
    """Every name of the home: entities (and aliases), areas, floors."""
    for entity in home.entities.values():
        yield entity.name
        yield from entity.aliases
    for area in home.areas.values():
        yield area.name
        yield from area.aliases
    for floor in home.floors.values():
        yield floor.name
        yield from floor.aliases
