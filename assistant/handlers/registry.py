"""Intents answered from the assistant's own state: timers, lists, broadcasts.

The responder asks this registry before it renders an intent's template. A handler changes
the state it keeps (starts a timer, adds an item to someone's list) and says what the answer
may say of it (speech slots, as Home Assistant's intent handlers set them), which response
to give or which error, and what the transport must send for it (a broadcast). These answers
are rendered each time and never cached: they change with the state they report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from assistant.answers.context import render
from assistant.answers.fragments import FragmentResult, said_freely
from assistant.answers.responder import Answer
from assistant.home import Area, Home
from assistant.recognition.library import error_response
from assistant.recognition.match import Match
from assistant.speech.sentences import join_sentences
from assistant.templates.model import IntentTemplate


@dataclass(frozen=True, slots=True)
class Asked:
    """One request to a handler: what was recognised, in which home, by whom, where."""

    match: Match
    home: Home
    user: str | None = None
    """Who asks (``None``: someone the assistant does not know)."""
    site: str | None = None
    """The satellite it was said to."""

    @property
    def area(self) -> Area | None:
        """The area of the satellite (a site named after an area is in it)."""
        return self.home.areas.get(self.site) if self.site else None

    def slot(self, name: str) -> Any:
        """A slot's value, or ``None``."""
        slot = self.match.slots.get(name)
        return None if slot is None else slot.value

    def number(self, name: str) -> int | None:
        """A slot's value as a whole number, or ``None``."""
        value = self.slot(name)
        return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class Handled:
    """What a handler did, for the answer and the transport."""

    slots: Mapping[str, Any] = field(default_factory=dict)
    """Speech slots: added to the match's slots for the response template."""
    response: str | None = None
    """The response to render (``None``: the one the sentence matched)."""
    error: str | None = None
    """An error response key (``timer_not_found``...): the template's response of that name,
    else the library's error response, else ``otherwise``, is said instead."""
    otherwise: str = "Sorry, I couldn't do that."
    """Said for an error neither the template nor the library has a response for."""
    effects: tuple[object, ...] = ()
    """What the transport sends for it (a broadcast), once the answer is committed."""
    personal: bool = False
    """The answer tells something of the asker's own (their list, their words)."""


class IntentHandler(Protocol):
    """Answers some intents from state of its own."""

    intents: frozenset[str]
    """The intents it handles."""

    def handle(self, asked: Asked) -> Handled:
        """Do what ``asked`` asks; what the answer may say of it."""
        ...


class Handlers:
    """The handlers of the intents that need the assistant's state, by intent."""

    def __init__(self, handlers: Iterable[IntentHandler], *, language: str = "en") -> None:
        self._by_intent: dict[str, IntentHandler] = {}
        for handler in handlers:
            for intent in handler.intents:
                self._by_intent[intent] = handler
        self.language = language

    def handles(self, intent: str) -> bool:
        """Is ``intent`` answered from state here?"""
        return intent in self._by_intent

    def answer(self, match: Match, template: IntentTemplate, home: Home, *, user: str | None,
               site: str | None, context: Mapping[str, Any]) -> Answer:
        """Handle ``match`` and render its answer (``context``: what its template sees)."""
        started = time.perf_counter()
        handled = self._by_intent[match.intent].handle(Asked(match, home, user, site))
        text = self.text(template, match, handled, context)
        personal = handled.personal or said_freely(match)
        return Answer(
            text=text, intent=match.intent, slots=match.slot_values(),
            targets=tuple(e.entity_id for e in match.targets),
            fragments=(FragmentResult("text", text, "computed", time.perf_counter() - started,
                                      personal),),
            effects=handled.effects)

    def text(self, template: IntentTemplate, match: Match, handled: Handled,
             context: Mapping[str, Any]) -> str:
        """The answer's words: the response (or error response) rendered with the speech
        slots; a generated part says its fallback (state is reported, never invented)."""
        key = handled.error or handled.response or match.response
        if handled.error is not None and handled.error not in template.responses:
            return error_response(handled.error, {}, self.language, otherwise=handled.otherwise)
        scope = {**context, "slots": {**context.get("slots", {}), **handled.slots}}
        parts = []
        for fragment in template.fragments(key):
            if fragment.text is None:
                parts.append(fragment.generate.fallback if fragment.generate else "")
                continue
            where = f"{template.file}, line {fragment.line} ({template.name})"
            parts.append(render(fragment.text, scope, where=where))
        return join_sentences(p for p in parts if p)
