"""The service's two lanes of waiting requests, and what it remembers of quick answers."""

from __future__ import annotations

import threading

from assistant.transports.lanes import QUICK_MS, Lanes, QuickAnswers


def test_every_worker_takes_the_express_lane_first() -> None:
    lanes: Lanes[str] = Lanes(10, share=10)
    for item, express in (("slow-1", False), ("quick-1", True), ("slow-2", False),
                          ("quick-2", True)):
        assert lanes.put(item, owner="ann", express=express) is None
    assert [lanes.get() for _ in range(4)] == ["quick-1", "quick-2", "slow-1", "slow-2"]


def test_the_express_worker_never_takes_a_slow_request() -> None:
    lanes: Lanes[str] = Lanes(10, share=10)
    lanes.put("slow", owner="ann", express=False)
    taken: list[str | None] = []
    express = threading.Thread(target=lambda: taken.append(lanes.get(express_only=True)))
    express.start()
    express.join(0.2)
    assert express.is_alive() and not taken  # waiting, the slow one left for the others
    lanes.put("quick", owner="ann", express=True)
    express.join(5)
    assert taken == ["quick"] and len(lanes) == 1
    assert lanes.get() == "slow"


def test_both_lanes_share_one_capacity() -> None:
    lanes: Lanes[int] = Lanes(3, share=3)
    assert lanes.put(1, owner="ann", express=True) is None
    assert lanes.put(2, owner="cal", express=False) is None
    assert lanes.put(3, owner="dan", express=True) is None
    assert lanes.put(4, owner="eve", express=True) == "too many requests are waiting"
    assert lanes.put(5, owner="eve", express=False) == "too many requests are waiting"


def test_each_person_has_a_share_given_back_as_their_jobs_are_taken() -> None:
    lanes: Lanes[int] = Lanes(10, share=2)
    assert lanes.put(1, owner="kim", express=True) is None
    assert lanes.put(2, owner="kim", express=False) is None
    assert lanes.put(3, owner="kim", express=True) == \
        "2 of your requests are waiting already"
    assert lanes.put(4, owner="fay", express=False) is None  # the others keep their room
    assert lanes.get() == 1
    assert lanes.put(5, owner="kim", express=False) is None


def test_closing_lets_the_workers_finish_what_waits_then_stop() -> None:
    lanes: Lanes[str] = Lanes(5, share=5)
    lanes.put("a", owner="ann", express=False)
    lanes.put("b", owner="ann", express=True)
    lanes.close()
    assert lanes.put("c", owner="cal", express=True) is not None
    assert lanes.get(express_only=True) == "b"
    assert lanes.get(express_only=True) is None  # "a" is a main-lane worker's
    assert lanes.get() == "a"
    assert lanes.get() is None


def test_quick_answers_are_remembered_by_their_words() -> None:
    quick = QuickAnswers(size=2)
    assert not quick.expected("turn on the light")
    quick.took("Turn on  the light", QUICK_MS / 10)
    assert quick.expected("turn on the light")  # the same words, however written
    assert not quick.expected("turn off the light")
    quick.took("tell me a story", QUICK_MS * 40)
    assert not quick.expected("tell me a story")
    quick.took("tell me a story", QUICK_MS / 2)  # cached now
    assert quick.expected("tell me a story")
    quick.took("never mind", 1.0)  # the oldest goes
    assert not quick.expected("turn on the light")
