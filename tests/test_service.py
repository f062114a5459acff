"""``assistant serve``: a real service process, a real mosquitto with the project's config, a
real redis-server, and MQTT clients asking it things."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.protocol import (
    ErrorReply,
    Packet,
    ProtocolError,
    Response,
    Topics,
    decode_reply,
    decode_request,
    encode_text_request,
)
from assistant.transports.mqtt_client import Asker
from tests.helpers import until
from tests.servers import RedisServer, free_port
from tests.service import ROOT, Broker, Listener, ServiceProcess, service_config

pytestmark = pytest.mark.slow

BROKEN = """
language: en
intents:
  BrokenIntent:
    data:
      - sentences: ["break the template"]
    responses:
      default:
        - text: "{{ slots.nothing_here }}"
"""


@pytest.fixture(scope="module")
def intents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("intents")
    shutil.copytree(ROOT / "intents", folder, dirs_exist_ok=True)
    (folder / "broken.yaml").write_text(BROKEN)
    return folder


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, broker: Broker, redis_server: RedisServer,
            intents: Path, metrics_port: int) -> Iterator[ServiceProcess]:
    """One text service for the tests that only ask it things."""
    folder = tmp_path_factory.mktemp("service")
    config = service_config(folder, broker=broker, redis_url=redis_server.url, intents=intents,
                            metrics_port=metrics_port,
                            extra='sites = []\nrequests_per_minute = 1000')
    process = ServiceProcess(config, speech=True).start()
    yield process
    process.stop()


def asker(broker: Broker, user: str, site: str = "kitchen") -> Asker:
    return Asker(broker.settings(user), user=user, site=site).start()


def test_a_text_request_acts_on_the_home_and_is_answered_from_cache_next(
        service: ServiceProcess, broker: Broker) -> None:
    devices = Listener(broker.settings("assistant"),
                       "home/kitchen/light/set")
    with asker(broker, "ann") as ann:
        first = ann.ask(text="turn on the kitchen light")
        assert isinstance(first.reply, Response), first.reply
        assert first.reply.intent == "HassTurnOn" and first.reply.text == \
            "Turned on the Kitchen Light."
        assert first.reply.actions == [{"entity_id": "light.kitchen_light",
                                        "topic": "home/kitchen/light/set", "payload": "ON"}]
        assert [f["source"] for f in first.reply.fragments] in (["computed"], ["l2"])
        until(lambda: devices.on("home/kitchen/light/set"), "the device command")
        assert devices.on("home/kitchen/light/set")[0].payload == b"ON"
        again = ann.ask(text="turn on the kitchen light")
        assert isinstance(again.reply, Response)
        assert [f["source"] for f in again.reply.fragments] == ["l1"]
        assert set(again.reply.timings) >= {"recognise", "answer", "publish", "total"}
        assert (first.reply.match, again.reply.match) == ("strict", "strict")
        # Said almost right, it is understood and says so; a name the home lacks gets the
        # library's error and touches nothing.
        near = ann.ask(text="turn off the kitchen lite")
        assert isinstance(near.reply, Response)
        assert (near.reply.match, near.reply.text) == ("fuzzy", "Turned off the Kitchen Light.")
        lacking = ann.ask(text="turn on the garage heater")
        assert isinstance(lacking.reply, Response)
        assert lacking.reply.match == "unknown_name" and not lacking.reply.actions
        assert lacking.reply.text == "Sorry, I am not aware of any device called garage heater."
        until(lambda: [p.payload for p in devices.on("home/kitchen/light/set")][-1] == b"OFF",
              "the light turned off")
        assert [p.payload for p in devices.on("home/kitchen/light/set")] == [b"ON", b"ON", b"OFF"]
    devices.close()


def test_a_second_service_process_answers_from_redis(tmp_path: Path, broker: Broker,
                                                     redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    results = []
    for n in (1, 2):
        folder = tmp_path / f"node{n}"
        folder.mkdir()
        config = service_config(folder, broker=broker, redis_url=redis_server.url,
                                extra='topic_prefix = "second"',
                                key_file=tmp_path / "master.key")
        node = ServiceProcess(config).start()
        try:
            with Asker(broker.settings("assistant"), user="cal", site="hall",
                       topics=Topics("second")) as cal:
                reply = cal.ask(text="turn off the living room lamp").reply
                assert isinstance(reply, Response), reply
                results.append([f["source"] for f in reply.fragments])
        finally:
            node.stop()
    assert results == [["computed"], ["l2"]]


def test_bad_input_gets_its_error_and_the_service_goes_on(service: ServiceProcess,
                                                          broker: Broker) -> None:
    t = Topics()
    client = Listener(broker.settings("assistant"),
                      "assistant/+/error/+", "assistant/+/response/+")
    bad = {
        "bad_json": Packet(t.request("kitchen", "dan"), b"{not json", correlation=b"r1"),
        "bad_request": Packet(t.request("kitchen", "dan"), json.dumps(
            {"id": "r2", "text": 42}).encode()),
        "too_large": Packet(t.request("kitchen", "dan"), json.dumps(
            {"id": "r3", "text": "x" * 5000}).encode()),
        "not_wav": Packet(t.audio("kitchen", "dan"), b"\x00\xff garbage \x13" * 20,
                          correlation=b"r4"),
        "bad_template": Packet(t.request("kitchen", "dan"), json.dumps(
            {"id": "r5", "text": "break the template"}).encode()),
        "bad_user": Packet(t.request("kitchen", "d!an"), json.dumps(
            {"id": "r6", "text": "hi"}).encode()),
        "nested": Packet(t.request("kitchen", "dan"), b"[" * 60000, correlation=b"r7"),
        "surrogate": Packet(t.request("kitchen", "dan"),
                            b'{"id": "r8", "text": "hi", "area": "\\ud800"}'),
    }
    for packet in bad.values():
        client.send(packet)
    until(lambda: len(client.on("/error/")) >= len(bad), "an error for each", timeout=30)
    errors = {e.id: e.code for e in map(decode_reply, client.on("/error/"))}
    assert errors == {"r1": "bad_json", "r2": "bad_request", "r3": "too_large", "r4": "not_wav",
                      "r5": "bad_template", "r6": "bad_user", "r7": "bad_json",
                      "r8": "bad_request"}
    assert not client.on("/response/")
    assert service.alive()
    with asker(broker, "dan") as dan:
        assert isinstance(dan.ask(text="turn off the kitchen light").reply, Response)
    client.close()


def test_a_user_named_in_the_payload_is_not_who_asks(service: ServiceProcess,
                                                     broker: Broker) -> None:
    eve = Listener(broker.settings("assistant"),
                   "assistant/+/response/+")
    eve.send(Packet(Topics().request("kitchen", "fay"),
                    json.dumps({"id": "u1", "text": "never mind", "user": "eve"}).encode()))
    until(lambda: eve.on("/response/"), "the answer")
    assert [p.topic for p in eve.on("/response/")] == ["assistant/kitchen/response/fay"]
    eve.close()


def test_the_mqtt5_response_topic_and_correlation_are_honoured(service: ServiceProcess,
                                                               broker: Broker) -> None:
    client = Listener(broker.settings("assistant"), "assistant/kitchen/response/gus/#",
                      "assistant/kitchen/error/gus", "elsewhere/#")
    t = Topics()
    request = encode_text_request(t, site="kitchen", user="gus", text="never mind",
                                  request_id="corr-1")
    client.send(Packet(request.topic, request.payload, correlation=b"\x01\x02opaque",
                       response_topic="assistant/kitchen/response/gus/inbox"))
    until(lambda: client.on("response/gus/inbox"), "the answer on the response topic")
    packet = client.on("response/gus/inbox")[0]
    assert packet.correlation == b"\x01\x02opaque"
    assert isinstance(decode_reply(packet), Response)
    # A response topic that is not the asker's own would make the service write for them
    # where they may not: refused, and nothing is published there.
    for n, elsewhere in enumerate(("elsewhere/device/set", "assistant/kitchen/response/cal",
                                   "assistant/kitchen/response/gus/+")):
        client.send(Packet(request.topic, json.dumps({"id": f"far{n}", "text": "never mind"})
                           .encode(), response_topic=elsewhere))
    until(lambda: len(client.on("/error/gus")) >= 3, "three refusals")
    assert {(e.id, e.code) for e in map(decode_reply, client.on("/error/gus"))} == {
        ("far0", "bad_request"), ("far1", "bad_request"), ("far2", "bad_request")}
    assert not client.on("elsewhere/")
    client.close()


def test_a_redelivered_request_is_answered_again_without_running_twice(
        service: ServiceProcess, broker: Broker, metrics_port: int) -> None:
    def replayed() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        line = next((x for x in text.splitlines()
                     if x.startswith('assistant_answers_total{source="replayed"}')), None)
        return float(line.split()[-1]) if line else 0.0

    before = replayed()
    with asker(broker, "hal") as hal:
        first = hal.ask(text="what is the capital of Norway?", request_id="same-id-1")
        second = hal.ask(text="what is the capital of Norway?", request_id="same-id-1")
    assert isinstance(first.reply, Response) and isinstance(second.reply, Response)
    assert second.reply == first.reply  # the recorded answer, timings and all
    assert replayed() == before + 1


def test_the_metrics_endpoint_shows_the_cache_and_the_service(service: ServiceProcess,
                                                              metrics_port: int) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    for name in ("cache_requests_total", "assistant_stage_seconds_bucket",
                 "assistant_queue_depth", "assistant_answers_total", "assistant_errors_total"):
        assert name in text, name


def test_a_user_over_the_limit_is_told_so(tmp_path: Path, broker: Broker,
                                         redis_server: RedisServer) -> None:
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            extra='topic_prefix = "limited"\nrequests_per_minute = 3')
    node = ServiceProcess(config).start()
    try:
        with Asker(broker.settings("assistant"), user="ida", site="hall",
                   topics=Topics("limited")) as ida:
            codes = [type(ida.ask(text="never mind").reply).__name__ for _ in range(3)]
            over = ida.ask(text="never mind").reply
        assert codes == ["Response"] * 3
        assert isinstance(over, ErrorReply) and over.code == "rate_limited"
    finally:
        node.stop()


def test_a_request_past_its_deadline_gets_timeout_once(tmp_path: Path, broker: Broker,
                                                       redis_server: RedisServer) -> None:
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            extra='topic_prefix = "hasty"\ntimeout = 0.05')
    node = ServiceProcess(config).start()
    watcher = Listener(broker.settings("assistant"), "hasty/#")
    try:
        with Asker(broker.settings("assistant"), user="jo", site="hall",
                   topics=Topics("hasty")) as jo:
            reply = jo.ask(text="describe the sea at night in three sentences").reply
        assert isinstance(reply, ErrorReply) and reply.code == "timeout"
        time.sleep(2)  # the model finishes meanwhile; its answer is not sent
        finals = [p for p in watcher.on("hasty/") if "/response/" in p.topic
                  or "/error/" in p.topic]
        assert len(finals) == 1
    finally:
        watcher.close()
        node.stop()


def test_a_flood_gets_busy_beyond_its_share_and_nothing_twice(tmp_path: Path, broker: Broker,
                                                              redis_server: RedisServer) -> None:
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            extra='topic_prefix = "flood"\nworkers = 1\nqueue_size = 3\n'
                                  "queue_per_user = 2\nrequests_per_minute = 0\ntimeout = 60")
    node = ServiceProcess(config).start()
    client = Listener(broker.settings("assistant"),
                      "flood/+/response/+", "flood/+/error/+")
    try:
        t = Topics("flood")
        ids = [f"f{n}" for n in range(20)]
        for n, request_id in enumerate(ids):  # each new to the model: each takes a while
            client.send(Packet(t.request("hall", "kim"), json.dumps(
                {"id": request_id, "text": f"tell me a fact about the number {n + 7}"}).encode()))
        until(lambda: len(client.on("/response/")) + len(client.on("/error/")) >= len(ids),
              "a reply to each", timeout=120)
        time.sleep(1)
        replies = [decode_reply(p) for p in client.on("/response/") + client.on("/error/")]
        assert sorted(r.id or "" for r in replies) == sorted(ids)  # one each, none twice
        busy = [r for r in replies if isinstance(r, ErrorReply) and r.code == "busy"]
        answered = [r for r in replies if isinstance(r, Response)]
        assert busy and answered and len(busy) + len(answered) == len(ids)
        # Every delivery was acknowledged, the refused ones too: the same service started
        # again (its session resumed) is sent none of them a second time.
        node.stop()
        node.start()
        time.sleep(2)
        assert len(client.on("/response/")) + len(client.on("/error/")) == len(ids)
    finally:
        client.close()
        node.stop()


def test_the_broker_restarting_loses_no_request(tmp_path: Path, redis_server: RedisServer) -> None:
    own = Broker(tmp_path / "broker").start()
    config = service_config(tmp_path, broker=own, redis_url=redis_server.url,
                            extra='topic_prefix = "restart"')
    node = ServiceProcess(config).start()
    try:
        with Asker(own.settings("assistant"), user="lu", site="hall",
                   topics=Topics("restart")) as lu:
            assert isinstance(lu.ask(text="never mind").reply, Response)
        own.stop()
        own.start()
        # Published at once, while the service is still reconnecting: the broker keeps it in
        # the service's session, and the service answers it when it is back.
        with Asker(own.settings("assistant"), user="lu", site="hall",
                   topics=Topics("restart")) as lu:
            reply = lu.ask(text="turn on the kitchen light", timeout=60).reply
        assert isinstance(reply, Response) and reply.intent == "HassTurnOn"
    finally:
        node.stop()
        own.stop()


def test_requests_are_answered_while_redis_is_killed(tmp_path: Path, broker: Broker) -> None:
    own = RedisServer(tmp_path / "redis").start()
    config = service_config(tmp_path, broker=broker, redis_url=own.url,
                            extra='topic_prefix = "redis"')
    node = ServiceProcess(config).start()
    try:
        with Asker(broker.settings("assistant"), user="mo", site="hall",
                   topics=Topics("redis")) as mo:
            replies = []
            for n in range(30):
                if n == 10:
                    own.kill()
                replies.append(mo.ask(text=("turn on the kitchen light", "never mind",
                                            f"is the kitchen light on {n}")[n % 3]).reply)
        assert all(isinstance(r, Response) for r in replies), replies
    finally:
        node.stop()
        own.stop()


def test_a_template_edit_reaches_two_running_services(tmp_path: Path, broker: Broker,
                                                      redis_server: RedisServer,
                                                      intents: Path) -> None:
    folder = tmp_path / "intents"
    shutil.copytree(intents, folder)
    nodes = []
    for prefix in ("edit-a", "edit-b"):
        (tmp_path / prefix).mkdir()
        config = service_config(tmp_path / prefix, broker=broker, redis_url=redis_server.url,
                                intents=folder, extra=f'topic_prefix = "{prefix}"',
                                key_file=tmp_path / "master.key")
        nodes.append(ServiceProcess(config).start())
    try:
        def answer(prefix: str) -> str:
            with Asker(broker.settings("assistant"), user="ned", site="hall",
                       topics=Topics(prefix)) as ned:
                reply = ned.ask(text="never mind").reply
                assert isinstance(reply, Response), reply
                return reply.text

        assert answer("edit-a") == answer("edit-b") == "Okay."
        time.sleep(0.5)
        text = (folder / "info.yaml").read_text()
        (folder / "info.yaml").write_text(text.replace('- text: "Okay."', '- text: "As you like."'))
        until(lambda: answer("edit-a") == "As you like.", "the edit on the first", timeout=20)
        until(lambda: answer("edit-b") == "As you like.", "the edit on the second", timeout=20)
    finally:
        for node in nodes:
            node.stop()


def test_the_broker_keeps_one_persons_answers_from_another(service: ServiceProcess,
                                                           broker: Broker) -> None:
    t = Topics()
    ola = Listener(broker.settings("ola"))
    # mosquitto's ACL file grants every subscription and checks each message against the
    # reader's rights on delivery: what ola may not read never reaches her.
    ola.subscribe(t.response("kitchen", "per"))
    ola.subscribe("assistant/#")
    watch = Listener(broker.settings("assistant"), "assistant/+/response/+",
                     "assistant/+/error/+")
    info = ola.send(encode_text_request(t, site="kitchen", user="per",
                                        text="turn on the kitchen light", request_id="x1"))
    until(lambda: info.mid in ola.published, "the broker's word on ola's publish")
    assert ola.published[info.mid].is_failure  # not authorised: ola may not speak for per
    with asker(broker, "per") as per:
        reply = per.ask(text="what is my favourite colour?").reply  # personal: per's alone
        assert isinstance(reply, Response)
    with asker(broker, "ola") as ola_asks:
        assert isinstance(ola_asks.ask(text="never mind").reply, Response)
    time.sleep(0.5)
    assert not [p.topic for p in ola.on("assistant/") if "/per" in p.topic]
    assert not [p for p in watch.on("/") if b'"x1"' in p.payload]  # never answered
    ola.close()
    watch.close()


@pytest.mark.slow
def test_an_audio_request_is_heard_answered_and_spoken(tmp_path: Path, broker: Broker,
                                                       redis_server: RedisServer) -> None:
    from assistant.settings import SttSettings, TtsSettings
    from assistant.speech.stt import Transcriber
    from assistant.speech.tts import Speaker
    from tests.speech_data import STEADY_VOICE, wer

    steady = "\n".join(f"{name} = {value}" for name, value in STEADY_VOICE.items())
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            extra=f'topic_prefix = "spoken"\n[tts]\n{steady}')
    node = ServiceProcess(config, speech=True).start()
    try:
        with Speaker(TtsSettings(**STEADY_VOICE)) as voice:
            wav = voice.speak("Turn on the kitchen light.").wav
        with Asker(broker.settings("assistant"), user="pam", site="kitchen",
                   topics=Topics("spoken")) as pam:
            asked = pam.ask(wav=wav, speak=True)
            reply = asked.reply
            assert isinstance(reply, Response), reply
            assert reply.intent == "HassTurnOn" and "stt" in reply.timings
            assert wer(["turn on the kitchen light"], [reply.transcript or ""]) <= 0.2
            assert len(asked.speech) == 1 and asked.speech[0].last
            with Transcriber(SttSettings()) as ears:
                heard = ears.transcribe(asked.speech[0].wav).text
            assert wer([reply.text], [heard]) <= 0.2, heard
            streamed = pam.ask(text="what's the weather like", speak=True, stream=True)
            assert isinstance(streamed.reply, Response)
            chunks = streamed.speech
            assert [c.seq for c in chunks] == list(range(len(chunks))) and chunks[-1].last
            assert len(chunks) >= 2 and not any(c.last for c in chunks[:-1])
    finally:
        node.stop()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(topic=st.sampled_from(["assistant/kitchen/request/ann", "assistant/kitchen/audio/ann",
                              "assistant/x y/request/ann", "assistant/kitchen/request/"]),
       payload=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                         st.dictionaries(st.sampled_from(["id", "text", "area", "speak",
                                                          "stream", "user", "x"]),
                                         st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                                   st.booleans()), max_size=5)
                         .map(lambda d: json.dumps(d).encode())),
       correlation=st.one_of(st.none(), st.binary(max_size=80)))
def test_the_decoder_takes_anything_and_says_why_it_refuses(topic: str, payload: bytes,
                                                            correlation: bytes | None) -> None:
    try:
        request = decode_request(Packet(topic, payload, correlation=correlation), Topics(),
                                 max_audio_bytes=1024)
    except ProtocolError as error:
        assert error.code in {"bad_json", "bad_request", "too_large", "unknown_site",
                              "bad_user", "bad_topic"}
    else:
        assert request.user == "ann" and request.site == "kitchen" and request.id


@pytest.fixture(scope="module")
def fuzzer(service: ServiceProcess, broker: Broker) -> Iterator[Listener]:
    client = Listener(broker.settings("assistant"), "assistant/fuzz/+/+")
    yield client
    client.close()


_PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.dictionaries(st.sampled_from(["id", "text", "area", "speak", "stream", "user", "x"]),
                    st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=40)),
                    max_size=5).map(lambda d: json.dumps(d).encode()),
    st.text(max_size=60).map(lambda t: json.dumps({"text": t}).encode()))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=_PAYLOADS, audio=st.booleans(), n=st.integers(0, 10**9))
def test_random_payloads_each_get_one_reply_and_the_service_lives(
        service: ServiceProcess, fuzzer: Listener, payload: bytes, audio: bool, n: int) -> None:
    t = Topics()
    tag = f"z{n}-{len(fuzzer.messages)}".encode()
    topic = t.audio("fuzz", "quinn") if audio else t.request("fuzz", "quinn")
    fuzzer.send(Packet(topic, payload, correlation=tag))
    until(lambda: [p for p in fuzzer.on("/fuzz/") if p.correlation == tag
                   and ("/error/" in p.topic or "/response/" in p.topic)],
          "the reply", timeout=60)
    time.sleep(0.05)
    replies = [p for p in fuzzer.on("/fuzz/") if p.correlation == tag
               and ("/error/" in p.topic or "/response/" in p.topic)]
    assert len(replies) == 1  # one reply, an answer or an error, never two
    assert service.alive()


def test_ask_over_mqtt_from_the_command_line(service: ServiceProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "answer.wav"
    done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(service.config),
                           "ask", "--mqtt", "turn off the kitchen light", "--user", "rex",
                           "--site", "kitchen", "--play-to", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Turned off the Kitchen Light."
    assert "home/kitchen/light/set <- OFF" in done.stderr and "round trip" in done.stderr
    assert out.read_bytes()[:4] == b"RIFF" and len(out.read_bytes()) > 10_000


def test_status_is_retained_and_a_311_client_is_answered(service: ServiceProcess,
                                                        broker: Broker) -> None:
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    status = Listener(broker.settings("assistant"), "assistant/status")
    until(lambda: status.on("assistant/status"), "the retained status")
    assert status.on("assistant/status")[0].payload == b"online"
    status.close()
    got: list[bytes] = []
    old = Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="old-client",
                 protocol=MQTTProtocolVersion.MQTTv311)
    old.username_pw_set("rex", "rex-pw")
    old.on_message = lambda client, userdata, message: got.append(message.payload)
    old.connect("127.0.0.1", broker.port)
    old.loop_start()
    old.subscribe(Topics().response("kitchen", "rex"), qos=1)
    time.sleep(0.3)
    old.publish(Topics().request("kitchen", "rex"),
                json.dumps({"id": "v311", "text": "never mind"}), qos=1)
    until(lambda: got, "the answer to an MQTT 3.1.1 client")
    assert json.loads(got[0])["id"] == "v311"
    old.disconnect()
    old.loop_stop()


def test_a_site_not_served_is_refused() -> None:
    packet = encode_text_request(Topics(), site="garage", user="ann", text="hi", request_id="s1")
    with pytest.raises(ProtocolError) as caught:
        decode_request(packet, Topics(), max_audio_bytes=1024, sites=["kitchen", "hall"])
    assert caught.value.code == "unknown_site" and caught.value.request_id == "s1"
