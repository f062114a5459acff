"""The Responder without a cache: the repo's default templates rendered for hand-made matches."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest

from assistant.answers import NOT_UNDERSTOOD, PlannedAction, Responder
from assistant.home import Area, Entity, Home
from assistant.recognition.library import builtin_intents
from assistant.recognition.match import Match, Slot
from assistant.speech.sentences import join_sentences as join_fragments
from assistant.templates.loader import load_file, load_templates
from assistant.templates.model import TemplateSet

ROOT = Path(__file__).resolve().parent.parent

FIXED = datetime(2024, 3, 5, 14, 7, 42, tzinfo=UTC).timestamp()
"""Tuesday 5 March 2024, 14:07:42 UTC."""


@pytest.fixture(scope="module")
def templates() -> TemplateSet:
    return load_templates(ROOT / "intents", builtin=builtin_intents("en"))


@pytest.fixture
def responder() -> Responder:
    return Responder(None, None, clock=lambda: FIXED, tz=UTC)


KITCHEN_LIGHT = Entity("light.kitchen_light", "Kitchen Light", area="kitchen",
                       command_topic="home/kitchen/light/set", state="off")
CEILING = Entity("light.ceiling", "Ceiling Light", area="living_room",
                 command_topic="home/living_room/ceiling/set", state="off")
FLOOR_LAMP = Entity("light.floor_lamp", "Floor Lamp", area="living_room",
                    command_topic="home/living_room/lamp/set", state="off")
NIGHT_LIGHT = Entity("light.night_light", "Night Light", area="living_room", state="off")
"""A light that cannot be commanded: no command topic."""
COFFEE = Entity("switch.coffee_maker", "Coffee Maker", area="kitchen",
                command_topic="home/kitchen/coffee/set", state="on")
OUTSIDE = Entity("sensor.outside_temperature", "Outside Temperature", device_class="temperature",
                 state="12.5", attributes=MappingProxyType({"unit_of_measurement": "°C"}))
WEATHER = Entity("weather.home", "Home", state="sunny",
                 attributes=MappingProxyType({"temperature": 14}))

HOME = Home(
    areas={"kitchen": Area("kitchen", "Kitchen"),
           "living_room": Area("living_room", "Living Room", ("Lounge",))},
    entities={e.entity_id: e for e in (KITCHEN_LIGHT, CEILING, FLOOR_LAMP, NIGHT_LIGHT, COFFEE,
                                        OUTSIDE, WEATHER)},
)


def match(intent: str, response: str = "default", targets: tuple[Entity, ...] = (),
          **slots: object) -> Match:
    return Match(intent, {name: Slot(value, str(value)) for name, value in slots.items()},
                 response, targets)


def test_turn_on_by_name(responder: Responder, templates: TemplateSet) -> None:
    answer = responder.answer(match("HassTurnOn", targets=(KITCHEN_LIGHT,), name="Kitchen Light"),
                              templates.intents["HassTurnOn"], HOME)
    assert answer.text == "Turned on the Kitchen Light."
    assert answer.intent == "HassTurnOn"
    assert answer.slots == {"name": "Kitchen Light"}
    assert answer.targets == ("light.kitchen_light",)
    assert answer.actions == (PlannedAction("light.kitchen_light", "home/kitchen/light/set", "ON"),)
    assert [(f.kind, f.source) for f in answer.fragments] == [("text", "computed")]


def test_lights_in_an_area_get_one_action_each(responder: Responder,
                                               templates: TemplateSet) -> None:
    answer = responder.answer(
        match("HassTurnOff", "lights_area", (CEILING, FLOOR_LAMP, NIGHT_LIGHT),
              area="Living Room", domain="light"),
        templates.intents["HassTurnOff"], HOME)
    assert answer.text == "Turned off the lights in the Living Room."
    # the night light has no command topic: nothing to publish for it
    assert answer.actions == (
        PlannedAction("light.ceiling", "home/living_room/ceiling/set", "OFF"),
        PlannedAction("light.floor_lamp", "home/living_room/lamp/set", "OFF"),
    )
    assert answer.targets == ("light.ceiling", "light.floor_lamp", "light.night_light")


def test_light_colour_payload(responder: Responder, templates: TemplateSet) -> None:
    answer = responder.answer(
        match("HassLightSet", "color", (KITCHEN_LIGHT,), name="Kitchen Light", color="red"),
        templates.intents["HassLightSet"], HOME)
    assert answer.text == "Set the Kitchen Light to red."
    assert [a.payload for a in answer.actions] == ['{"state": "ON", "color_name": "red"}']


def test_state_answers(responder: Responder, templates: TemplateSet) -> None:
    state = templates.intents["HassGetState"]
    yes = responder.answer(match("HassGetState", "one_yesno", (COFFEE,), name="Coffee Maker",
                                 state="on"), state, HOME)
    no = responder.answer(match("HassGetState", "one_yesno", (COFFEE,), name="Coffee Maker",
                                state="off"), state, HOME)
    sensor = responder.answer(match("HassGetState", "one", (OUTSIDE,),
                                    name="Outside Temperature"), state, HOME)
    assert yes.text == "Yes, Coffee Maker is on."
    assert no.text == "No, Coffee Maker is on."
    assert sensor.text == "Outside Temperature is 12.5 °C."  # "one" falls back to default
    assert yes.actions == no.actions == sensor.actions == ()


def test_current_time_and_date_use_the_injected_clock(responder: Responder,
                                                       templates: TemplateSet) -> None:
    now = responder.answer(match("HassGetCurrentTime"), templates.intents["HassGetCurrentTime"],
                           HOME)
    today = responder.answer(match("HassGetCurrentDate"),
                             templates.intents["HassGetCurrentDate"], HOME)
    assert now.text == "It is 2:07 PM."
    assert today.text == "Today is Tuesday, March 5."


def test_a_generate_fragment_without_backend_says_its_fallback(
        responder: Responder, templates: TemplateSet, tmp_path: Path) -> None:
    weather = responder.answer(match("HassGetWeather", targets=(WEATHER,)),
                               templates.intents["HassGetWeather"], HOME)
    assert weather.text == "It is sunny and 14 degrees."
    assert [(f.kind, f.source, f.text) for f in weather.fragments] == [
        ("text", "computed", "It is sunny and 14 degrees."), ("generate", "fallback", "")]

    path = tmp_path / "cook.yaml"
    path.write_text("""\
