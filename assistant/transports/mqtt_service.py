"""The MQTT service: requests in, answers, speech, device commands and errors out.

paho's network thread only decodes a request and queues it (or answers ``busy`` at once
when the asker's share of the queue is full); a pool of workers runs the pipeline, one of
them kept for requests answered quickly before (:mod:`~assistant.transports.lanes`). The
broker sends no more requests than the queue and the workers hold (MQTT Receive Maximum);
the rest wait there. Every request gets exactly one
final reply, an answer or an error: the first of the worker's result and the deadline's
``timeout`` wins, and once a request's device commands are going out its deadline no longer
applies. Requests are acknowledged to the broker (QoS 1, in the order they came) only once
dealt with, and the session is persistent, so one accepted but not yet answered when the
service stops is delivered again when it is back; a delivery of one already answered gets
the recorded answer without running the pipeline twice. Replies are recorded in the cache
as the asker's own items (encrypted, under their privacy policy).

Several service processes share a broker through a shared subscription (each request goes
to one of them); without one, each request is claimed in Redis by the first to take it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Self

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from assistant.answers import Answer
from assistant.broadcast import Satellites
from assistant.errors import AssistantError, AudioError
from assistant.ops.heap import heavy
from assistant.ops.metrics import ServiceMetrics
from assistant.pipeline import Handled, Pipeline, response_of
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
from assistant.speech.audio import AudioLimits, probe
from assistant.timers import TimerManager
from assistant.transports.announcements import Announcer
from assistant.transports.deliveries import Acks, Deadlines, Delivery
from assistant.transports.lanes import Lanes, QuickAnswers
from assistant.transports.limits import UserLimits
from assistant.transports.mqtt import connect_and_wait, make_client, packet_of, publish
from assistant.transports.replies import Claims, Replies
from cache import CacheError, KeyBuilder, TieredCache

log = logging.getLogger(__name__)

TRANSIENT = frozenset({"busy", "timeout", "rate_limited", "internal", "unavailable"})
"""Error codes not recorded as a request's answer: the same request sent again is tried anew."""
LARGE_PAYLOAD = 1024 * 1024
"""Bytes from which taking a request counts as heavy work (:func:`assistant.ops.heap.heavy`):
the copies of its payload that the MQTT client and the decoding made are handed back to the
system soon after, also when the request is refused (audio too long, not a WAV)."""
_Key = tuple[str, str, str]
"""A request: its user, its id, and a digest of what it asks (an id used again for another
question is another request)."""


@dataclass(eq=False)
class _Job:
    """A request being dealt with, and every delivery of it."""

    request: TextRequest | AudioRequest
    key: _Key
    deadline: float
    redelivered: bool
    """The broker sent it before (MQTT's DUP flag): it may have been answered already."""
    deliveries: list[Delivery]
    finished: bool = False
    committed: bool = False
    """Its device commands are going out: the answer follows, whatever the deadline."""
    claimed: bool = False
    reply: Reply | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: float = field(default_factory=time.perf_counter)


