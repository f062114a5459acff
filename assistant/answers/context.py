"""What a response template sees: the slots, the target entities, who asks, where, when."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from typing import Any

import jinja2

from assistant.errors import TemplateError
from assistant.home import Entity, Home
from assistant.recognition.match import Match
from assistant.templates.model import IntentTemplate, Template

BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
"""How long an answer that varies by a time bucket may be kept."""


def entity_view(entity: Entity, home: Home) -> dict[str, Any]:
    """What templates see of an entity."""
    area = home.area_of(entity)
    return {
        "entity_id": entity.entity_id,
        "name": entity.name,
        "domain": entity.domain,
        "area": area.name if area else None,
        "state": entity.state,
        "attributes": dict(entity.attributes),
        "command_topic": entity.command_topic,
        "state_topic": entity.state_topic,
    }


def time_bucket(vary_by: str, clock: Callable[[], float], tz: tzinfo | None) -> datetime:
    """The start of the minute, hour or day it is now."""
    now = datetime.fromtimestamp(clock(), tz=tz).astimezone(tz)
    if vary_by == "minute":
        return now.replace(second=0, microsecond=0)
    if vary_by == "hour":
        return now.replace(minute=0, second=0, microsecond=0)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def template_context(match: Match | None, template: IntentTemplate | None, home: Home, *,
                     user: str | None, site: str | None, clock: Callable[[], float],
                     tz: tzinfo | None) -> dict[str, Any]:
    """Everything a template of ``match`` may use (no match: a sentence no intent matched)."""
    targets = [entity_view(e, home) for e in match.targets] if match is not None else []
    context: dict[str, Any] = {
        "slots": match.slot_values() if match is not None else {}, "targets": targets,
        "target": targets[0] if targets else None,
        "user": user or "", "site": site or "", "intent": match.intent if match else None,
    }
    if template is not None and template.vary_by:
        context["time"] = time_bucket(template.vary_by, clock, tz)
    return context


def render(source: Template, context: Mapping[str, Any], *, where: str,
           collapse: bool = True) -> str:
    """``source`` rendered with ``context`` and stripped (and its white space collapsed,
    unless not ``collapse``); :class:`TemplateError` naming ``where`` when it fails."""
    try:
        text = source.render(context)
    except jinja2.TemplateError as error:
        raise TemplateError(f"{where}: {error}") from error
    return " ".join(text.split()) if collapse else text.strip()
