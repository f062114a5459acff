"""Sentence templates laid out as small graphs of words, for aligning transcripts with them.

A hassil sentence template becomes a :class:`Graph`: its alternatives, optional parts,
permutations (of up to :data:`MAX_PERMUTED` items) and rules laid out as states and arcs,
every arc going to a higher state; a word ending left open to a suffix ("light[s]") becomes
the whole words it makes; each list reference is one arc that takes a value of its list.
:func:`compile_sentence` builds one; :mod:`assistant.recognition.nearest` aligns them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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

from assistant.recognition.normalise import normalise

MAX_PERMUTED = 4
"""Longest permutation laid out as every order (4! = 24)."""
_WORD = re.compile(r"[a-z0-9][a-z0-9'.%°-]*")


def heard_words(text: str) -> list[str]:
    """``text`` as words to align: normalised numbers, lower case, no punctuation."""
    return [w.strip(".'-") for w in _WORD.findall(normalise(text).casefold()) if w.strip(".'-")]


@dataclass(frozen=True, slots=True)
class Arc:
    """One step of a template's graph."""

    to: int
    word: str | None = None
    """A word of the template; None with :attr:`slot` or for a step that says nothing."""
    slot: str | None = None
    """A list reference: its slot name."""
    values: str | None = None
    """The list it takes values from."""


@dataclass(slots=True)
class Graph:
    """A sentence template laid out as states; every arc goes to a higher state."""

    intent: str
    arcs: list[list[Arc]] = field(default_factory=lambda: [[]])
    final: int = 0
    words: set[str] = field(default_factory=set)
    _following: dict[int, list[Arc]] = field(default_factory=dict)

    def following(self, state: int) -> list[Arc]:
        """:meth:`next_words` of ``state``, worked out once."""
        found = self._following.get(state)
        if found is None:
            found = self._following[state] = self.next_words(state)
        return found

    def state(self) -> int:
        self.arcs.append([])
        return len(self.arcs) - 1

    def next_words(self, state: int) -> list[Arc]:
        """The word arcs reachable from ``state`` through steps that say nothing."""
        found: list[Arc] = []
        todo, seen = [state], {state}
        while todo:
            for arc in self.arcs[todo.pop()]:
                if arc.word is not None:
                    found.append(arc)
                elif arc.values is None and arc.to not in seen:
                    seen.add(arc.to)
                    todo.append(arc.to)
        return found

    def arc(self, start: int, arc: Arc) -> None:
        self.arcs[start].append(arc)


class _TooBig(Exception):
    pass


@dataclass(slots=True)
class _Builder:
    graph: Graph
    rules: Mapping[str, Sentence]
    rename: Mapping[str, str]
    """List name -> the name of its values that fit the sentences' context."""
    budget: int = 4000

    def add(self, expression: Expression, start: int) -> int:
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig
        if isinstance(expression, TextChunk):
            state = start
            for word in heard_words(expression.text):
                end = self.graph.state()
                self.graph.arc(state, Arc(end, word=word))
                self.graph.words.add(word)
                state = end
            return state
        if isinstance(expression, Alternative):
            ends = [self.add(item, start) for item in expression.items]
            end = self.graph.state()
            for item_end in ends:
                self.graph.arc(item_end, Arc(end))
            if expression.is_optional:
                self.graph.arc(start, Arc(end))
            return end
        if isinstance(expression, Permutation):
            if len(expression.items) > MAX_PERMUTED:
                raise _TooBig
            orders = [Seq(list(order)) for order in itertools.permutations(expression.items)]
            return self.add(Alternative(list(orders)), start)
        if isinstance(expression, Seq):
            state = start
            for item in _whole_words(expression.items):
                state = self.add(item, state)
            return state
        if isinstance(expression, RuleReference):
            rule = self.rules.get(expression.rule_name)
            if rule is None:
                raise _TooBig
            return self.add(rule.expression, start)
        if isinstance(expression, ListReference):
            end = self.graph.state()
            self.graph.arc(start, Arc(end, slot=expression.slot_name,
                                      values=self.rename.get(expression.list_name,
                                                             expression.list_name)))
            return end
        raise _TooBig


def compile_sentence(intent: str, sentence: Sentence, rules: Mapping[str, Sentence],
                     rename: Mapping[str, str]) -> Graph | None:
    """``sentence`` of ``intent`` as a graph (``rules``: the expansion rules it may use;
    ``rename``: list name -> the list its arcs take values from); None when it is too big
    or uses what cannot be laid out."""
    graph = Graph(intent)
    try:
        graph.final = _Builder(graph, rules, rename).add(sentence.expression, 0)
    except _TooBig:
        return None
    return graph


_SUFFIX = re.compile(r"[a-z']{0,3}")


def _whole_words(items: Sequence[Expression]) -> list[Expression]:
    """``items`` with each word ending left open to a suffix ("light[s]", "timer(s|)") laid
    out as the whole words it makes ("light" or "lights"): a heard word is matched whole."""
    out: list[Expression] = []
    for item in items:
        before = out[-1] if out else None
        endings = _endings(item) if isinstance(before, TextChunk) \
            and before.text[-1:].isalpha() else None
        if endings is not None and isinstance(before, TextChunk):
            out[-1] = Alternative([TextChunk(before.text + e) for e in endings])
            continue
        out.append(item)
    return out


def _endings(item: Expression) -> list[str] | None:
    """The word endings an alternative of bare letters ("[s]", "(s|es)") offers, or None."""
    if not isinstance(item, Alternative) or not item.items:
        return None
    endings = [""] if item.is_optional else []
    for choice in item.items:
        while isinstance(choice, Seq) and len(choice.items) == 1:
            choice = choice.items[0]
        if not isinstance(choice, TextChunk) or not _SUFFIX.fullmatch(choice.text):
            return None
        endings.append(choice.text)
    return list(dict.fromkeys(endings))


def value_texts(expression: Expression) -> list[str]:
    """Each way of saying a list value's text (its alternatives laid out, at most 16)."""
    if isinstance(expression, TextChunk):
        return [expression.text]
    if isinstance(expression, Alternative):
        out = [t for item in expression.items for t in value_texts(item)]
        if expression.is_optional:
            out.append("")
        return out[:16]
    if isinstance(expression, Seq):
        texts = [""]
        for item in expression.items:
            texts = [a + b for a in texts for b in value_texts(item)][:16]
        return texts
    if isinstance(expression, Sentence):
        return value_texts(expression.expression)
    return []
