"""Hostile clients against the running service: someone who knows another person's words,
fields crafted to reach another request's key or another topic, a byte scan of everything
written to disk after a forget, and resource abuse (huge audio, a slow or idle Wyoming
client, too many connections, a flood from one person)."""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.handle import Handled
from wyoming.ping import Ping

from assistant.protocol import ErrorReply, Packet, Response, Topics, decode_reply
from assistant.transports.mqtt_client import Asker
from tests.helpers import until
from tests.servers import RedisServer, admin_url, free_port
from tests.service import ROOT, Broker, Listener, ServiceProcess, service_config

pytestmark = pytest.mark.slow

T = Topics()


class Home:
    """A service of these tests' own: its broker, Redis, folder, Wyoming port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.broker = Broker(folder / "broker").start()
        self.redis = RedisServer(folder / "redis").start()
        self.wyoming = free_port()
        self.metrics_port = free_port()
        config = service_config(folder, broker=self.broker, redis_url=self.redis.url,
                                wyoming_port=self.wyoming, extra="requests_per_minute = 60",
                                metrics_port=self.metrics_port)
        # Wyoming's limits made small enough to reach in a test.
        self.node = ServiceProcess(config, speech=True, env={"ASSISTANT_WYOMING__MAX_CONNECTIONS": "4",
                                                "ASSISTANT_WYOMING__IDLE_TIMEOUT": "3",
                                                "ASSISTANT_WYOMING__EVENT_TIMEOUT": "1"}).start()

    def trims(self) -> float:
        """Times the service has handed its heaps back to the system, by its metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("assistant_heap_trims_total "):
                    return float(line.split()[1])
        raise AssertionError("no assistant_heap_trims_total")

    def asker(self, user: str, site: str = "kitchen") -> Asker:
        return Asker(self.broker.settings(user), user=user, site=site).start()

    def close(self) -> None:
        self.node.stop()
        self.broker.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    place = Home(tmp_path_factory.mktemp("attacks"))
    yield place
    place.close()


def ask(asker: Asker, text: str) -> Response:
    reply = asker.ask(text=text).reply
    assert isinstance(reply, Response), reply
    return reply


async def handle(port: int, text: str) -> str:
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        await client.write_event(Transcript(text=text).event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 30)
            assert event is not None
            if Handled.is_type(event.type):
                return Handled.from_event(event).text or ""
            assert not Error.is_type(event.type), event
    finally:
        await client.disconnect()


def test_knowing_anothers_words_gets_nothing_of_theirs(home: Home) -> None:
    ola_sees = Listener(home.broker.settings("ola"))
    ola_sees.subscribe("#")
    with home.asker("per") as per:
        ask(per, "add zebra cake to my shopping list")
        ask(per, "add quokka jam to my shopping list")
        done = per.ask(text="check off zebra cake from my shopping list", request_id="per-1")
        assert isinstance(done.reply, Response)
        assert done.reply.text == "Checked off zebra cake on your shopping list."
        with home.asker("ola") as ola:
            # Her own words: her own list.
            assert ask(ola, "check off quokka jam from my shopping list").text == \
                "Sorry, quokka jam is not on your shopping list."
            # His request id, his words, his name in the payload: still her own answer,
            # never the reply recorded for him.
            ola_raw = Listener(home.broker.settings("ola"), *T.replies("ola", "kitchen"))
            ola_raw.send(Packet(T.request("kitchen", "ola"), json.dumps(
                {"id": "per-1", "text": "check off zebra cake from my shopping list",
                 "user": "per"}).encode()))
            until(lambda: ola_raw.on("/response/ola"), "ola's answer")
            reply = decode_reply(ola_raw.on("/response/ola")[0])
            assert isinstance(reply, Response)
            assert reply.text == "Sorry, zebra cake is not on your shopping list."
            # Fields that would name his scope or another site: refused.
            ola_raw.send(Packet(T.request("kitchen", "ola"), json.dumps(
                {"id": "per-1", "text": "check off quokka jam from my shopping list",
                 "scope": "user:per", "site": "hall"}).encode()))
            until(lambda: ola_raw.on("/error/ola"), "ola's error")
            error = decode_reply(ola_raw.on("/error/ola")[0])
            assert isinstance(error, ErrorReply) and error.code == "bad_request"
            # A response topic of his: refused, on her own error topic.
            ola_raw.send(Packet(T.request("kitchen", "ola"), json.dumps(
                {"id": "o-2", "text": "check off quokka jam from my shopping list"}).encode(),
                response_topic=T.response("kitchen", "per")))
            until(lambda: len(ola_raw.on("/error/ola")) == 2, "ola's second error")
            error = decode_reply(ola_raw.on("/error/ola")[1])
            assert isinstance(error, ErrorReply) and error.code == "bad_request"
            assert len(ola_raw.on("/response/ola")) == 1
            ola_raw.close()
        # Through Wyoming (Home Assistant's account): not his list either.
        heard = asyncio.run(handle(home.wyoming, "check off quokka jam from my shopping list"))
        assert not heard.startswith("Checked off"), heard
        # His list was there all along: the probes were real.
        assert ask(per, "check off quokka jam from my shopping list").text == \
            "Checked off quokka jam on your shopping list."
    time.sleep(0.3)
    assert not [p.topic for p in ola_sees.on("") if "/per" in p.topic]
    assert not [p for p in ola_sees.on("") if b"Checked off" in p.payload]
    ola_sees.close()


