"""``assistant satellite``: hear a request, send it to the service, play the answer.

It imports only what a small device needs (the MQTT client, the wake word and VAD models):
no Whisper, piper or llama.cpp. Audio comes from the microphone, a WAV file or standard
input (:mod:`assistant.satellite.sound`); each request goes to the service as a WAV on the
audio topic (QoS 1, the socket with ``TCP_NODELAY``), asking for the answer spoken sentence
by sentence, and each sentence is played as it arrives. Its state (``idle``,
``listening``, ``thinking``, ``speaking``, ``error``; ``offline`` once it stops or
vanishes, the broker's will) is published retained on ``<prefix>/<site>/satellite/state``
and printed.

Beside its answers it follows, for its site and user:

- ``<prefix>/<site>/timer/<user>``: its user's timers set here; one that finishes rings
  here, then its speech is played;
- ``<prefix>/<site>/broadcast`` and ``.../broadcast/<id>``: broadcasts, shown and played;
- ``<prefix>/<site>/satellite/listen/<user>``: push-to-talk from anywhere (a button, Home
  Assistant): any message starts a request, as the wake word does;
- ``<prefix>/status``: the service going offline and coming back.

A lost broker or service is said (a short sound and a line) and it goes on listening;
paho reconnects by itself. A request heard while the broker is out of reach is not sent
later: it is refused at once, since "unlock the door" acted on minutes later is worse than
being told to say it again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from assistant.errors import AssistantError
from assistant.protocol import ErrorReply, Packet, Response, SpeechChunk, Topics
from assistant.satellite.listen import Ears, Utterance
from assistant.satellite.sound import Player, Source, tone, wav_of
from assistant.settings import MqttSettings, SatelliteSettings
from assistant.transports.mqtt_client import Asked, Asker

STATES = ("idle", "listening", "thinking", "speaking", "error", "offline")

class Satellite:
    """One satellite: a site, a user, ears, a player, and a connection to the service."""

    def __init__(self, settings: SatelliteSettings, mqtt: MqttSettings, *, site: str,
                 user: str, player: Player | None = None, prefix: str = "assistant",
                 push_to_talk: bool = False, say: Callable[[str], object] = print,
                 report: Path | None = None, count: int | None = None) -> None:
        """``player``: where answers and announcements are played (None: nowhere);
        ``push_to_talk``: no wake word, requests start on a press (Enter on the terminal,
        or the listen topic; with a recording as input, one request follows another);
        ``report``: a file to write one JSON line per request to (where in the stream its
        speech was judged to end and it was sent, the milliseconds to the first answer
        audio and to the answer), then the process's peak memory: what ``make
        bench-satellite`` reads, and how to measure a device; ``count``: stop after this
        many requests."""
        self.settings = settings
        self.site, self.user = site, user
        self.player = player
        self.topics = topics = Topics(prefix)
        self.state_topic = topics.satellite_state(site)
        self.listen_topic = topics.satellite_listen(site, user)
        self.push_to_talk = push_to_talk
        self.ears = Ears(wake_word=None if push_to_talk else settings.wake_word,
                         trailing_silence=settings.trailing_silence,
                         early_silence=settings.early_silence,
                         max_seconds=settings.max_seconds, pre_roll=settings.pre_roll,
                         vad_threshold=settings.vad_threshold)
        self._asker = Asker(
            mqtt, user=user, site=site, topics=topics,
            follow={topics.timer(site, user): self._timer,
                    topics.broadcast(site): self._broadcast,
                    topics.broadcast(site, "+"): self._broadcast_speech,
                    topics.status: self._service_status,
                    self.listen_topic: self._press},
            on_unasked_speech=self._unasked_speech, on_link=self._link,
            will=(self.state_topic, _state("offline")))
        self._say = say
        self._pressed = threading.Event()
        self._stopping = threading.Event()
        self._lost = False  # the broker, since it was last reached
        self._service_offline = False
        self._notices = itertools.count()
        self._drain = False
        self.state = "idle"
        self.asked = 0
        self.answers: list[str] = []
        self.report = report
        self.count = count
        self._lines: list[dict[str, object]] = []

    # -- running ---------------------------------------------------------------------------

    def run(self, source: Source) -> int:
        """Hear ``source`` until it ends, :meth:`stop` or ``count`` requests; the number of
        requests answered. A microphone starts at once and keeps trying to reach the
        broker; a recording first needs the broker (and raises if it cannot be reached)."""
        self._source = source
        self._asker.start(wait=not source.live)
        try:
            self._set("idle")
            if self.push_to_talk and not source.live:
                self.ears.press()  # a recording of one request after another
            elif self.push_to_talk and sys.stdin.isatty():
                threading.Thread(target=self._keys, name="keys", daemon=True).start()
                self._say(f"[{self.site}] press Enter to speak")
            for chunk in self._heard(source):
                self._hear(chunk)
                if self._stopping.is_set() or self._enough():
                    break
            else:
                for utterance in self.ears.finish():
                    self._answer(utterance)
        finally:
            source.close()
            self._set("offline")
            if self.player is not None:
                self.player.close()
            self._asker.close()
            self._write_report()
        return len(self.answers)

    def stop(self) -> None:
        """Stop listening (from another thread or a signal handler)."""
        self._stopping.set()
        source = getattr(self, "_source", None)
        if source is not None and source.live:
            source.close()

    def _enough(self) -> bool:
        return self.count is not None and self.asked >= self.count

    def _heard(self, source: Source) -> Iterator[bytes]:
        """The source's chunks; a microphone's read on a thread of its own, so that it is
        always drained, and what it hears while the satellite speaks is let go."""
        if not source.live:
            yield from source.chunks()
            return
        chunks: queue.Queue[bytes | Exception | None] = queue.Queue(maxsize=1000)

        def read() -> None:
            try:
                for chunk in source.chunks():
                    chunks.put(chunk)
            except (OSError, AssistantError) as error:  # raised on the listening thread
                chunks.put(error)
            chunks.put(None)

        threading.Thread(target=read, name="microphone", daemon=True).start()
        while (item := chunks.get()) is not None:
            if isinstance(item, Exception):
                raise item
            if self.player is not None and self.player.busy:
                continue  # its own voice
            yield item
            if self._drain:  # what it heard while it was thinking and speaking
                self._drain = False
                with contextlib.suppress(queue.Empty):
                    while True:
                        if chunks.get_nowait() is None:
                            return

    def _hear(self, chunk: bytes) -> None:
        if self._pressed.is_set():
            self._pressed.clear()
            self.ears.press()
        was = self.ears.listening
        for utterance in self.ears.hear(chunk):
            self._answer(utterance)
            if self._enough():
                return
        if self.ears.listening and not was:
            self._set("listening")

    def _keys(self) -> None:
        """Push-to-talk on the terminal: each Enter starts a request."""
        for _ in sys.stdin:
            self._pressed.set()

    # -- a request -------------------------------------------------------------------------

    def _answer(self, utterance: Utterance) -> None:
        self.asked += 1
        self._drain = True
        if not self._asker.connected:
            self._notice("lost", "the assistant cannot be reached (no connection to the "
                                 "broker): say it again once it is back")
            self._lines.append(self._line(utterance, None, answered=False))
            self._ready_again()
            return
        self._set("thinking")
        request_id = uuid.uuid4().hex[:16]
        speaking = False

        def play(chunk: SpeechChunk) -> None:
            nonlocal speaking
            if not speaking:
                speaking = True
                self._set("speaking")
            if self.player is not None:
                self.player.play(chunk.id, chunk.wav, last=chunk.last)

        asked = self._asker.ask(wav=wav_of(utterance.pcm), speak=True, stream=True,
                                timeout=self.settings.timeout, request_id=request_id,
                                on_speech=play)
        reply = asked.reply
        self._lines.append(self._line(utterance, asked, answered=isinstance(reply, Response)))
        if isinstance(reply, Response):
            self.answers.append(reply.text)
            self._say(f"[{self.site}] heard: {reply.transcript!r}; answer: {reply.text}")
            if speaking and self.player is not None:
                self.player.wait(request_id, timeout=120)
        elif isinstance(reply, ErrorReply):
            self._set("error")
            self._say(f"[{self.site}] error [{reply.code}]: {reply.message}")
            self._sound("error")
        else:
            self._set("error")
            self._say(f"[{self.site}] the assistant did not answer within "
                      f"{self.settings.timeout:g} s")
            self._sound("error")
        self._ready_again()

    def _ready_again(self) -> None:
        if self.push_to_talk and not self._source.live:
            self.ears.press()  # a recording: the next request follows
        self._set("idle")

    @staticmethod
    def _line(utterance: Utterance, asked: Asked | None, *, answered: bool) -> dict[str, object]:
        first = asked.first_speech_seconds if asked is not None else None
        return {"speech_end": round(utterance.speech_end, 3),
                "sent_at": round(utterance.sent_at, 3), "why": utterance.why.value,
                "timed_out": utterance.timed_out,
                "first_audio_ms": None if first is None else round(first * 1000, 1),
                "answer_ms": round(asked.seconds * 1000, 1) if asked is not None else 0.0,
                "answered": answered}

    # -- what else comes (network thread) --------------------------------------------------

    def _timer(self, packet: Packet) -> None:
        try:
            event = json.loads(packet.payload)
            what, timer_id = str(event["event"]), str(event["id"])
        except (ValueError, KeyError, TypeError):
            return
        label = event.get("name") or _duration(event)
        self._say(f"[{self.site}] timer {label}: {what}")
        if what == "finished":
            self._sound("ring", f"ring-{timer_id}")  # its speech follows when it is made

    def _broadcast(self, packet: Packet) -> None:
        try:
            message = json.loads(packet.payload)
            text, origin = str(message["text"]), message.get("from")
        except (ValueError, KeyError, TypeError):
            return
        self._say(f"[{self.site}] broadcast" + (f" from {origin}" if origin else "") +
                  f": {text}")

    def _broadcast_speech(self, packet: Packet) -> None:
        if self.player is not None:
            self.player.play("broadcast-" + packet.topic.rsplit("/", 1)[-1], packet.payload)

    def _unasked_speech(self, chunk: SpeechChunk) -> None:
        """Speech of the user's at this site that no request waits for: a timer's."""
        if self.player is not None:
            self.player.play(chunk.id, chunk.wav, last=chunk.last)

    def _press(self, packet: Packet) -> None:
        """Push-to-talk from the listen topic: the next audio starts a request."""
        self._say(f"[{self.site}] push-to-talk")
        self._pressed.set()

    def _service_status(self, packet: Packet) -> None:
        offline = packet.payload.strip() == b"offline"
        if offline and not self._service_offline:
            self._service_offline = True
            self._notice("lost", "the assistant is offline; requests wait for it")
        elif not offline and self._service_offline:
            self._service_offline = False
            self._notice("back", "the assistant is back")

    def _link(self, up: bool) -> None:
        if not up:
            self._lost = True
            self._notice("lost", "lost the connection to the broker; reconnecting")
            return
        if self._lost:
            self._lost = False
            self._notice("back", "connected again")
        self._publish_state()

    # -- telling ---------------------------------------------------------------------------

    def _set(self, state: str) -> None:
        self.state = state
        self._publish_state()
        self._say(f"[{self.site}] {state}")

    def _publish_state(self) -> None:
        self._asker.publish(self.state_topic, _state(self.state), retain=True)

    def _notice(self, sound: str, message: str) -> None:
        self._say(f"[{self.site}] {message}")
        self._sound(sound)

    def _sound(self, kind: str, key: str | None = None) -> None:
        if self.player is not None:
            self.player.play(key or f"{kind}-{next(self._notices)}", tone(kind))

    def _write_report(self) -> None:
        if self.report is None:
            return
        lines = [*self._lines, {"rss_mb": peak_memory_mb()}]
        self.report.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _state(state: str) -> bytes:
    return json.dumps({"state": state}).encode()


def _duration(event: dict[str, object]) -> str:
    """A timer without a name, by its length: "5 minute"."""
    parts = [f"{event.get(f'start_{unit}s')} {unit}" for unit in ("hour", "minute", "second")
             if event.get(f"start_{unit}s")]
    return " ".join(parts) or "timer"


def peak_memory_mb() -> float:
    """This process's peak resident memory (MB): ``VmHWM``, which starts again at exec (the
    ``ru_maxrss`` of a process started by a large one begins at its parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
