"""Sentences of the templates, sampled: each intent's sentences with values of the home's
lists (its names, areas, floors) and of the templates' own, and what each one means.

What ``assistant warm`` asks ahead of people, and what ``make bench-understanding`` speaks.
Sentences that need a wildcard (a message, a list item) are not sampled: no value of them
would be the one people say.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hassil.expression import (
    Alternative,
    Expression,
    ListReference,
    Permutation,
    RuleReference,
    Sentence,
    TextChunk,
)
from hassil.expression import Sequence as Seq
from hassil.intents import (
    IntentData,
    Intents,
    RangeSlotList,
    SlotList,
    TextSlotList,
    TextSlotValue,
)
from hassil.util import check_excluded_context, check_required_context

from assistant.home import Home
from assistant.recognition.recognizer import Recognizer


class Unsampled(Exception):
    """A sentence that cannot be sampled (a wildcard, an empty list)."""


@dataclass(slots=True)
class Sample:
    """A sentence with what it means."""

    intent: str
    text: str
    slots: dict[str, Any] = field(default_factory=dict)
    area: str | None = None
    """The area (id) it is said in, when its sentence needs one."""


@dataclass(slots=True)
class _Walk:
    """One random walk through a sentence's expression, recording the slots it fills."""

    rng: random.Random
    lists: dict[str, SlotList]
    rules: dict[str, Sentence]
    data: IntentData
    slots: dict[str, Any] = field(default_factory=dict)

    def text(self, expression: Expression) -> str:
        if isinstance(expression, TextChunk):
            return str(expression.original_text if expression.original_text is not None
                       else expression.text)
        if isinstance(expression, Alternative):
            return self.text(self.rng.choice(expression.items))
        if isinstance(expression, Permutation):
            items = list(expression.items)
            self.rng.shuffle(items)
            return " ".join(self.text(item) for item in items)
        if isinstance(expression, Seq):
            return "".join(self.text(item) for item in expression.items)
        if isinstance(expression, RuleReference):
            return self.text(self.rules[expression.rule_name].expression)
        if isinstance(expression, ListReference):
            return self._list(expression)
        raise Unsampled(f"unexpected {type(expression).__name__}")

    def _list(self, ref: ListReference) -> str:
        slot_list = self.data.slot_lists.get(ref.list_name) or self.lists.get(ref.list_name)
        if isinstance(slot_list, RangeSlotList):
            numbers = [n for n in slot_list.get_numbers() if float(n).is_integer()]
            number = int(self.rng.choice(numbers))
            self.slots[ref.slot_name] = number * (slot_list.multiplier or 1)
            return str(number)
        if not isinstance(slot_list, TextSlotList):
            raise Unsampled(f"list {ref.list_name} cannot be sampled")
        values = [v for v in slot_list.values if _fits(v, self.data)]
        if not values:
            raise Unsampled(f"no value of {ref.list_name} fits")
        value = self.rng.choice(values)
        said = self.text(value.text_in)
        self.slots[ref.slot_name] = value.value_out if value.value_out is not None else said
        return said


def _fits(value: TextSlotValue, data: IntentData) -> bool:
    required = {k: v for k, v in (data.requires_context or {}).items() if k != "area"}
    if required and not check_required_context(required, value.context,
                                                allow_missing_keys=True):
        return False
    excluded = data.excludes_context
    return not (excluded and not check_excluded_context(excluded, value.context))


def sample_sentences(intents: Intents, lists: dict[str, SlotList], home: Home, *,
                     per_intent: int, seed: int, limit: int) -> list[Sample]:
    """Sentences of ``intents`` with values of ``lists``, ``per_intent`` of each intent (as
    many distinct ones as 40 tries find), balanced, at most ``limit`` in all."""
    rng = random.Random(seed)
    areas = sorted(home.areas)
    by_intent: dict[str, list[Sample]] = {}
    for name in sorted(intents.intents):
        intent = intents.intents[name]
        sentences = [(data, sentence) for data in intent.data for sentence in data.sentences
                     if not set(sentence.list_names({**intents.expansion_rules,
                                                     **data.expansion_rules}))
                     & data.wildcard_list_names]
        found: dict[str, Sample] = {}
        for _ in range(per_intent * 40):
            if len(found) >= per_intent or not sentences:
                break
            data, sentence = rng.choice(sentences)
            walk = _Walk(rng, lists, {**intents.expansion_rules, **data.expansion_rules}, data)
            try:
                text = " ".join(walk.text(sentence.expression).split())
            except Unsampled:
                continue
            area = None
            if "area" in (data.requires_context or {}):
                area = rng.choice(areas)
                walk.slots.setdefault("area", home.areas[area].name)
            if text and text.casefold() not in found:
                found[text.casefold()] = Sample(name, text, dict(walk.slots), area)
        if found:
            by_intent[name] = list(found.values())
    chosen: list[Sample] = []
    round_ = 0
    while len(chosen) < limit and any(len(s) > round_ for s in by_intent.values()):
        chosen += [s[round_] for s in by_intent.values() if len(s) > round_]
        round_ += 1
    return chosen[:limit]


def recognizer_lists(recognizer: Recognizer) -> dict[str, SlotList]:
    """The slot lists the recognizer matches with: the library's and the home's."""
    return recognizer.slot_lists
