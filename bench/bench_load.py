"""Load and soak: simulated satellites asking a running ``assistant serve`` for minutes on end.

One run starts a mosquitto (the project's config and ACL, on a free loopback port), a
redis-server, and the service as a process of its own with every model loaded. Each
simulated satellite is an MQTT client of its own, signed in as its own user, at a site of
the home; it asks at a human pace (one request every ``--interval`` seconds on average,
jittered) at QoS 1, drawing from a pool where most requests are repeats of the common home
requests and some are new (timers with numbers never said before, questions only the
language model answers). A share of the common requests is spoken: a WAV made once per
sentence by piper (the project's voice), each request's copy differing in one bit of one
sample, as no two recordings are the same, so that speech recognition runs every time.
It measures:

- ``answers``, ``errors`` by code, ``duplicates`` (a request answered twice), ``missing``
  (no reply before the end) and ``late`` (a reply after the service's deadline);
- latency from publishing a request to its reply, p50/p90/p99/max, for cached answers (every
  fragment from L1, L2 or L3) and uncached ones, text and spoken apart, and the stage that
  takes the most of each (``stt``, ``recognise``, ``answer``, ``publish`` as the reply's
  timings say, ``queue``: waiting in the service, ``mqtt``: the rest of the round trip);
- the service's resident memory (VmRSS, its children included) every second, and its growth
  from the end of warm-up (the first 20 % of the run) to the end; beside it, what the memory
  tier holds by its own count (``cache_memory_bytes``, read every 5 s), and the growth
  besides that;
- with ``--nodes 2,3`` (the default): 2 and 3 service processes on one Redis and one
  broker, as the service spreads requests over them (each request claimed in Redis by one
  node), the answers of each node (from its metrics endpoint), a response template edited
  mid-run in the templates folder all nodes read, the time until every node has reloaded it
  (its metrics show its own purge), and the answers with the old text to requests sent
  after that: stale answers.

Goals are reported, never asserted; the last line is JSON. ``make bench-load``; ``--quick``
for a smoke run of about 20 seconds of load; ``--plot DIR`` for where the PNGs go.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assistant.protocol import (  # noqa: E402
    ErrorReply,
    Packet,
    Response,
    SpeechChunk,
    Topics,
    decode_reply,
    encode_audio_request,
    encode_text_request,
)
from assistant.settings import MqttSettings, TtsSettings  # noqa: E402
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish  # noqa: E402
from bench.report import finish  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402
from tests.service import PEOPLE, Broker, ServiceProcess, service_config  # noqa: E402

COMMON = (
    # (sentence, weight): a home's everyday requests, the most common first.
    ("turn on the kitchen light", 20), ("turn off the kitchen light", 18),
    ("what time is it", 14), ("what's the weather like", 12),
    ("turn on the living room lamp", 10), ("turn off the living room lamp", 9),
    ("is the kitchen light on", 7), ("never mind", 6), ("pause the music", 6),
    ("turn on the coffee maker", 5), ("open the blinds", 5), ("close the blinds", 5),
    ("turn on the light", 5), ("turn off the light", 5), ("turn on the bedside lamp", 4),
    ("turn off the bedside lamp", 4), ("what is the outside temperature", 4),
    ("turn on the ceiling light", 3), ("what's the date today", 3),
    ("add milk to the shopping list", 2), ("what is on my shopping list", 2),
)
QUESTIONS = ("tell me a fun fact about", "give me one tip about", "why do people like",
             "what is special about", "say something nice about")
TOPICS = ("tomatoes", "penguins", "the moon", "jazz", "bicycles", "volcanoes", "honey bees",
          "the ocean", "chess", "origami", "owls", "rainbows", "tea", "mountains", "libraries",
          "snow", "the violin", "lighthouses", "dolphins", "maple trees", "comets", "bread",
          "deserts", "kites", "sunflowers", "octopuses", "castles", "trains", "the alphabet",
          "pottery")
SITES = ("kitchen", "living_room", "bedroom", "office", "hallway")
EDITED = ("lights.yaml", "Turned on ", "Switched on ")
"""The edit mid-run of the multi-node runs: in that file, every response of HassTurnOn
(the one intent whose answers say it) starts with the new words instead of the old."""
STALE_PREFIX, FRESH_PREFIX = EDITED[1], EDITED[2]
CACHED = frozenset({"l1", "l2", "l3"})
STAGES = ("stt", "recognise", "answer", "publish", "queue", "mqtt")
SERVICE_TIMEOUT = 15.0
"""``[service] timeout``'s default: a reply after it is late."""