def command_topics() -> set[str]:
    entities = yaml.safe_load((ROOT / "configs" / "entities.yaml").read_text())["entities"]
    return {str(v) for e in entities for k, v in e.items() if k.endswith("command_topic")}


def test_crafted_requests_publish_nowhere_but_the_homes_command_topics(home: Home) -> None:
    watch = Listener(home.broker.settings("assistant"), "#")
    cal = Listener(home.broker.settings("cal"), *T.replies("cal", "kitchen"))
    crafted = [
        ({"id": "c1", "text": "turn on the kitchen light"}, "home/kitchen/light/set"),
        ({"id": "c2", "text": "never mind"}, "assistant/kitchen/response/per"),
        ({"id": "c3", "text": "never mind"}, "homeassistant/light/x/config"),
        ({"id": "c4", "text": "add home/kitchen/light/set to my shopping list"}, None),
        ({"id": "c5", "text": "turn on the homeassistant/status"}, None),
        ({"id": "c6", "text": "broadcast assistant/kitchen/response/per hello"}, None),
    ]
    for body, response_topic in crafted:
        cal.send(Packet(T.request("kitchen", "cal"), json.dumps(body).encode(),
                        response_topic=response_topic))
    # What the ACL refuses never reaches the service at all.
    info = cal.send(Packet("homeassistant/light/evil/config", json.dumps(
        {"name": "Evil", "command_topic": "assistant/kitchen/response/per"}).encode()))
    until(lambda: info.mid in cal.published, "the broker's word on the discovery config")
    assert cal.published[info.mid].is_failure
    until(lambda: len(cal.on("/response/cal")) + len(cal.on("/error/cal")) >= len(crafted),
          "a reply to each", timeout=30)
    replies = [decode_reply(p) for p in cal.on("/response/cal") + cal.on("/error/cal")]
    assert {r.id: getattr(r, "code", "answer") for r in replies} == {
        "c1": "bad_request", "c2": "bad_request", "c3": "bad_request", "c4": "answer",
        "c5": "answer", "c6": "answer"}
    time.sleep(0.5)
    ours = {"assistant/kitchen/request/cal", "homeassistant/light/evil/config"}
    allowed = command_topics() | {T.status}
    stray = [p.topic for _, p in watch.messages
             if p.topic not in ours and p.topic not in allowed
             and not p.topic.startswith(("assistant/kitchen/response/cal",
                                         "assistant/kitchen/error/cal",
                                         "assistant/kitchen/broadcast",
                                         "assistant/kitchen/satellite/"))]
    assert not stray, stray
    assert not [p for _, p in watch.messages if p.topic == "home/kitchen/light/set"]
    watch.close()
    cal.close()


