"""``assistant warm``: answer, ahead of people, the sentences they are likely to say.

Each intent's sentences are sampled over the home (:mod:`assistant.recognition.sampling`)
and answered as a request would be: recognised, their static fragments rendered and their
generated parts written through the cache, their speech synthesised sentence by sentence
into it. Nothing is acted on (the answer's device commands are planned, never published),
and intents answered from the assistant's own state (timers, lists, broadcasts) are left
alone: warming them would set timers and fill lists. The answers are shared ones (no user):
a person's own answers are made when they ask.

It keeps to a rate (sentences a second), and with ``idle_only`` it waits while the running
service is answering: it reads the service's request counter from its metrics endpoint, and
goes on only once that has not moved for :data:`QUIET_SECONDS`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from assistant.errors import AssistantError
from assistant.ops.figures import metrics_url
from assistant.recognition.sampling import Sample, recognizer_lists, sample_sentences
from assistant.settings import Settings

log = logging.getLogger(__name__)

QUIET_SECONDS = 10.0
"""How long the service must have had no request before warming goes on (``idle_only``)."""
_REQUESTS = re.compile(r"^assistant_requests_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


@dataclass
class WarmReport:
    """What a warming run did."""

    sentences: int = 0
    """Sentences sampled."""
    answered: int = 0
    skipped: int = 0
    """Sentences of intents answered from the assistant's own state, or that failed."""
    spoken: int = 0
    """Answers whose speech was made (or found)."""
    waited_seconds: float = 0.0
    """Time spent waiting for the service to be idle."""
    seconds: float = 0.0
    tiers_before: dict[str, Any] = field(default_factory=dict)
    tiers_after: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"sentences": self.sentences, "answered": self.answered,
                "skipped": self.skipped, "spoken": self.spoken,
                "seconds": round(self.seconds, 2), "waited_seconds": round(self.waited_seconds, 2),
                "tiers": {tier: {"before": self.tiers_before.get(tier),
                                 "after": self.tiers_after.get(tier)}
                          for tier in sorted({*self.tiers_before, *self.tiers_after})}}


