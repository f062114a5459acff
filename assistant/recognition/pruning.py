"""Which sentence blocks a sentence cannot match, told from the home's words in it.

Most of the library's blocks need an entity, area or floor name in the sentence; a block
whose needed list has no word in the sentence cannot match, and matching it costs as much
as the rest together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from hassil import Intents
from hassil.expression import Alternative, Expression, Group, ListReference, RuleReference, Sentence

from assistant.home import Home

HOME_LISTS = ("name", "area", "floor")
_WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> set[str]:
    """The words of ``text``, case-folded."""
    return set(_WORD.findall(text.casefold()))


def home_words(home: Home) -> dict[str, frozenset[str]]:
    """Every word of the home's names, areas and floors (aliases included), by list."""
    return {
        "name": frozenset(w for e in home.entities.values() for n in (e.name, *e.aliases)
                          for w in words_of(n)),
        "area": frozenset(w for a in home.areas.values() for n in (a.name, *a.aliases)
                          for w in words_of(n)),
        "floor": frozenset(w for f in home.floors.values() for n in (f.name, *f.aliases)
                           for w in words_of(n)),
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


def prunable(intents: Intents) -> list[tuple[str, int, frozenset[str]]]:
    """(intent, block index, home lists every sentence of the block needs), for blocks that
    need at least one: they cannot match a sentence without a word of that list."""
    out = []
    for name, intent in intents.intents.items():
        for index, data in enumerate(intent.data):
            rules = {**intents.expansion_rules, **data.expansion_rules}
            needed = [(_required_lists(s.expression, rules) & set(HOME_LISTS))
                      - set(data.slots) for s in data.sentences]
            common = frozenset.intersection(*needed) if needed else frozenset()
            if common:
                out.append((name, index, common))
    return out
