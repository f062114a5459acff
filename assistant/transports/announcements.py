"""What the assistant's own state sends, beside the answers: broadcasts to the other
satellites, and what becomes of a timer, told to its satellite and user (and said when it
finishes). Speech is made off the caller's thread, one announcement at a time."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from assistant.broadcast import Broadcast
from assistant.errors import AssistantError
from assistant.ops.metrics import ServiceMetrics
from assistant.protocol import Packet, Topics
from assistant.speech.tts import Speaker
from assistant.timers import FINISHED, TimerEvent, finished_text

log = logging.getLogger(__name__)


class Announcer:
    """Publishes broadcasts and timer events through ``publish``, with their speech when a
    ``speaker`` is given."""

    def __init__(self, topics: Topics, publish: Callable[[Packet], bool], *,
                 speaker: Speaker | None, metrics: ServiceMetrics) -> None:
        self.topics = topics
        self._publish = publish
        self._speaker = speaker
        self._metrics = metrics
        self._speech = ThreadPoolExecutor(max_workers=1, thread_name_prefix="announce")

    def close(self) -> None:
        """Say what is queued, then nothing more."""
        self._speech.shutdown(wait=True)

    def effect(self, effect: object) -> None:
        """Send what an answer's handler asked for (a broadcast: text now, speech after)."""
        if not isinstance(effect, Broadcast):
            log.warning("unknown effect %r not sent", type(effect).__name__)
            return
        payload = json.dumps(effect.to_json(), ensure_ascii=False).encode()
        for site in effect.sites:
            self._publish(Packet(self.topics.broadcast(site), payload,
                                 content_type="application/json"))
        self._say(effect.text, [self.topics.broadcast(site, effect.id) for site in effect.sites],
                  user=effect.user)

    def timer_event(self, event: TimerEvent) -> None:
        """Tell a timer's satellite and user what happened to it; say it when it is done."""
        timer = event.timer
        if timer.site is None or timer.user is None:
            return
        self._publish(Packet(self.topics.timer(timer.site, timer.user),
                             json.dumps(event.to_json(), ensure_ascii=False).encode(),
                             content_type="application/json"))
        if event.event == FINISHED:
            self._say(finished_text(timer),
                      [self.topics.speech(timer.site, timer.user, f"timer-{timer.id}")],
                      user=timer.user)

    def _say(self, text: str, topics: list[str], *, user: str | None) -> None:
        """Speak ``text`` once (cached as ``user``'s: their words) and publish it on each of
        ``topics``; nothing without a speaker."""
        speaker = self._speaker
        if speaker is None or not topics:
            return

        def speak() -> None:
            try:
                wav = speaker.speak(text, user=user, personal=user is not None).wav
            except AssistantError as error:
                log.warning("no speech for an announcement: %s", error)
                self._metrics.errors.labels("speech_failed").inc()
                return
            for topic in topics:
                self._publish(Packet(topic, wav, content_type="audio/wav"))

        with contextlib.suppress(RuntimeError):  # closing: nothing more is said
            self._speech.submit(speak)
