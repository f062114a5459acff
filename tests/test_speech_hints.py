"""Speech recognition that knows the home: hints made of its names and the templates' words.

The models are the packaged defaults (tiny.en and en_US-joe-medium); the cache behind the
transcriber is real (redis-server on a free port and a sqlite file). The home is a file
like the one the service reads, with devices named the way their makers sell them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.home import Entity, Home, load_home
from assistant.recognition.library import load_intent_templates
from assistant.recognition.recognizer import Recognizer
from assistant.settings import SttSettings, TtsSettings
from assistant.speech.hints import SpeechHints, hints_for
from assistant.speech.stt import Transcriber
from assistant.speech.tts import Speaker
from assistant.templates.model import TemplateSet
from cache import KeyBuilder, TieredCache
from tests.speech_data import STEADY_VOICE

ROOT = Path(__file__).resolve().parent.parent

BRANDED_HOME = """
floors:
  - {id: ground, name: Ground Floor, aliases: [downstairs]}
areas:
  - {id: kitchen, name: Kitchen, floor: ground}
  - {id: den, name: Den, aliases: [snug], floor: ground}
entities:
  - {id: vacuum.roomba, name: Roomba, area: kitchen, command_topic: home/roomba/set}
  - {id: fan.dyson, name: Dyson, area: den, command_topic: home/dyson/set}
  - {id: cover.velux, name: Velux Blind, area: den, command_topic: home/velux/set}
  - {id: light.lutron, name: Lutron Dimmer, aliases: [Reading Light], area: den,
     command_topic: home/lutron/set}
"""
"""Names tiny.en does not know: without hints it hears "room, but", "basin", "bell
explained", "electron dimmer"."""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    path = tmp_path_factory.mktemp("home") / "entities.yaml"
    path.write_text(BRANDED_HOME)
    return load_home(path)


@pytest.fixture(scope="module")
def templates() -> TemplateSet:
    return load_intent_templates(ROOT / "intents")


@pytest.fixture(scope="module")
def cache(speech_cache: tuple[TieredCache, KeyBuilder]) -> tuple[TieredCache, KeyBuilder]:
    return speech_cache


@pytest.fixture(scope="module")
def transcriber(cache: tuple[TieredCache, KeyBuilder]) -> Transcriber:
    return Transcriber(SttSettings(), cache=cache[0], keys=cache[1]).start()


@pytest.fixture(scope="module")
def speaker() -> Speaker:
    return Speaker(TtsSettings(**STEADY_VOICE)).start()


def test_the_prompt_holds_the_homes_names_and_the_templates_words(
        home: Home, templates: TemplateSet) -> None:
    hints = SpeechHints.build(home, templates, words=12)
    for name in ("Roomba", "Dyson", "Velux Blind", "Lutron Dimmer", "Reading Light", "Kitchen",
                 "Den", "snug", "Ground Floor", "downstairs"):
        assert name in hints.names
        assert name in hints.prompt
    assert hints.prompt.endswith("downstairs.")  # Whisper keeps a long prompt's end
    assert "timer" in hints.words  # HassStartTimer's sentences
    assert "timer" in hints.prompt
    assert set(hints.words).isdisjoint({"kitchen", "den", "the"})
    other_hints = SpeechHints.build(home, templates)
    assert other_hints.prompt == ", ".join(other_hints.names) + "."
    assert other_hints.version != hints.version


def test_only_names_the_model_rarely_saw_are_prompted(
        home: Home, templates: TemplateSet, transcriber: Transcriber) -> None:
    hints = SpeechHints.build(home, templates)
    prompt = transcriber._prompt(hints)
    assert prompt is not None
    for name in ("Roomba", "Dyson", "Velux Blind", "Lutron Dimmer"):
        assert name in prompt
    for name in ("Kitchen", "Reading Light", "downstairs"):
        assert name not in prompt
    everyday = Home(entities={"light.k": Entity("light.k", "Kitchen Light")})
    assert transcriber._prompt(SpeechHints.build(everyday, templates)) is None


def test_the_templates_rarely_seen_words_can_be_prompted_too(
        home: Home, templates: TemplateSet, transcriber: Transcriber,
        cache: tuple[TieredCache, KeyBuilder]) -> None:
    hints = SpeechHints.build(home, templates)
    wordy = Transcriber(SttSettings(), cache=cache[0], keys=cache[1], prompt_words=True).start()
    prompt = wordy._prompt(hints)
    assert prompt is not None and "unpause" in prompt and prompt.endswith("Lutron Dimmer.")
    assert "timer" not in prompt.split(", ")  # an everyday word
    assert wordy.key(b"RIFF", None, None, hints) != transcriber.key(b"RIFF", None, None, hints)


