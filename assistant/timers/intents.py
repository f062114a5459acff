"""The timer intents of Home Assistant's library, over a :class:`TimerManager`: what each
does, and the speech slots its response template sees (``intents/timers.yaml``)."""

from __future__ import annotations

from typing import Any

from assistant.handlers.registry import Asked, Handled
from assistant.timers.manager import (
    ONLY_ACTIVE,
    ONLY_INACTIVE,
    Timer,
    TimerError,
    TimerManager,
    Wanted,
    Where,
)

START = "HassStartTimer"
CANCEL = "HassCancelTimer"
CANCEL_ALL = "HassCancelAllTimers"
INCREASE = "HassIncreaseTimer"
DECREASE = "HassDecreaseTimer"
PAUSE = "HassPauseTimer"
UNPAUSE = "HassUnpauseTimer"
STATUS = "HassTimerStatus"


def spoken_duration(hours: int | None, minutes: int | None, seconds: int | None) -> str:
    """``1 hour and 30 minutes``, ``5 minutes``, ``1 hour, 2 minutes and 3 seconds``."""
    parts = [f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in (
        (hours, "hour"), (minutes, "minute"), (seconds, "second")) if n]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def label(timer: Timer, asker: str | None) -> str:
    """How an answer to ``asker`` names a timer: its name (to the one who named it), else
    the duration it was started with (``5 minute``), else its area."""
    if timer.name and timer.user == asker:
        return timer.name
    said = " and ".join(f"{n} {unit}" for n, unit in (
        (timer.start_hours, "hour"), (timer.start_minutes, "minute"),
        (timer.start_seconds, "second")) if n)
    return said or timer.area_name or ""


class TimerIntents:
    """Handles Home Assistant's timer intents, the way its timer handlers do."""

    intents = frozenset({START, CANCEL, CANCEL_ALL, INCREASE, DECREASE, PAUSE, UNPAUSE,
                         STATUS})

    def __init__(self, manager: TimerManager) -> None:
        self.manager = manager

    def handle(self, asked: Asked) -> Handled:
        where = self._where(asked)
        if where.site is None or not self.manager.heard:
            # Nowhere to ring, or nobody to tell (a command line that asks once and exits):
            # the timer would finish unheard.
            return Handled(error="no_timer_support")
        intent = asked.match.intent
        try:
            if intent == START:
                return self._start(asked, where)
            if intent == CANCEL_ALL:
                return self._cancel_all(asked, where)
            if intent == STATUS:
                return self._status(asked, where)
            only = ONLY_ACTIVE if intent == PAUSE else ONLY_INACTIVE if intent == UNPAUSE \
                else None
            timer = self.manager.find_one(self._wanted(asked), where, only=only)
            if intent == CANCEL:
                self.manager.cancel(timer.id)
            elif intent == PAUSE:
                self.manager.pause(timer.id)
            elif intent == UNPAUSE:
                self.manager.unpause(timer.id)
            else:
                change = self._seconds(asked)
                self.manager.add_time(timer.id, change if intent == INCREASE else -change)
                return Handled(slots={"timer": label(timer, asked.user)})
            return Handled(slots={"timer": label(timer, asked.user)})
        except TimerError as error:
            return Handled(error=error.code)

    @staticmethod
    def _where(asked: Asked) -> Where:
        area = asked.area
        return Where(site=asked.site, user=asked.user, area_id=area.id if area else None,
                     area_name=area.name if area else None,
                     floor_id=area.floor if area else None)

    @staticmethod
    def _wanted(asked: Asked) -> Wanted:
        name = asked.slot("name")
        area = asked.slot("area")
        return Wanted(name=None if name is None else str(name),
                      area=None if area is None else str(area),
                      start_hours=asked.number("start_hours"),
                      start_minutes=asked.number("start_minutes"),
                      start_seconds=asked.number("start_seconds"))

    @staticmethod
    def _seconds(asked: Asked) -> int:
        return (3600 * (asked.number("hours") or 0) + 60 * (asked.number("minutes") or 0)
                + (asked.number("seconds") or 0))

    def _start(self, asked: Asked, where: Where) -> Handled:
        name = asked.slot("name")
        timer = self.manager.start_timer(where, hours=asked.number("hours"),
                                         minutes=asked.number("minutes"),
                                         seconds=asked.number("seconds"),
                                         name=None if name is None else str(name))
        return Handled(slots={"timer": label(timer, asked.user)})

    def _cancel_all(self, asked: Asked, where: Where) -> Handled:
        area = asked.slot("area")
        cancelled = 0
        for timer in self.manager.find_all(Wanted(area=None if area is None else str(area)),
                                           where):
            try:
                self.manager.cancel(timer.id)
            except TimerError:
                continue  # finished or cancelled meanwhile
            cancelled += 1
        return Handled(slots={"canceled": cancelled})

    def _status(self, asked: Asked, where: Where) -> Handled:
        now = self.manager.clock()
        found = self.manager.find_all(self._wanted(asked), where)
        views: list[dict[str, Any]] = []
        for timer in found:
            view = timer.view(now, asker=asked.user)
            view["label"] = label(timer, asked.user)
            view["left"] = spoken_duration(view["rounded_hours_left"],
                                           view["rounded_minutes_left"],
                                           view["rounded_seconds_left"]) or "no time"
            views.append(view)
        running = sorted((v for v in views if v["is_active"]),
                         key=lambda v: v["total_seconds_left"])
        paused = [v for v in views if not v["is_active"]]
        following = running[0] if running else paused[0] if len(paused) == 1 else None
        return Handled(slots={"timers": views, "next": following},
                       personal=any(v["name"] for v in views))
