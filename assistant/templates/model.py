"""What an intent template says, once loaded and checked: the types the rest reads.

Intent templates (``intents/*.yaml``) are the part of the assistant its users edit.

A file holds, per intent, hassil sentences (for intents of the user's own), a
response plan (fragments, per response key), an optional system prompt and an
optional action, plus the file's lists and expansion rules::

    language: en
    intents:
      HassTurnOn:                 # a built-in intent: sentences come from Home Assistant
        responses:
          default:
            - text: "Turned on {{ targets | names }}."
        action:
          publish: "{{ entity.command_topic }}"
          payload: "ON"
      WhatToCook:                 # an intent of the user's own: hassil sentence format
        data:
          - sentences: ["what should I cook [tonight]"]
        system_prompt: "You suggest simple dinners to {{ user }}."
        responses:
          default:
            - generate: {prompt: "Suggest one dinner.", max_tokens: 40, scope: user,
                         ttl: 3600, fallback: "I have no idea yet."}
    lists: {}
    expansion_rules: {}

Templates are Jinja2 in a sandbox with strict undefined variables: a template
cannot reach Python internals, and a missing variable is an error, not an empty
string. Both are checked when the file is loaded, with the file and line named.
Each intent has a version (a hash of its section and of the file's lists and
rules) that goes into every cache key made from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

VARY_BY = ("minute", "hour", "day")
"""Time buckets a template may depend on; the bucket is part of its cache key."""

BASE_VARIABLES = frozenset({"slots", "targets", "target", "user", "site", "intent"})
"""What every response template may use; ``time`` only with ``vary_by``."""

ACTION_VARIABLES = BASE_VARIABLES | {"entity"}


@dataclass(frozen=True, slots=True, eq=False)
class Template:
    """A Jinja2 template checked when its file was loaded (compared by identity: a reload
    makes new ones)."""

    compiled: jinja2.Template
    """The template, compiled in the sandbox."""
    reads: frozenset[str]
    """The variables it reads: only these go into the cache keys of what it renders."""
    head: str
    """The literal text every rendering starts with, up to its first expression, cut at
    the last whole word."""

    def render(self, context: Mapping[str, Any]) -> str:
        """The template rendered with ``context`` (:class:`jinja2.TemplateError` if it fails)."""
        return self.compiled.render(context)


def intent_tag(name: str) -> str:
    """The tag every cached item made from intent ``name`` carries."""
    return f"intent:{name}"


def template_reads(template: Template | None) -> frozenset[str]:
    """The variables a template reads (none for ``None``)."""
    return frozenset() if template is None else template.reads


def template_head(template: Template | None) -> str:
    """The literal text every rendering of a template starts with ("" for ``None``)."""
    return "" if template is None else template.head


@dataclass(frozen=True, slots=True)
class Generate:
    """A generated part of an answer."""

    prompt: Template
    """The prompt, rendered with the same variables as text fragments."""
    max_tokens: int
    """Generation limit."""
    temperature: float
    """0 for greedy decoding."""
    seed: int | None
    """Fixed seed; with temperature > 0 and no seed the output is never cached."""
    scope: str
    """``shared`` (cached once for everyone) or ``user`` (cached per user)."""
    ttl: float
    """Seconds the generated text is kept."""
    fallback: str
    """Said instead when generation fails or times out (never cached)."""


@dataclass(frozen=True, slots=True)
class Fragment:
    """One piece of a response: static text or a generated part."""

    line: int
    """Where it is defined."""
    text: Template | None = None
    """A static fragment's template."""
    generate: Generate | None = None
    """A generated fragment's settings."""
    uses_user: bool = False
    """Does it depend on who asks? (``scope: user``, or it reads the user.)"""
    uses: frozenset[str] = frozenset()
    """The variables it reads: only these go into its cache key."""


@dataclass(frozen=True, slots=True)
class Action:
    """An MQTT publish per target entity."""

    topic: Template
    """The topic, e.g. ``{{ entity.command_topic }}``."""
    payload: Template
    """The payload, e.g. ``ON``."""
    retain: bool = False
    """Publish retained."""


@dataclass(frozen=True, slots=True)
class IntentTemplate:
    """Everything one intent's section says."""

    name: str
    """The intent, e.g. ``HassTurnOn``."""
    file: str
    """The file it is defined in, relative to the intents folder."""
    line: int
    """Where its section starts."""
    version: str
    """Hash of its section and of its file's lists and expansion rules."""
    responses: Mapping[str, Sequence[Fragment]]
    """Fragments by response key (hassil's ``response``); ``default`` is the fallback."""
    system_prompt: Template | None = None
    """The system prompt for its generated parts (or the default one)."""
    action: Action | None = None
    """What it does to the home."""
    vary_by: str | None = None
    """The time bucket its answers depend on."""
    sentences: Sequence[Mapping[str, Any]] = ()
    """hassil ``data`` blocks of an intent of the user's own."""

    @property
    def tags(self) -> tuple[str, ...]:
        """Cache tags of everything made from it."""
        return (intent_tag(self.name), f"template:{self.file}")

    def fragments(self, response: str | None) -> Sequence[Fragment]:
        """The fragments for a response key, or the default ones."""
        if response and response in self.responses:
            return self.responses[response]
        return self.responses.get("default", ())


@dataclass(frozen=True, slots=True)
class TemplateSet:
    """Every intent template, loaded and checked."""

    intents: Mapping[str, IntentTemplate] = field(default_factory=dict)
    """By intent name."""
    language: str = "en"
    """The language of the sentences."""
    sentences: Mapping[str, Any] = field(default_factory=dict)
    """hassil's dict of the users' own sentences, lists and expansion rules."""
    default_system_prompt: Template | None = None
    """Used by intents without a system prompt, and for questions no intent matched."""

    def versions(self) -> dict[str, str]:
        """Intent name -> version."""
        return {name: t.version for name, t in self.intents.items()}