# -- the workload --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ask:
    """One request to send: what, whether spoken, and of which kind of the pool."""

    text: str
    kind: str
    """``common`` (a repeat), ``timer`` or ``question`` (new)."""
    spoken: bool


class Pool:
    """Draws requests: ``1 - new_share`` repeats of the common ones (weighted), the rest new,
    half timers with a number not said yet, half questions for the language model (each
    topic and question asked once before any is asked again); ``audio_share`` of the common
    ones spoken."""

    def __init__(self, rng: random.Random, *, new_share: float, audio_share: float) -> None:
        self.rng = rng
        self.new_share = new_share
        self.audio_share = audio_share
        self._sentences = [s for s, _ in COMMON]
        self._weights = [w for _, w in COMMON]
        self._minutes = list(range(2, 600))
        rng.shuffle(self._minutes)
        self._questions: list[str] = []
        self._lock = threading.Lock()

    def draw(self) -> Ask:
        with self._lock:
            if self.rng.random() >= self.new_share:
                text = self.rng.choices(self._sentences, self._weights)[0]
                return Ask(text, "common", self.rng.random() < self.audio_share)
            if self.rng.random() < 0.5:
                if not self._minutes:
                    self._minutes = list(range(2, 600))
                    self.rng.shuffle(self._minutes)
                return Ask(f"set a timer for {self._minutes.pop()} minutes", "timer", False)
            if not self._questions:
                self._questions = [f"{q} {t}" for q in QUESTIONS for t in TOPICS]
                self.rng.shuffle(self._questions)
            return Ask(self._questions.pop(), "question", False)


def make_voices(sentences: Sequence[str]) -> dict[str, bytes]:
    """A WAV of each sentence, said by the project's piper voice without sampled noise."""
    from assistant.speech.tts import Speaker
    with Speaker(TtsSettings(noise_scale=0.0, noise_w_scale=0.0)) as voice:
        return {s: voice.speak(s[0].upper() + s[1:] + ".").wav for s in sentences}


