"""The MQTT service: requests in, answers, speech, device commands and errors out.

paho's network thread only decodes a request and queues it (or answers ``busy`` at once
when the queue is full); a pool of workers runs the pipeline. Every request gets exactly one
final reply, an answer or an error: the first of the worker's result and the deadline's
``timeout`` wins. Requests are acknowledged to the broker (QoS 1, in the order they came)
only once they are dealt with, and the session is persistent, so one accepted but not yet
answered when the service stops is delivered again when it is back; a redelivery of one
already answered gets the recorded answer, without running the pipeline twice. Replies are
recorded in the cache as the asker's own items (encrypted, under their privacy policy).

Per-user limits (requests and seconds of audio per minute) are counted in Redis, shared by
every node, and in memory while Redis is down.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.errors import AssistantError
from assistant.ops.metrics import ServiceMetrics
from assistant.pipeline import Pipeline
from assistant.protocol import (
    AudioRequest,
    ErrorReply,
    Packet,
    ProtocolError,
    Reply,
    Response,
    TextRequest,
    Topics,
    decode_request,
    reply_packet,
)
from assistant.settings import MqttSettings, ServiceSettings
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish
from cache import CacheError, KeyBuilder, TieredCache, TierUnavailable, scope_of

log = logging.getLogger(__name__)

_RECENT = 4096
"""Replies kept in memory to answer a request sent again."""

TRANSIENT = frozenset({"busy", "timeout", "rate_limited", "internal", "unavailable"})
"""Error codes not recorded as a request's answer: a redelivery is tried anew."""


@dataclass(eq=False)
class _Delivery:
    """One received message, to be acknowledged when dealt with."""

    mid: int
    qos: int
    connection: int
    done: bool = False


