"""Replies remembered in memory: for a minute, and no more than so many."""

from __future__ import annotations

from typing import Any, cast

import pytest

from assistant.protocol import Response
from assistant.transports import replies as module
from assistant.transports.replies import Replies
from cache import KeyBuilder, TieredCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(module.time, "monotonic", clock)
    return clock


def replies() -> Replies:
    # Nothing is recorded in the cache (record=False), so none is needed.
    return Replies(cast(TieredCache, cast(Any, None)), cast(KeyBuilder, cast(Any, None)),
                   ttl=600)


def test_a_reply_is_remembered_for_a_minute_then_forgotten(clock: Clock) -> None:
    kept = replies()
    first = ("alice", "1", "digest")
    kept.keep(first, Response(id="1", text="It is on."), personal=False, record=False)
    assert kept.sent(first, redelivered=False) == Response(id="1", text="It is on.")
    clock.now += module._RECENT_SECONDS + 1
    kept.keep(("bob", "2", "digest"), Response(id="2", text="Done."), personal=False,
              record=False)
    assert len(kept) == 1  # the first is gone from memory, not only out of date
    assert kept.sent(first, redelivered=False) is None


def test_no_more_than_so_many_are_remembered(clock: Clock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_RECENT", 3)
    kept = replies()
    for n in range(5):
        clock.now += 0.1
        kept.keep(("alice", str(n), "d"), Response(id=str(n), text="ok"), personal=False,
                  record=False)
    assert len(kept) == 3
    assert kept.sent(("alice", "4", "d"), redelivered=False) is not None
    assert kept.sent(("alice", "0", "d"), redelivered=False) is None

