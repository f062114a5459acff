"""Timers kept per satellite, and the intents that start, change, report and cancel them."""

from assistant.timers.intents import TimerIntents
from assistant.timers.manager import (
    FINISHED,
    Timer,
    TimerError,
    TimerEvent,
    TimerManager,
    finished_text,
)

__all__ = ["FINISHED", "Timer", "TimerError", "TimerEvent", "TimerIntents", "TimerManager",
           "finished_text"]
