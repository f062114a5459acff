"""Recognition over Home Assistant's English library and the repo's ``intents/`` templates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from assistant.home import Area, Entity, Floor, Home, Registry
from assistant.recognition.library import builtin_intents
from assistant.recognition.recognizer import Recognizer
from assistant.templates.loader import load_templates
from assistant.templates.model import TemplateSet

ROOT = Path(__file__).resolve().parent.parent


def light(entity_id: str, name: str, area: str) -> Entity:
    return Entity(entity_id, name, area=area, command_topic=f"home/{entity_id}/set", state="off")


def make_entities() -> list[Entity]:
    return [
        light("light.kitchen_light", "Kitchen Light", "kitchen"),
        light("light.ceiling", "Ceiling Light", "living_room"),
        light("light.floor_lamp", "Floor Lamp", "living_room"),
        light("light.bedside", "Bedside Lamp", "bedroom"),
        Entity("switch.coffee_maker", "Coffee Maker", area="kitchen",
               command_topic="home/kitchen/coffee/set", state="off"),
        Entity("climate.thermostat", "Thermostat", area="living_room",
               command_topic="home/living_room/thermostat/set", state="heat",
               attributes=MappingProxyType({"current_temperature": 20.5, "temperature": 21})),
        Entity("cover.blinds", "Blinds", area="living_room", device_class="blind",
               command_topic="home/living_room/blinds/set", state="closed"),
        Entity("media_player.tv", "TV", aliases=("Television",), area="living_room",
               command_topic="home/living_room/tv/set", state="playing"),
        Entity("vacuum.robot_vacuum", "Robot Vacuum", area="kitchen",
               command_topic="home/kitchen/vacuum/command", state="docked"),
        Entity("sensor.outside_temperature", "Outside Temperature", device_class="temperature",
               state="12.5", attributes=MappingProxyType({"unit_of_measurement": "°C"})),
        Entity("weather.home", "Home", state="sunny",
               attributes=MappingProxyType({"temperature": 14})),
        Entity("todo.chores", "Chores"),
    ]


def make_home(entities: list[Entity] | None = None) -> Home:
    """Two floors, four areas, and the entities (the example home's by default)."""
    floors = [Floor("ground", "Ground", ("downstairs",), 0),
              Floor("first", "First", ("upstairs",), 1)]
    areas = [Area("kitchen", "Kitchen", floor="ground"),
             Area("living_room", "Living Room", ("Lounge",), floor="ground"),
             Area("bedroom", "Bedroom", floor="first"),
             Area("office", "Office", floor="first")]
    return Home(floors={f.id: f for f in floors}, areas={a.id: a for a in areas},
                entities={e.entity_id: e for e in entities or make_entities()})


@pytest.fixture(scope="module")
def templates() -> TemplateSet:
    return load_templates(ROOT / "intents", builtin=builtin_intents("en"))


@pytest.fixture(scope="module")
def recognizer(templates: TemplateSet) -> Recognizer:
    """Built once: parsing the library takes a few hundred milliseconds."""
    return Recognizer(templates, make_home())


def ids(entities: tuple[Entity, ...]) -> list[str]:
    return [e.entity_id for e in entities]


# ---------------------------------------------------------------- one sentence per intent


CASES = [
    # sentence, said in, intent, response, slots, targets
    pytest.param("turn on the kitchen light", None, "HassTurnOn", "default",
                 {"name": "Kitchen Light"}, ["light.kitchen_light"], id="turn-on-by-name"),
    pytest.param("turn on the coffee maker", None, "HassTurnOn", "default",
                 {"name": "Coffee Maker"}, ["switch.coffee_maker"], id="turn-on-a-switch"),
    pytest.param("turn off the floor lamp", None, "HassTurnOff", "default",
                 {"name": "Floor Lamp"}, ["light.floor_lamp"], id="turn-off-by-name"),
    pytest.param("turn off the downstairs lights", None, "HassTurnOff", "lights_floor",
                 {"floor": "Ground", "domain": "light"},
                 ["light.ceiling", "light.floor_lamp", "light.kitchen_light"],
                 id="turn-off-floor-alias"),
    pytest.param("turn on the upstairs lights", None, "HassTurnOn", "lights_floor",
                 {"floor": "First", "domain": "light"}, ["light.bedside"],
                 id="turn-on-other-floor-alias"),
    pytest.param("turn on the lights in the lounge", None, "HassTurnOn", "lights_area",
                 {"area": "Living Room", "domain": "light"}, ["light.ceiling", "light.floor_lamp"],
                 id="turn-on-area-alias"),
    pytest.param("turn on the lights", "bedroom", "HassTurnOn", "lights_area",
                 {"area": "Bedroom", "domain": "light"}, ["light.bedside"],
                 id="turn-on-lights-where-said"),
    pytest.param("toggle the floor lamp", None, "HassToggle", "default",
                 {"name": "Floor Lamp"}, ["light.floor_lamp"], id="toggle"),
    pytest.param("set the ceiling light to 50%", None, "HassLightSet", "brightness",
                 {"name": "Ceiling Light", "brightness": 50}, ["light.ceiling"],
                 id="light-brightness"),
    pytest.param("set the kitchen light to red", None, "HassLightSet", "color",
                 {"name": "Kitchen Light", "color": "red"}, ["light.kitchen_light"],
                 id="light-color"),
    pytest.param("set the bedroom brightness to 30%", None, "HassLightSet", "brightness",
                 {"area": "Bedroom", "domain": "light", "brightness": 30}, ["light.bedside"],
                 id="light-brightness-area"),
    pytest.param("set the thermostat to 21 degrees", None, "HassClimateSetTemperature", "default",
                 {"name": "Thermostat", "temperature": 21}, ["climate.thermostat"],
                 id="climate-set-by-name"),
    pytest.param("set the temperature to 21 degrees", "living_room", "HassClimateSetTemperature",
                 "default", {"area": "Living Room", "temperature": 21}, ["climate.thermostat"],
                 id="climate-set-where-said"),
    pytest.param("what is the temperature", "living_room", "HassClimateGetTemperature", "default",
                 {"area": "Living Room"}, ["climate.thermostat"], id="climate-get-where-said"),
    pytest.param("what's the temperature in the lounge", None, "HassClimateGetTemperature",
                 "default", {"area": "Living Room"}, ["climate.thermostat"],
                 id="climate-get-area-alias"),
    pytest.param("is the coffee maker on", None, "HassGetState", "one_yesno",
                 {"name": "Coffee Maker", "state": "on"}, ["switch.coffee_maker"],
                 id="get-state-yes-no"),
    pytest.param("what is the outside temperature", None, "HassGetState", "one",
                 {"name": "Outside Temperature"}, ["sensor.outside_temperature"],
                 id="get-state-sensor"),
    pytest.param("set the blinds to 50%", None, "HassSetPosition", "default",
                 {"name": "Blinds", "position": 50}, ["cover.blinds"], id="set-position"),
    pytest.param("set a timer for 5 minutes", None, "HassStartTimer", "default",
                 {"minutes": 5}, [], id="start-timer"),
    pytest.param("set a timer for 1 hour and 30 minutes", None, "HassStartTimer", "default",
                 {"hours": 1, "minutes": 30}, [], id="start-timer-hours-minutes"),
    pytest.param("cancel the timer", None, "HassCancelTimer", "default", {}, [],
                 id="cancel-timer"),
    pytest.param("how much time is left on my timer", None, "HassTimerStatus", "default", {}, [],
                 id="timer-status"),
    pytest.param("cancel all timers", None, "HassCancelAllTimers", "default", {}, [],
                 id="cancel-all-timers"),
    pytest.param("add 2 minutes to my timer", None, "HassIncreaseTimer", "default",
                 {"minutes": 2}, [], id="increase-timer"),
    pytest.param("remove 30 seconds from my pasta timer", None, "HassDecreaseTimer", "default",
                 {"seconds": 30, "name": "pasta"}, [], id="decrease-named-timer"),
    pytest.param("pause my 5 minute timer", None, "HassPauseTimer", "default",
                 {"start_minutes": 5}, [], id="pause-timer-by-start"),
    pytest.param("resume the timer", None, "HassUnpauseTimer", "default", {}, [],
                 id="unpause-timer"),
    pytest.param("put oat milk on my shopping list", None, "HassShoppingListAddItem",
                 "item_added", {"item": "oat milk"}, [], id="shopping-add"),
    pytest.param("check off oat milk from my shopping list", None,
                 "HassShoppingListCompleteItem", "item_completed", {"item": "oat milk"}, [],
                 id="shopping-complete"),
    pytest.param("add dust the shelves to my chores list", None, "HassListAddItem",
                 "item_added", {"item": "dust the shelves", "name": "Chores"}, ["todo.chores"],
                 id="list-add"),
    pytest.param("complete dust the shelves on my chores list", None, "HassListCompleteItem",
                 "item_completed", {"item": "dust the shelves", "name": "Chores"},
                 ["todo.chores"], id="list-complete"),
    pytest.param("remove dust the shelves from the chores list", None, "HassListRemoveItem",
                 "item_deleted", {"item": "dust the shelves", "name": "Chores"}, ["todo.chores"],
                 id="list-remove"),
    pytest.param("broadcast that dinner is ready", None, "HassBroadcast", "default",
                 {"message": "dinner is ready"}, [], id="broadcast"),
    pytest.param("what time is it", None, "HassGetCurrentTime", "default", {}, [],
                 id="current-time"),
    pytest.param("what's the date", None, "HassGetCurrentDate", "default", {}, [],
                 id="current-date"),
    pytest.param("what's the weather", None, "HassGetWeather", "default", {}, ["weather.home"],
                 id="weather"),
    pytest.param("never mind", None, "HassNevermind", "default", {}, [], id="nevermind"),
    pytest.param("pause", "living_room", "HassMediaPause", "default",
                 {"area": "Living Room"}, ["media_player.tv"], id="pause-where-said"),
    pytest.param("pause the tv", None, "HassMediaPause", "default",
                 {"name": "TV"}, ["media_player.tv"], id="pause-by-name"),
    pytest.param("pause the television", None, "HassMediaPause", "default",
                 {"name": "TV"}, ["media_player.tv"], id="pause-by-entity-alias"),
    pytest.param("resume", "living_room", "HassMediaUnpause", "default",
                 {"area": "Living Room"}, ["media_player.tv"], id="unpause-where-said"),
    pytest.param("unpause the tv", None, "HassMediaUnpause", "default",
                 {"name": "TV"}, ["media_player.tv"], id="unpause-by-name"),
    pytest.param("set the volume to 40%", "living_room", "HassSetVolume", "default",
                 {"area": "Living Room", "volume_level": 40}, ["media_player.tv"],
                 id="volume-where-said"),
    pytest.param("turn up the volume", "living_room", "HassSetVolumeRelative", "default",
                 {"area": "Living Room", "volume_step": "up"}, ["media_player.tv"],
                 id="volume-up-where-said"),
    pytest.param("next track", "living_room", "HassMediaNext", "default",
                 {"area": "Living Room"}, ["media_player.tv"], id="next-where-said"),
    pytest.param("previous track on the tv", None, "HassMediaPrevious", "default",
                 {"name": "TV"}, ["media_player.tv"], id="previous-by-name"),
    pytest.param("mute the tv", None, "HassMediaPlayerMute", "default",
                 {"name": "TV"}, ["media_player.tv"], id="mute-by-name"),
    pytest.param("unmute the television", None, "HassMediaPlayerUnmute", "default",
                 {"name": "TV"}, ["media_player.tv"], id="unmute-by-entity-alias"),
    pytest.param("play abbey road on the tv", None, "HassMediaSearchAndPlay", "default",
                 {"search_query": "abbey road", "name": "TV"}, ["media_player.tv"],
                 id="search-and-play"),
    pytest.param("set the thermostat fan mode to auto", None, "HassClimateSetFanMode",
                 "default", {"name": "Thermostat", "fan_mode": "auto"},
                 ["climate.thermostat"], id="climate-fan-mode"),
    pytest.param("set the kitchen fan speed to 50%", None, "HassFanSetSpeed", "default",
                 {"area": "Kitchen", "percentage": 50}, [], id="fan-speed-no-fan-there"),
    pytest.param("start the robot vacuum", None, "HassVacuumStart", "default",
                 {"name": "Robot Vacuum"}, ["vacuum.robot_vacuum"], id="vacuum-start"),
    pytest.param("return the robot vacuum to base", None, "HassVacuumReturnToBase", "default",
                 {"name": "Robot Vacuum"}, ["vacuum.robot_vacuum"], id="vacuum-return"),
    pytest.param("vacuum the kitchen", None, "HassVacuumCleanArea", "default",
                 {"area": "Kitchen"}, ["vacuum.robot_vacuum"], id="vacuum-clean-area"),
    pytest.param("start mowing", None, "HassLawnMowerStartMowing", "default", {}, [],
                 id="mower-start-none-there"),
    pytest.param("stop mowing", None, "HassLawnMowerDock", "default", {}, [],
                 id="mower-dock-none-there"),
    pytest.param("hello", None, "HassRespond", "hello", {}, [], id="respond-hello"),
]


@pytest.mark.parametrize(("sentence", "area", "intent", "response", "slots", "targets"), CASES)
def test_sentence(recognizer: Recognizer, sentence: str, area: str | None, intent: str,
                  response: str, slots: dict[str, Any], targets: list[str]) -> None:
    match = recognizer.recognize(sentence, area=area)
    assert match is not None, sentence
    assert match.intent == intent
    assert match.response == response
    assert match.slot_values() == slots
    assert ids(match.targets) == targets


def test_every_template_intent_has_a_sentence_case(templates: TemplateSet) -> None:
    covered = {case.values[2] for case in CASES}
    assert set(templates.intents) <= covered


# ---------------------------------------------------------------- resolution, as in Home Assistant


def test_an_entity_name_wins_over_area_and_domain(recognizer: Recognizer) -> None:
    # "kitchen light" is both an entity's name and "the kitchen" + "light": the name wins.
    match = recognizer.recognize("turn on the kitchen light")
    assert match is not None
    assert "name" in match.slots and "area" not in match.slots
    assert ids(match.targets) == ["light.kitchen_light"]


def test_without_such_a_name_the_area_lights_are_meant(recognizer: Recognizer) -> None:
    entities = [e for e in make_entities() if e.entity_id != "light.kitchen_light"]
    entities += [light("light.pendant", "Pendant", "kitchen"),
                 light("light.spots", "Spotlights", "kitchen")]
    other = recognizer.with_home(make_home(entities))
    match = other.recognize("turn on the kitchen light")
    assert match is not None
    assert match.intent == "HassTurnOn"
    assert match.slot_values() == {"area": "Kitchen", "domain": "light"}
    # the coffee maker is in the kitchen too, but it is not a light
    assert ids(match.targets) == ["light.pendant", "light.spots"]


def test_the_same_words_mean_the_lights_where_they_are_said(recognizer: Recognizer) -> None:
    bedroom = recognizer.recognize("turn on the lights", area="bedroom")
    living = recognizer.recognize("turn on the lights", area="living_room")
    assert bedroom is not None and living is not None
    assert ids(bedroom.targets) == ["light.bedside"]
    assert ids(living.targets) == ["light.ceiling", "light.floor_lamp"]


def test_unknown_sentence_gives_none(recognizer: Recognizer) -> None:
    assert recognizer.recognize("do the dishes and walk the dog") is None
    assert recognizer.recognize("what is the capital of France") is None


def test_a_command_naming_what_the_home_lacks_is_an_unknown_name(recognizer: Recognizer) -> None:
    jacuzzi = recognizer.recognize("turn on the jacuzzi")
    assert jacuzzi is not None and jacuzzi.stage == "unknown_name"
    assert (jacuzzi.intent, jacuzzi.error, jacuzzi.targets) == ("HassTurnOn", "no_entity", ())
    assert jacuzzi.slot_values()["name"] == "jacuzzi"


# ---------------------------------------------------------------- a changing home


def test_after_a_rename_the_new_name_is_recognised_and_not_the_old(recognizer: Recognizer) -> None:
    registry = Registry(make_home())
    registry.put(replace(registry.home.entities["media_player.tv"], name="Telly", aliases=()))
    renamed = recognizer.with_home(registry.home)
    match = renamed.recognize("pause the telly")
    assert match is not None
    assert match.slot_values() == {"name": "Telly"}
    assert ids(match.targets) == ["media_player.tv"]
    for old in ("pause the tv", "pause the television"):
        gone = renamed.recognize(old)
        assert gone is not None and gone.stage == "unknown_name" and not gone.targets
    # the recognizer it was made from still knows the old names
    telly = recognizer.recognize("pause the telly")
    assert telly is not None and telly.stage == "unknown_name"
    tv = recognizer.recognize("pause the tv")
    assert tv is not None and tv.stage == "strict"


def test_after_a_state_change_targets_carry_the_new_state(recognizer: Recognizer) -> None:
    registry = Registry(make_home())
    before = recognizer.recognize("is the kitchen light on")
    assert before is not None and before.targets[0].state == "off"
    assert registry.set_state("light.kitchen_light", "on")
    after = recognizer.with_home(registry.home).recognize("is the kitchen light on")
    assert after is not None
    assert (after.intent, after.slot_values()) == (before.intent, before.slot_values())
    assert ids(after.targets) == ["light.kitchen_light"]
    assert after.targets[0].state == "on"


def test_a_sentence_heard_again_comes_from_memory(recognizer: Recognizer) -> None:
    first = recognizer.recognize("turn off the ceiling light")
    second = recognizer.recognize("Turn off  the CEILING light")
    assert first is not None and second is not None
    assert second == first
    # match() makes a new metadata dict every time: the same one means hassil was not asked
    assert second.metadata is first.metadata


def test_a_remembered_match_is_resolved_against_the_current_home(recognizer: Recognizer) -> None:
    first = recognizer.recognize("is the floor lamp on")
    assert first is not None and first.targets[0].state == "off"
    registry = Registry(make_home())
    registry.set_state("light.floor_lamp", "on")
    updated = recognizer.with_home(registry.home)
    second = updated.recognize("is the floor lamp on")
    assert second is not None
    assert second.metadata is first.metadata  # the memory is kept over a state-only change
    assert (second.intent, second.slots, second.response) == (first.intent, first.slots,
                                                              first.response)
    assert second.targets[0].state == "on"
    assert second != first


EXTRA_SENTENCES = [
    "turn off the downstairs lights", "turn on the upstairs lights", "turn on the lights",
    "switch off the lounge lights", "turn on the ceiling light in the living room",
    "turn on the kitchen light on the ground floor", "dim the kitchen light to 20%",
    "what is the temperature in the lounge", "close the blinds", "open the living room blinds",
    "set the lounge blinds to 30 percent", "is the coffee maker on", "are any lights on",
    "which lights are off", "turn off everything", "play", "unpause the tv",
    "set the tv volume to 10", "what's the weather like", "how much time is left on the timer",
    "cancel my timer", "tell me a joke", "turn on the fridge", "lights on", "",
]


@pytest.mark.parametrize("area", [None, "kitchen", "living_room"])
def test_leaving_out_blocks_that_cannot_match_changes_no_result(recognizer: Recognizer,
                                                                area: str | None) -> None:
    """The recognizer skips sentence blocks needing a name, area or floor the sentence has no
    word of; checked here against matching with every block."""
    from hassil import recognize_best

    home = recognizer.home
    context = ({"area": {"value": home.areas[area].name, "text": home.areas[area].name}}
               if area else None)
    for sentence in [case.values[0] for case in CASES] + EXTRA_SENTENCES:
        full = recognize_best(sentence, recognizer._intents, slot_lists=recognizer._slot_lists,
                              intent_context=context, language="en",
                              best_metadata_key="custom", best_slot_name="name")
        fast = recognizer.match(sentence, area=area)
        if full is None:
            assert fast is None, sentence
            continue
        assert fast is not None, sentence
        assert fast.intent == full.intent.name, sentence
        assert fast.slot_values() == {e.name: e.value for e in full.entities_list}, sentence


def test_a_named_entity_in_another_area_than_said_is_not_taken(recognizer: Recognizer) -> None:
    match = recognizer.recognize("turn on the kitchen light in the bedroom")
    assert match is not None and match.targets == ()