def test_a_big_home_keeps_its_prompt_short_and_its_names_last(templates: TemplateSet) -> None:
    entities = {f"light.l{i}": Entity(f"light.l{i}", f"Lamp Number {i}") for i in range(200)}
    hints = SpeechHints.build(Home(entities=entities), templates, words=12)
    assert len(hints.prompt) <= 600
    assert hints.prompt.endswith("Lamp Number 199.")
    assert not hints.prompt.startswith(",")


def test_hints_are_made_once_per_recognizer_and_follow_the_home(
        home: Home, templates: TemplateSet) -> None:
    recognizer = Recognizer(templates, home)
    hints = hints_for(recognizer)
    assert hints_for(recognizer) is hints
    # The same names in a new snapshot (states changed): the same hints.
    assert hints_for(recognizer.with_home(Home(home.floors, home.areas, home.entities))) is hints
    renamed = dict(home.entities)
    renamed["fan.dyson"] = Entity("fan.dyson", "Tower Fan", area="den")
    other = hints_for(recognizer.with_home(Home(home.floors, home.areas, renamed)))
    assert other.version != hints.version
    assert "Tower Fan" in other.prompt and "Dyson" not in other.prompt


def test_a_piper_sentence_naming_a_device_is_heard_with_its_name(
        home: Home, templates: TemplateSet, speaker: Speaker,
        transcriber: Transcriber) -> None:
    hints = SpeechHints.build(home, templates)
    heard_plain, heard_hinted = [], []
    for name in ("Roomba", "Dyson", "Velux Blind", "Lutron Dimmer"):
        wav = speaker.speak(f"Turn on the {name}.").wav
        plain = transcriber.transcribe(wav).text
        hinted = transcriber.transcribe(wav, hints=hints).text
        heard_plain.append(name.casefold() in plain.casefold())
        heard_hinted.append(name.casefold() in hinted.casefold())
        assert name.casefold() in hinted.casefold(), (name, plain, hinted)
    assert heard_hinted.count(True) > heard_plain.count(True)


def test_a_transcript_made_with_other_hints_is_not_served(
        home: Home, templates: TemplateSet, speaker: Speaker, transcriber: Transcriber) -> None:
    wav = speaker.speak("Open the Velux Blind.").wav
    hints = SpeechHints.build(home, templates)
    other_hints = SpeechHints.build(home, templates, words=12)  # other hints
    keys = {transcriber.key(wav, None, "alice", h) for h in (None, hints, other_hints)}
    assert len(keys) == 3
    assert transcriber.key(wav, None, None, hints) not in keys  # still placed per user
    assert transcriber.transcribe(wav, user="alice").source == "computed"
    first = transcriber.transcribe(wav, user="alice", hints=hints)
    assert first.source == "computed"
    again = transcriber.transcribe(wav, user="alice", hints=hints)
    assert again.source == "l1" and again.text == first.text
    assert again.alternatives == first.alternatives
    assert transcriber.transcribe(wav, user="alice", hints=other_hints).source == "computed"
    # Another user's request of the same bytes is not served the first one's words.
    assert transcriber.transcribe(wav, user="bob", hints=hints).source == "computed"


def test_more_hypotheses_are_part_of_the_key_and_come_best_first(
        home: Home, templates: TemplateSet, speaker: Speaker,
        cache: tuple[TieredCache, KeyBuilder]) -> None:
    wav = speaker.speak("Turn off the Lutron Dimmer in the den.").wav
    hints = SpeechHints.build(home, templates)
    several = Transcriber(SttSettings(), cache=cache[0], keys=cache[1], hypotheses=4).start()
    one = Transcriber(SttSettings(), cache=cache[0], keys=cache[1], hypotheses=1).start()
    assert several.key(wav, None, None, hints) != one.key(wav, None, None, hints)
    heard = several.transcribe(wav, hints=hints)
    assert heard.source == "computed"
    assert 1 <= len(heard.alternatives) <= 4
    assert heard.alternatives[0] == heard.text
    plain = [" ".join(w.strip(".,!?").casefold() for w in a.split()) for a in heard.alternatives]
    assert len(set(plain)) == len(plain)  # no two differ only by case or punctuation
    assert "lutron dimmer" in plain[0]
    single = one.transcribe(wav, hints=hints)
    assert single.alternatives == (single.text,)