def test_a_flood_from_one_person_leaves_the_others_served(home: Home) -> None:
    flood = Listener(home.broker.settings("kim"), *T.replies("kim", "kitchen"))
    answers: list[object] = []

    def others() -> None:
        with home.asker("fay") as fay:
            for n in range(10):
                answers.append(fay.ask(text=("never mind", "is the kitchen light on")[n % 2])
                               .reply)
                time.sleep(0.1)

    fay = threading.Thread(target=others)
    fay.start()
    for n in range(200):
        flood.send(Packet(T.request("kitchen", "kim"), json.dumps(
            {"id": f"k{n}", "text": f"set the kitchen light brightness to {n % 100} percent"})
            .encode()))
    fay.join(60)
    until(lambda: len(flood.on("/response/kim")) + len(flood.on("/error/kim")) >= 200,
          "a reply to each of the flood", timeout=60)
    time.sleep(0.5)
    replies = [decode_reply(p) for p in flood.on("/response/kim") + flood.on("/error/kim")]
    assert sorted(r.id or "" for r in replies) == sorted(f"k{n}" for n in range(200))
    codes = collections.Counter(getattr(r, "code", "answer") for r in replies)
    # At most a minute's worth answered; the rest refused at once: beyond the person's
    # share of the queue (busy), or beyond their rate.
    assert codes["answer"] <= 60 and codes["answer"] + codes["busy"] + codes["rate_limited"] \
        == 200, codes
    assert codes["busy"] >= 100, codes
    assert len(answers) == 10 and all(isinstance(a, Response) for a in answers), answers
    flood.close()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def test_huge_audio_is_refused_and_memory_stays_bounded(home: Home) -> None:
    assert home.node.proc is not None
    pid = home.node.proc.pid
    lu = Listener(home.broker.settings("lu"), *T.replies("lu", "kitchen"))
    long_wav = io.BytesIO()
    with wave.open(long_wav, "wb") as out:  # six minutes of sound, in 12 MB
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(os.urandom(12 * 1024 * 1024))
    payloads = {"long": long_wav.getvalue(), "noise": b"RIFF" + os.urandom(12 * 1024 * 1024)}
    before = rss_mb(pid)

    def attack(ids: range) -> float:
        """The most memory the service held above ``before`` while refusing these."""
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # its peak RSS from now on
        for n in ids:
            lu.send(Packet(T.audio("kitchen", "lu"), payloads[("long", "noise")[n % 2]],
                           correlation=f"h{n}".encode(), properties=(("id", f"h{n}"),)))
        until(lambda: len(lu.on("/error/lu")) >= ids.stop, "an error for each", timeout=60)
        return rss_mb(pid, "VmHWM") - before

    def handed_back(trims: float) -> None:
        # Taking a large payload counts as heavy work: the heaps are trimmed after it.
        until(lambda: home.trims() > trims, "the heaps trimmed after the attack", timeout=5)
        deadline = time.monotonic() + 10
        while (held := rss_mb(pid) - before) >= 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held < 24, f"{held:.1f} MB still held 10 s after the attack"

    trims = home.trims()
    two = attack(range(2))
    handed_back(trims)
    trims = home.trims()
    six = attack(range(2, 8))
    codes = {decode_reply(p).id: decode_reply(p).code  # type: ignore[union-attr]
             for p in lu.on("/error/lu")}
    assert codes == {f"h{n}": ("too_long", "not_wav")[n % 2] for n in range(8)}, codes
    print(f"service RSS {before:.1f} MB; at most {two:.1f} MB more for two 12 MB audio "
          f"requests, {six:.1f} MB for six")
    # Each is refused as it arrives, never queued: the copies of one payload at a time (the
    # MQTT client's, the decoding's: 42-72 MB at the peak), however many are sent. Six held
    # at once would add 48 MB to the peak of two.
    assert six < two + 24, (two, six)
    handed_back(trims)  # and handed back once the attack is over
    with home.asker("lu") as asker:
        assert ask(asker, "never mind").text
    lu.close()


def wyoming_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def error_of(sock: socket.socket) -> dict[str, object]:
    """The first event the server sends (it must be an error), then the end of the stream."""
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed without a word"
        data += chunk
    header = json.loads(data.split(b"\n", 1)[0])
    assert header["type"] == "error", header
    rest = data.split(b"\n", 1)[1]
    while len(rest) < header.get("data_length", 0):
        rest += sock.recv(65536)
    body = {**header.get("data", {}), **json.loads(rest[: header.get("data_length", 0)] or b"{}")}
    sock.settimeout(5)
    while sock.recv(65536):
        pass  # drained to the end: the server closed it
    return body


async def pong(port: int) -> str | None:
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        await client.write_event(Ping(text="here").event())
        event = await asyncio.wait_for(client.read_event(), 5)
        return None if event is None else (event.data or {}).get("text")
    finally:
        await client.disconnect()


