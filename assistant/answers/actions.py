"""What an answer does to the home: one MQTT publish per target entity, or why it can't."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from assistant.answers.context import entity_view, render
from assistant.home import Home
from assistant.recognition.match import Match
from assistant.templates.model import IntentTemplate
from assistant.templates.sandbox import spoken_names


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """An MQTT publish the answer asks for."""

    entity_id: str
    """The entity it acts on."""
    topic: str
    """Where to publish."""
    payload: str
    """What to publish."""
    retain: bool = False
    """Publish retained."""


def refusal(template: IntentTemplate, match: Match) -> str | None:
    """Why an intent that acts cannot act on what ``match`` names, or ``None`` when it can.

    Several things sharing the name with nothing said to tell which: ask, do not guess (as
    Home Assistant does with duplicate names). Nothing there that takes commands: never
    claim to have done what nothing was there to do.
    """
    if template.action is None:
        return None
    if "name" in match.slots and len(match.targets) > 1:
        return (f"There is more than one {match.slots['name'].value}; "
                "say which room it is in.")
    if not any(e.command_topic for e in match.targets):
        return _nothing_to_act_on(match)
    return None


def _nothing_to_act_on(match: Match) -> str:
    slots = match.slot_values()
    if match.targets:
        names = spoken_names([{"name": e.name} for e in match.targets])
        return f"Sorry, I can't control {names}."
    if "name" in slots:
        thing = f"the {slots['name']}"
    elif "domain" in slots:
        domain = slots["domain"]
        domain = domain[0] if isinstance(domain, list) and domain else domain
        thing = f"any {str(domain).replace('_', ' ')}s"
    else:
        thing = "anything to control"
    if "area" in slots:
        thing += f" in the {slots['area']}"
    elif "floor" in slots:
        thing += f" on the {slots['floor']}"
    return f"Sorry, I couldn't find {thing}."


def planned_actions(template: IntentTemplate, match: Match, home: Home,
                    context: Mapping[str, Any]) -> list[PlannedAction]:
    """The publishes ``template``'s action asks for, one per target that takes commands."""
    action = template.action
    if action is None:
        return []
    where = f"{template.file}, line {template.line} ({template.name}.action)"
    actions = []
    for entity in match.targets:
        view = entity_view(entity, home)
        if not view["command_topic"]:
            continue
        scope = {**context, "entity": view}
        topic = render(action.topic, scope, where=where, collapse=False)
        payload = render(action.payload, scope, where=where, collapse=False)
        if topic:
            actions.append(PlannedAction(entity.entity_id, topic, payload, action.retain))
    return actions
