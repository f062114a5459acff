"""The sentences the templates allow that lie nearest to what was heard.

A transcript of speech is often a near miss of a sentence the templates allow, in ways a
word-by-word correction cannot mend: words run together or split ("A Newt" for "unmute",
"Star Tower mower" for "start our mower"), a word heard as another ("Mad Room" for
"Bedroom"), a word dropped or added. Here every sentence template is compiled once into a
small graph of words (:mod:`~assistant.recognition.template_graph`), and a transcript is
aligned with it as one aligns two strings: each word of the template matched with a heard
word (or two heard words run together), at a cost of how unlike they are spelt; a template
word not heard, or a heard word not in the template, at a fixed cost. A list arc takes the
value nearest to the heard words it spans; a number range takes a number heard in its
range; a wildcard takes what was heard.

:class:`Nearest` returns the few cheapest sentences, as the templates spell them: text that
strict matching understands. It does not choose among them. What was said is best judged by
the speech model that heard it (see :mod:`assistant.speech.grammar`), which scores each
sentence against the audio.

Only templates that share words with what was heard are aligned: an index from each word
(and each word spelt like it) to the templates that use it picks them.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hassil.intents import (
    IntentData,
    Intents,
    RangeSlotList,
    SlotList,
    TextSlotList,
    WildcardSlotList,
)
from hassil.util import check_excluded_context, check_required_context
from rapidfuzz import fuzz, process

from assistant.recognition.template_graph import (
    Arc,
    Graph,
    compile_sentence,
    heard_words,
    value_texts,
)

DELETE = 0.9
"""Cost of a template word that was not heard."""
INSERT = 0.8
"""Cost of a heard word the template does not have."""
SMALL = frozenset(("a", "an", "the", "my", "our", "your", "to", "of", "in", "on", "at", "for",
                   "is", "are", "and", "please", "me", "i", "it", "with", "so", "now",
                   "thank", "thanks", "you", "hey", "ok", "okay", "oh", "um", "uh", "well"))
SMALL_COST = 0.45
"""Cost of leaving out or adding one of the :data:`SMALL` words, which speech drops and
adds most; "on" and "off" are among them only as the words of a place ("in", "on")."""
MERGE = 0.1
"""Extra cost of two heard words taken as one template word."""
MAX_TEMPLATES = 40
"""Templates aligned per transcript, those sharing most words with it first."""
PER_INTENT = 1
"""Templates of each intent aligned besides the :data:`MAX_TEMPLATES` first."""
WILDCARD = 0.4
"""Cost of each heard word a wildcard (a timer's name, a list item) takes: what it says
cannot be checked, so a template that explains the words is preferred."""
_NEAR_SCORE = 60.0
"""Spelling similarity (rapidfuzz ratio) at which a heard word leads to a template word."""
_MAX_SPAN = 4
"""Most heard words one list value or wildcard spans."""


def unlike(a: str, b: str) -> float:
    """How unlike two spellings are: 0 the same, 1 nothing alike."""
    if a == b:
        return 0.0
    return 1.0 - fuzz.ratio(a, b) / 100.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sentence the templates allow, near what was heard."""

    text: str
    intent: str
    slots: tuple[tuple[str, str], ...]
    """(slot, value as said) of each list it takes a value from, in order."""
    cost: float
    """The alignment's cost: 0 for exactly what was heard."""
    unexplained: int = 0
    """Words heard (other than :data:`SMALL` ones) it has nothing for."""
    free: int = 0
    """Words of it that a wildcard took as heard (a message, a list item)."""
    fixed: int = 0
    """Words of its template's own in it (not of a list), other than :data:`SMALL` ones:
    "turn", "off", "unpause"; none in a sentence that is only a name."""


class Nearest:
    """The sentences of a set of templates nearest to a transcript."""

    def __init__(self, intents: Intents, lists: Mapping[str, SlotList]) -> None:
        """``intents``: the templates served (hassil's); ``lists``: their slot lists with the
        home's names, areas and floors."""
        self._lists = {**intents.slot_lists, **lists}
        self._graphs: list[Graph] = []
        self._by_word: dict[str, set[int]] = defaultdict(set)
        self._list_words: dict[str, set[str]] = {}
        self._values: dict[str, list[tuple[str, str]]] = {}
        for name, intent in sorted(intents.intents.items()):
            for data in intent.data:
                rules = {**intents.expansion_rules, **data.expansion_rules}
                lists_here = {**self._lists, **data.slot_lists}
                rename = self._fit(data, lists_here)
                lists_here.update(self._lists)
                for sentence in data.sentences:
                    graph = compile_sentence(name, sentence, rules, rename)
                    if graph is not None:
                        self._index(graph, lists_here)
        self._vocabulary = sorted(self._by_word)
        # A word few templates use says more about which one was meant than "turn" does.
        count = max(1, len(self._graphs))
        self._weight = {w: (0.2 if w in SMALL else 1.0) * (1.0 + math.log(count / len(ns)))
                        for w, ns in self._by_word.items()}

    def _fit(self, data: IntentData, lists: Mapping[str, SlotList]) -> dict[str, str]:
        """Lists of names whose values carry a context (a domain, a device class), cut to
        the values that fit a sentence block's required and excluded context, as hassil
        matches them: each kept in :attr:`_lists` under a name of its own."""
        required = {k: v for k, v in (data.requires_context or {}).items() if k != "area"}
        excluded = dict(data.excludes_context or {})
        if not required and not excluded:
            return {}
        key = repr((sorted(required.items()), sorted(excluded.items())))
        rename = {}
        for name, slot_list in lists.items():
            if not isinstance(slot_list, TextSlotList) or \
                    not any(v.context for v in slot_list.values):
                continue
            fitted = f"{name}@{key}"
            if fitted not in self._lists:
                self._lists[fitted] = dataclasses.replace(slot_list, values=[
                    v for v in slot_list.values
                    if (not required or check_required_context(required, v.context,
                                                                allow_missing_keys=True))
                    and (not excluded or check_excluded_context(excluded, v.context))])
            rename[name] = fitted
        return rename

    def _index(self, graph: Graph, lists: Mapping[str, SlotList]) -> None:
        number = len(self._graphs)
        self._graphs.append(graph)
        words = set(graph.words)
        for arcs in graph.arcs:
            for arc in arcs:
                if arc.values is not None:
                    words |= self._list_vocabulary(arc.values, lists)
        for word in words:
            self._by_word[word].add(number)

    def _list_vocabulary(self, name: str, lists: Mapping[str, SlotList]) -> set[str]:
        if name not in self._list_words:
            values = self._list_values(name, lists)
            self._list_words[name] = {w for said, _ in values for w in said.split()}
        return self._list_words[name]

    def _list_values(self, name: str, lists: Mapping[str, SlotList]) -> list[tuple[str, str]]:
        """(words as heard, text as the template spells it) of each value of a text list."""
        if name not in self._values:
            slot_list = lists.get(name)
            values: list[tuple[str, str]] = []
            if isinstance(slot_list, TextSlotList):
                for value in slot_list.values:
                    for text in value_texts(value.text_in):
                        said = " ".join(heard_words(text))
                        if said:
                            values.append((said, text))
            self._values[name] = values
        return self._values[name]

    def near(self, texts: Iterable[str], *, limit: int = 8) -> list[Candidate]:
        """The ``limit`` sentences nearest to any of ``texts`` (transcripts of one request,
        best first), cheapest first, each once."""
        found: dict[str, Candidate] = {}
        aligned: set[tuple[str, ...]] = set()
        for rank, text in enumerate(texts):
            heard = heard_words(text)
            if tuple(heard) in aligned:  # the same words, other case or punctuation
                continue
            aligned.add(tuple(heard))
            for candidate in self._near_one(heard, rank * 0.05):
                key = " ".join(heard_words(candidate.text))
                if key not in found or found[key].cost > candidate.cost:
                    found[key] = candidate
        return heapq.nsmallest(limit, found.values(), key=lambda c: c.cost)

    def _near_one(self, heard: Sequence[str], extra: float) -> list[Candidate]:
        if not heard:
            return []
        # Each template scores, for each heard word, the word of its own nearest to it.
        leads: dict[int, float] = defaultdict(float)
        for word in set(heard):
            best: dict[int, float] = {}
            nears = process.extract(word, self._vocabulary, scorer=fuzz.ratio,
                                    score_cutoff=_NEAR_SCORE, limit=12)
            # A rare word spelt a little like the one heard says no more than that one.
            cap = self._weight[nears[0][0]] if nears else 0.0
            for near, score, _ in nears:
                weight = min(cap, self._weight[near]) * score / 100
                for number in self._by_word[near]:
                    if weight > best.get(number, 0.0):
                        best[number] = weight
            for number, weight in best.items():
                leads[number] += weight
        # The best of each intent first, so that one intent's many templates (turning on
        # has hundreds) do not crowd out the few of another; then the best of the rest.
        # (Among equals, the smaller template: fewer words it would add.)
        ranked = sorted(leads, key=lambda n: (-round(leads[n], 6), len(self._graphs[n].arcs)))
        firsts: dict[str, list[int]] = defaultdict(list)
        for number in ranked:
            intent = self._graphs[number].intent
            if len(firsts[intent]) < PER_INTENT:
                firsts[intent].append(number)
        chosen = [n for ns in firsts.values() for n in ns]
        taken = set(chosen)
        chosen += [n for n in ranked[:MAX_TEMPLATES] if n not in taken]
        spans = _Spans(heard, self)
        out = []
        for number in chosen:
            found = self._align(self._graphs[number], heard, spans)
            if found is not None:
                out.append(dataclasses.replace(found, cost=found.cost + extra))
        return out

    def _align(self, graph: Graph, heard: Sequence[str], spans: _Spans) -> Candidate | None:
        """The sentence of ``graph`` nearest to ``heard``, or None if it has none."""
        n = len(heard)
        inf = float("inf")
        cost = [[inf] * (n + 1) for _ in graph.arcs]
        back: list[list[tuple[int, int, str, Arc | None] | None]] = [
            [None] * (n + 1) for _ in graph.arcs]
        cost[0][0] = 0.0
        for state, arcs in enumerate(graph.arcs):
            row = cost[state]
            for i in range(n):  # a heard word the template lacks
                step = row[i] + (SMALL_COST if heard[i] in SMALL else INSERT)
                if step < row[i + 1]:
                    row[i + 1] = step
                    back[state][i + 1] = (state, i, "", None)
            for i in range(n + 1):
                here = row[i]
                if here == inf:
                    continue
                for arc in arcs:
                    for to, j, step, said in self._steps(graph, arc, heard, i, spans):
                        total = here + step
                        if total < cost[to][j]:
                            cost[to][j] = total
                            back[to][j] = (state, i, said, arc)
        best = cost[graph.final][n]
        if best == inf:
            return None
        words, slots = [], []
        unexplained = free = fixed = 0
        state, i = graph.final, n
        while (state, i) != (0, 0):
            came = back[state][i]
            assert came is not None
            state, i, said, taken = came
            if said:
                words.append(said)
            if taken is None and heard[i] not in SMALL:
                unexplained += 1
            elif taken is not None and taken.word is not None:
                fixed += sum(w not in SMALL for w in said.split())
            elif taken is not None and taken.slot is not None:
                slots.append((taken.slot, said))
                if isinstance(self._lists.get(taken.values or ""), WildcardSlotList):
                    free += len(said.split())
        return Candidate(" ".join(reversed(words)), graph.intent, tuple(reversed(slots)), best,
                         unexplained=unexplained, free=free, fixed=fixed)

    def _steps(self, graph: Graph, arc: Arc, heard: Sequence[str], i: int,
               spans: _Spans) -> Iterable[tuple[int, int, float, str]]:
        """(state, heard words, cost, words said) of each way to take ``arc`` from heard
        word ``i``."""
        if arc.word is not None:
            word = arc.word
            yield arc.to, i, (SMALL_COST if word in SMALL else DELETE), word
            if i < len(heard):
                yield arc.to, i + 1, _substitute(word, heard[i]), word
                # Two template words heard as one ("lighting" for "light in").
                for after in graph.following(arc.to):
                    assert after.word is not None
                    yield (after.to, i + 1, MERGE + unlike(word + after.word, heard[i]),
                           f"{word} {after.word}")
            if i + 1 < len(heard):
                yield arc.to, i + 2, MERGE + unlike(word, heard[i] + heard[i + 1]), word
            return
        if arc.values is None:
            yield arc.to, i, 0.0, ""
            return
        for j, cost, said in spans.slot(arc.values, i):
            yield arc.to, j, cost, said


def _substitute(word: str, heard: str) -> float:
    if word == heard:
        return 0.0
    if word in SMALL or heard in SMALL:
        return max(unlike(word, heard), 0.5)
    return unlike(word, heard)


class _Spans:
    """The costs of list values over spans of one transcript, worked out once."""

    def __init__(self, heard: Sequence[str], nearest: Nearest) -> None:
        self._heard = heard
        self._nearest = nearest
        self._found: dict[tuple[str, int], list[tuple[int, float, str]]] = {}

    def slot(self, name: str, i: int) -> list[tuple[int, float, str]]:
        key = (name, i)
        if key not in self._found:
            self._found[key] = self._work(name, i)
        return self._found[key]

    def _work(self, name: str, i: int) -> list[tuple[int, float, str]]:
        heard, n = self._heard, len(self._heard)
        slot_list = self._nearest._lists.get(name)
        steps: list[tuple[int, float, str]] = []
        if isinstance(slot_list, RangeSlotList):
            if i < n and _in_range(heard[i], slot_list):
                steps.append((i + 1, 0.0, heard[i]))
            return steps
        if isinstance(slot_list, WildcardSlotList):
            for j in range(i + 1, min(n, i + _MAX_SPAN) + 1):
                steps.append((j, WILDCARD * (j - i), " ".join(heard[i:j])))
            return steps
        values = self._nearest._list_values(name, self._nearest._lists)
        if not values:
            return steps
        said = [v for v, _ in values]
        for j in range(i + 1, min(n, i + _MAX_SPAN) + 1):
            span = " ".join(heard[i:j])
            best = process.extractOne(span, said, scorer=fuzz.ratio)
            if best is None:
                continue
            value, score, index = best
            words = value.count(" ") + 1
            cost = (1.0 - score / 100.0) * max(words, j - i)
            if cost <= 0.6 * max(words, j - i):
                steps.append((j, cost, values[index][1]))
        return steps


def _in_range(word: str, slot_list: RangeSlotList) -> bool:
    try:
        number = float(word.rstrip("%°"))
    except ValueError:
        return False
    return slot_list.start <= number <= slot_list.stop
