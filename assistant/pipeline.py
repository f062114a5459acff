"""One request through the parts: audio or text -> transcript -> answer -> speech.

Transports (MQTT now, Wyoming later) decode a request, hand it here, and publish what comes
back: the answer with the timing of each stage, the device commands it asks for, and its
speech, whole or a sentence at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from assistant.answers import Answer
from assistant.engine import IntentEngine
from assistant.errors import ConfigError
from assistant.protocol import AudioRequest, Response, SpeechChunk, TextRequest
from assistant.speech.grammar import grammar_for
from assistant.speech.hints import hints_for
from assistant.speech.sentences import split_sentences
from assistant.speech.stt import Transcriber
from assistant.speech.tts import Speaker


@dataclass(slots=True)
class Handled:
    """What a request came to."""

    answer: Answer
    transcript: str | None = None
    """What was heard, for an audio request."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage: ``stt``, ``recognise``, ``answer``."""
    audio_seconds: float = 0.0
    """The length of the audio heard."""


def response_of(request_id: str, handled: Handled) -> Response:
    """What the wire says of a handled request."""
    answer = handled.answer
    return Response(
        id=request_id, text=answer.text, transcript=handled.transcript, intent=answer.intent,
        match=answer.stage, slots=answer.slots,
        actions=[{"entity_id": a.entity_id, "topic": a.topic, "payload": a.payload}
                 for a in answer.actions],
        fragments=[{"kind": f.kind, "text": f.text, "source": f.source,
                    "ms": round(f.seconds * 1000, 3)} for f in answer.fragments],
        timings={k: round(v, 3) for k, v in handled.timings.items()})


class Pipeline:
    """Understands and answers requests with the parts it is given (all started)."""

    def __init__(self, engine: IntentEngine, *, transcriber: Transcriber | None = None,
                 speaker: Speaker | None = None) -> None:
        self.engine = engine
        self.transcriber = transcriber
        self.speaker = speaker

    def handle(self, request: TextRequest | AudioRequest) -> Handled:
        """The answer to ``request`` (its actions are planned, not yet made).

        Raises the parts' own errors (:class:`AudioError` for audio that cannot be used,
        :class:`TemplateError` for a template that fails to render...), each with its code.
        """
        timings: dict[str, float] = {}
        transcript: str | None = None
        audio_seconds = 0.0
        if isinstance(request, AudioRequest):
            if self.transcriber is None:
                raise ConfigError("speech recognition is not running here")
            started = time.perf_counter()
            # Hints of the home and templates answering now (made once per recognizer).
            recognizer = self.engine.recognizer
            heard = self.transcriber.transcribe(request.audio, user=request.user,
                                                hints=hints_for(recognizer),
                                                grammar=grammar_for(recognizer))
            timings["stt"] = (time.perf_counter() - started) * 1000
            transcript, text, audio_seconds = heard.text, heard.text, heard.audio_seconds
            alternatives: tuple[str, ...] = heard.alternatives
            chosen = heard.chosen
        else:
            text, alternatives, chosen = request.text, (), None
        answer = self.engine.respond(text, user=request.user, site=request.site,
                                     area=request.area or request.site, timings=timings,
                                     alternatives=alternatives, chosen=chosen)
        return Handled(answer, transcript, timings, audio_seconds)

    def speech(self, request: TextRequest | AudioRequest, text: str, *,
               personal: bool) -> Iterator[SpeechChunk]:
        """An answer's speech: one WAV, or with ``stream`` one per sentence as soon as it is
        ready. ``personal``: the answer holds something of the asker's (see
        :attr:`Answer.personal`), and so does its speech."""
        if self.speaker is None:
            raise ConfigError("speech synthesis is not running here")
        speaker = self.speaker
        if not request.stream:
            speech = speaker.speak(text, user=request.user, personal=personal)
            yield SpeechChunk(request.id, speech.wav)
            return
        count = len(split_sentences(text))
        stream = speaker.stream(text, user=request.user, personal=personal)
        for seq, sentence in enumerate(stream):
            yield SpeechChunk(request.id, speaker.stitch([sentence.pcm]), seq,
                              last=seq == count - 1)