def recorded_again(wav: bytes, rng: random.Random) -> bytes:
    """The same words as another recording would carry them: one bit of one 16-bit sample
    (its low byte) differs, so the audio's digest, and the transcript's cache key, differ."""
    data = bytearray(wav)
    data[len(data) - 2 - 2 * rng.randrange(min(2000, (len(data) - 64) // 2))] ^= 1
    return bytes(data)


# -- what came back ------------------------------------------------------------------------

@dataclass(slots=True)
class Sent:
    """One request sent, and what came back for it."""

    id: str
    user: str
    ask: Ask
    at: float
    """perf_counter when published."""
    replies: int = 0
    reply_at: float | None = None
    code: str | None = None
    """The error's code, if the reply was one."""
    response: Response | None = None
    speech_at: float | None = None

    @property
    def ms(self) -> float:
        assert self.reply_at is not None
        return (self.reply_at - self.at) * 1000

    @property
    def path(self) -> str:
        """``cached`` or ``uncached``, then ``text`` or ``audio``."""
        assert self.response is not None
        sources = {str(f.get("source")) for f in self.response.fragments}
        cached = "cached" if sources and sources <= CACHED else "uncached"
        return f"{cached}_{'audio' if self.ask.spoken else 'text'}"

    @property
    def tier(self) -> str:
        """Where the answer came from: its least cached fragment's source."""
        assert self.response is not None
        sources = {str(f.get("source")) for f in self.response.fragments}
        for source in ("computed", "fallback", "uncached", "waited", "l3", "l2", "l1"):
            if source in sources:
                return source
        return next(iter(sources), "no_fragments")

    def stages(self) -> dict[str, float]:
        """Milliseconds per stage: the reply's own timings, the wait in the service
        (``queue``: its total less its stages) and the rest of the round trip (``mqtt``)."""
        assert self.response is not None
        timings = dict(self.response.timings)
        inner = {s: float(timings.get(s, 0.0)) for s in ("stt", "recognise", "answer", "publish")}
        total = float(timings.get("total", sum(inner.values())))
        inner["queue"] = max(0.0, total - sum(inner.values()))
        inner["mqtt"] = max(0.0, self.ms - total)
        return inner


class Ledger:
    """Every request sent, every reply and speech received (from every client's thread)."""

    def __init__(self) -> None:
        self.sent: dict[str, Sent] = {}
        self.strays = 0
        """Replies to no request sent here."""
        self.lock = threading.Lock()

    def add(self, item: Sent) -> None:
        with self.lock:
            if item.id in self.sent:
                raise RuntimeError(f"request id {item.id} used twice")
            self.sent[item.id] = item

    def received(self, packet: Packet) -> None:
        now = time.perf_counter()
        if "/speech/" in packet.topic:
            chunk = SpeechChunk.from_packet(packet)
            with self.lock:
                item = self.sent.get(chunk.id)
                if item is not None and item.speech_at is None:
                    item.speech_at = now
            return
        try:
            reply = decode_reply(packet)
        except (ValueError, KeyError):
            with self.lock:
                self.strays += 1
            return
        with self.lock:
            item = self.sent.get(reply.id or "")
            if item is None:
                self.strays += 1
                return
            item.replies += 1
            if item.replies > 1:
                return
            item.reply_at = now
            if isinstance(reply, ErrorReply):
                item.code = reply.code
            else:
                item.response = reply

    def waiting(self) -> int:
        with self.lock:
            return sum(1 for s in self.sent.values() if s.replies == 0)


class Satellite:
    """One satellite: an MQTT client signed in as its user, asking at its site."""

    def __init__(self, settings: MqttSettings, user: str, site: str, ledger: Ledger) -> None:
        self.user = user
        self.site = site
        self.ledger = ledger
        self.topics = Topics()
        self.count = 0
        self.client = make_client(settings, client_id=f"sat-{user}-{uuid.uuid4().hex[:6]}")
        self.client.on_message = lambda c, u, m: ledger.received(packet_of(m))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        connect_and_wait(self.client, settings)
        self.client.subscribe([(t, 1) for t in self.topics.replies(user, site)])
        if not subscribed.wait(10):
            raise RuntimeError(f"the broker did not confirm {user}'s subscriptions")

    def send(self, ask: Ask, wav: bytes | None) -> None:
        self.count += 1
        request_id = f"{self.user}-{self.count}-{uuid.uuid4().hex[:10]}"
        if wav is not None:
            packet = encode_audio_request(self.topics, site=self.site, user=self.user, wav=wav,
                                          request_id=request_id)
        else:
            packet = encode_text_request(self.topics, site=self.site, user=self.user,
                                         text=ask.text, request_id=request_id)
        self.ledger.add(Sent(request_id, self.user, ask, time.perf_counter()))
        publish(self.client, packet)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def users(count: int) -> list[str]:
    """One account per satellite: the test users, then more named after their number."""
    people = [p for p in PEOPLE if p != "homeassistant"]
    return people[:count] + [f"sat{n:02d}" for n in range(len(people), count)]


def broker_for(folder: Path, names: Sequence[str]) -> Broker:
    """The project's broker (config and ACL) with an account for every satellite."""
    return Broker(folder, people=(*PEOPLE, *names))


# -- the service's memory and metrics -----------------------------------------------------

def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` and every process below it, in kB (0: gone)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


class RssSampler:
    """Samples the resident memory of processes every second, on a thread of its own."""

    def __init__(self, pids: Sequence[int], start: float, port: int | None = None) -> None:
        """``port``: a metrics endpoint whose memory tier is read every 5 s as well."""
        self.pids = list(pids)
        self.start = start
        self.port = port
        self.samples: list[tuple[float, list[float]]] = []
        self.l1_samples: list[tuple[float, float]] = []
        """(seconds, MB the memory tier holds by its own count)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter() - self.start
            self.samples.append((now, [rss_kb(pid) / 1024 for pid in self.pids]))
            if self.port is not None and len(self.samples) % 5 == 1:
                try:
                    held = metrics(self.port).get("cache_memory_bytes")
                except OSError:
                    held = None
                if held is not None:
                    self.l1_samples.append((now, held / 2**20))
            self._stop.wait(1.0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def rss_growth(samples: Sequence[tuple[float, float]], seconds: float,
               warmup: float) -> dict[str, float]:
    """Memory after warm-up: its level then (median of its first 10 s), at the end (median of
    the last 10 s), the growth between them, the growth over the run's second half and the
    slope fitted after warm-up."""
    after = [(t, mb) for t, mb in samples if t >= warmup]
    if len(after) < 4:
        return {}
    window = max(3.0, min(10.0, (seconds - warmup) / 4))
    first = statistics.median(mb for t, mb in after if t < warmup + window)
    last = statistics.median(mb for t, mb in after if t >= after[-1][0] - window)
    times = [t for t, _ in after]
    values = [mb for _, mb in after]
    slope = statistics.linear_regression(times, values).slope if len(set(times)) > 1 else 0.0
    half = statistics.median(mb for t, mb in after if abs(t - seconds / 2) <= window / 2)
    return {"rss_warm_mb": round(first, 1), "rss_end_mb": round(last, 1),
            "rss_max_mb": round(max(values), 1),
            "rss_growth_pct": round((last / first - 1) * 100, 2),
            "rss_growth_second_half_pct": round((last / half - 1) * 100, 2),
            "rss_slope_mb_per_min": round(slope * 60, 3)}


def metrics(port: int) -> dict[str, float]:
    """A node's metrics endpoint: each sample's value by its name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


def summed(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix + "{") or k == prefix)


OWN_PURGES = 'cache_invalidations_total{kind="tag",origin="local"}'
"""A node's own tag purges: a reload that changed an intent makes one."""


# -- one run --------------------------------------------------------------------------------

@dataclass
class Phase:
    """One run of satellites against one or more nodes."""

    name: str
    seconds: float
    ledger: Ledger = field(default_factory=Ledger)
    started: float = 0.0
    ended: float = 0.0
    edit_at: float | None = None
    settled_at: float | None = None
    node_settled: list[float | None] = field(default_factory=list)


def drive(phase: Phase, broker: Broker, satellites: int, interval: float, pool: Pool,
          voices: dict[str, bytes], rng: random.Random, *, edit: Any = None) -> None:
    """Run the satellites for ``phase.seconds``; ``edit``: called once, 40 % in."""
    names = users(satellites)
    sats = [Satellite(broker.settings(name), name, SITES[n % len(SITES)], phase.ledger)
            for n, name in enumerate(names)]
    try:
        phase.started = time.perf_counter()
        end = phase.started + phase.seconds
        # Each satellite starts somewhere within its first interval, then keeps its pace.
        due = [(phase.started + rng.uniform(0, interval), n) for n in range(len(sats))]
        heapq.heapify(due)
        edit_due = phase.started + 0.4 * phase.seconds if edit is not None else None
        while due:
            at, n = heapq.heappop(due)
            if edit_due is not None and edit_due <= at:
                time.sleep(max(0.0, edit_due - time.perf_counter()))
                edit_due = None
                edit()
            if at >= end:
                continue
            time.sleep(max(0.0, at - time.perf_counter()))
            ask = pool.draw()
            wav = recorded_again(voices[ask.text], rng) if ask.spoken else None
            sats[n].send(ask, wav)
            heapq.heappush(due, (at + interval * rng.uniform(0.5, 1.5), n))
        phase.ended = time.perf_counter()
        # Every request gets its reply within the service's deadline: wait a little past it.
        deadline = time.monotonic() + SERVICE_TIMEOUT + 10
        while phase.ledger.waiting() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a second reply to anything would come now
    finally:
        for sat in sats:
            sat.close()


def quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50_ms": round(statistics.median(ordered), 2), "p90_ms": at(0.90),
            "p99_ms": at(0.99), "max_ms": round(ordered[-1], 2)}


def summary(phase: Phase, prefix: str = "") -> dict[str, Any]:
    """What a phase's ledger says: counts, errors by code, latency and stages per path."""
    items = list(phase.ledger.sent.values())
    out: dict[str, Any] = {}
    answered = [s for s in items if s.response is not None]
    errors = Counter(s.code for s in items if s.code is not None)
    out[f"{prefix}requests"] = len(items)
    out[f"{prefix}requests_per_s"] = round(len(items) / phase.seconds, 2)
    out[f"{prefix}spoken_requests"] = sum(s.ask.spoken for s in items)
    out[f"{prefix}new_requests"] = sum(s.ask.kind != "common" for s in items)
    out[f"{prefix}answers"] = len(answered)
    out[f"{prefix}errors"] = sum(errors.values())
    out[f"{prefix}errors_by_code"] = dict(sorted(errors.items()))
    out[f"{prefix}error_examples"] = [
        f"{s.ask.text} ({'spoken' if s.ask.spoken else 'text'}): {s.code} after "
        f"{s.ms:.0f} ms" for s in items if s.code is not None][:5]
    out[f"{prefix}duplicates"] = sum(1 for s in items if s.replies > 1)
    out[f"{prefix}missing"] = sum(1 for s in items if s.replies == 0)
    out[f"{prefix}late"] = sum(1 for s in items if s.reply_at is not None
                               and s.reply_at - s.at > SERVICE_TIMEOUT)
    out[f"{prefix}strays"] = phase.ledger.strays
    out[f"{prefix}answers_by_tier"] = dict(sorted(Counter(s.tier for s in answered).items()))
    out[f"{prefix}no_fragments_examples"] = sorted(
        {f"{s.ask.text} -> {s.response.text}" for s in answered  # type: ignore[union-attr]
         if s.tier == "no_fragments"})[:3]
    spoken = [s for s in answered if s.ask.spoken]
    out[f"{prefix}spoken_without_speech"] = sum(1 for s in spoken if s.speech_at is None)
    speech = [(s.speech_at - s.at) * 1000 for s in spoken if s.speech_at is not None]
    if speech:
        out[f"{prefix}spoken_first_audio_p50_ms"] = round(statistics.median(speech), 2)
    groups: dict[str, list[Sent]] = {"cached": [], "uncached": []}
    for s in answered:
        groups[s.path.split("_")[0]].append(s)
        groups.setdefault(s.path, []).append(s)
    for path in ("cached", "uncached", "cached_text", "uncached_text", "cached_audio",
                 "uncached_audio"):
        members = groups.get(path, [])
        out[f"{prefix}{path}_count"] = len(members)
        if not members:
            continue
        for name, value in quantiles([s.ms for s in members]).items():
            out[f"{prefix}{path}_{name}"] = value
        per_stage = {st: statistics.mean(s.stages()[st] for s in members) for st in STAGES}
        dominant = max(per_stage, key=lambda st: per_stage[st])
        mean_ms = statistics.mean(s.ms for s in members)
        out[f"{prefix}{path}_stage_mean_ms"] = {k: round(v, 2) for k, v in per_stage.items()}
        out[f"{prefix}{path}_dominant_stage"] = dominant
        out[f"{prefix}{path}_dominant_share"] = round(per_stage[dominant] / mean_ms, 3)
    return out


def start_nodes(count: int, folder: Path, broker: Broker, redis_url: str,
                intents: Path | None, env: dict[str, str]
                ) -> tuple[list[ServiceProcess], list[int]]:
    """``count`` service processes with every model loaded, sharing one Redis, one broker,
    one master key and one templates folder; each with a metrics endpoint of its own."""
    nodes: list[ServiceProcess] = []
    ports: list[int] = []
    try:
        for n in range(count):
            own = folder / f"node{n + 1}"
            own.mkdir(parents=True)
            ports.append(free_port())
            config = service_config(own, broker=broker, redis_url=redis_url, intents=intents,
                                    metrics_port=ports[-1], key_file=folder / "master.key")
            nodes.append(ServiceProcess(config, speech=True, client_id=f"assistant-node{n + 1}",
                                        env=env).start(timeout=240))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes, ports


def pid_of(node: ServiceProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


def soak(args: argparse.Namespace, workdir: Path, broker: Broker, voices: dict[str, bytes],
         rng: random.Random) -> tuple[dict[str, Any], Phase, list[tuple[float, float]]]:
    """One node for ``args.seconds``: the figures, the phase and the memory samples."""
    redis_server = RedisServer(workdir / "redis-soak").start()
    try:
        nodes, ports = start_nodes(1, workdir / "soak", broker, redis_server.url, None,
                                   args.service_env)
        node = nodes[0]
        pool = Pool(rng, new_share=args.new_share, audio_share=args.audio_share)
        phase = Phase("soak", args.seconds)
        try:
            with RssSampler([pid_of(node)], time.perf_counter(), ports[0]) as sampler:
                drive(phase, broker, args.satellites, args.interval, pool, voices, rng)
            seen = metrics(ports[0])
            alive = node.alive()
        finally:
            node.stop()
    finally:
        redis_server.stop()
    results = summary(phase)
    samples = [(t, mbs[0]) for t, mbs in sampler.samples]
    warmup = args.warmup * args.seconds
    results["rss_warmup_s"] = round(warmup, 1)
    results.update(rss_growth(samples, args.seconds, warmup))
    results["service_answers"] = int(summed(seen, "assistant_answers_total"))
    results["service_errors"] = int(summed(seen, "assistant_errors_total"))
    results["service_alive_at_end"] = alive
    results["service_l1_sets"] = int(seen.get('cache_sets_total{tier="l1"}', 0))
    results["service_l1_evictions"] = int(seen.get('cache_evictions_total{tier="l1"}', 0))
    held = [(t, mb) for t, mb in sampler.l1_samples if t >= warmup]
    if len(held) >= 2 and "rss_warm_mb" in results:
        # How much of the growth is the memory tier filling up to its budget, by its count.
        results["service_l1_warm_mb"] = round(held[0][1], 1)
        results["service_l1_end_mb"] = round(held[-1][1], 1)
        results["rss_growth_besides_l1_pct"] = round(
            (results["rss_end_mb"] - results["rss_warm_mb"] - (held[-1][1] - held[0][1]))
            / results["rss_warm_mb"] * 100, 2)
    return results, phase, samples


def multi(count: int, args: argparse.Namespace, workdir: Path, broker: Broker,
          voices: dict[str, bytes], rng: random.Random
          ) -> tuple[dict[str, Any], Phase, list[tuple[float, list[float]]]]:
    """``count`` nodes for ``args.multi_seconds``, a template edited 40 % in."""
    folder = workdir / f"multi{count}"
    intents = folder / "intents"
    shutil.copytree(ROOT / "intents", intents)
    redis_server = RedisServer(folder / "redis").start()
    phase = Phase(f"nodes{count}", args.multi_seconds)
    try:
        nodes, ports = start_nodes(count, folder, broker, redis_server.url, intents,
                                   args.service_env)
        try:
            baseline = [metrics(p).get(OWN_PURGES, 0.0) for p in ports]
            phase.node_settled = [None] * count

            def watch_reloads() -> None:
                """Until every node has made its own purge of the edited intent."""
                deadline = time.monotonic() + 60
                while None in phase.node_settled and time.monotonic() < deadline:
                    for n, port in enumerate(ports):
                        if phase.node_settled[n] is None and \
                                metrics(port).get(OWN_PURGES, 0.0) > baseline[n]:
                            phase.node_settled[n] = time.perf_counter()
                    time.sleep(0.05)
                settled = [t for t in phase.node_settled if t is not None]
                if len(settled) == count:
                    phase.settled_at = max(settled)

            watcher = threading.Thread(target=watch_reloads, daemon=True)

            def edit() -> None:
                name, old, new = EDITED
                text = (intents / name).read_text()
                if old not in text:
                    raise RuntimeError(f"{name} no longer says {old!r}")
                phase.edit_at = time.perf_counter()
                (intents / name).write_text(text.replace(old, new))
                watcher.start()

            pool = Pool(rng, new_share=args.new_share, audio_share=args.audio_share)
            with RssSampler([pid_of(n) for n in nodes], time.perf_counter()) as sampler:
                drive(phase, broker, args.satellites, args.interval, pool, voices, rng,
                      edit=edit)
            if phase.edit_at is not None:
                watcher.join(60)
            seen = [metrics(p) for p in ports]
        finally:
            for node in nodes:
                node.stop()
    finally:
        redis_server.stop()
    p = f"nodes{count}_"
    results = summary(phase, p)
    handled = [int(summed(m, "assistant_answers_total") + summed(m, "assistant_errors_total"))
               for m in seen]
    results[f"{p}per_node"] = handled
    results[f"{p}min_node_share"] = round(min(handled) / max(1, sum(handled)), 3)
    results[f"{p}rss_end_mb"] = [round(mb, 1) for mb in sampler.samples[-1][1]] \
        if sampler.samples else []
    if phase.edit_at is not None:
        results[f"{p}edit_at_s"] = round(phase.edit_at - phase.started, 2)
        results[f"{p}node_reload_s"] = [None if t is None else round(t - phase.edit_at, 3)
                                        for t in phase.node_settled]
    settled = phase.settled_at
    results[f"{p}settle_s"] = None if settled is None or phase.edit_at is None \
        else round(settled - phase.edit_at, 3)
    turned_on = [s for s in phase.ledger.sent.values()
                 if s.response is not None and s.response.intent == "HassTurnOn"]
    after = [s for s in turned_on if settled is not None and s.at >= settled]
    results[f"{p}stale_answers"] = sum(s.response.text.startswith(STALE_PREFIX)  # type: ignore[union-attr]
                                       for s in after) if settled is not None else None
    results[f"{p}stale_examples"] = [
        [round(s.at - phase.edit_at, 3), s.tier, s.response.text]  # type: ignore[operator,union-attr]
        for s in after if s.response.text.startswith(STALE_PREFIX)][:5]  # type: ignore[union-attr]
    results[f"{p}fresh_answers"] = sum(s.response.text.startswith(FRESH_PREFIX)  # type: ignore[union-attr]
                                       for s in after)
    window = [s for s in turned_on if phase.edit_at is not None
              and s.at >= phase.edit_at and (settled is None or s.at < settled)]
    results[f"{p}old_text_while_settling"] = sum(
        s.response.text.startswith(STALE_PREFIX) for s in window)  # type: ignore[union-attr]
    return results, phase, sampler.samples


# -- the plots ------------------------------------------------------------------------------

def plot(folder: Path, soak_samples: list[tuple[float, float]], warmup: float,
         multis: list[tuple[int, list[tuple[float, list[float]]]]],
         phase: Phase) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2 if multis else 1, figsize=(12 if multis else 7, 4),
                             squeeze=False)
    ax = axes[0][0]
    ax.plot([t for t, _ in soak_samples], [mb for _, mb in soak_samples], lw=1.2)
    ax.axvspan(0, warmup, color="0.9", label="warm-up (excluded)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("VmRSS, MB")
    ax.set_title("one node, the soak")
    ax.legend(loc="lower right")
    if multis:
        ax = axes[0][1]
        for count, samples in multis:
            for n in range(count):
                ax.plot([t for t, _ in samples], [mbs[n] for _, mbs in samples], lw=1,
                        label=f"{count} nodes: node {n + 1}")
        ax.set_xlabel("seconds")
        ax.set_ylabel("VmRSS, MB")
        ax.set_title("several nodes")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with (folder / "load_rss.csv").open("w") as table:
        table.write("seconds,soak_rss_mb\n")
        table.writelines(f"{t:.1f},{mb:.1f}\n" for t, mb in soak_samples)
    written.append(folder / "load_rss.csv")
    written.append(folder / "load_rss.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    answered = [s for s in phase.ledger.sent.values() if s.response is not None]
    for path in ("cached_text", "cached_audio", "uncached_text", "uncached_audio"):
        values = sorted(s.ms for s in answered if s.path == path)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))],
                    label=f"{path.replace('_', ', ')} ({len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("request to reply, ms (log)")
    ax.set_ylabel("share of requests")
    ax.set_title("latency per path, one node, the soak")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    written.append(folder / "load_latency.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


# -- main -----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--satellites", type=int, default=20, help="simulated satellites")
    parser.add_argument("--seconds", type=float, default=300.0, help="the one-node soak")
    parser.add_argument("--nodes", default="2,3",
                        help="node counts of the runs after the soak ('' for none)")
    parser.add_argument("--multi-seconds", type=float, default=60.0,
                        help="each run with several nodes")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="mean seconds between one satellite's requests (jittered ±50 %%)")
    parser.add_argument("--new-share", type=float, default=0.12,
                        help="share of requests never asked before (timers, questions)")
    parser.add_argument("--audio-share", type=float, default=0.25,
                        help="share of the common requests sent as speech")
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="share of the soak left out of the memory's growth")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--plot", type=Path, default=None,
                        help="where the PNGs and the memory samples go (default: "
                             "bench/results, none with --quick)")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every service process (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 10 s on one node, 10 s on two")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.multi_seconds, args.nodes = 10.0, 10.0, "2"
        args.satellites = min(args.satellites, 8)
        args.interval = min(args.interval, 2.0)
    if args.plot is None and not args.quick:
        args.plot = ROOT / "bench" / "results"
    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    args.service_env = dict(item.split("=", 1) for item in args.service_env)
    rng = random.Random(args.seed)

    print(f"bench_load{' (--quick)' if args.quick else ''}: python "
          f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.satellites} satellites, one request each every {args.interval:g} s "
          f"(±50 %), {args.seconds:g} s on one node, then {args.multi_seconds:g} s on each "
          f"of {counts or 'no'} nodes", flush=True)
    started = time.perf_counter()
    voices = make_voices([s for s, _ in COMMON])
    results: dict[str, Any] = {"satellites": args.satellites, "seconds": args.seconds,
                               "multi_seconds": args.multi_seconds, "interval_s": args.interval,
                               "new_share": args.new_share, "audio_share": args.audio_share,
                               "cores": os.cpu_count(), "machine": platform.machine(),
                               "service_env": " ".join(f"{k}={v}" for k, v in
                                                       args.service_env.items())}
    multis: list[tuple[int, list[tuple[float, list[float]]]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
        workdir = Path(folder)
        broker = broker_for(workdir / "broker", users(args.satellites)).start()
        try:
            figures, phase, samples = soak(args, workdir, broker, voices, rng)
            results.update(figures)
            print(f"soak done in {time.perf_counter() - started:.0f} s", flush=True)
            for count in counts:
                figures, _multi_phase, node_samples = multi(count, args, workdir, broker,
                                                            voices, rng)
                results.update(figures)
                multis.append((count, node_samples))
                print(f"{count} nodes done in {time.perf_counter() - started:.0f} s",
                      flush=True)
        finally:
            broker.stop()
    if args.plot:
        for path in plot(args.plot, samples, args.warmup * args.seconds, multis, phase):
            print(f"wrote {path}")
    results["wall_s"] = round(time.perf_counter() - started, 1)

    print()
    for name, value in results.items():
        print(f"{name:36} {json.dumps(value)}")
    goals = [
        ("errors == 0", results["errors"] == 0),
        ("duplicates == 0", results["duplicates"] == 0),
        ("missing == 0 and late == 0", results["missing"] == 0 and results["late"] == 0),
        ("rss_growth_pct <= 5 (after warm-up)",
         results.get("rss_growth_pct") is not None and results["rss_growth_pct"] <= 5),
        ("cached_text_p50_ms <= 2.5 (bench-e2e's goal)",
         results.get("cached_text_p50_ms") is not None and results["cached_text_p50_ms"] <= 2.5),
        ("cached_text_p99_ms <= 15 (bench-e2e's goal)",
         results.get("cached_text_p99_ms") is not None and results["cached_text_p99_ms"] <= 15),
    ]
    for count in counts:
        p = f"nodes{count}_"
        goals += [
            (f"{p}stale_answers == 0 (after the edit settled)",
             results[f"{p}stale_answers"] == 0 and results[f"{p}fresh_answers"] > 0),
            (f"{p}errors, duplicates, missing == 0",
             results[f"{p}errors"] == 0 and results[f"{p}duplicates"] == 0
             and results[f"{p}missing"] == 0),
            (f"{p}min_node_share >= {0.5 / count:.2f} (every node takes a share)",
             results[f"{p}min_node_share"] >= 0.5 / count),
        ]
    finish(results, goals, quick=args.quick)


if __name__ == "__main__":
    main()