class ServiceActivity:
    """Whether the running service has answered anything lately, from its metrics."""

    def __init__(self, url: str | None, *, quiet: float = QUIET_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``url``: the service's ``/metrics`` (None: no service to wait for)."""
        self.url = url
        self.quiet = quiet
        self._clock = clock
        self._count: float | None = None
        self._changed = clock() - quiet  # no request seen yet: idle unless one comes

    def requests(self) -> float | None:
        """Requests the service has received, or None when it does not answer."""
        if self.url is None or not self.url.startswith("http://"):
            return None
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:  # noqa: S310 - http only
                text = response.read().decode()
        except OSError:
            return None
        return sum(float(v) for v in _REQUESTS.findall(text))

    def idle(self) -> bool:
        count = self.requests()
        now = self._clock()
        if count is None:
            return True  # no service running: nobody to give way to
        if self._count is not None and count != self._count:
            self._changed = now  # it answered something since the last look
        self._count = count
        return now - self._changed >= self.quiet


class Warmer:
    """Answers sampled sentences through the engine and speaker, into the cache."""

    def __init__(self, respond: Callable[[Sample], Any], *, skip: Callable[[str], bool],
                 speak: Callable[[Any], None] | None, rate: float,
                 idle: Callable[[], bool] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``respond``: answers a sample (the engine's answer); ``skip``: intents not to warm;
        ``speak``: makes an answer's speech (None: no speech); ``rate``: sentences a second
        at most (0: no limit); ``idle``: true when the service is not answering (None: do
        not wait for it)."""
        self._respond = respond
        self._skip = skip
        self._speak = speak
        self.rate = rate
        self._idle = idle
        self._sleep = sleep

    def run(self, samples: Iterable[Sample], report: WarmReport,
            step: Callable[[Sample], None] = lambda sample: None) -> WarmReport:
        started = time.monotonic()
        last = 0.0
        for sample in samples:
            report.sentences += 1
            step(sample)
            if self._skip(sample.intent):
                report.skipped += 1
                continue
            report.waited_seconds += self._wait_for_idle()
            if self.rate > 0:
                gap = 1 / self.rate - (time.monotonic() - last)
                if gap > 0:
                    self._sleep(gap)
            last = time.monotonic()
            try:
                answer = self._respond(sample)
            except AssistantError as error:  # a template that fails: said, not fatal
                log.warning("not warmed: %r: %s", sample.text, error)
                report.skipped += 1
                continue
            report.answered += 1
            if self._speak is not None and str(getattr(answer, "text", "")):
                try:
                    self._speak(answer)
                    report.spoken += 1
                except AssistantError as error:
                    log.warning("no speech warmed for %r: %s", sample.text, error)
        report.seconds = time.monotonic() - started
        return report

    def _wait_for_idle(self) -> float:
        if self._idle is None:
            return 0.0
        waited = 0.0
        while not self._idle():
            self._sleep(1.0)
            waited += 1.0
        return waited


def warm(settings: Settings, *, per_intent: int, limit: int, rate: float, idle_only: bool,
         speech: bool, seed: int | None = None, show: bool = False) -> WarmReport:
    """Sample sentences of the templates over the home and answer them into the cache,
    with a progress bar on stderr (``show``: each sentence and its answer too). It loads
    the voice but not Whisper: nothing is heard, and it runs beside the service."""
    from rich.console import Console
    from rich.progress import Progress

    from assistant.app import App
    from assistant.speech.tts import Speaker

    service = settings.service
    metrics = metrics_url(service.metrics_host, service.metrics_port) \
        if idle_only and service.metrics_port else None
    with App(settings, listen=False) as app, contextlib.ExitStack() as stack:
        engine, cache = app.engine, app.cache
        assert engine is not None and cache is not None
        recognizer = engine.recognizer
        samples = sample_sentences(recognizer.intents, recognizer_lists(recognizer),
                                   recognizer.home, per_intent=per_intent,
                                   seed=secrets.randbelow(2**31) if seed is None else seed,
                                   limit=limit)
        handlers = engine.responder.handlers
        speaker = stack.enter_context(Speaker(settings.tts, cache=cache, keys=app.keys)) \
            if speech else None

        def respond(sample: Sample) -> Any:
            answer = engine.respond(sample.text, area=sample.area)
            if show:
                print(f"warmed: {sample.text!r} -> {answer.text!r}", file=sys.stderr)
            return answer

        def speak(answer: Any) -> None:
            assert speaker is not None
            speaker.speak(answer.text, personal=bool(answer.personal))

        warmer = Warmer(respond, skip=lambda intent: bool(handlers and handlers.handles(intent)),
                        speak=None if speaker is None else speak, rate=rate,
                        idle=ServiceActivity(metrics).idle if idle_only else None)
        report = WarmReport(tiers_before=tier_sizes(cache))
        with Progress(console=Console(stderr=True)) as progress:
            task = progress.add_task("warming", total=len(samples))
            warmer.run(samples, report, step=lambda sample: progress.advance(task))
        report.tiers_after = tier_sizes(cache)
    return report


def tier_sizes(cache: Any) -> dict[str, Any]:
    """Items and bytes in each tier (what ``warm`` reports before and after)."""
    from cache import maintenance

    figures = maintenance.stats(cache)
    out: dict[str, Any] = {"l1": {"items": figures["l1"]["entries"],
                                  "bytes": figures["l1"]["bytes"]}}
    if "l2" in figures:
        out["l2"] = {"items": figures["l2"].get("keys"), "bytes": figures["l2"].get("used_memory")}
    if "l3" in figures:
        out["l3"] = {"items": figures["l3"].get("rows"), "bytes": figures["l3"].get("bytes")}
    return out
