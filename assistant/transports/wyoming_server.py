"""The Wyoming server: the assistant's speech to text, text to speech and conversation agent
for Home Assistant's Wyoming integration (and any Wyoming client).

Home Assistant connects, asks ``describe`` and reads the ``info``: an ``asr`` program (the
Whisper model), a ``tts`` program (the piper voice, streaming) and a ``handle`` program (the
assistant as a conversation agent that controls the home). Then, per pipeline run:

- speech to text: ``transcribe``, ``audio-start``, ``audio-chunk``..., ``audio-stop`` ->
  ``transcript``. Audio of any rate, width and channels is converted to 16 kHz mono; the
  transcript cache applies; the text is the sentence of the templates the model judged was
  said when no transcript is one (:mod:`assistant.speech.grammar`).
- text to speech: ``synthesize`` -> ``audio-start``, ``audio-chunk``..., ``audio-stop``; or,
  streaming, ``synthesize-start``, ``synthesize-chunk``..., ``synthesize-stop`` -> the audio
  of each sentence as soon as its text is complete (one ``audio-start`` and one format
  throughout, one ``audio-stop``), then ``synthesize-stopped``. The per-sentence audio cache
  applies, so a repeated answer streams from memory. The plain ``synthesize`` Home Assistant
  sends beside a stream (for older servers) is not answered twice.
- the conversation agent: ``transcript`` -> ``handled`` (the answer's text) or
  ``not-handled`` (why not); the answer is found by the same pipeline and caches as over MQTT,
  and its actions are published to the home by the MQTT service. The satellite or device id
  in the event's context is the site.

Anything wrong gets ``error {text, code}`` and the connection goes on; an event larger than
``[wyoming] max_event_bytes``, a line that is no event, an event begun and not finished
within ``event_timeout``, silence for ``idle_timeout`` (:mod:`.wyoming_events`) ends that
connection alone, and beyond ``max_connections`` a client is told busy. Each
connection's work runs on a thread of its own, so a slow one never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Self

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.handle import Handled, NotHandled
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
)
from wyoming.ping import Ping, Pong
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from assistant import __version__
from assistant.answers import Answer
from assistant.errors import AssistantError
from assistant.pipeline import Pipeline
from assistant.protocol import TextRequest
from assistant.settings import WyomingSettings
from assistant.speech.audio import TARGET_RATE, wav_bytes
from assistant.speech.grammar import grammar_for
from assistant.speech.hints import hints_for
from assistant.speech.sentences import split_sentences
from assistant.transports.wyoming_events import EventTooLarge, TooSlow, read_event
from cache import CacheError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
CHUNK_BYTES = 2048
"""Bytes of 16-bit audio per ``audio-chunk`` sent (1024 samples)."""
_ATTRIBUTION = Attribution(name="edge voice assistant", url="")
_MAX_LINE = 64 * 1024
_ANY = "0.0.0.0"  # noqa: S104  (every interface: the address that says so)


class WyomingServer:
    """Serves Wyoming clients on a thread of its own, until closed."""

    def __init__(self, settings: WyomingSettings, *, pipeline: Pipeline,
                 carry_out: Callable[[Answer], None], max_audio_bytes: int) -> None:
        """``carry_out``: publishes an answer's actions (the MQTT service's);
        ``max_audio_bytes``: the most audio one transcription takes (``[stt] max_bytes``)."""
        self.settings = settings
        self.pipeline = pipeline
        self.carry_out = carry_out
        self.max_audio_bytes = max_audio_bytes
        self.port = settings.port
        """The port listened on (the one given a free port when configured as 0)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._zeroconf: Any = None
        self._work = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wyoming")
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> Self:
        """Listen (and announce), or raise what keeps it from it."""
        loop = self._loop = asyncio.new_event_loop()
        ready: list[BaseException | None] = []
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
                ready.append(None)
            except (OSError, RuntimeError, ValueError) as error:  # reported to start()
                ready.append(error)
            started.set()
            if ready[0] is None:
                loop.run_forever()

        self._thread = threading.Thread(target=run, name="wyoming-server", daemon=True)
        self._thread.start()
        started.wait(30)
        if not ready or ready[0] is not None:
            self.close()
            raise OSError(f"the Wyoming server cannot listen on {self.settings.host}:"
                          f"{self.settings.port}: {ready[0] if ready else 'timed out'}")
        log.info("Wyoming server on %s:%s", self.settings.host, self.port)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.settings.host,
                                                  self.settings.port, limit=_MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.settings.zeroconf:
            await self._announce()

    async def _announce(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        address = _address_of(self.settings.host)
        name = self.settings.name or f"assistant-{socket.gethostname()}"
        everywhere = address == _ANY
        zeroconf = AsyncZeroconf(interfaces="all" if everywhere else [address],
                                 ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}",
                                addresses=[socket.inet_aton(_announced(address))],
                                port=self.port, server=f"{name}.local.")
        await zeroconf.async_register_service(info)
        self._zeroconf = (zeroconf, info)

    def close(self) -> None:
        """Stop listening, end every connection, withdraw the announcement."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._stop(), loop)
            try:
                future.result(10)
            except (OSError, RuntimeError, TimeoutError) as error:  # closing anyway
                log.warning("the Wyoming server stopped uncleanly: %s", error)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        if loop is not None and not loop.is_running():
            loop.close()
        self._loop = self._thread = None
        self._work.shutdown(wait=False, cancel_futures=True)

    async def _stop(self) -> None:
        if self._zeroconf is not None:
            zeroconf, info = self._zeroconf
            await zeroconf.async_unregister_service(info)
            await zeroconf.async_close()
            self._zeroconf = None
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(self, writer)
        if len(self._connections) >= self.settings.max_connections:
            await connection.error(f"{len(self._connections)} clients are connected already; "
                                   "try again later", "busy")
            writer.close()
            return
        self._connections.add(task)
        settings = self.settings
        try:
            while True:
                try:
                    event = await read_event(reader, settings.max_event_bytes,
                                             idle=settings.idle_timeout,
                                             within=settings.event_timeout)
                except EventTooLarge as error:
                    await connection.error(str(error), "too_large")
                    break
                except TooSlow as error:
                    await connection.error(str(error), "too_slow")
                    break
                except TimeoutError:
                    await connection.error(f"nothing came for {settings.idle_timeout:g} s",
                                           "idle")
                    break
                except (ValueError, asyncio.LimitOverrunError) as error:
                    await connection.error(f"not a Wyoming event: {error}", "bad_event")
                    break
                if event is None:
                    break
                await connection.handle(event)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing of it is kept
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    def info(self) -> Info:
        """What this server offers, for ``describe``."""
        transcriber = self.pipeline.transcriber
        speaker = self.pipeline.speaker
        ours = __version__
        asr = [] if transcriber is None else [AsrProgram(
            name="assistant-whisper", attribution=_ATTRIBUTION, installed=True,
            description="faster-whisper, hearing the home's names and choosing among its "
                        "sentences", version=ours,
            models=[AsrModel(name=str(transcriber.path), attribution=Attribution(
                name="OpenAI Whisper", url="https://github.com/openai/whisper"),
                installed=True, description="Whisper (CTranslate2)",
                version=transcriber.version[:12] or None,
                languages=[transcriber.settings.language or "en"])])]
        tts = [] if speaker is None else [TtsProgram(
            name="assistant-piper", attribution=_ATTRIBUTION, installed=True,
            description="piper, each sentence's audio cached", version=ours,
            supports_synthesize_streaming=True,
            voices=[TtsVoice(name=_voice_name(speaker.path), attribution=Attribution(
                name="rhasspy piper", url="https://github.com/rhasspy/piper"),
                installed=True, description=_voice_name(speaker.path),
                version=speaker.version[:12] or None,
                languages=[_voice_name(speaker.path).split("-")[0]])])]
        language = self.pipeline.engine.recognizer.language
        handle = [HandleProgram(
            name="assistant", attribution=_ATTRIBUTION, installed=True,
            description="the edge voice assistant: the home's intents, cached answers",
            version=ours, supports_home_control=True,
            models=[HandleModel(name="assistant", attribution=_ATTRIBUTION, installed=True,
                                description="Home Assistant's sentences and the home's own",
                                version=ours, languages=[language])])]
        return Info(asr=asr, tts=tts, handle=handle)


class _Connection:
    """One client's events, in the order they came."""

    def __init__(self, server: WyomingServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.audio: bytearray | None = None
        self.converter = AudioChunkConverter(rate=TARGET_RATE, width=2, channels=1)
        self.streaming = False
        self.said = ""
        """Text of a stream not yet spoken (an unfinished sentence)."""
        self.audio_started = False

    async def write(self, event: Event) -> None:
        await async_write_event(event, self.writer)

    async def error(self, text: str, code: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.write(Error(text=text, code=code).event())

    async def run(self, work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.server._work, work)

    async def handle(self, event: Event) -> None:
        try:
            await self._handle(event)
        except (AssistantError, CacheError) as error:
            await self.error(str(error), getattr(error, "code", "internal"))
        except (KeyError, TypeError, ValueError) as error:
            await self.error(f"bad {event.type} event: {error}", "bad_event")

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write(self.server.info().event())
        elif Ping.is_type(event.type):
            await self.write(Pong(text=Ping.from_event(event).text).event())
        elif Transcribe.is_type(event.type):
            self.audio = bytearray()
        elif AudioStart.is_type(event.type):
            if self.audio is None or self.audio:
                self.audio = bytearray()
        elif AudioChunk.is_type(event.type):
            await self._chunk(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._transcribe()
        elif Synthesize.is_type(event.type):
            if not self.streaming:  # else sent beside a stream, for older servers
                await self._speak_all(Synthesize.from_event(event).text)
        elif SynthesizeStart.is_type(event.type):
            self.streaming, self.said, self.audio_started = True, "", False
        elif SynthesizeChunk.is_type(event.type):
            await self._stream(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type):
            await self._stream_end()
        elif Transcript.is_type(event.type):
            await self._answer(Transcript.from_event(event))
        else:
            await self.error(f"unexpected event {event.type!r}", "unexpected_event")

    # -- speech to text ----------------------------------------------------------------------

    async def _chunk(self, chunk: AudioChunk) -> None:
        if self.audio is None:
            await self.error("audio-chunk before transcribe or audio-start", "no_transcribe")
            return
        if chunk.width not in (1, 2, 3, 4) or not 1 <= chunk.channels <= 8 or \
                not 1000 <= chunk.rate <= 192000:
            raise ValueError(f"audio of {chunk.rate} Hz, {chunk.width} bytes, "
                             f"{chunk.channels} channels cannot be read")
        self.audio += self.converter.convert(chunk).audio
        if len(self.audio) > self.server.max_audio_bytes:
            self.audio = None
            await self.error(f"more than {self.server.max_audio_bytes} bytes of audio",
                             "too_long")

    async def _transcribe(self) -> None:
        audio, self.audio = self.audio, None
        if audio is None:
            await self.error("audio-stop with no audio", "no_audio")
            return
        pipeline = self.server.pipeline
        transcriber = pipeline.transcriber
        if transcriber is None:
            await self.error("speech recognition is not running here", "no_speech_service")
            return
        recognizer = pipeline.engine.recognizer
        wav = wav_bytes(bytes(audio), rate=TARGET_RATE)
        heard = await self.run(lambda: transcriber.transcribe(
            wav, user=self.server.settings.user, hints=hints_for(recognizer),
            grammar=grammar_for(recognizer)))
        await self.write(Transcript(text=heard.chosen or heard.text,
                                    language=heard.language).event())

    # -- text to speech ----------------------------------------------------------------------

    async def _speak_all(self, text: str) -> None:
        await self._speak(split_sentences(text) or [text])
        await self._audio_end()

    async def _speak(self, sentences: list[str]) -> None:
        speaker = self.server.pipeline.speaker
        if speaker is None:
            raise _Refused("no_speech_service", "speech synthesis is not running here")
        for sentence in sentences:
            spoken = await self.run(partial(speaker.sentence, sentence))
            if not self.audio_started:
                await self.write(AudioStart(rate=speaker.rate, width=2, channels=1).event())
                self.audio_started = True
            pcm = spoken.pcm
            for start in range(0, len(pcm), CHUNK_BYTES):
                await self.write(AudioChunk(rate=speaker.rate, width=2, channels=1,
                                            audio=pcm[start : start + CHUNK_BYTES]).event())

    async def _audio_end(self) -> None:
        if self.audio_started:
            await self.write(AudioStop().event())
        self.audio_started = False

    async def _stream(self, text: str) -> None:
        if not self.streaming:
            await self.error("synthesize-chunk before synthesize-start", "no_synthesize_start")
            return
        self.said += text
        sentences = split_sentences(self.said)
        if len(sentences) > 1:  # all but the last are complete
            done, self.said = sentences[:-1], _after(self.said, sentences[-2], sentences[-1])
            await self._speak(done)

    async def _stream_end(self) -> None:
        if self.streaming:
            rest = split_sentences(self.said)
            self.streaming, self.said = False, ""
            if rest:
                await self._speak(rest)
            await self._audio_end()
        await self.write(SynthesizeStopped().event())

    # -- the conversation agent --------------------------------------------------------------

    async def _answer(self, transcript: Transcript) -> None:
        context = transcript.context or {}
        site = _site(context)
        request = TextRequest(id=uuid.uuid4().hex, site=site, user=self.server.settings.user,
                              text=transcript.text)
        try:
            handled = await self.run(lambda: self.server.pipeline.handle(request))
        except AssistantError as error:
            await self.write(NotHandled(text=str(error), context=context).event())
            return
        self.server.carry_out(handled.answer)
        await self.write(Handled(text=handled.answer.text, context=context).event())


class _Refused(AssistantError):
    """A request this server cannot serve, with its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _voice_name(path: Path | None) -> str:
    """A piper voice's name: its file's ("en_US-joe-medium")."""
    return "voice" if path is None else path.name.removesuffix(".onnx")


def _after(text: str, sentence: str, rest: str) -> str:
    """What of ``text`` follows ``sentence`` (its white space collapsed); ``rest``, the last
    sentence found in it, where the words cannot be found as they were written."""
    position = 0
    for word in sentence.split():
        found = text.find(word, position)
        if found < 0:
            return rest
        position = found + len(word)
    return text[position:]


def _site(context: dict[str, Any]) -> str:
    """The site a request from Home Assistant comes from: its satellite or device."""
    for key in ("satellite_id", "device_id"):
        value = context.get(key)
        if isinstance(value, str) and value.strip():
            return "".join(c if c.isalnum() or c in "-_" else "-" for c in value.strip())[:64]
    return "homeassistant"


def _address_of(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _announced(address: str) -> str:
    """The address announced: the one listened on, or this machine's own for 0.0.0.0."""
    if address != _ANY:
        return address
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("224.0.0.251", 5353))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
