"""Faults while requests stream: a person asking steadily over a persistent MQTT session,
every reply counted, and what each fault cost.

A :class:`Stream` publishes QoS 1 requests at a steady rate, each with an id of its own, and
records every reply that comes back (a reply delivered again after a restart too). Its
:meth:`Stream.report` says what a fault cost: requests answered late, errors by code, the
ones never answered, the ones answered two different ways, and the time from the fault's
end until the service answered normally again. ``make test`` runs each fault for a few
seconds; ``make test-faults`` for longer (``FAULT_SECONDS``).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.protocol import (
    ErrorReply,
    Reply,
    Response,
    Topics,
    decode_reply,
    encode_text_request,
)
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish
from tests.service import PEOPLE as ALL_PEOPLE
from tests.service import Broker

SECONDS = float(os.environ.get("FAULT_SECONDS", "3"))
"""How long each phase of a fault lasts: before it, during it, after it."""
LATE = 2.0
"""Seconds after which an answer counts as late."""
RATE = 6.0
"""Requests a second, from PEOPLE between them."""
PEOPLE = tuple(p for p in ALL_PEOPLE if p != "homeassistant")
"""Who asks: a satellite each, a request every few seconds each (the backlog of a 20 s
outage is a handful of a person's requests, within their share of the service's queue)."""

REPORTS: list[FaultReport] = []
"""Every fault's report in this test run, printed at its end (tests/conftest.py)."""


def sentence(n: int) -> str:
    """The n-th request of a stream: mostly repeats the cache holds, and every third one new
    to the cache (a brightness not asked before: recognised, planned, acted on, cached on
    every tier, its reply recorded)."""
    repeats = ("turn on the kitchen light", "never mind", "is the kitchen light on",
               "turn off the kitchen light")
    if n % 3 == 2:
        return f"set the kitchen light brightness to {1 + (n // 3) % 99} percent"
    return repeats[n % len(repeats)]


@dataclass
class Asked:
    """One request and what came back for it."""

    id: str
    text: str
    sent: float
    replies: list[tuple[float, Reply]] = field(default_factory=list)


@dataclass
class FaultReport:
    """What a fault cost the stream of requests it hit."""

    fault: str
    seconds: float
    sent: int
    answered: int
    errors: dict[str, int]
    unanswered: int
    answered_two_ways: int
    delivered_again: int
    """Replies received a second time, the same reply (QoS 1 after a restart)."""
    late: int
    worst_s: float
    p50_before_ms: float
    recover_s: float
    """From the fault's end until the last late, failed or missing answer (0: none)."""

    def line(self) -> str:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items())) or "none"
        return (f"{self.fault:<18} sent {self.sent:>4}  answered {self.answered:>4}  "
                f"errors: {errors:<16} unanswered {self.unanswered}  two ways "
                f"{self.answered_two_ways}  again {self.delivered_again}  late {self.late}  "
                f"worst {self.worst_s:.2f} s  p50 before {self.p50_before_ms:.1f} ms  "
                f"recovered in {self.recover_s:.2f} s")


