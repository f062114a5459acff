"""Timers, lists and broadcasts through ``assistant serve``: a real service process with
speech, a real mosquitto with the project's ACL, a real redis-server, clients signed in as
the people they are."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.answers import Responder
from assistant.broadcast import Broadcast, BroadcastIntents, Satellites
from assistant.engine import IntentEngine
from assistant.handlers import Handlers
from assistant.home import Registry, load_home
from assistant.protocol import Response, Topics
from assistant.settings import IntentsSettings
from assistant.transports.mqtt_client import Asker
from tests.helpers import until
from tests.servers import RedisServer, free_port
from tests.service import ROOT, Broker, Listener, ServiceProcess, service_config

pytestmark = pytest.mark.slow

SITES = ("kitchen", "bedroom", "office")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, broker: Broker, redis_server: RedisServer,
           metrics_port: int) -> Path:
    return service_config(tmp_path_factory.mktemp("service"), broker=broker,
                          redis_url=redis_server.url, metrics_port=metrics_port,
                          extra=f"sites = {json.dumps(list(SITES))}\n"
                                "requests_per_minute = 1000")


@pytest.fixture(scope="module")
def service(config: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(config, speech=True).start()
    yield process
    process.stop()


def answer(asker: Asker, text: str) -> str:
    reply = asker.ask(text=text).reply
    assert isinstance(reply, Response), reply
    return reply.text


def test_a_finished_timer_is_told_to_its_satellite_and_setter_only(
        service: ServiceProcess, broker: Broker) -> None:
    t = Topics()
    ann_sees = Listener(broker.settings("ann"), t.timer("+", "ann"), "assistant/+/speech/ann/+")
    cal_sees = Listener(broker.settings("cal"), "assistant/#")
    everything = Listener(broker.settings("assistant"), "assistant/+/timer/#",
                          "assistant/+/speech/#")
    try:
        with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
            assert answer(ann, "set a timer for 2 seconds") == "Timer set for 2 seconds."
            until(lambda: [p for p in ann_sees.on("/timer/")
                           if json.loads(p.payload)["event"] == "finished"],
                  "the finished event", 15)
            done = until(lambda: ann_sees.on("/speech/ann/timer-"), "the timer's speech", 30)
        events = [json.loads(p.payload) for p in ann_sees.on("/timer/")]
        assert [e["event"] for e in events] == ["started", "finished"]
        assert events[0]["seconds"] == 2 and events[0]["area"] == "Kitchen"
        assert {p.topic for p in ann_sees.on("/timer/")} == {"assistant/kitchen/timer/ann"}
        assert done[0].topic == f"assistant/kitchen/speech/ann/timer-{events[0]['id']}"
        assert done[0].payload[:4] == b"RIFF"
        # Nothing of it anywhere else, and nothing of it reached cal. (The listener of every
        # topic is another connection: the speech may reach it a moment after ann.)
        assert {p.topic for p in everything.on("/timer/")} == {"assistant/kitchen/timer/ann"}
        until(lambda: everything.on("timer-"), "the speech, seen by the broker's listener", 10)
        assert {p.topic for p in everything.on("timer-")} == {done[0].topic}
        assert not cal_sees.on("/timer/") and not cal_sees.on("timer-")
    finally:
        for listener in (ann_sees, cal_sees, everything):
            listener.close()


def invalidations(port: int, kind: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    line = next((x for x in text.splitlines() if x.startswith(
        f'cache_invalidations_total{{kind="{kind}",origin="remote"}}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_a_list_item_is_its_owners_and_forget_removes_it(
        service: ServiceProcess, broker: Broker, config: Path, metrics_port: int) -> None:
    with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann, \
            Asker(broker.settings("cal"), user="cal", site="bedroom") as cal:
        assert answer(ann, "add oat milk to my shopping list") == \
            "Added oat milk to your shopping list."
        assert answer(ann, "put bread on my shopping list") == \
            "Added bread to your shopping list."
        assert answer(cal, "check off bread from my shopping list") == \
            "Sorry, bread is not on your shopping list."
        assert answer(ann, "check off bread from my shopping list") == \
            "Checked off bread on your shopping list."
        forgets = invalidations(metrics_port, "forget")
        done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                               "cache", "forget", "ann"], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        until(lambda: invalidations(metrics_port, "forget") > forgets,
              "the service applied the forget", 15)
        assert answer(ann, "check off oat milk from my shopping list") == \
            "Sorry, oat milk is not on your shopping list."


def test_a_broadcast_reaches_the_other_satellites_but_not_the_askers(
        service: ServiceProcess, broker: Broker) -> None:
    hears = Listener(broker.settings("cal"), "assistant/+/broadcast/#")
    try:
        with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
            assert answer(ann, "broadcast that dinner is ready") == "Done."
            until(lambda: len(hears.on("/broadcast")) >= 4, "the broadcast and its speech", 30)
        texts = {p.topic: json.loads(p.payload) for p in hears.on("/broadcast")
                 if p.topic.endswith("/broadcast")}
        assert set(texts) == {"assistant/bedroom/broadcast", "assistant/office/broadcast"}
        message = texts["assistant/bedroom/broadcast"]
        assert message["text"] == "dinner is ready" and message["from"] == "kitchen"
        assert "ann" not in json.dumps(message)
        speech = [p for p in hears.on("/broadcast/") if p.topic.count("/") == 3]
        assert {p.topic for p in speech} == {f"assistant/{site}/broadcast/{message['id']}"
                                             for site in ("bedroom", "office")}
        assert all(p.payload[:4] == b"RIFF" for p in speech)
        assert not hears.on("assistant/kitchen/")
    finally:
        hears.close()


def test_a_broadcast_with_nobody_else_to_hear_it_says_so() -> None:
    satellites = Satellites(["kitchen"])
    satellites.sent = True  # as the service says while it runs
    responder = Responder(None, None, handlers=Handlers([BroadcastIntents(satellites)]))
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")),
                          responder=responder).start()
    try:
        alone = engine.respond("announce the car is here", user="ann", site="kitchen")
        assert alone.text == "There is no other satellite to tell." and alone.effects == ()
        satellites.heard("garage")
        sent = engine.respond("announce the car is here", user="ann", site="kitchen")
        assert sent.text == "Done." and sent.personal and sent.fragments[0].source == "computed"
        assert [(b.text, b.sites, b.origin) for b in sent.effects
                if isinstance(b, Broadcast)] == [("the car is here", ("garage",), "kitchen")]
        assert engine.respond("announce the car is here", user="ann", site=None).text == \
            "Sorry, I can't broadcast from here."
        satellites.sent = False
        refused = engine.respond("announce the car is here", user="ann", site="kitchen")
        assert refused.text == "Sorry, I can't broadcast from here." and not refused.effects
    finally:
        engine.close()