class MqttService:
    """Serves requests over MQTT until closed."""

    def __init__(self, *, mqtt: MqttSettings, settings: ServiceSettings, pipeline: Pipeline,
                 cache: TieredCache, keys: KeyBuilder, metrics: ServiceMetrics,
                 max_audio_bytes: int, speech: bool = True,
                 timers: TimerManager | None = None,
                 satellites: Satellites | None = None,
                 heard: Callable[[str, str, str], None] | None = None,
                 answered: Callable[[TextRequest | AudioRequest, Handled], None] | None = None,
                 audio_limits: AudioLimits | None = None) -> None:
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
            timers: whose events are told to the satellite and user each timer is of.
            satellites: told every site a request comes from (where broadcasts go).
            heard: told (site, user, transcript) of each spoken request answered.
            answered: told of each request answered (the console's recent requests).
            audio_limits: what audio is accepted, checked from its header before a request
                is queued (None: checked by the pipeline alone).
        """
        self._mqtt = mqtt
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._pipeline = pipeline
        self._cache = cache
        self._keys = keys
        self.metrics = metrics
        self._max_audio = max_audio_bytes
        self._audio_limits = audio_limits if speech else None
        self._speech = speech
        self._timers = timers
        self._satellites = satellites
        self._announcer: Announcer | None = None
        self._heard = heard
        self._answered = answered
        self._limits = UserLimits(cache.redis, keys,
                                  requests_per_minute=settings.requests_per_minute,
                                  audio_seconds_per_minute=settings.audio_seconds_per_minute)
        # Room for two of the broker's windows (Receive Maximum, below): after a reconnect
        # it sends the unacknowledged window again (the requests it holds as new to a
        # restarted process, the answered ones to be answered from their record) besides
        # a new one.
        self._lanes: Lanes[_Job] = Lanes(2 * (settings.queue_size + settings.workers),
                                         share=settings.queue_per_user)
        self._quick = QuickAnswers()
        self._jobs: dict[_Key, _Job] = {}
        self._lock = threading.Lock()
        self._acks = Acks(self._ack)
        self._deadlines = Deadlines(self._expire)
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._client: Client | None = None
        self._subscribed = threading.Event()
        self._replies = Replies(cache, keys, ttl=settings.replay_ttl)
        self._claims = None if settings.shared_subscription else Claims(
            cache, keys, owner=mqtt.client_id,
            ttl=max(settings.timeout * 2, settings.replay_ttl))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the workers, connect (persistent session), subscribe; return when ready."""
        self._stopping.clear()
        self._lanes = Lanes(self._lanes.capacity, share=self._lanes.share)
        for n in range(self.settings.workers):
            express = n == 0 and self.settings.workers > 1  # one kept for quick answers
            worker = threading.Thread(target=self._work, args=(express,), daemon=True,
                                      name=f"service-worker-{n}{'-express' if express else ''}")
            worker.start()
            self._workers.append(worker)
        self._deadlines.start()
        announcer = self._announcer = Announcer(
            self.topics, self._publish, metrics=self.metrics,
            speaker=self._pipeline.speaker if self._speech else None)
        if self._timers is not None:
            self._timers.listen(announcer.timer_event)
        if self._satellites is not None:
            self._satellites.sent = True
        client = make_client(self._mqtt, manual_ack=True)
        client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._mqtt.session_expiry
        # The broker sends no more unacknowledged requests than the service can hold (its
        # queue and its workers): a burst, or the backlog of a restart, waits at the broker
        # in order instead of being refused busy.
        props.ReceiveMaximum = min(65535, self.settings.queue_size + self.settings.workers)
        self._client = client
        try:
            connect_and_wait(client, self._mqtt, clean_start=False, properties=props)
            if not self._subscribed.wait(10):
                raise AssistantError("the broker did not confirm the request subscriptions")
        except BaseException:
            self.close()
            raise
        return self

    def healthy(self) -> bool:
        """Can it still answer? Its workers and paho's network thread alive (a broker that is
        away is not its illness: it reconnects, and what is queued there waits)."""
        client = self._client
        network = getattr(client, "_thread", None) if client is not None else None
        return (not self._stopping.is_set() and bool(self._workers)
                and all(worker.is_alive() for worker in self._workers)
                and network is not None and network.is_alive())

    def close(self) -> None:
        """Take no more requests, let the workers answer what they hold while still
        connected, say offline, disconnect. What was not taken is delivered again later."""
        self._stopping.set()
        self._lanes.close()
        deadline = time.monotonic() + self.settings.timeout + 5
        for worker in self._workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
        self._workers.clear()
        self._deadlines.close()
        if self._satellites is not None:
            self._satellites.sent = False
        if self._announcer is not None:
            if self._timers is not None:
                self._timers.unlisten(self._announcer.timer_event)
            self._announcer.close()
            self._announcer = None
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected():
                client.publish(self.topics.status, b"offline", qos=1,
                               retain=True).wait_for_publish(timeout=2)
        except (RuntimeError, ValueError) as error:
            log.debug("offline status not sent: %s", error)
        finally:
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
        self._acks.reconnected()
        share = "$share/assistant/" if self.settings.shared_subscription else ""
        # Satellites' states, retained: every node learns where broadcasts go, even from
        # satellites that have not asked anything since it started.
        client.subscribe([*[(share + f, 1) for f in self.topics.requests()],
                          (self.topics.satellite_state("+"), 0)])
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
        if self._stopping.is_set():
            return  # not acknowledged: the broker delivers it to the next run
        delivery = self._acks.received(message.mid, message.qos)
        handed = False
        try:
            # A large payload (audio) leaves its copies freed in the heap: trimmed after.
            with heavy() if len(message.payload) >= LARGE_PAYLOAD else contextlib.nullcontext():
                handed = self._receive(message, delivery)
        except Exception:  # never raise in paho's thread
            log.exception("a request could not be taken")
            self.metrics.errors.labels("internal").inc()
        finally:
            if not handed:
                self._acks.done([delivery])

    def _satellite_seen(self, site: str, payload: bytes) -> None:
        """A satellite said its state: broadcasts go to its site (unless it went away, or
        the site is not one served)."""
        if self._satellites is None or (self.settings.sites and site not in self.settings.sites):
            return
        try:
            state = json.loads(payload).get("state")
        except (ValueError, AttributeError):
            return
        if state not in (None, "offline"):
            self._satellites.heard(site)

    def _receive(self, message: MQTTMessage, delivery: Delivery) -> bool:
        """Take a message; true when a job now holds its delivery (acknowledged later)."""
        packet = packet_of(message)
        standing = self.topics.satellite_site(packet.topic)
        if standing is not None:
            self._satellite_seen(standing, packet.payload)
            return False
        where = self.topics.parse(packet.topic)
        self.metrics.requests.labels(where[0] if where else "unknown").inc()
        digest = hashlib.blake2b(packet.payload, digest_size=8).hexdigest()
        try:
            request = decode_request(packet, self.topics, max_audio_bytes=self._max_audio,
                                     sites=self.settings.sites, made_id="h" + digest)
        except ProtocolError as error:
            self._refuse(packet, error)
            return False
        if self._satellites is not None:
            self._satellites.heard(request.site)
        if isinstance(request, AudioRequest) and self._audio_limits is not None:
            try:  # the header alone: a file too long or not WAV never waits in the queue
                probe(request.audio, self._audio_limits)
            except AudioError as error:
                self._refuse(packet, ProtocolError(error.code, str(error), request_id=request.id))
                return False
        key = (request.user, request.id, digest)
        sent: Reply | None = None
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:  # delivered again while it is being dealt with
                with job.lock:
                    sent = job.reply
                    if sent is None:
                        job.deliveries.append(delivery)  # answered with the first
                        return True
        if sent is not None:  # answered already, still finishing: the same answer again
            self._send(request, sent)
            self.metrics.answers.labels("replayed").inc()
            return False
        job = _Job(request, key, time.monotonic() + self.settings.timeout, bool(message.dup),
                   [delivery])
        express = isinstance(request, TextRequest) and self._quick.expected(request.text)
        with self._lock:
            busy = self._lanes.put(job, owner=request.user, express=express)
            if busy is None:
                self._jobs[key] = job
        if busy is not None:
            self._finish(job, ErrorReply(request.id, "busy", f"{busy}; try again in a moment"))
            return False
        self.metrics.queue.set(len(self._lanes))
        self._deadlines.add(key, job.deadline)
        return True

    def _refuse(self, packet: Packet, error: ProtocolError) -> None:
        """The error reply to a message that could not be decoded, where there is one to send
        it to (the asker's own topics only)."""
        self.metrics.errors.labels(error.code).inc()
        log.info("refused a request on %s: %s", packet.topic, error)
        where = self.topics.parse(packet.topic)
        if where is None or self._client is None:
            return
        _kind, site, user = where
        reply_to = packet.response_topic if packet.response_topic and self.topics.owns(
            packet.response_topic, site, user) else None
        reply = ErrorReply(error.request_id, error.code, str(error))
        self._publish(reply_packet(self.topics, reply, site=site, user=user, reply_to=reply_to,
                                   correlation=packet.correlation))

    # -- the ends of a request -------------------------------------------------------------

    def _ack(self, mid: int, qos: int) -> None:
        if self._client is not None:
            self._client.ack(mid, qos)

    def _publish(self, packet: Packet) -> bool:
        """Publish; false (logged, counted) when it cannot be sent."""
        client = self._client
        if client is None:
            return False
        try:
            publish(client, packet)
        except (ValueError, TypeError, RuntimeError, OSError) as error:
            log.error("could not publish on %r: %s", packet.topic, error)
            self.metrics.errors.labels("send_failed").inc()
            return False
        return True

    def _send(self, request: TextRequest | AudioRequest, reply: Reply) -> None:
        try:
            packet = reply_packet(self.topics, reply, site=request.site, user=request.user,
                                  reply_to=request.reply_to, correlation=request.correlation)
        except (ValueError, TypeError) as error:  # not JSON-able: say so instead
            log.error("request %s: the reply could not be encoded: %s", request.id, error)
            packet = reply_packet(self.topics, ErrorReply(request.id, "internal",
                                                          "the answer could not be encoded"),
                                  site=request.site, user=request.user,
                                  reply_to=request.reply_to, correlation=request.correlation)
        self._publish(packet)

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
            if reply.code in TRANSIENT:
                if job.claimed and self._claims is not None:
                    self._claims.release(request.user, request.id)
                return True
        self._replies.keep(job.key, reply, personal=personal, record=record)
        return True

    def _complete(self, job: _Job) -> None:
        """The request is dealt with: forget it, acknowledge every delivery of it."""
        with self._lock:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
            deliveries = list(job.deliveries)
        self._acks.done(deliveries)

    def _expire(self, key: Hashable) -> None:
        with self._lock:
            job = self._jobs.get(key)  # type: ignore[call-overload]
        if job is None:
            return
        with job.lock:
            if job.finished or job.committed:
                return
        if self._finish(job, ErrorReply(job.request.id, "timeout",
                                        f"no answer within {self.settings.timeout:g} s")):
            self._complete(job)

    # -- the workers ---------------------------------------------------------------------

    def _work(self, express: bool) -> None:
        """Answer requests until closed; ``express``: only those expected to be quick."""
        while True:
            job = self._lanes.get(express_only=express)
            self.metrics.queue.set(len(self._lanes))
            if job is None:
                return
            try:
                self._handle(job)
            except Exception as error:
                log.exception("request %s failed", job.request.id)
                with contextlib.suppress(Exception):
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
        recorded = self._replies.sent(job.key, redelivered=job.redelivered)
        if recorded is not None:  # sent again after it was answered
            self.metrics.answers.labels("replayed").inc()
            self._finish(job, recorded, record=False)
            if isinstance(recorded, Response) and request.speak and self._speech:
                self._speak(job, recorded.text, personal=True)
            return
        if self._claims is not None:
            job.claimed = self._claims.claim(request.user, request.id)
        if self._claims is not None and not job.claimed:
            log.info("request %s is being answered by another node", request.id)
            with job.lock:
                job.finished = True
            return
        limited = self._limits.exceeded(request.user,
                                        audio=isinstance(request, AudioRequest))
        if limited is not None:
            self._finish(job, ErrorReply(request.id, "rate_limited", limited))
            return
        started = time.perf_counter()
        try:
            handled = self._pipeline.handle(request)
        except AssistantError as error:
            self._finish(job, ErrorReply(request.id, error.code, str(error)))
            return
        except CacheError as error:
            log.error("request %s: the cache failed: %s", request.id, error)
            self._finish(job, ErrorReply(request.id, "internal", "the cache failed"))
            return
        if isinstance(request, TextRequest):
            self._quick.took(request.text, (time.perf_counter() - started) * 1000)
        if handled.audio_seconds:
            self._limits.heard(request.user, handled.audio_seconds)
        answer = handled.answer
        timings = handled.timings
        with job.lock:
            if job.finished:  # the deadline came first
                return
            job.committed = True
        published = time.perf_counter()
        self.carry_out(answer)
        timings["publish"] = (time.perf_counter() - published) * 1000
        timings["total"] = (time.perf_counter() - job.received) * 1000
        if self._heard is not None and handled.transcript is not None:
            self._heard(request.site, request.user, handled.transcript)
        if self._answered is not None:
            self._answered(request, handled)
        response = response_of(request.id, handled)
        if self._finish(job, response, personal=answer.personal or
                        handled.transcript is not None):
            self.metrics.timings(timings)
            self.metrics.answered(answer.fragments)
            if request.speak and self._speech:
                self._speak(job, answer.text, personal=answer.personal)

    def carry_out(self, answer: Answer) -> None:
        """Publish an answer's actions to the home and pass on its effects (timers started,
        broadcasts): for answers found here, and for those of the Wyoming server."""
        for action in answer.actions:
            if self._publish(Packet(action.topic, action.payload.encode(),
                                    retain=action.retain)):
                self.metrics.actions.inc()
        if self._announcer is not None:
            for effect in answer.effects:
                self._announcer.effect(effect)

    def _speak(self, job: _Job, text: str, *, personal: bool) -> None:
        """Publish the answer's speech (after the answer itself)."""
        started = time.perf_counter()
        try:
            for chunk in self._pipeline.speech(job.request, text, personal=personal):
                self._publish(chunk.packet(self.topics, job.request))
        except AssistantError as error:
            log.warning("request %s: no speech: %s", job.request.id, error)
            self.metrics.errors.labels("speech_failed").inc()
        self.metrics.stage.labels("tts").observe(time.perf_counter() - started)
