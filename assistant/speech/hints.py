"""What speech recognition is told to expect: the home's names and the templates' words.

Whisper decodes better when it has seen the words before: a transcript of "turn off the
living room fan" comes out as "living room pan" less often when "Living Room" and "Fan" are
in the text it was given as what came before the audio (its prompt). :class:`SpeechHints`
holds that text, made from the home (entity names and aliases, areas, floors) and from the
words of the sentences the templates serve (Home Assistant's library for the intents that
have a template here, and the users' own sentences).

Hints are made once per recognizer, not per request (:func:`hints_for`), and their
:attr:`SpeechHints.version` is part of every transcript's cache key, so a transcript heard
with the hints of another home is never served.
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from assistant.home import Home
from assistant.recognition.library import library
from assistant.templates.model import TemplateSet

if TYPE_CHECKING:
    from assistant.recognition.recognizer import Recognizer

MAX_PROMPT_CHARS = 600
"""Longest prompt: about 150 tokens, under the 223 Whisper keeps of a prompt. Every token of
it is decoded before the audio's own, so a longer one costs time on every request."""

_REFERENCE = re.compile(r"\{[^}]*\}|<[^>]*>")
"""``{list}`` and ``<rule>`` references in a hassil sentence template."""
_WORD = re.compile(r"[a-z][a-z']+")
_ENDING = re.compile(r"(?<=[a-z])[\[(](?:s|es|'s)[\])]")
"""An optional plural or possessive ending (``light[s]``): part of the word before it."""
_COMMON = frozenset((
    "a", "an", "the", "my", "our", "your", "me", "i", "you", "it", "is", "are", "be", "to", "of",
    "in", "on", "at", "for", "and", "or", "what", "whats", "what's", "how", "hows", "how's",
    "this", "that", "there", "here", "please", "can", "could", "would", "will", "do", "does"))
"""Words every transcript gets right without help: not worth a place in the prompt."""


@dataclass(frozen=True, slots=True)
class SpeechHints:
    """The text the speech decoder is given as what was said before the audio."""

    names: tuple[str, ...]
    """The home's names: entities (with aliases), areas and floors, as their owner wrote them."""
    words: tuple[str, ...]
    """The templates' words (most used first), without those of the names."""
    prompt: str
    """What the decoder is given: the words, then the names (Whisper keeps a long prompt's
    end, so the names come last)."""
    version: str
    """A hash of :attr:`prompt`: part of the cache key of every transcript made with it."""

    def rare_names(self, pieces: Callable[[str], int]) -> tuple[str, ...]:
        """The names with a word the decoder writes in more than one piece (``pieces``: how
        many tokens a word takes, lower case after a space): words it has rarely seen, the
        ones a prompt helps with ("Roomba", "Velux", "Lutron"). Everyday words ("Kitchen
        Light") are better heard without one: on the bench's home a prompt of every name
        cost accuracy and time."""
        return tuple(n for n in self.names
                     if any(pieces(w) > 1 for w in _WORD.findall(n.casefold())))

    def rare_words(self, pieces: Callable[[str], int], *, limit: int = 20) -> tuple[str, ...]:
        """The templates' words the decoder writes in more than one piece ("unpause",
        "unmute", "mower"), most used first, at most ``limit``; spellings without their
        apostrophe ("todays" beside "today's") are left out."""
        vocabulary = set(self.words)
        found = [w for w in self.words if "'" not in w and f"{w[:-1]}'s" not in vocabulary
                 and pieces(w) > 1]
        return tuple(found[:limit])

    @classmethod
    def build(cls, home: Home, templates: TemplateSet, *, words: int = 0,
              max_chars: int = MAX_PROMPT_CHARS) -> SpeechHints:
        """Hints of ``home`` and of the sentences ``templates`` serve.

        ``words``: how many of the templates' words (most used first) go into the prompt, 0
        (the default) for the names alone: the words cost accuracy and time on the bench's
        spoken requests; ``max_chars`` bounds the whole prompt.
        """
        names = home_names(home)
        said = {w for name in names for w in _WORD.findall(name.casefold())}
        vocabulary = tuple(w for w in template_words(templates) if w not in said)
        head = ", ".join(vocabulary[:words])
        tail = ", ".join(names)
        prompt = f"{head}. {tail}." if head else f"{tail}."
        if len(prompt) > max_chars:  # keep the names, cut at a comma
            prompt = prompt[-max_chars:]
            prompt = prompt[prompt.find(",") + 1 :].strip() if "," in prompt else prompt
        version = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        return cls(names=names, words=vocabulary, prompt=prompt, version=version)


