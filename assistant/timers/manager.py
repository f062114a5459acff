"""Timers kept per satellite, the way Home Assistant's intent timers are (its
``homeassistant/components/intent/timers.py`` is the model): each started at a site, by a
user, in an area; found by name, by area, by the duration it was started with, or as the
only one; paused, resumed, lengthened, shortened, cancelled; and, when one finishes, told
to whoever listens (the service tells the satellite it was set at).

Timers live in this process's memory only: they hold nothing worth keeping, and a timer
that outlived a restart would ring at a time nobody asked for. A timer's name is words
someone said, so it is theirs: :meth:`Timer.view` shows it to them alone.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Self

log = logging.getLogger(__name__)

STARTED, UPDATED, CANCELLED, FINISHED = "started", "updated", "cancelled", "finished"
"""The events a timer goes through (Home Assistant's ``TimerEventType``)."""

ONLY_ACTIVE, ONLY_INACTIVE = "only_active", "only_inactive"
"""Filters for :meth:`TimerManager.find_one` (pausing finds running timers, resuming paused)."""

MAX_SECONDS = 7 * 24 * 3600
"""The longest a timer may run."""


class TimerError(Exception):
    """A timer request that cannot be met; ``code`` is the library's error response key."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def normalize_name(name: str) -> str:
    """A timer or area name as compared (Home Assistant's ``_normalize_name``)."""
    return " ".join(name.split()).casefold()


@dataclass(slots=True)
class Timer:
    """One timer (mutable: only the manager changes it, under its lock)."""

    id: str
    name: str | None
    """What the person who set it called it (their words), or ``None``."""
    seconds: int
    """Seconds it runs from ``updated`` while active; what is left while paused."""
    start_hours: int | None
    start_minutes: int | None
    start_seconds: int | None
    """The duration as it was said when it was started."""
    site: str | None
    """The satellite it was set at: told when it finishes."""
    user: str | None
    """Who set it."""
    area_id: str | None = None
    area_name: str | None = None
    floor_id: str | None = None
    """Where that satellite is."""
    updated: float = 0.0
    """When it last started running or changed (the manager's clock)."""
    active: bool = True
    """Counting down (false: paused)."""
    created_seconds: int = 0
    """Its length as started, raised when time is added past it."""

    def seconds_left(self, now: float) -> int:
        """Whole seconds left at ``now``."""
        if not self.active:
            return self.seconds
        return max(0, self.seconds - int(now - self.updated))

    def due(self) -> float:
        """When it finishes, if it keeps running."""
        return self.updated + self.seconds

    def view(self, now: float, *, asker: str | None) -> dict[str, Any]:
        """What an answer may say of it to ``asker`` (Home Assistant's timer status fields);
        its name only to the one who named it."""
        left = self.seconds_left(now)
        minutes, seconds = divmod(left, 60)
        hours, minutes = divmod(minutes, 60)
        rounded = round_time(hours, minutes, seconds)
        return {
            "id": self.id, "name": self.name if self.name and asker == self.user else "",
            "start_hours": self.start_hours or 0, "start_minutes": self.start_minutes or 0,
            "start_seconds": self.start_seconds or 0, "is_active": self.active,
            "area": self.area_name or "", "hours_left": hours, "minutes_left": minutes,
            "seconds_left": seconds, "rounded_hours_left": rounded[0],
            "rounded_minutes_left": rounded[1], "rounded_seconds_left": rounded[2],
            "total_seconds_left": left,
        }


@dataclass(frozen=True, slots=True)
class TimerEvent:
    """Something that happened to a timer, for those who listen."""

    event: str
    """``started``, ``updated``, ``cancelled`` or ``finished``."""
    timer: Timer
    """A copy of the timer as it is after the event."""
    seconds_left: int
    """Seconds left after the event."""

    def to_json(self) -> dict[str, Any]:
        """The event as the satellite reads it (its name is the setter's own, and so is the
        topic it goes to)."""
        t = self.timer
        return {"event": self.event, "id": t.id, "name": t.name,
                "seconds": t.created_seconds, "seconds_left": self.seconds_left,
                "is_active": t.active, "start_hours": t.start_hours,
                "start_minutes": t.start_minutes, "start_seconds": t.start_seconds,
                "area": t.area_name}


def finished_text(timer: Timer) -> str:
    """What the satellite says when ``timer`` finishes: "Your 5 minute timer is done."."""
    if timer.name:
        return f"Your {timer.name.strip()} timer is done."
    said = " and ".join(f"{n} {unit}" for n, unit in (
        (timer.start_hours, "hour"), (timer.start_minutes, "minute"),
        (timer.start_seconds, "second")) if n)
    return f"Your {said} timer is done." if said else "Your timer is done."


def round_time(hours: int, minutes: int, seconds: int) -> tuple[int, int, int]:
    """A time left rounded for speech, as Home Assistant rounds it (``_round_time``)."""
    if hours > 0:
        if minutes > 45:
            return hours + 1, 0, 0
        return hours, 0 if minutes < 15 else 30, 0
    if minutes > 0:
        if seconds > 45:
            return 0, minutes + 1, 0
        return 0, minutes, 0 if seconds < 15 else 30
    if seconds > 50:
        return 0, 1, 0
    return 0, 0, seconds if seconds < 10 else seconds - seconds % 10


@dataclass(frozen=True, slots=True)
class Where:
    """Where a timer request was said: the satellite, who, and its area and floor."""

    site: str | None = None
    user: str | None = None
    area_id: str | None = None
    area_name: str | None = None
    floor_id: str | None = None


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a request says of the timer it means (the slots Home Assistant reads)."""

    name: str | None = None
    area: str | None = None
    start_hours: int | None = None
    start_minutes: int | None = None
    start_seconds: int | None = None

    @property
    def by_start(self) -> bool:
        return (self.start_hours, self.start_minutes, self.start_seconds) != (None, None, None)


class TimerManager:
    """Every timer of this process, and one thread that finishes them when they are due.

    The constructor stores the clock; :meth:`start` starts the thread; :meth:`close` stops it
    (the timers are dropped: they live in memory only). Listeners (:meth:`listen`) are told
    every event, on the thread that caused it or, for ``finished``, on the manager's own.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._timers: dict[str, Timer] = {}
        self._listeners: list[Callable[[TimerEvent], None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start finishing timers when they are due."""
        with self._cond:
            self._closed = False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="timers", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop; the timers are dropped."""
        with self._cond:
            self._closed = True
            self._timers.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listen(self, listener: Callable[[TimerEvent], None]) -> None:
        """Tell ``listener`` every event from now on."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[TimerEvent], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def heard(self) -> bool:
        """Does anyone listen, to tell a satellite its timer is done (Home Assistant's
        ``is_timer_device``)?"""
        return bool(self._listeners)

    # -- changes ---------------------------------------------------------------------------

    def start_timer(self, where: Where, *, hours: int | None = None, minutes: int | None = None,
                    seconds: int | None = None, name: str | None = None) -> Timer:
        """Start a timer at ``where``; a copy of it."""
        total = 3600 * (hours or 0) + 60 * (minutes or 0) + (seconds or 0)
        if total <= 0:
            raise ValueError("a timer runs for at least a second")
        if total > MAX_SECONDS:
            raise TimerError("timer_too_long")
        with self._cond:
            timer = Timer(id=uuid.uuid4().hex[:12], name=(name or "").strip() or None,
                          seconds=total, start_hours=hours, start_minutes=minutes,
                          start_seconds=seconds, site=where.site, user=where.user,
                          area_id=where.area_id, area_name=where.area_name,
                          floor_id=where.floor_id, updated=self.clock(), created_seconds=total)
            self._timers[timer.id] = timer
            self._cond.notify_all()
            event = self._event(STARTED, timer)
        self._tell(event)
        return event.timer

    def cancel(self, timer_id: str) -> Timer:
        """Cancel a timer; a copy of it as it was."""
        with self._cond:
            timer = self._get(timer_id)
            del self._timers[timer_id]
            event = self._event(CANCELLED, timer)
            self._cond.notify_all()
        self._tell(event)
        return event.timer

    def add_time(self, timer_id: str, seconds: int) -> Timer:
        """Add ``seconds`` (negative: remove them; a timer never goes below zero)."""
        with self._cond:
            timer = self._get(timer_id)
            now = self.clock()
            timer.seconds = min(MAX_SECONDS, max(0, timer.seconds_left(now) + seconds))
            timer.created_seconds = max(timer.created_seconds, timer.seconds)
            timer.updated = now
            event = self._event(UPDATED, timer)
            self._cond.notify_all()
        self._tell(event)
        return event.timer

    def pause(self, timer_id: str) -> Timer:
        """Pause a running timer (a paused one stays as it is)."""
        with self._cond:
            timer = self._get(timer_id)
            if not timer.active:
                return replace(timer)
            now = self.clock()
            timer.seconds, timer.updated, timer.active = timer.seconds_left(now), now, False
            event = self._event(UPDATED, timer)
            self._cond.notify_all()
        self._tell(event)
        return event.timer

    def unpause(self, timer_id: str) -> Timer:
        """Resume a paused timer (a running one goes on as it is)."""
        with self._cond:
            timer = self._get(timer_id)
            if timer.active:
                return replace(timer)
            timer.updated, timer.active = self.clock(), True
            event = self._event(UPDATED, timer)
            self._cond.notify_all()
        self._tell(event)
        return event.timer

    def forgotten(self, ref: str, ref_of: Callable[[str], str | None]) -> None:
        """A user was forgotten (``ref``: their name in the cache, which ``ref_of`` gives for
        a user id): the names of the timers they set, their words, are dropped; the timers
        still ring."""
        with self._cond:
            for timer in self._timers.values():
                if timer.name and timer.user is not None and ref_of(timer.user) == ref:
                    timer.name = None

    def _get(self, timer_id: str) -> Timer:
        timer = self._timers.get(timer_id)
        if timer is None:
            raise TimerError("timer_not_found")
        return timer

    def _event(self, kind: str, timer: Timer) -> TimerEvent:
        return TimerEvent(kind, replace(timer), timer.seconds_left(self.clock()))

    def _tell(self, event: TimerEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a timer listener failed on %s", event.event)

    # -- finding ---------------------------------------------------------------------------

    def timers(self) -> list[Timer]:
        """Copies of every timer."""
        with self._cond:
            return [replace(t) for t in self._timers.values()]

    def find_one(self, wanted: Wanted, where: Where, *, only: str | None = None) -> Timer:
        """The one timer a request means, as Home Assistant's ``_find_timer`` finds it: by
        state filter, name, area, start duration, as the only one, then by the asker's
        satellite, area and floor. :class:`TimerError` ``timer_not_found`` or
        ``multiple_timers_matched`` otherwise."""
        matching = self.timers()
        filtered = False
        if only is not None:
            filtered = True
            matching = [t for t in matching if t.active == (only == ONLY_ACTIVE)]
            if len(matching) == 1:
                return matching[0]
        for narrowed in _narrowings(wanted):
            filtered = True
            matching = narrowed(matching)
            if len(matching) == 1:
                return matching[0]
        if not filtered and len(matching) == 1:
            return matching[0]
        if matching and where.site is not None:
            for key, value in (("site", where.site), ("area_id", where.area_id),
                               ("floor_id", where.floor_id)):
                chosen = [t for t in matching if value is not None and getattr(t, key) == value]
                if len(chosen) == 1:
                    return chosen[0]
        raise TimerError("multiple_timers_matched" if matching else "timer_not_found")

    def find_all(self, wanted: Wanted, where: Where) -> list[Timer]:
        """Every timer a request means (Home Assistant's ``_find_timers``), the asker's
        satellite's first, then its area's, then its floor's."""
        matching = self.timers()
        for narrowed in _narrowings(wanted):
            matching = narrowed(matching)

        def nearness(timer: Timer) -> int:
            if where.site is not None and timer.site == where.site:
                return 0
            if where.area_id is not None and timer.area_id == where.area_id:
                return 1
            if where.floor_id is not None and timer.floor_id == where.floor_id:
                return 2
            return 3

        return sorted(matching, key=nearness)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self.clock()
                due = [t for t in self._timers.values() if t.active and t.due() <= now]
                events = []
                for timer in due:
                    del self._timers[timer.id]
                    timer.seconds, timer.active, timer.updated = 0, False, now
                    events.append(TimerEvent(FINISHED, replace(timer), 0))
                if not events:
                    running = [t.due() for t in self._timers.values() if t.active]
                    wait = min(running) - now if running else None
                    self._cond.wait(None if wait is None else max(0.0, min(wait, 60.0)))
                    continue
            for event in events:
                log.info("timer %s finished", event.timer.id)
                self._tell(event)


def _narrowings(wanted: Wanted) -> Iterable[Callable[[list[Timer]], list[Timer]]]:
    """The filters a request's slots ask for, in Home Assistant's order."""
    if wanted.name is not None:
        name = normalize_name(wanted.name)
        yield lambda ts: [t for t in ts if normalize_name(t.name or "") == name]
    if wanted.area is not None:
        area = normalize_name(wanted.area)
        yield lambda ts: [t for t in ts if normalize_name(t.area_name or "") == area]
    if wanted.by_start:
        yield lambda ts: [t for t in ts if (t.start_hours, t.start_minutes, t.start_seconds) == (
            wanted.start_hours, wanted.start_minutes, wanted.start_seconds)]


__all__ = ["CANCELLED", "FINISHED", "ONLY_ACTIVE", "ONLY_INACTIVE", "STARTED", "UPDATED",
           "Timer", "TimerError", "TimerEvent", "TimerManager", "Wanted", "Where",
           "finished_text", "normalize_name", "round_time"]