class Stream:
    """People asking at a steady rate between them (a home's satellites), each over a
    session the broker keeps (replies published while a client is away are delivered when
    it is back)."""

    def __init__(self, broker: Broker, *, users: Sequence[str], site: str = "hall",
                 topics: Topics | None = None, rate: float = RATE,
                 sentences: Callable[[int], str] = sentence) -> None:
        self.topics = topics or Topics()
        self.site, self.rate, self.sentences = site, rate, sentences
        self.asked: dict[str, Asked] = {}
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run = secrets.token_hex(3)
        self.clients = [(user, self._connect(broker, user)) for user in users]

    def _connect(self, broker: Broker, user: str) -> Client:
        settings = broker.settings(user)
        subscribed = threading.Event()
        client = make_client(settings, client_id=f"faults-{user}-{self._run}")
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(0.1, 1)
        client.user_data_set(user)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        connect_and_wait(client, settings, clean_start=False, properties=props)
        if not subscribed.wait(5):
            raise RuntimeError("the broker did not grant the reply topics")
        return client

    def _on_connect(self, client: Client, user: str, flags: ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if not reason.is_failure:
            client.subscribe([(self.topics.response(self.site, user), 1),
                              (self.topics.error(self.site, user), 1)])

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        reply = decode_reply(packet_of(message))
        with self._lock:
            asked = self.asked.get(reply.id or "")
            if asked is not None:
                asked.replies.append((time.monotonic(), reply))

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._send, name="stream", daemon=True)
        self._thread.start()
        return self

    def _send(self) -> None:
        n = 0
        began = time.monotonic()
        while not self._stop.is_set():
            request_id = f"{self._run}-{n:05d}"
            text = self.sentences(n)
            with self._lock:
                self.asked[request_id] = Asked(request_id, text, time.monotonic())
            # Published while the broker is away too: paho keeps a QoS 1 message until it
            # is acknowledged, and sends it again once connected.
            user, client = self.clients[n % len(self.clients)]
            publish(client, encode_text_request(self.topics, site=self.site, user=user,
                                                text=text, request_id=request_id), qos=1)
            n += 1
            self._stop.wait(max(0.0, began + n / self.rate - time.monotonic()))

    def mark(self, what: str) -> None:
        """Note when something happened (``fault``, ``healed``)."""
        self.marks[what] = time.monotonic()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop asking, then wait until every request has a reply (or ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.waiting():
            time.sleep(0.05)
        time.sleep(0.5)  # a reply delivered twice would come about now

    def waiting(self) -> list[Asked]:
        with self._lock:
            return [a for a in self.asked.values() if not a.replies]

    def close(self) -> None:
        for _user, client in self.clients:
            client.disconnect()
            client.loop_stop()

    def report(self, fault: str) -> FaultReport:
        """What the fault cost (``mark("fault")`` and ``mark("healed")`` called)."""
        with self._lock:
            asked = sorted(self.asked.values(), key=lambda a: a.sent)
        fault_at = self.marks["fault"]
        healed = self.marks.get("healed", fault_at)
        errors: dict[str, int] = {}
        late = unanswered = two_ways = again = 0
        worst = 0.0
        last_bad = healed
        before = [(a.replies[0][0] - a.sent) * 1000 for a in asked
                  if a.sent < fault_at and a.replies and isinstance(a.replies[0][1], Response)]
        for a in asked:
            if not a.replies:
                unanswered += 1
                last_bad = max(last_bad, time.monotonic())
                continue
            first_at, first = a.replies[0]
            seen = {json.dumps(r.to_json(), sort_keys=True) for _, r in a.replies}
            two_ways += len(seen) > 1
            again += len(a.replies) - 1
            took = first_at - a.sent
            worst = max(worst, took)
            if isinstance(first, ErrorReply):
                errors[first.code] = errors.get(first.code, 0) + 1
            if took > LATE:
                late += 1
            if isinstance(first, ErrorReply) or took > LATE:
                last_bad = max(last_bad, first_at)
        report = FaultReport(
            fault=fault, seconds=SECONDS, sent=len(asked),
            answered=sum(1 for a in asked if a.replies and isinstance(a.replies[0][1], Response)),
            errors=errors, unanswered=unanswered, answered_two_ways=two_ways,
            delivered_again=again, late=late, worst_s=round(worst, 3),
            p50_before_ms=round(statistics.median(before), 1) if before else float("nan"),
            recover_s=round(last_bad - healed, 2))
        REPORTS.append(report)
        return report


def through(broker: Broker, name: str, *, fault: Callable[[], object],
            heal: Callable[[], object] | None = None, before: Callable[[], object] = lambda: None
            ) -> FaultReport:
    """Stream requests for ``SECONDS``, call ``before`` then ``fault``, wait ``SECONDS``, call
    ``heal`` (None: the fault ends by itself), stream ``SECONDS`` more (twice as long when
    nothing heals), wait for every reply; what the fault cost."""
    stream = Stream(broker, users=PEOPLE).start()
    try:
        time.sleep(SECONDS)
        before()
        stream.mark("fault")
        fault()
        if heal is not None:
            time.sleep(SECONDS)
            heal()
        stream.mark("healed")
        time.sleep(SECONDS if heal is not None else 2 * SECONDS)
        stream.stop()
        return stream.report(name)
    finally:
        stream.close()


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of a sqlite file as a crash left it (its WAL too), read
    from a copy so that the check itself repairs nothing."""
    copy = db.parent / f"{db.name}.check"
    for suffix in ("", "-wal"):
        source = Path(str(db) + suffix)
        target = Path(str(copy) + suffix)
        target.unlink(missing_ok=True)
        if source.exists():
            target.write_bytes(source.read_bytes())
    try:
        with sqlite3.connect(copy) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(copy) + suffix).unlink(missing_ok=True)


def summary(reports: Sequence[FaultReport]) -> list[str]:
    """The lines printed at the end of a run, then one JSON object."""
    return ["faults while requests streamed (FAULT_SECONDS="
            f"{SECONDS:g}: before, during, after):", *(r.line() for r in reports),
            json.dumps({"faults": [asdict(r) for r in reports]})]
