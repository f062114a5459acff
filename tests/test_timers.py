"""Timers kept per satellite: found as Home Assistant finds them, changed, reported, finished,
and answered through the real templates and sentence library."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.answers import Responder
from assistant.engine import IntentEngine
from assistant.handlers import Handlers
from assistant.home import Registry, load_home
from assistant.settings import IntentsSettings
from assistant.timers import TimerEvent, TimerIntents, TimerManager, finished_text
from assistant.timers.manager import (
    FINISHED,
    ONLY_ACTIVE,
    ONLY_INACTIVE,
    STARTED,
    TimerError,
    Wanted,
    Where,
    round_time,
)
from cache import KeyBuilder, Keyring, TieredCache
from tests.conftest import FakeClock, make_cache
from tests.helpers import until

ROOT = Path(__file__).resolve().parent.parent
KITCHEN = Where(site="kitchen", user="ann", area_id="kitchen", area_name="Kitchen",
                floor_id="ground")
BEDROOM = Where(site="bedroom", user="cal", area_id="bedroom", area_name="Bedroom",
                floor_id="first")


@pytest.fixture
def manager(clock: FakeClock) -> TimerManager:
    """A manager on the fake clock, not started: nothing finishes unless told."""
    return TimerManager(clock=clock)


@pytest.fixture
def engine() -> Iterator[tuple[IntentEngine, TimerManager]]:
    """The real templates and library over the example home, with the timer handlers."""
    timers = TimerManager().start()
    timers.listen(lambda event: None)  # as the service does: someone to tell
    responder = Responder(None, None, handlers=Handlers([TimerIntents(timers)]))
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")),
                          responder=responder).start()
    yield engine, timers
    engine.close()
    timers.close()


# -- finding, as Home Assistant's _find_timer does -------------------------------------------

def test_the_only_timer_is_found_without_anything_said(manager: TimerManager) -> None:
    started = manager.start_timer(KITCHEN, minutes=5)
    assert manager.find_one(Wanted(), BEDROOM).id == started.id


def test_a_timer_is_found_by_name_area_or_start_duration(manager: TimerManager) -> None:
    pasta = manager.start_timer(KITCHEN, minutes=10, name="Pasta")
    eggs = manager.start_timer(KITCHEN, minutes=5)
    nap = manager.start_timer(BEDROOM, hours=1)
    assert manager.find_one(Wanted(name="  pasta "), BEDROOM).id == pasta.id
    assert manager.find_one(Wanted(start_minutes=5), BEDROOM).id == eggs.id
    assert manager.find_one(Wanted(area="bedroom"), KITCHEN).id == nap.id
    with pytest.raises(TimerError) as missing:
        manager.find_one(Wanted(name="rice"), KITCHEN)
    assert missing.value.code == "timer_not_found"
    with pytest.raises(TimerError) as several:
        manager.find_one(Wanted(area="kitchen"), KITCHEN)
    assert several.value.code == "multiple_timers_matched"


def test_among_several_the_askers_satellite_decides(manager: TimerManager) -> None:
    manager.start_timer(KITCHEN, minutes=5)
    nap = manager.start_timer(BEDROOM, minutes=5)
    assert manager.find_one(Wanted(start_minutes=5), BEDROOM).id == nap.id
    upstairs = Where(site="office", user="dan", area_id="office", area_name="Office",
                     floor_id="first")
    assert manager.find_one(Wanted(), upstairs).id == nap.id  # the one on its floor
    with pytest.raises(TimerError) as nowhere:
        manager.find_one(Wanted(), Where(site="garage"))
    assert nowhere.value.code == "multiple_timers_matched"


def test_pause_finds_running_timers_and_resume_paused_ones(manager: TimerManager) -> None:
    first = manager.start_timer(KITCHEN, minutes=5)
    second = manager.start_timer(KITCHEN, minutes=7)
    manager.pause(first.id)
    assert manager.find_one(Wanted(), KITCHEN, only=ONLY_ACTIVE).id == second.id
    assert manager.find_one(Wanted(), KITCHEN, only=ONLY_INACTIVE).id == first.id


def test_find_all_puts_the_askers_own_first(manager: TimerManager) -> None:
    manager.start_timer(BEDROOM, minutes=1)
    mine = manager.start_timer(KITCHEN, minutes=2)
    assert manager.find_all(Wanted(), KITCHEN)[0].id == mine.id
    assert [t.id for t in manager.find_all(Wanted(area="Kitchen"), BEDROOM)] == [mine.id]


# -- time ------------------------------------------------------------------------------------

def test_time_left_through_pause_resume_and_changes(manager: TimerManager,
                                                    clock: FakeClock) -> None:
    timer = manager.start_timer(KITCHEN, minutes=5)
    clock.advance(60)
    assert manager.timers()[0].seconds_left(clock()) == 240
    manager.pause(timer.id)
    clock.advance(600)
    assert manager.timers()[0].seconds_left(clock()) == 240
    manager.unpause(timer.id)
    clock.advance(40)
    manager.add_time(timer.id, 120)
    assert manager.timers()[0].seconds_left(clock()) == 320
    assert manager.timers()[0].created_seconds == 320  # raised past the length it began with
    manager.add_time(timer.id, -1000)
    assert manager.timers()[0].seconds_left(clock()) == 0
    manager.cancel(timer.id)
    assert manager.timers() == []
    with pytest.raises(TimerError):
        manager.cancel(timer.id)


def test_time_left_is_rounded_as_home_assistant_rounds_it() -> None:
    assert round_time(1, 50, 30) == (2, 0, 0)
    assert round_time(1, 25, 30) == (1, 30, 0)
    assert round_time(0, 1, 50) == (0, 2, 0)
    assert round_time(0, 0, 55) == (0, 1, 0)
    assert round_time(0, 0, 37) == (0, 0, 30)
    assert round_time(0, 0, 7) == (0, 0, 7)


def test_what_is_said_when_a_timer_is_done(manager: TimerManager) -> None:
    assert finished_text(manager.start_timer(KITCHEN, minutes=5)) == \
        "Your 5 minute timer is done."
    assert finished_text(manager.start_timer(KITCHEN, hours=1, minutes=30)) == \
        "Your 1 hour and 30 minute timer is done."
    assert finished_text(manager.start_timer(KITCHEN, seconds=30, name="tea")) == \
        "Your tea timer is done."


# -- finishing, on the real clock ------------------------------------------------------------

def test_a_due_timer_finishes_once_and_a_cancelled_or_paused_one_never() -> None:
    events: list[TimerEvent] = []
    lock = threading.Lock()

    def heard(event: TimerEvent) -> None:
        with lock:
            events.append(event)

    with TimerManager() as manager:
        manager.listen(heard)
        done = manager.start_timer(KITCHEN, seconds=1, name="tea")
        cancelled = manager.start_timer(KITCHEN, seconds=1)
        paused = manager.start_timer(BEDROOM, seconds=1)
        manager.cancel(cancelled.id)
        manager.pause(paused.id)
        until(lambda: any(e.event == FINISHED for e in events), "the timer finished", 5)
        finished = [e for e in events if e.event == FINISHED]
        assert [e.timer.id for e in finished] == [done.id]
        assert finished[0].to_json()["name"] == "tea" and finished[0].timer.site == "kitchen"
        assert [t.id for t in manager.timers()] == [paused.id]
        assert [e.event for e in events if e.timer.id == done.id] == [STARTED, FINISHED]


# -- the intents, through the real templates ---------------------------------------------------

def ask(engine: IntentEngine, text: str, *, user: str | None = "ann",
        site: str | None = "kitchen") -> str:
    return engine.respond(text, user=user, site=site, area=site).text


def test_timer_intents_answer_from_the_timers(
        engine: tuple[IntentEngine, TimerManager]) -> None:
    eng, timers = engine
    assert ask(eng, "how much time is left on my timer") == "No timers."
    assert ask(eng, "cancel my timer") == "Sorry, I couldn't find that timer."
    assert ask(eng, "set a timer for 5 minutes") == "Timer set for 5 minutes."
    assert ask(eng, "how much time is left on my timer") in ("5 minutes left.",
                                                             "4 minutes and 30 seconds left.")
    assert ask(eng, "set a timer for 1 hour and 30 minutes", user="cal",
               site="bedroom") == "Timer set for 1 hour and 30 minutes."
    assert ask(eng, "add 2 minutes to my 5 minute timer") == \
        "2 minutes added to the 5 minute timer."
    assert ask(eng, "pause my 5 minute timer") == "Timer paused."
    assert ask(eng, "resume the timer") == "Timer resumed."  # the only paused one
    assert ask(eng, "status of my timers") == \
        "2 running timers. 7 minutes left on the 5 minute timer."
    # From the bedroom, "the timer" is the bedroom's.
    assert ask(eng, "cancel the timer", user="cal", site="bedroom") == \
        "1 hour and 30 minute timer cancelled."
    assert ask(eng, "cancel all timers") == "Cancelled 1 timer."
    assert timers.timers() == []


def test_a_timers_name_is_told_only_to_whoever_named_it(
        engine: tuple[IntentEngine, TimerManager]) -> None:
    eng, _ = engine
    started = eng.respond("set a 10 minute timer named pasta", user="ann", site="kitchen")
    assert started.text == "Timer set for 10 minutes named pasta."
    assert started.personal  # their words: its speech is cached for them alone
    ask(eng, "set a timer for 20 minutes")
    assert ask(eng, "how much time is left on my timers") == \
        "2 running timers. 10 minutes left on the pasta timer."
    for_cal = eng.respond("how much time is left on my timers", user="cal", site="kitchen")
    assert for_cal.text == "2 running timers. 10 minutes left on the 10 minute timer."
    assert not for_cal.personal
    assert ask(eng, "cancel the pasta timer", user="cal") == "10 minute timer cancelled."


def test_several_timers_and_no_satellite_get_the_librarys_errors(
        engine: tuple[IntentEngine, TimerManager]) -> None:
    eng, timers = engine
    ask(eng, "set a timer for 5 minutes")
    ask(eng, "set a timer for 10 minutes")
    assert ask(eng, "pause the timer") == "Sorry, I am unable to target multiple timers."
    assert ask(eng, "set a timer for 5 minutes", site=None) == \
        "Sorry, timers are not supported on this device."
    assert len(timers.timers()) == 2


def test_without_anyone_to_tell_no_timer_is_started() -> None:
    timers = TimerManager().start()
    responder = Responder(None, None, handlers=Handlers([TimerIntents(timers)]))
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")),
                          responder=responder).start()
    try:
        assert ask(engine, "set a timer for 5 minutes") == \
            "Sorry, timers are not supported on this device."
        assert timers.timers() == []
    finally:
        engine.close()
        timers.close()


def test_forgetting_someone_drops_their_timers_names_even_from_another_process(
        cache: TieredCache, keyring: Keyring, names: KeyBuilder, redis_url: str,
        tmp_path: Path, manager: TimerManager) -> None:
    node = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                      db=tmp_path / "node.db", listen=True)
    try:
        node.on_forget(lambda ref: manager.forgotten(ref, node.ref_of))
        manager.start_timer(KITCHEN, minutes=5, name="pregnancy test")
        manager.start_timer(BEDROOM, minutes=5, name="nap")
        cache.forget_user("ann")  # another process's cache, the same Redis
        until(lambda: not any(t.name == "pregnancy test" for t in manager.timers()),
              "the forget reached the timers", 10)
        assert sorted((t.user, t.name) for t in manager.timers()) == [("ann", None),
                                                                     ("cal", "nap")]
    finally:
        node.close()