def test_a_slow_or_idle_wyoming_client_is_closed_and_others_are_served(home: Home) -> None:
    slow = wyoming_socket(home.wyoming)
    slow.sendall(b'{"type": "pi')  # begun, never finished in time
    idle = wyoming_socket(home.wyoming)
    started = time.monotonic()
    assert asyncio.run(pong(home.wyoming)) == "here"  # served meanwhile
    slow.sendall(b"n")
    assert error_of(slow)["code"] == "too_slow"
    assert time.monotonic() - started < 3
    assert error_of(idle)["code"] == "idle"
    slow.close()
    idle.close()


def test_connections_beyond_the_limit_are_told_busy(home: Home) -> None:
    held = [wyoming_socket(home.wyoming) for _ in range(4)]
    time.sleep(0.3)
    extra = wyoming_socket(home.wyoming)
    assert error_of(extra)["code"] == "busy"
    extra.close()
    held.pop().close()
    time.sleep(0.3)
    assert asyncio.run(pong(home.wyoming)) == "here"
    for sock in held:
        sock.close()


# -- what is on disk after a forget ----------------------------------------------------------

WORDS = {"bartholomew": ("xylophone wax", "marzipan tiles"),
         "wilhelmina": ("periwinkle soap", "tangerine glue")}


def test_after_a_forget_no_byte_on_disk_holds_anyones_words_or_name(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    own = RedisServer(tmp_path / "redis").start()
    db = tmp_path / "cache.db"
    config = service_config(tmp_path, broker=broker, redis_url=own.url)
    node = ServiceProcess(config).start()
    try:
        for user, items in WORDS.items():
            with Asker(broker.settings(user), user=user, site="hall").start() as asker:
                for item in items[:1]:
                    assert ask(asker, f"add {item} to my shopping list").text.startswith("Added")
        until(lambda: Path(f"{db}-wal").exists() and db.stat().st_size > 0, "written to disk")
        time.sleep(0.5)
        # A bad write: the file is moved aside (with what it held) and a new one begun.
        for path in (db, Path(f"{db}-wal")):
            with path.open("r+b") as out:
                out.write(b"\x13\x37garbage" * 4096)
        for user, items in WORDS.items():
            with Asker(broker.settings(user), user=user, site="hall").start() as asker:
                for item in items[1:]:
                    assert ask(asker, f"add {item} to my shopping list").text.startswith("Added")
                assert ask(asker, f"check off {items[0]} from my shopping list").text
        until(lambda: list(tmp_path.glob("cache.db.corrupt-*")), "the garbage moved aside")
        # While it runs: the file, its WAL, the copy moved aside, a dump of Redis.
        assert not scan(tmp_path, own, expect=("cache.db", "cache.db-wal", "dump.rdb",
                                               "cache.db.corrupt-"))
        forget = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                                 "cache", "forget", "bartholomew"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60,
                                env={k: v for k, v in os.environ.items()
                                     if not k.startswith("ASSISTANT_")})
        assert forget.returncode == 0, forget.stderr
        time.sleep(1)
        assert not scan(tmp_path, own, expect=("cache.db", "dump.rdb"))
    finally:
        node.stop()
        broker.stop()
    # And once stopped: what a stolen SD card would hold.
    assert not scan(tmp_path, own, expect=("cache.db", "dump.rdb", "figures.jsonl"))
    own.stop()


def scan(folder: Path, redis_server: RedisServer, expect: tuple[str, ...]) -> set[tuple[str, str]]:
    """Where, in every file under ``folder`` (Redis's dump made now; the broker's own files
    left out: they hold topic names, which name users by design), any of the test users'
    words or names is found in clear; ``expect``: names (or beginnings) of files that must
    be among those scanned."""
    admin = redis.Redis.from_url(admin_url(redis_server.url))
    admin.save()  # what Redis would write to disk, and what a copy of its memory holds
    admin.close()
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()
             and "broker" not in p.parts and not p.name.endswith(".check")}
    for name in expect:
        assert any(p.name.startswith(name) and data for p, data in files.items()), \
            (name, sorted(p.name for p in files))
    secrets = [w.encode() for items in WORDS.values() for item in items
               for w in item.split()] + [user.encode() for user in WORDS]
    return {(p.name, s.decode()) for p, data in files.items() for s in secrets if s in data}
