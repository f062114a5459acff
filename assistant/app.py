"""The composition root: every part built from its settings, started in order, stopped in
reverse, and stopped again if one fails half-way."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from prometheus_client import CollectorRegistry

from assistant.answers import Responder
from assistant.answers.responder import UNKNOWN_NAME_TAG, UNMATCHED_TAG
from assistant.broadcast import BroadcastIntents, Satellites
from assistant.console.recent import RecentRequests
from assistant.console.server import ConsoleServer
from assistant.engine import IntentEngine
from assistant.generation import Generator, cpu_fallback, open_backend
from assistant.generation.generator import GEN_TAG, PREFIX_TAG
from assistant.handlers import Handlers
from assistant.home import Registry, load_home
from assistant.home.listener import DiscoveryListener
from assistant.lists import ListIntents, ListStore
from assistant.ops.figures import FigureKeeper
from assistant.ops.metrics import MetricsEndpoint, ServiceMetrics, histogram_median
from assistant.ops.rotate import ServiceLock, service_lock_path
from assistant.pipeline import Pipeline
from assistant.settings import (
    CacheSettings,
    KeySettings,
    PrivacySettings,
    RedisSettings,
    Settings,
    SqliteSettings,
)
from assistant.speech.audio import AudioLimits
from assistant.speech.grammar import prepare as prepare_grammar
from assistant.speech.stt import STT_TAG, Transcriber
from assistant.speech.tts import TTS_TAG, Speaker
from assistant.templates.model import intent_tag
from assistant.templates.versioning import VersionRecord
from assistant.timers import TimerIntents, TimerManager
from assistant.transports.broker import EmbeddedBroker
from assistant.transports.ha_device import Figures, HomeAssistantDevice
from assistant.transports.hermes import HermesBridge
from assistant.transports.mqtt_service import MqttService
from assistant.transports.wyoming_server import WyomingServer
from cache import (
    CacheMetrics,
    CircuitBreaker,
    KeyBuilder,
    Keyring,
    KeySource,
    MemoryTier,
    RedisTier,
    SqliteTier,
    TieredCache,
    find_key_source,
    read_keyring,
)

log = logging.getLogger(__name__)


class Part(Protocol):
    """What the composition root starts and stops."""

    def start(self) -> object: ...

    def close(self) -> None: ...


P = TypeVar("P", bound=Part)


def key_source(keys: KeySettings, environ: Mapping[str, str] | None = None) -> KeySource:
    """Where the master keys come from: a systemd credential, the environment, or the file."""
    env = os.environ if environ is None else environ
    return find_key_source(file=keys.file, env_value=env.get(keys.env_var),
                           credentials_directory=env.get("CREDENTIALS_DIRECTORY"),
                           credential_name=keys.credential)


def open_keyring(keys: KeySettings, environ: Mapping[str, str] | None = None) -> Keyring:
    """The master keys from their source (the key file is made on first use if allowed)."""
    return read_keyring(key_source(keys, environ), create_file=keys.create)


def build_cache(
    *,
    cache: CacheSettings,
    redis: RedisSettings,
    sqlite: SqliteSettings,
    keys: KeySettings,
    privacy: PrivacySettings,
    listen: bool = True,
    metrics: CacheMetrics | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[TieredCache, KeyBuilder]:
    """The tiered cache (not started) and the key builder, under the same master keys."""
    keyring = open_keyring(keys, environ)
    names = KeyBuilder(keyring.naming_secret())
    metrics = metrics or CacheMetrics()
    policies = privacy.book()
    longest = max([policies.default.max_ttl, policies.shared.max_ttl,
                   *(p.max_ttl for p in policies.users.values())])
    redis_tier = None
    if redis.enabled:
        redis_tier = RedisTier(
            redis.url,
            namer=names.name,
            timeout=redis.timeout,
            spin=redis.spin,
            breaker=CircuitBreaker(threshold=redis.breaker_threshold,
                                   cooldown=redis.breaker_cooldown),
            # A forget is remembered as long as anything of the user may live anywhere.
            tombstone_ttl=longest + 3600,
            events_ttl=redis.events_ttl,
        )
    sqlite_tier = None
    if sqlite.enabled:
        def quarantined(path: Path) -> None:
            metrics.errors.labels("l3", "quarantined").inc()

        sqlite_tier = SqliteTier(
            sqlite.path,
            max_bytes=sqlite.max_bytes,
            batch_size=sqlite.batch_size,
            flush_interval=sqlite.flush_interval,
            queue_size=sqlite.queue_size,
            gc_interval=sqlite.gc_interval,
            on_quarantine=quarantined,
            quarantine_ttl=sqlite.quarantine_ttl,
        )
    tiered = TieredCache(
        keyring=keyring,
        memory=MemoryTier(cache.memory_bytes),
        redis_tier=redis_tier,
        sqlite_tier=sqlite_tier,
        policies=policies,
        metrics=metrics,
        zstd_level=cache.zstd_level,
        compress_min_bytes=cache.compress_min_bytes,
        listen=listen,
        listen_block=cache.listen_block,
        memory_max_item=cache.memory_max_item,
    )
    return tiered, names


def open_cache(**sections: Any) -> tuple[TieredCache, KeyBuilder]:
    """:func:`build_cache`, started."""
    cache, names = build_cache(**sections)
    return cache.start(), names


def cache_of(settings: Settings, *, listen: bool = True) -> tuple[TieredCache, KeyBuilder]:
    """The tiered cache of ``settings`` (not started) and its key builder."""
    return build_cache(cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
                       keys=settings.keys, privacy=settings.privacy, listen=listen)


def figures_path(settings: Settings) -> Path:
    """Where the service keeps its figures over the hours (beside the disk cache)."""
    return settings.sqlite.path.parent / "figures.jsonl"


def model_record(settings: Settings) -> VersionRecord:
    """The versions of the models and voice this node last started with (beside the disk
    cache, as the template versions are)."""
    return VersionRecord(settings.sqlite.path.parent / "model-versions.json")


def version_tag(kind: str, version: str) -> str:
    """The tag every item made by that model or voice carries (``voice:…``, ``model:…``)."""
    return f"{'voice' if kind == 'voice' else 'model'}:{version[:16]}"


def version_record(settings: Settings) -> VersionRecord:
    """This node's record of the template versions last applied (beside the disk cache
    unless ``[intents] versions_file`` says where)."""
    return VersionRecord(settings.intents.versions_file
                         or settings.sqlite.path.parent / "intent-versions.json")


class App:
    """The parts of a running assistant, each started after those it needs.

    Which parts: always the cache; with ``answers`` the home, the generator and the intent
    engine (watching the templates when ``watch``); with ``speech`` the transcriber and the
    speaker; with ``serve`` a private broker if the machine has none, discovery of the home,
    the metrics endpoint, the MQTT service, the Home Assistant device, Rhasspy's Hermes and
    the Wyoming server.
    The constructor only stores the choice; :meth:`start` builds and starts them in that
    order and :meth:`close` stops them in reverse, as does a failure half-way.
    """

    def __init__(self, settings: Settings, *, answers: bool = True, speech: bool = False,
                 serve: bool = False, listen: bool = True, watch: bool = False,
                 progress: Callable[[str], object] = lambda step: None) -> None:
        """``listen``: follow other processes' purges (a one-shot command does not);
        ``progress``: told what is being started (for a display)."""
        self.settings = settings
        self._answers = answers or serve
        self._speech = speech
        self._serve = serve
        self._listen = listen
        self._watch = watch
        self._progress = progress
        self._stack = contextlib.ExitStack()
        self.registry_of_metrics = CollectorRegistry()
        self.cache: TieredCache | None = None
        self.keys: KeyBuilder | None = None
        self.broker: EmbeddedBroker | None = None
        self.registry: Registry | None = None
        self.discovery: DiscoveryListener | None = None
        self.generator: Generator | None = None
        self.engine: IntentEngine | None = None
        self.timers: TimerManager | None = None
        self.satellites = Satellites(settings.service.sites)
        self.transcriber: Transcriber | None = None
        self.speaker: Speaker | None = None
        self.service: MqttService | None = None
        self.wyoming: WyomingServer | None = None
        self.console: ConsoleServer | None = None

    def start(self) -> Self:
        """Build and start every part; on a failure, stop those already started and raise."""
        s = self.settings
        say = self._progress
        try:
            if self._serve:
                say("MQTT broker")
                self.broker = self._started(EmbeddedBroker(s.mqtt))
            say("cache")
            cache, keys = build_cache(cache=s.cache, redis=s.redis, sqlite=s.sqlite,
                                      keys=s.keys, privacy=s.privacy, listen=self._listen,
                                      metrics=CacheMetrics(self.registry_of_metrics))
            self.cache, self.keys = self._started(cache), keys
            if self._answers:
                say("the home")
                self.registry = Registry(load_home(s.home.entities_file))
                if self._serve and s.home.discovery:
                    self.discovery = self._started(DiscoveryListener(self.registry, s.mqtt,
                                                                     s.home))
                say(f"language model ({s.generator.backend})")
                self.generator = self._started(Generator(
                    open_backend(s.generator), s.generator, cache=cache, keys=keys,
                    fallback=cpu_fallback(s.generator)))
                timers = self.timers = self._started(TimerManager())
                cache.on_forget(lambda ref: timers.forgotten(ref, cache.ref_of))
                handlers = Handlers([TimerIntents(self.timers),
                                     ListIntents(ListStore(cache, keys)),
                                     BroadcastIntents(self.satellites)],
                                    language=s.intents.language)
                responder = Responder(cache, keys, generator=self.generator,
                                      static_ttl=s.cache.default_ttl, handlers=handlers)
                say("intent templates and sentences")
                self.engine = self._started(IntentEngine(
                    s.intents, self.registry, cache=cache, keys=keys, responder=responder,
                    record=version_record(s)))
                if self._watch:
                    self.engine.watch()
            if self._speech:
                say("speech recognition (Whisper)")
                self.transcriber = self._started(Transcriber(s.stt, cache=cache, keys=keys))
                say("voice (piper)")
                self.speaker = self._started(Speaker(s.tts, cache=cache, keys=keys))
                if self.engine is not None and s.stt.grammar:
                    say("the sentences speech is chosen from")
                    self.engine.keep_ready(prepare_grammar)
            if self._serve:
                self._started(ServiceLock(service_lock_path(s)))
                self._roll_out(cache)
                assert self.engine is not None
                metrics = ServiceMetrics(self.registry_of_metrics)
                say("metrics endpoint")
                self._started(MetricsEndpoint(self.registry_of_metrics,
                                              host=s.service.metrics_host,
                                              port=s.service.metrics_port))
                self._started(FigureKeeper(self.registry_of_metrics, figures_path(s),
                                           interval=s.service.figures_interval))
                device = None
                if s.homeassistant.device:
                    say("Home Assistant device")
                    device = self._started(self._device(cache, metrics))
                    cache.on_forget(lambda ref: device.forgotten(ref, cache.ref_of))
                recent = RecentRequests(s.console.recent, shown=s.console.transcripts,
                                        private=lambda u: cache.policies.for_user(u).private)
                cache.on_forget(lambda ref: recent.forgotten(ref, cache.ref_of))
                say("MQTT service")
                self.service = self._started(MqttService(
                    mqtt=s.mqtt, settings=s.service, metrics=metrics, cache=cache, keys=keys,
                    pipeline=Pipeline(self.engine, transcriber=self.transcriber,
                                      speaker=self.speaker),
                    max_audio_bytes=s.stt.max_bytes, speech=self._speech, timers=self.timers,
                    audio_limits=AudioLimits(max_seconds=s.stt.max_seconds,
                                             max_bytes=s.stt.max_bytes),
                    satellites=self.satellites,
                    heard=None if device is None else device.heard,
                    answered=recent.answered))
                if s.console.enabled and s.console.port:
                    say("console")
                    self.console = self._started(ConsoleServer(
                        s.console, engine=self.engine, folder=s.intents.folder,
                        language=s.intents.language, registry=self.registry_of_metrics,
                        figures=figures_path(s), health=self.parts, recent=recent))
                if s.hermes.enabled:
                    say("Rhasspy Hermes")
                    engine = self.engine
                    self._started(HermesBridge(
                        s.hermes, s.mqtt, speaker=self.speaker,
                        recognize=lambda text, site: engine.recognize(text, area=site)))
                if s.wyoming.enabled:
                    say("Wyoming server")
                    self.wyoming = self._started(WyomingServer(
                        s.wyoming, pipeline=Pipeline(self.engine, transcriber=self.transcriber,
                                                     speaker=self.speaker),
                        carry_out=self.service.carry_out, max_audio_bytes=s.stt.max_bytes))
        except BaseException:
            self.close()
            raise
        return self

    def _roll_out(self, cache: TieredCache) -> None:
        """A model or voice that changed since the last start: the old one's items are
        purged by tag. Their keys hold the old version, so nothing could reach them any
        more; this gives their room back now instead of when they expire."""
        now: dict[str, str] = {}
        if self.generator is not None:
            now["generator"] = self.generator.model_version()
        if self.transcriber is not None:
            now["stt"] = self.transcriber.version
        if self.speaker is not None:
            now["voice"] = self.speaker.version
        record = model_record(self.settings)
        before = record.load()
        for kind, version in now.items():
            old = before.get(kind)
            if old and version and old != version:
                tag = version_tag(kind, old)
                removed = cache.invalidate_tag(tag)
                log.info("%s changed (%s -> %s): %s purged", kind, old[:12], version[:12],
                         removed)
        record.save({**before, **now})

    def _device(self, cache: TieredCache, metrics: ServiceMetrics) -> HomeAssistantDevice:
        """The assistant as a Home Assistant device, its figures read from the metrics."""
        s, engine = self.settings, self.engine
        assert engine is not None

        def tiers() -> dict[str, tuple[int, int]]:
            return {t: (m.hits, m.misses) for t, m in cache.metrics.tiers.items()}

        def requests() -> float:
            return sum(sample.value for family in metrics.requests.collect()
                       for sample in family.samples if sample.name.endswith("_total"))

        def answer_p50_ms() -> float | None:
            return histogram_median(metrics.stage, "total")

        def redis_up() -> bool | None:
            return None if cache.redis is None else not cache.redis.breaker.is_open

        def disk_bytes() -> int | None:
            if cache.sqlite is None:
                return None
            files = [s.sqlite.path, Path(f"{s.sqlite.path}-wal")]
            return sum(f.stat().st_size for f in files if f.exists())

        def purge() -> None:
            # Every answer, transcript, spoken sentence and model state; never the replies
            # kept so that a request sent again is not answered twice.
            tags = [intent_tag(name) for name in engine.recognizer.templates.intents]
            for tag in (*tags, UNKNOWN_NAME_TAG, UNMATCHED_TAG, GEN_TAG, PREFIX_TAG, STT_TAG,
                        TTS_TAG):
                cache.invalidate_tag(tag)

        return HomeAssistantDevice(
            s.homeassistant, s.mqtt, prefix=s.service.topic_prefix,
            discovery_prefix=s.home.discovery_prefix,
            stats=Figures(tiers=tiers, requests=requests, answer_p50_ms=answer_p50_ms,
                          redis_up=redis_up, disk_bytes=disk_bytes),
            purge=purge, reload=engine.reload,
            private=lambda user: cache.policies.for_user(user).private)

    def healthy(self) -> bool:
        """Can the service answer (what systemd's watchdog is petted by)?"""
        return self.service is None or self.service.healthy()

    def parts(self) -> dict[str, bool | str | None]:
        """Each part, up or not (None: not used), or what it runs on: for the console."""
        cache = self.cache
        redis = None if cache is None or cache.redis is None else \
            not cache.redis.breaker.is_open
        generator = self.generator.backend.name if self.generator is not None else None
        return {"answering": self.healthy(), "redis": redis,
                "disk": None if cache is None else cache.sqlite is not None,
                "language model": generator,
                "speech": None if self.transcriber is None else self.transcriber.backend,
                "voice": self.speaker is not None}

    def _started(self, part: P) -> P:
        part.start()
        self._stack.callback(part.close)
        return part

    def close(self) -> None:
        """Stop every part started, the last started first."""
        self._stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
