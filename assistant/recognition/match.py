"""What recognition finds: the intent of a sentence, its slots, and the entities meant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from assistant.home import Entity

CUSTOM = "custom"
"""Metadata key marking the users' own sentences (they win ties)."""

STRICT = "strict"
"""Matched a template word for word (skip words aside), naming what the home has."""
FUZZY = "fuzzy"
"""Matched once a near miss was corrected: a misheard word, or a name said almost right."""
UNKNOWN_NAME = "unknown_name"
"""Shaped like a home command or question, naming a device, area or floor the home does not
have: answered with the library's error response, never a guess."""
STAGES = (STRICT, FUZZY, UNKNOWN_NAME)


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot of a match."""

    value: Any
    """What it means: a name, an area name, a number..."""
    text: str
    """What was said."""
    wildcard: bool = False
    """Free text captured by a wildcard: whatever the person said, so private to them."""


@dataclass(frozen=True, slots=True)
class Match:
    """A recognised sentence, with the entities it is about."""

    intent: str
    """The intent name."""
    slots: Mapping[str, Slot]
    """Slots by name (``name``, ``area``, ``floor``, ``domain``, ``brightness``...)."""
    response: str
    """hassil's response key (``default``, ``lights_area``...)."""
    targets: tuple[Entity, ...] = ()
    """The entities meant, resolved from name, area, floor, domain and the satellite's area."""
    custom: bool = False
    """Matched one of the users' own sentences."""
    text: str = ""
    """The sentence as recognised."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """hassil's metadata of the matched sentence block."""
    stage: str = STRICT
    """How it was matched: :data:`STRICT`, :data:`FUZZY` or :data:`UNKNOWN_NAME`."""
    error: str | None = None
    """For :data:`UNKNOWN_NAME`: the library's error key (``no_entity``, ``no_area``...)."""

    def slot_values(self) -> dict[str, Any]:
        """Slot name -> value, for templates."""
        return {name: slot.value for name, slot in self.slots.items()}
