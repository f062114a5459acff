"""Which entities a match is about: resolved from its slots and where it was said, the way
Home Assistant's intent handlers do."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from assistant.home import Entity, Home
from assistant.recognition.match import Match


def with_targets(match: Match, home: Home, context: Mapping[str, Any],
                  said_in: str | None) -> Match:
    """Resolve the entities a match is about, the way Home Assistant's handlers do."""
    slots = match.slots
    domains = _as_set(slots["domain"].value) if "domain" in slots else _as_set(
        context.get("domain")) or set(_IMPLIED_DOMAINS.get(match.intent, ()))
    device_class = _as_set(slots["device_class"].value) if "device_class" in slots else set()
    area = home.area_named(str(slots["area"].value)) if "area" in slots else None
    floor = home.floor_named(str(slots["floor"].value)) if "floor" in slots else None

    def fits(entity: Entity) -> bool:
        return ((not domains or entity.domain in domains)
                and (not device_class or entity.device_class in device_class))

    if match.intent in _AREA_IS_THE_JOB:
        # "clean the kitchen": the area is what to clean, not where the vacuum is. The vacuum
        # named, else those where it was said, else every one.
        if "name" in slots:
            candidates = [e for e in home.named(str(slots["name"].value)) if fits(e)]
        else:
            every = [e for e in home.entities.values() if fits(e)]
            candidates = [e for e in every if e.area == said_in] or every
    elif "name" in slots:
        candidates = [e for e in home.named(str(slots["name"].value)) if fits(e)]
        if area is not None:  # "the lamp in the bedroom": only that one, or none
            candidates = [e for e in candidates if e.area == area.id]
        elif floor is not None:
            on_floor = {e.entity_id for e in home.on_floor(floor.id)}
            candidates = [e for e in candidates if e.entity_id in on_floor]
        elif said_in is not None and len(candidates) > 1:
            candidates = [e for e in candidates if e.area == said_in] or candidates
    elif area is not None:
        candidates = [e for e in home.in_area(area.id) if fits(e)]
    elif floor is not None:
        candidates = [e for e in home.on_floor(floor.id) if fits(e)]
    elif domains or device_class:
        candidates = [e for e in home.entities.values() if fits(e)]
        if said_in is not None:
            candidates = [e for e in candidates if e.area == said_in] or candidates
    else:
        candidates = []
    candidates.sort(key=lambda e: e.entity_id)
    return dataclasses.replace(match, targets=tuple(candidates))


_AREA_IS_THE_JOB = frozenset({"HassVacuumCleanArea"})
"""Intents whose area says what to do, not which devices: every device fits wherever it is."""

_IMPLIED_DOMAINS: dict[str, set[str]] = {
    "HassGetWeather": {"weather"},
    "HassClimateGetTemperature": {"climate"},
    "HassClimateSetTemperature": {"climate"},
    "HassMediaPause": {"media_player"},
    "HassMediaUnpause": {"media_player"},
    "HassSetVolume": {"media_player"},
    "HassSetVolumeRelative": {"media_player"},
    "HassMediaNext": {"media_player"},
    "HassMediaPrevious": {"media_player"},
    "HassMediaPlayerMute": {"media_player"},
    "HassMediaPlayerUnmute": {"media_player"},
    "HassMediaSearchAndPlay": {"media_player"},
    "HassClimateSetFanMode": {"climate"},
    "HassFanSetSpeed": {"fan"},
    "HassVacuumStart": {"vacuum"},
    "HassVacuumReturnToBase": {"vacuum"},
    "HassVacuumCleanArea": {"vacuum"},
    "HassLawnMowerStartMowing": {"lawn_mower"},
    "HassLawnMowerDock": {"lawn_mower"},
}


def _as_set(value: Any) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, Iterable):
        return {str(v) for v in value}
    return {str(value)}