language: en
intents:
  WhatToCook:
    data:
      - sentences: ["what should I cook [tonight]"]
    responses:
      default:
        - text: "Let me think"
        - generate: {prompt: "Suggest one dinner.", max_tokens: 40, scope: user,
                     fallback: "I have no idea yet"}
""", encoding="utf-8")
    intents, _ = load_file(path, folder=tmp_path, builtin=())
    cook = responder.answer(match("WhatToCook"), intents["WhatToCook"], HOME, user="erin")
    assert cook.text == "Let me think. I have no idea yet"
    assert cook.fragments[1].source == "fallback"


@pytest.mark.parametrize(("parts", "joined"), [
    (["It is sunny", "  ", " Wear a hat. "], "It is sunny. Wear a hat."),
    (["Okay!", "Done?", "Yes"], "Okay! Done? Yes"),
    (["", "Only one."], "Only one."),
    ([], ""),
])
def test_join_fragments(parts: list[str], joined: str) -> None:
    assert join_fragments(parts) == joined


def test_no_match_is_not_understood(responder: Responder, templates: TemplateSet) -> None:
    assert responder.answer(None, None, HOME).text == NOT_UNDERSTOOD
    assert NOT_UNDERSTOOD == "Sorry, I didn't understand that."
    # a match of an intent that has no template is not understood either
    unknown = responder.answer(match("HassTurnOn", targets=(KITCHEN_LIGHT,)), None, HOME)
    assert unknown.text == NOT_UNDERSTOOD and unknown.actions == ()


@pytest.mark.parametrize(("sentence", "expected"), [
    ("are any lights on", "Yes, the Ceiling Light is on."),
    ("which lights are on", "The Ceiling Light is on."),
    ("how many lights are on", "1 is on."),
    ("are all the lights off", "No, the Ceiling Light is not off."),
])
def test_questions_about_several_entities(sentence: str, expected: str) -> None:
    from assistant.engine import IntentEngine
    from assistant.home import Registry, load_home
    from assistant.settings import IntentsSettings

    registry = Registry(load_home(ROOT / "configs" / "entities.yaml"))
    registry.set_state("light.ceiling", "on")
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"), registry).start()
    try:
        assert engine.respond(sentence).text == expected
    finally:
        engine.close()


def test_a_name_shared_by_two_entities_is_asked_about_not_guessed() -> None:
    from assistant.answers import Responder
    from assistant.home import Area, Entity, Home
    from assistant.recognition.match import Match, Slot

    home = Home(areas={"a": Area("a", "Attic"), "b": Area("b", "Bedroom")})
    lamps = (Entity("light.l1", "Lamp", area="a", command_topic="x/1"),
             Entity("light.l2", "Lamp", area="b", command_topic="x/2"))
    templates = load_templates(ROOT / "intents", builtin=builtin_intents("en"))
    match = Match("HassTurnOn", {"name": Slot("Lamp", "lamp")}, "default", lamps)
    answer = Responder(None, None).answer(match, templates.intents["HassTurnOn"], home)
    assert answer.text == "There is more than one Lamp; say which room it is in."
    assert answer.actions == ()