def home_names(home: Home) -> tuple[str, ...]:
    """Every name people may say for a thing of ``home``: entities (names and aliases), then
    areas, then floors; each once, in the order first met."""
    seen: dict[str, str] = {}
    groups: Iterable[Iterable[str]] = (
        *((e.name, *e.aliases) for e in home.entities.values()),
        *((a.name, *a.aliases) for a in home.areas.values()),
        *((f.name, *f.aliases) for f in home.floors.values()),
    )
    for group in groups:
        for name in group:
            if name.strip():
                seen.setdefault(name.strip().casefold(), name.strip())
    return tuple(seen.values())


def template_words(templates: TemplateSet) -> tuple[str, ...]:
    """The words of the sentences ``templates`` serve, most used first: Home Assistant's
    library for the built-in intents that have a template, and the users' own sentences,
    with the expansion rules and the value lists they use."""
    counts: Counter[str] = Counter()
    data = library(templates.language)
    served = set(templates.intents)
    blocks = [d for name, intent in data["intents"].items() if name in served
              for d in intent.get("data", ())]
    own = templates.sentences
    blocks += [d for intent in (own.get("intents") or {}).values()
               for d in (intent or {}).get("data", ())]
    rules = {**data.get("expansion_rules", {}), **(own.get("expansion_rules") or {})}
    lists: dict[str, Any] = {**data.get("lists", {}), **(own.get("lists") or {})}
    for text in _texts(blocks, rules, lists):
        plain = _ENDING.sub("", _REFERENCE.sub(" ", text.casefold()))
        counts.update(w for w in _WORD.findall(plain)
                      if w not in _COMMON)
    return tuple(word for word, _ in counts.most_common())


def _texts(blocks: list[Mapping[str, Any]], rules: Mapping[str, str],
           lists: Mapping[str, Any]) -> Iterator[str]:
    """The template text of the blocks, the rules they use and the values of their lists."""
    used_lists: set[str] = set()
    for block in blocks:
        for sentence in block.get("sentences", ()):
            yield sentence
            used_lists.update(m.split(":")[0] for m in re.findall(r"\{([^}]*)\}", sentence))
        yield from (block.get("expansion_rules") or {}).values()
    yield from rules.values()
    for name in sorted(used_lists):
        values = (lists.get(name) or {}).get("values") if isinstance(lists.get(name), dict) \
            else None
        for value in values or ():
            yield value["in"] if isinstance(value, dict) else str(value)


_BY_RECOGNIZER: weakref.WeakKeyDictionary[Recognizer, SpeechHints] = weakref.WeakKeyDictionary()
_BY_VERSION: dict[tuple[Any, ...], SpeechHints] = {}
_LOCK = threading.Lock()
_VERSIONS_KEPT = 8


def hints_for(recognizer: Recognizer) -> SpeechHints:
    """The hints of the home and templates ``recognizer`` matches against, made once per
    recognizer (and shared by recognizers of the same home names and template versions)."""
    with _LOCK:
        found = _BY_RECOGNIZER.get(recognizer)
    if found is not None:
        return found
    templates = recognizer.templates
    key = (recognizer.home.version, templates.language,
           tuple(sorted(templates.versions().items())))
    with _LOCK:
        found = _BY_VERSION.get(key)
    if found is None:
        found = SpeechHints.build(recognizer.home, templates)
    with _LOCK:
        if len(_BY_VERSION) >= _VERSIONS_KEPT:
            _BY_VERSION.pop(next(iter(_BY_VERSION)))
        _BY_VERSION[key] = found
        _BY_RECOGNIZER[recognizer] = found
    return found
