"""End to end: requests over mosquitto to a running ``assistant serve``, answers back.

One run on this machine starts a mosquitto (the project's config, on a free loopback port),
a redis-server, and the service as a process of its own with every model loaded; this
process is the client. It measures:

- ``cached_p50_ms`` / ``cached_p99_ms``: request to response for answers the cache holds,
  sent at 100 requests a second;
- ``raw_pingpong_p50_ms``: the floor, a bare MQTT echo (another process that republishes
  each message) through the same broker, measured the same way in the same run;
- ``sustained_rps``: cached requests answered per second over ``--seconds`` (30), with up
  to 64 waiting at once, and ``errors``: error replies and requests left unanswered;
- ``rss_mb``: the service's resident memory with every model loaded, after the run;
- ``spoken_cached_first_audio_ms``: a cached answer asked for as streamed speech, to its
  first sentence's audio;
- ``wyoming_cached_first_audio_ms``: Wyoming ``synthesize`` of an answer whose audio is
  cached, to its first ``audio-chunk``, as Home Assistant asks for it; beside
  ``wyoming_ping_ms``, a ``ping`` to its ``pong`` on the same connection (the protocol's
  floor), measured the same way in the same run.

Goals are reported, never asserted; the last line is JSON. ``make bench-e2e``; ``--quick``
for a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.ping import Ping  # noqa: E402
from wyoming.tts import Synthesize  # noqa: E402

from assistant.protocol import Packet, Topics, encode_text_request  # noqa: E402
from assistant.settings import MqttSettings  # noqa: E402
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish  # noqa: E402
from assistant.transports.mqtt_client import Asker  # noqa: E402
from bench.report import finish  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402
from tests.service import Broker, ServiceProcess, service_config  # noqa: E402

SENTENCES = ("turn on the kitchen light", "turn off the kitchen light", "never mind",
             "is the kitchen light on", "what time is it", "turn on the living room lamp",
             "what's the weather like", "pause the music")
SPOKEN_ANSWER = "The kitchen light is on."
"""What the Wyoming measure has spoken: an answer of the kind the service gives."""


def _echo(settings: MqttSettings, ready: Any) -> None:
    """The raw floor: republish every ping as a pong (run in a process of its own)."""
    client = make_client(settings, client_id=f"echo-{uuid.uuid4().hex[:8]}")

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        packet = packet_of(message)
        publish(client, Packet("bench/pong", packet.payload, correlation=packet.correlation))

    client.on_message = on_message
    client.on_subscribe = lambda *args: ready.set()
    connect_and_wait(client, settings)
    client.subscribe("bench/ping", qos=1)
    threading.Event().wait()


class Client:
    """Sends requests and times each to its reply, matched by correlation data."""

    def __init__(self, settings: MqttSettings, *filters: str) -> None:
        self.sent: dict[bytes, float] = {}
        self.times: list[float] = []
        self.errors = 0
        self.replies = 0
        self.done = threading.Condition()
        self.client = make_client(settings, client_id=f"bench-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        connect_and_wait(self.client, settings)
        self.client.subscribe([(f, 1) for f in filters])
        subscribed.wait(5)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.perf_counter()
        packet = packet_of(message)
        started = self.sent.pop(packet.correlation or b"", None)
        if started is None:
            return
        if "/error/" in packet.topic or packet.property("kind") == "error":
            self.errors += 1
        self.times.append(now - started)
        with self.done:
            self.replies += 1
            self.done.notify_all()

    def send(self, packet: Packet) -> None:
        assert packet.correlation is not None
        self.sent[packet.correlation] = time.perf_counter()
        publish(self.client, packet)

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.done:
            while self.replies < count and time.monotonic() < deadline:
                self.done.wait(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def paced(client: Client, make: Callable[[int], Packet], count: int, rate: float) -> list[float]:
    """Send ``count`` packets at ``rate`` a second; the round trips (ms)."""
    client.times.clear()
    start = time.perf_counter()
    for n in range(count):
        wait = start + n / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        client.send(make(n))
    deadline = time.monotonic() + 10
    while len(client.times) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [t * 1000 for t in client.times]


async def _wyoming(port: int, count: int) -> tuple[list[float], list[float]]:
    """Milliseconds of ``ping`` -> ``pong`` and of ``synthesize`` (an answer said once
    before, so cached) -> the first ``audio-chunk``, each ``count`` times on one connection."""
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()

    async def until(kind: str) -> None:
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            if event is None:
                raise RuntimeError("the Wyoming server hung up")
            if event.type == kind:
                return

    async def timed(event: Event, first: str, last: str) -> float:
        started = time.perf_counter()
        await client.write_event(event)
        await until(first)
        took = (time.perf_counter() - started) * 1000
        if last != first:
            await until(last)
        return took

    said = Synthesize(text=SPOKEN_ANSWER).event()
    try:
        await timed(said, "audio-chunk", "audio-stop")  # cached from here on
        floor, synthesized = [], []
        for _ in range(count):
            floor.append(await timed(Ping().event(), "pong", "pong"))
            synthesized.append(await timed(said, "audio-chunk", "audio-stop"))
        return floor, synthesized
    finally:
        await client.disconnect()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(quick: bool, seconds: float, workdir: Path) -> dict[str, Any]:
    broker = Broker(workdir / "broker").start()
    redis_server = RedisServer(workdir / "redis").start()
    wyoming_port = free_port()
    config = service_config(workdir, broker=broker, redis_url=redis_server.url,
                            wyoming_port=wyoming_port,
                            extra="requests_per_minute = 0\naudio_seconds_per_minute = 0\n"
                                  "queue_size = 256\n[generator]\ntimeout = 30")
    service = ServiceProcess(config, speech=True).start()
    admin = broker.settings("assistant")
    topics = Topics()
    results: dict[str, Any] = {}
    echo_ready = multiprocessing.Event()
    echo = multiprocessing.Process(target=_echo, args=(admin, echo_ready), daemon=True)
    echo.start()
    try:
        echo_ready.wait(10)
        with Asker(admin, user="ann", site="kitchen") as ann:  # the answers, cached once
            for sentence in SENTENCES:
                ann.ask(text=sentence, timeout=60)
            ann.ask(text=SENTENCES[0], speak=True, stream=True, timeout=60)
            first = [ann.ask(text=SENTENCES[0], speak=True, stream=True).first_speech_seconds
                     for _ in range(5 if quick else 20)]
        results["spoken_cached_first_audio_ms"] = round(
            statistics.median(t for t in first if t is not None) * 1000, 3)
        floor, synthesized = asyncio.run(_wyoming(wyoming_port, 5 if quick else 50))
        results["wyoming_ping_ms"] = round(statistics.median(floor), 3)
        results["wyoming_cached_first_audio_ms"] = round(statistics.median(synthesized), 3)

        client = Client(admin, "assistant/+/response/+", "assistant/+/error/+", "bench/pong")
        count = 200 if quick else 1000

        def ping(n: int) -> Packet:
            return Packet("bench/ping", b"x" * 64, correlation=f"p{n}-{uuid.uuid4().hex}".encode())

        def ask(n: int) -> Packet:
            request_id = f"r{n}-{uuid.uuid4().hex[:8]}"
            return encode_text_request(topics, site="kitchen", user="ann",
                                       text=SENTENCES[n % len(SENTENCES)], request_id=request_id)

        paced(client, ping, 50, 100)  # warm both paths
        paced(client, ask, 50, 100)
        client.errors = 0
        raw = paced(client, ping, count, 100)
        cached = paced(client, ask, count, 100)
        results["raw_pingpong_p50_ms"] = round(statistics.median(raw), 3)
        results["raw_pingpong_p99_ms"] = round(statistics.quantiles(raw, n=100)[98], 3)
        results["cached_p50_ms"] = round(statistics.median(cached), 3)
        results["cached_p99_ms"] = round(statistics.quantiles(cached, n=100)[98], 3)
        errors = client.errors + (count - len(cached))

        # Sustained: keep up to 64 waiting, as fast as the service answers.
        client.errors, answered_before = 0, client.replies
        window = 64
        sent = 0
        end = time.monotonic() + (5 if quick else seconds)
        started = time.perf_counter()
        while time.monotonic() < end:
            while sent - (client.replies - answered_before) < window:
                client.send(ask(sent))
                sent += 1
            with client.done:
                client.done.wait(0.05)
        client.wait_for(answered_before + sent, 10)
        took = time.perf_counter() - started
        answered = client.replies - answered_before
        results["sustained_rps"] = round(answered / took, 1)
        results["sustained_requests"] = sent
        errors += client.errors + (sent - answered)
        results["errors"] = errors
        results["rss_mb"] = round(rss_mb(service.proc.pid), 1) if service.proc else 0.0
        client.close()
    finally:
        echo.terminate()
        service.stop()
        redis_server.stop()
        broker.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    parser.add_argument("--seconds", type=float, default=30.0, help="sustained run length")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        results = run(args.quick, args.seconds, Path(folder))
    print(f"bench_e2e{' (--quick)' if args.quick else ''}: python {platform.python_version()}, "
          "a service process with every model loaded, mosquitto and redis-server on loopback")
    for name, value in results.items():
        print(f"{name:32} {value}")
    raw = results["raw_pingpong_p50_ms"]
    finish(results, [
        ("cached_p50_ms <= 2.5", results["cached_p50_ms"] <= 2.5),
        ("cached_p50_ms <= 3 x raw_pingpong_p50_ms", results["cached_p50_ms"] <= 3 * raw),
        ("cached_p99_ms <= 15", results["cached_p99_ms"] <= 15),
        ("sustained_rps >= 500", results["sustained_rps"] >= 500),
        ("errors == 0", results["errors"] == 0),
        ("rss_mb <= 1024", results["rss_mb"] <= 1024),
        ("spoken_cached_first_audio_ms <= 10", results["spoken_cached_first_audio_ms"] <= 10),
        ("wyoming_cached_first_audio_ms <= 10", results["wyoming_cached_first_audio_ms"] <= 10),
    ], quick=args.quick)



if __name__ == "__main__":
    main()