@dataclass(eq=False)
class _Job:
    """A request being dealt with, and every delivery of it."""

    request: TextRequest | AudioRequest
    deadline: float
    redelivered: bool = False
    """The broker sent it before (MQTT's DUP flag): it may have been answered already."""
    deliveries: list[_Delivery] = field(default_factory=list)
    finished: bool = False
    reply: Reply | None = None
    """The final reply, once sent."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: float = field(default_factory=time.perf_counter)


class _Limits:
    """Per-user counts per minute, shared by every node through Redis.

    Counted in memory on the request's path, and the counts added since the last sync sent
    to Redis (which returns everyone's total) at most every ``sync`` seconds per counter:
    every node sees the others' counts within that time, and a request costs no round trip.
    While Redis is down the counts are this node's alone.
    """

    def __init__(self, cache: TieredCache, keys: KeyBuilder, *, sync: float = 0.5) -> None:
        self._redis = cache.redis
        self._keys = keys
        self._sync = sync
        # name -> [shared total at the last sync, added here since, last sync, expires]
        self._counts: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, user: str, what: str, amount: float) -> float:
        """Add ``amount`` to the user's count of ``what`` this minute; the total."""
        window = int(time.time() // 60)
        name = self._keys.name("rate", f"{scope_of(user)}:{what}:{window}")
        now = time.monotonic()
        with self._lock:
            if len(self._counts) > 10000:
                self._counts = {k: v for k, v in self._counts.items() if v[3] > now}
            count = self._counts.setdefault(name, [0.0, 0.0, 0.0, now + 120])
            count[1] += amount
            due = now - count[2] >= self._sync
            if due:
                count[2] = now
                added, count[1] = count[1], 0.0
        if due and self._redis is not None:
            try:
                total = self._redis.count(name, added, 120.0)
            except TierUnavailable:
                total = count[0] + added  # this node's alone until Redis is back
            with self._lock:
                count[0] = total
        elif due:
            with self._lock:
                count[0] += added
        with self._lock:
            return count[0] + count[1]


class MqttService:
    """Serves requests over MQTT until closed."""

    def __init__(self, *, mqtt: MqttSettings, settings: ServiceSettings, pipeline: Pipeline,
                 cache: TieredCache, keys: KeyBuilder, metrics: ServiceMetrics,
                 max_audio_bytes: int, speech: bool = True) -> None:
        """
        Args:
            mqtt: the broker.
            settings: the ``[service]`` section.
            pipeline: understands and answers (its parts started).
            cache: records replies; Redis in it counts limits and claims requests.
            keys: names those records.
            metrics: where the service's figures go.
            max_audio_bytes: the largest audio request accepted.
            speech: speak answers when asked (a text-only service does not).
        """
        self._mqtt = mqtt
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._pipeline = pipeline
        self._cache = cache
        self._keys = keys
        self.metrics = metrics
        self._max_audio = max_audio_bytes
        self._speech = speech
        self._limits = _Limits(cache, keys)
        self._queue: queue.Queue[_Job | None] = queue.Queue(settings.queue_size)
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._lock = threading.Lock()
        self._acks: collections.deque[_Delivery] = collections.deque()
        self._ack_lock = threading.Lock()
        self._connection = 0
        self._deadlines: list[tuple[float, int, _Job]] = []
        self._deadline_cond = threading.Condition()
        self._order = itertools.count()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client: Client | None = None
        self._subscribed = threading.Event()
        # The requests answered last, by (user, id), with their replies where nothing of the
        # asker's is in them: a request sent again is answered without running it twice.
        # A personal reply is kept only in the cache, as the asker's (forget reaches it).
        self._recent: collections.OrderedDict[tuple[str, str], Reply | None] = \
            collections.OrderedDict()
        self._recent_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the workers, connect (persistent session), subscribe; return when ready."""
        self._stopping.clear()
        for n in range(self.settings.workers):
            self._spawn(self._work, f"service-worker-{n}")
        self._spawn(self._watch_deadlines, "service-deadlines")
        client = make_client(self._mqtt, manual_ack=True)
        client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._mqtt.session_expiry
        props.ReceiveMaximum = 65535
        self._client = client
        try:
            connect_and_wait(client, self._mqtt, clean_start=False, properties=props)
            if not self._subscribed.wait(10):
                raise AssistantError("the broker did not confirm the request subscriptions")
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Say offline, let the workers finish what they hold, disconnect."""
        self._stopping.set()
        client, self._client = self._client, None
        for _ in range(self.settings.workers):
            try:
                self._queue.put(None, timeout=self.settings.timeout)
            except queue.Full:
                break
        with self._deadline_cond:
            self._deadline_cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.settings.timeout + 5)
        self._threads.clear()
        if client is not None:
            info = client.publish(self.topics.status, b"offline", qos=1, retain=True)
            info.wait_for_publish(timeout=2)
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread: decode, queue, never block ---------------------------------

    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("the broker refused the connection: %s", reason)
            return
        with self._ack_lock:
            # Deliveries of the last connection cannot be acknowledged on this one: the
            # broker sends them again, and their replies are recorded.
            self._connection += 1
            self._acks.clear()
        share = "$share/assistant/" if self.settings.shared_subscription else ""
        client.subscribe([(share + f, 1) for f in self.topics.requests()])
        client.publish(self.topics.status, b"online", qos=1, retain=True)
        log.info("connected to %s:%d%s", self._mqtt.host, self._mqtt.port,
                 " (session resumed)" if flags.session_present else "")

    def _on_subscribe(self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("the broker refused the request subscriptions: %s", refused)
            return
        self._subscribed.set()

    def _on_disconnect(self, client: Client, userdata: Any, flags: DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        if not self._stopping.is_set():
            log.warning("lost the broker (%s); reconnecting", reason)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        try:
            self._receive(message)
        except Exception:  # never raise in paho's thread
            log.exception("a request could not be taken")

    def _receive(self, message: MQTTMessage) -> None:
        with self._ack_lock:
            delivery = _Delivery(message.mid, message.qos, self._connection)
            if message.qos:
                self._acks.append(delivery)
        packet = packet_of(message)
        where = self.topics.parse(packet.topic)
        self.metrics.requests.labels(where[0] if where else "unknown").inc()
        try:
            request = decode_request(packet, self.topics, max_audio_bytes=self._max_audio,
                                     sites=self.settings.sites)
        except ProtocolError as error:
            self._refuse(packet, error)
            self._acked([delivery])
            return
        key = (request.user, request.id)
        sent: Reply | None = None
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:  # delivered again while it is being dealt with
                with job.lock:
                    sent = job.reply
                    if sent is None:
                        job.deliveries.append(delivery)  # answered with the first
                        return
        if sent is not None:  # answered already, still finishing: the same answer again
            self._send(request, sent)
            self.metrics.answers.labels("replayed").inc()
            self._acked([delivery])
            return
        with self._lock:
            job = _Job(request, time.monotonic() + self.settings.timeout, bool(message.dup),
                       [delivery])
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                job = None
            else:
                self._jobs[key] = job
                self.metrics.queue.set(self._queue.qsize())
        if job is None:
            busy = _Job(request, 0.0, False, [delivery])
            self._finish(busy, ErrorReply(request.id, "busy", "too many requests are waiting; "
                                                              "try again in a moment"))
            return
        with self._deadline_cond:
            heapq.heappush(self._deadlines, (job.deadline, next(self._order), job))
            self._deadline_cond.notify()

    def _refuse(self, packet: Packet, error: ProtocolError) -> None:
        """The error reply to a message that could not be decoded, where there is one to send
        it to."""
        self.metrics.errors.labels(error.code).inc()
        log.info("refused a request on %s: %s", packet.topic, error)
        where = self.topics.parse(packet.topic)
        if where is None or self._client is None:
            return
        _kind, site, user = where
        reply = ErrorReply(error.request_id, error.code, str(error))
        publish(self._client, reply_packet(self.topics, reply, site=site, user=user,
                                           reply_to=packet.response_topic,
                                           correlation=packet.correlation))

    # -- the ends of a request -------------------------------------------------------------

    def _acked(self, deliveries: list[_Delivery]) -> None:
        """Mark deliveries dealt with; acknowledge every one in order up to the first not."""
        client = self._client
        with self._ack_lock:
            for delivery in deliveries:
                delivery.done = True
            while self._acks and self._acks[0].done:
                delivery = self._acks.popleft()
                if client is not None and delivery.connection == self._connection:
                    client.ack(delivery.mid, delivery.qos)

    def _finish(self, job: _Job, reply: Reply, *, record: bool = True,
                personal: bool = True) -> bool:
        """Send the request's one final reply, if it has none yet; false when it had."""
        with job.lock:
            if job.finished:
                return False
            job.finished = True
            job.reply = reply
        request = job.request
        self._send(request, reply)
        if isinstance(reply, ErrorReply):
            self.metrics.errors.labels(reply.code).inc()
        if isinstance(reply, ErrorReply) and reply.code in TRANSIENT:
            self._release(request)  # the same request sent again is tried anew
        else:
            kept = None if personal and isinstance(reply, Response) else reply
            with self._recent_lock:
                self._recent[(request.user, request.id)] = kept
                if len(self._recent) > _RECENT:
                    self._recent.popitem(last=False)
            if record:
                self._record(request, reply)
        return True

    def _send(self, request: TextRequest | AudioRequest, reply: Reply) -> None:
        if self._client is not None:
            publish(self._client, reply_packet(self.topics, reply, site=request.site,
                                               user=request.user, reply_to=request.reply_to,
                                               correlation=request.correlation))

    def _complete(self, job: _Job) -> None:
        """The request is dealt with: forget it, acknowledge every delivery of it."""
        request = job.request
        with self._lock:
            if self._jobs.get((request.user, request.id)) is job:
                del self._jobs[(request.user, request.id)]
            deliveries = list(job.deliveries)
        self._acked(deliveries)

    def _reply_key(self, request: TextRequest | AudioRequest) -> str:
        return self._keys.key("reply", scope_of(request.user), request.id)

    def _record(self, request: TextRequest | AudioRequest, reply: Reply) -> None:
        """Keep the reply, as the asker's own item, to answer a redelivery with it."""
        kind = "response" if isinstance(reply, Response) else "error"
        place = self._cache.policies.place(request.user, ttl=self.settings.replay_ttl,
                                           personal=True)
        try:
            self._cache.set(self._reply_key(request), {"kind": kind, "reply": reply.to_json()},
                            ttl=place.ttl, user=place.owner, redis=place.redis,
                            disk=place.disk, tags=("reply",))
        except CacheError as error:
            log.warning("a reply was not recorded: %s", error)

    def _recorded(self, job: _Job) -> Reply | None:
        """The reply already sent to this request: from this process's memory, or, for one
        the broker delivers again (after a restart, say), from the cache."""
        request = job.request
        key = (request.user, request.id)
        with self._recent_lock:
            seen = key in self._recent
            recent = self._recent.get(key)
        if recent is not None or not (seen or job.redelivered):
            return recent
        found = self._cache.get(self._reply_key(request), user=request.user)
        if not isinstance(found, dict):
            return None
        data = found.get("reply") or {}
        return (Response.from_json(data) if found.get("kind") == "response"
                else ErrorReply.from_json(data))

    def _claim_name(self, request: TextRequest | AudioRequest) -> str:
        return self._keys.name("claim", f"{scope_of(request.user)}:{request.id}")

    def _claimed(self, request: TextRequest | AudioRequest) -> bool:
        """Is this node the one to handle it? (Another node may have got it too.)"""
        redis_tier = self._cache.redis
        if redis_tier is None:
            return True
        try:
            return redis_tier.claim(self._claim_name(request), self.settings.timeout * 2)
        except TierUnavailable:
            return True

    def _release(self, request: TextRequest | AudioRequest) -> None:
        if self._cache.redis is not None:
            with contextlib.suppress(TierUnavailable):
                self._cache.redis.delete(self._claim_name(request))

    # -- deadlines -------------------------------------------------------------------------

    def _watch_deadlines(self) -> None:
        while not self._stopping.is_set():
            with self._deadline_cond:
                now = time.monotonic()
                due = []
                while self._deadlines and self._deadlines[0][0] <= now:
                    due.append(heapq.heappop(self._deadlines)[2])
                if not due:
                    wait = self._deadlines[0][0] - now if self._deadlines else 1.0
                    self._deadline_cond.wait(min(wait, 1.0))
                    continue
            for job in due:
                if not job.finished and self._finish(job, ErrorReply(
                        job.request.id, "timeout",
                        f"no answer within {self.settings.timeout:g} s")):
                    self._complete(job)

    # -- the workers ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            self.metrics.queue.set(self._queue.qsize())
            if job is None:
                return
            try:
                self._handle(job)
            except Exception as error:
                log.exception("request %s failed", job.request.id)
                self._finish(job, ErrorReply(job.request.id, "internal",
                                             f"the assistant failed: {type(error).__name__}"))
            finally:
                self._complete(job)

    def _handle(self, job: _Job) -> None:
        request = job.request
        if job.finished:
            return
        if time.monotonic() > job.deadline:
            self._finish(job, ErrorReply(request.id, "timeout", "waited past its deadline"))
            return
        recorded = self._recorded(job)
        if recorded is not None:  # delivered again after it was answered
            self.metrics.answers.labels("replayed").inc()
            self._finish(job, recorded, record=False)
            if isinstance(recorded, Response) and request.speak and self._speech:
                self._speak(job, recorded.text, personal=True)
            return
        if not self._claimed(request):
            log.info("request %s is being answered by another node", request.id)
            with job.lock:
                job.finished = True
            return
        limited = self._over_limit(request)
        if limited is not None:
            self._finish(job, ErrorReply(request.id, "rate_limited", limited))
            return
        try:
            handled = self._pipeline.handle(request)
        except (AssistantError, CacheError) as error:
            code = getattr(error, "code", "bad_user" if isinstance(error, CacheError) else
                           "internal")
            self._finish(job, ErrorReply(request.id, code, str(error)))
            return
        if handled.audio_seconds and self.settings.audio_seconds_per_minute:
            self._limits.add(request.user, "audio", handled.audio_seconds)
        answer = handled.answer
        timings = dict(handled.timings)
        published = time.perf_counter()
        if answer.actions and not job.finished:
            assert self._client is not None
            for action in answer.actions:
                publish(self._client, Packet(action.topic, action.payload.encode(),
                                             retain=action.retain))
                self.metrics.actions.inc()
        timings["publish"] = (time.perf_counter() - published) * 1000
        timings["total"] = (time.perf_counter() - job.received) * 1000
        response = Response(
            id=request.id, text=answer.text, transcript=handled.transcript,
            intent=answer.intent, slots=answer.slots,
            actions=[{"entity_id": a.entity_id, "topic": a.topic, "payload": a.payload}
                     for a in answer.actions],
            fragments=[{"kind": f.kind, "text": f.text, "source": f.source,
                        "ms": round(f.seconds * 1000, 3)} for f in answer.fragments],
            timings={k: round(v, 3) for k, v in timings.items()})
        if self._finish(job, response, personal=answer.personal or handled.transcript is not None):
            self.metrics.timings(timings)
            self.metrics.answers.labels(_source(answer.fragments)).inc()
            if request.speak and self._speech:
                self._speak(job, answer.text, personal=answer.personal)

    def _speak(self, job: _Job, text: str, *, personal: bool) -> None:
        """Publish the answer's speech (after the answer itself)."""
        from assistant.answers import Answer, FragmentResult

        started = time.perf_counter()
        answer = Answer(text=text, fragments=(FragmentResult("text", text, "", 0.0, personal),))
        try:
            for chunk in self._pipeline.speech(job.request, answer):
                if self._client is not None:
                    publish(self._client, chunk.packet(self.topics, job.request))
        except AssistantError as error:
            log.warning("request %s: no speech: %s", job.request.id, error)
            self.metrics.errors.labels("speech_failed").inc()
        self.metrics.stage.labels("tts").observe(time.perf_counter() - started)

    def _over_limit(self, request: TextRequest | AudioRequest) -> str | None:
        """Why the user is over a limit, or None."""
        settings = self.settings
        if settings.requests_per_minute and self._limits.add(
                request.user, "requests", 1) > settings.requests_per_minute:
            return f"more than {settings.requests_per_minute} requests a minute"
        if (isinstance(request, AudioRequest) and settings.audio_seconds_per_minute
                and self._limits.add(request.user, "audio", 0)
                >= settings.audio_seconds_per_minute):
            return f"more than {settings.audio_seconds_per_minute:g} s of audio a minute"
        return None


def _source(fragments: Any) -> str:
    """Where a whole answer came from: its least cached piece's tier."""
    order = ("computed", "waited", "uncached", "fallback", "l3", "l2", "l1")
    sources = {f.source for f in fragments}
    return next((s for s in order if s in sources), "computed" if not sources else "l1")
