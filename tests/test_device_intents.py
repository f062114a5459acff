"""The device intents of Home Assistant's library (media players, vacuums, lawn mowers, fans,
a thermostat's fan) and HassRespond: library sentences recognised over a home whose devices
announced themselves through MQTT discovery, and the publishes their answers plan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from assistant.answers import PlannedAction
from assistant.engine import IntentEngine
from assistant.home import Area, Entity, Floor, Home, Registry
from assistant.home.discovery import parse
from assistant.recognition.library import load_intent_templates
from assistant.settings import IntentsSettings
from cache import KeyBuilder, Keyring
from tests.conftest import make_cache

ROOT = Path(__file__).resolve().parent.parent

DEVICE_INTENTS = frozenset({
    "HassMediaNext", "HassMediaPrevious", "HassMediaPlayerMute", "HassMediaPlayerUnmute",
    "HassSetVolumeRelative", "HassMediaSearchAndPlay", "HassVacuumStart",
    "HassVacuumReturnToBase", "HassVacuumCleanArea", "HassLawnMowerStartMowing",
    "HassLawnMowerDock", "HassFanSetSpeed", "HassClimateSetFanMode", "HassRespond",
})


def discovered(component: str, object_id: str, area: str, **config: Any) -> Entity:
    """The entity a device announces with ``config`` (abbreviated keys allowed), placed in
    ``area`` as the listener places it by the device's suggested area."""
    update = parse(f"homeassistant/{component}/{object_id}/config",
                   json.dumps(config).encode())
    assert update is not None and update.entity is not None
    return replace(update.entity, area=area)


def make_home(*entities: Entity) -> Home:
    floors = [Floor("ground", "Ground Floor", ("downstairs",), 0),
              Floor("first", "First Floor", ("upstairs",), 1)]
    areas = [Area("kitchen", "Kitchen", floor="ground"),
             Area("hallway", "Hallway", floor="ground"),
             Area("living_room", "Living Room", ("Lounge",), floor="ground"),
             Area("garden", "Garden", floor="ground"),
             Area("bedroom", "Bedroom", floor="first")]
    return Home(floors={f.id: f for f in floors}, areas={a.id: a for a in areas},
                entities={e.entity_id: e for e in entities})


# Devices as they announce themselves: Home Assistant's MQTT discovery configs.
VACUUM = discovered(
    "vacuum", "robot", "hallway", name="Robot Vacuum", cmd_t="robot/command",
    stat_t="robot/state", clean_segments_command_topic="robot/clean_segments",
    segments={"1": "Kitchen", "2": "Hallway", "3": "Living Room"})
MOWER = discovered(
    "lawn_mower", "mower", "garden", name="Lawn Mower", activity_state_topic="mower/activity",
    start_mowing_command_topic="mower/command", dock_command_topic="mower/command",
    dock_command_template="PARK")
FAN = discovered(
    "fan", "bedroom_fan", "bedroom", name="Ceiling Fan", cmd_t="fan/on/set",
    stat_t="fan/on/state", pct_cmd_t="fan/speed/set", spd_rng_min=1, spd_rng_max=3)
THERMOSTAT = discovered(
    "climate", "thermostat", "living_room", name="Thermostat", temp_cmd_t="heat/temp/set",
    mode_stat_t="heat/mode", fan_mode_cmd_t="heat/fan/set", fan_modes=["Auto", "Low", "High"])
# Home Assistant has no MQTT media player: players come from the entities file.
TV = Entity("media_player.tv", "TV", ("Television",), area="living_room",
            command_topic="tv/set", state_topic="tv/state", state="playing")

HOME = make_home(VACUUM, MOWER, FAN, THERMOSTAT, TV)


@pytest.fixture(scope="module")
def engine() -> Iterator[IntentEngine]:
    with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(HOME)) as started:
        yield started


def test_every_device_intent_has_a_template_that_loads() -> None:
    templates = load_intent_templates(ROOT / "intents")
    assert set(templates.intents) >= DEVICE_INTENTS


def test_vacuums_and_lawn_mowers_are_discovered() -> None:
    assert (VACUUM.entity_id, VACUUM.command_topic, VACUUM.state_topic) == (
        "vacuum.robot_vacuum", "robot/command", "robot/state")
    # A mower has no command topic of its own: one per command, and an activity topic.
    assert (MOWER.entity_id, MOWER.command_topic, MOWER.state_topic) == (
        "lawn_mower.lawn_mower", "mower/command", "mower/activity")
    assert MOWER.attributes["dock_command_topic"] == "mower/command"
    docking = discovered("lawn_mower", "m2", "garden", name="M2", dock_command_topic="m2/dock")
    assert docking.command_topic == "m2/dock"
    assert "start_mowing_command_topic" not in docking.attributes


def test_abbreviated_vacuum_and_mower_configs_keep_their_commands() -> None:
    vacuum = discovered("vacuum", "v", "hallway", name="V", cmd_t="v/cmd", pl_strt="GO",
                        pl_ret="HOME", sup_feat=["start", "return_home"], set_fan_spd_t="v/fan",
                        fanspd_lst=["low", "high"])
    assert (vacuum.command_topic, vacuum.attributes["payload_start"],
            vacuum.attributes["payload_return_to_base"]) == ("v/cmd", "GO", "HOME")
    assert list(vacuum.attributes["supported_features"]) == ["start", "return_home"]
    assert list(vacuum.attributes["fan_speed_list"]) == ["low", "high"]
    mower = discovered("lawn_mower", "m", "garden", name="M", strt_mw_cmd_t="m/start",
                       dock_cmd_t="m/dock", dock_cmd_tpl="PARK", act_stat_t="m/activity")
    assert (mower.command_topic, mower.state_topic) == ("m/start", "m/activity")
    assert (mower.attributes["dock_command_topic"],
            mower.attributes["dock_command_template"]) == ("m/dock", "PARK")


@pytest.mark.parametrize(("sentence", "area", "intent", "text", "actions"), [
    # media players
    ("next track", "living_room", "HassMediaNext",
     "Skipping to the next track on the TV.", [("media_player.tv", "tv/set", "NEXT")]),
    ("skip the song on the tv", None, "HassMediaNext",
     "Skipping to the next track on the TV.", [("media_player.tv", "tv/set", "NEXT")]),
    ("previous track on the television", None, "HassMediaPrevious",
     "Going back to the previous track on the TV.",
     [("media_player.tv", "tv/set", "PREVIOUS")]),
    ("mute the tv", None, "HassMediaPlayerMute", "Muted the TV.",
     [("media_player.tv", "tv/set", "MUTE")]),
    ("unmute", "living_room", "HassMediaPlayerUnmute", "Unmuted the TV.",
     [("media_player.tv", "tv/set", "UNMUTE")]),
    ("turn up the volume", "living_room", "HassSetVolumeRelative",
     "Turned up the volume on the TV.", [("media_player.tv", "tv/set", "VOLUME_UP")]),
    ("turn down the volume in the lounge", None, "HassSetVolumeRelative",
     "Turned down the volume on the TV.", [("media_player.tv", "tv/set", "VOLUME_DOWN")]),
    ("decrease the tv volume by 20 percent", None, "HassSetVolumeRelative",
     "Turned the volume on the TV down by 20 percent.",
     [("media_player.tv", "tv/set", '{"volume_step": -20}')]),
    ("play abbey road on the tv", None, "HassMediaSearchAndPlay",
     "Asked the TV to play abbey road.",
     [("media_player.tv", "tv/set", '{"play_media": {"search_query": "abbey road"}}')]),
    ("play the album abbey road", "living_room", "HassMediaSearchAndPlay",
     "Asked the TV to play the album abbey road.",
     [("media_player.tv", "tv/set",
       '{"play_media": {"media_class": "album", "search_query": "abbey road"}}')]),
    # vacuums: Home Assistant's default payloads on the command topic
    ("start the robot vacuum", None, "HassVacuumStart", "Starting the Robot Vacuum.",
     [("vacuum.robot_vacuum", "robot/command", "start")]),
    ("clean downstairs", None, "HassVacuumStart", "Starting the Robot Vacuum.",
     [("vacuum.robot_vacuum", "robot/command", "start")]),
    ("return the robot vacuum to base", None, "HassVacuumReturnToBase",
     "Sending the Robot Vacuum back to its base.",
     [("vacuum.robot_vacuum", "robot/command", "return_to_base")]),
    ("vacuum the hallway", None, "HassVacuumCleanArea",
     "Sending the Robot Vacuum to clean the Hallway.",
     [("vacuum.robot_vacuum", "robot/clean_segments", '["2"]')]),
    ("clean the kitchen", None, "HassVacuumCleanArea",
     "Sending the Robot Vacuum to clean the Kitchen.",
     [("vacuum.robot_vacuum", "robot/clean_segments", '["1"]')]),
    ("clean the living room", "bedroom", "HassVacuumCleanArea",
     "Sending the Robot Vacuum to clean the Living Room.",
     [("vacuum.robot_vacuum", "robot/clean_segments", '["3"]')]),
    ("clean in here", "hallway", "HassVacuumCleanArea",
     "Sending the Robot Vacuum to clean the Hallway.",
     [("vacuum.robot_vacuum", "robot/clean_segments", '["2"]')]),
    # lawn mowers: a topic per command; a plain command template is the payload
    ("start mowing", None, "HassLawnMowerStartMowing", "Starting the Lawn Mower.",
     [("lawn_mower.lawn_mower", "mower/command", "start_mowing")]),
    ("dock the lawn mower", None, "HassLawnMowerDock",
     "Sending the Lawn Mower back to its dock.",
     [("lawn_mower.lawn_mower", "mower/command", "PARK")]),
    ("return to base", None, "HassLawnMowerDock", "Sending the Lawn Mower back to its dock.",
     [("lawn_mower.lawn_mower", "mower/command", "PARK")]),
    # fans: the percentage scaled to the announced speed range (1..3), 0 turns it off
    ("set the ceiling fan to 50%", None, "HassFanSetSpeed",
     "Set the Ceiling Fan to 50 percent.", [("fan.ceiling_fan", "fan/speed/set", "2")]),
    ("set the bedroom fan speed to 100 percent", None, "HassFanSetSpeed",
     "Set the Ceiling Fan to 100 percent.", [("fan.ceiling_fan", "fan/speed/set", "3")]),
    ("set the ceiling fan speed to 0%", None, "HassFanSetSpeed",
     "Turned off the Ceiling Fan.", [("fan.ceiling_fan", "fan/on/set", "OFF")]),
    # a thermostat's fan: the mode as the device spells it
    ("set the thermostat fan mode to high", None, "HassClimateSetFanMode",
     "Set the Thermostat fan mode to high.",
     [("climate.thermostat", "heat/fan/set", "High")]),
    ("set the fan mode to auto", "living_room", "HassClimateSetFanMode",
     "Set the Thermostat fan mode to auto.",
     [("climate.thermostat", "heat/fan/set", "Auto")]),
])
def test_device_commands(engine: IntentEngine, sentence: str, area: str | None, intent: str,
                         text: str, actions: list[tuple[str, str, str]]) -> None:
    answer = engine.respond(sentence, area=area)
    assert answer.intent == intent, sentence
    assert answer.text == text
    assert answer.actions == tuple(PlannedAction(*action) for action in actions)


def test_announced_payloads_win_over_the_defaults() -> None:
    vacuum = discovered("vacuum", "v", "hallway", name="Dusty", cmd_t="dusty/cmd",
                        payload_start="go", payload_return_to_base="home")
    tv = replace(TV, attributes=MappingProxyType({"payload_mute": "volume_mute",
                                                  "payload_next": "next_track"}))
    home = make_home(vacuum, tv)
    with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(home)) as engine:
        assert engine.respond("start dusty").actions == (
            PlannedAction("vacuum.dusty", "dusty/cmd", "go"),)
        assert engine.respond("return dusty to base").actions == (
            PlannedAction("vacuum.dusty", "dusty/cmd", "home"),)
        assert engine.respond("mute the tv").actions == (
            PlannedAction("media_player.tv", "tv/set", "volume_mute"),)
        assert engine.respond("next track", area="living_room").actions == (
            PlannedAction("media_player.tv", "tv/set", "next_track"),)


# Devices that did not announce what a command needs.
CANNOT = make_home(
    discovered("vacuum", "mute_vacuum", "kitchen", name="Old Vacuum", cmd_t="old/cmd",
               supported_features=["stop", "battery"], segments=["1.Kitchen"]),
    discovered("vacuum", "watcher", "bedroom", name="Watcher", stat_t="watcher/state"),
    discovered("vacuum", "mapper", "living_room", name="Mapper", cmd_t="mapper/cmd",
               clean_segments_command_topic="mapper/segments", segments=["1.Kitchen", "Hall"]),
    discovered("lawn_mower", "mower", "garden", name="Lawn Mower",
               start_mowing_command_topic="mower/start"),
    discovered("fan", "fan", "bedroom", name="Ceiling Fan", cmd_t="fan/set"),
    discovered("climate", "thermostat", "living_room", name="Thermostat",
               temp_cmd_t="heat/temp/set", fan_mode_cmd_t="heat/fan/set"),
    replace(TV, entity_id="media_player.speaker", name="Speaker", aliases=(),
            command_topic="speaker/set", state="idle"),
    TV,
    Entity("media_player.radio", "Radio", area="bedroom", state_topic="radio/state"),
)


@pytest.fixture(scope="module")
def limited() -> Iterator[IntentEngine]:
    with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(CANNOT)) as started:
        yield started


@pytest.mark.parametrize(("sentence", "area", "text"), [
    ("start the old vacuum", None, "Sorry, the Old Vacuum can't be started."),
    ("return the old vacuum to base", None,
     "Sorry, the Old Vacuum can't be sent back to base."),
    ("clean the living room", "kitchen", "Sorry, the Old Vacuum can't clean a single area."),
    ("clean the living room", None, "Sorry, the Mapper has no Living Room on its map. "
     "The Old Vacuum can't clean a single area."),
    ("start the watcher", None, "Sorry, I can't control the Watcher."),
    ("dock the lawn mower", None, "Sorry, the Lawn Mower can't be docked from here."),
    ("set the ceiling fan to 50%", None, "Sorry, the Ceiling Fan has no speeds to set."),
    ("set the thermostat fan mode to diffuse", None,
     "Sorry, the Thermostat has no diffuse fan mode."),
    ("play some jazz", "living_room",
     "There is more than one media player there; say which one."),
    ("mute the radio", None, "Sorry, I can't control the Radio."),
    ("next track", "bedroom", "Sorry, I can't control the Radio."),
])
def test_what_a_device_cannot_do_is_said_not_done(limited: IntentEngine, sentence: str,
                                                  area: str | None, text: str) -> None:
    answer = limited.respond(sentence, area=area)
    assert answer.text == text
    assert answer.actions == ()


@pytest.mark.parametrize(("sentence", "text", "payload"), [
    ("next track", "Skipping to the next track on the TV.", "NEXT"),
    ("go back", "Going back to the previous track on the TV.", "PREVIOUS"),
    ("turn up the volume", "Turned up the volume on the TV.", "VOLUME_UP"),
])
def test_of_several_players_there_the_one_playing_is_meant(
        limited: IntentEngine, sentence: str, text: str, payload: str) -> None:
    answer = limited.respond(sentence, area="living_room")
    assert answer.targets == ("media_player.speaker", "media_player.tv")
    assert answer.text == text
    assert answer.actions == (PlannedAction("media_player.tv", "tv/set", payload),)


@pytest.mark.parametrize(("sentence", "intent", "actions"), [
    ("turn on the robot vacuum", "HassVacuumStart",
     [("vacuum.robot_vacuum", "robot/command", "start")]),
    ("switch the robot vacuum off", "HassVacuumReturnToBase",
     [("vacuum.robot_vacuum", "robot/command", "return_to_base")]),
    ("turn on the lawn mower", "HassLawnMowerStartMowing",
     [("lawn_mower.lawn_mower", "mower/command", "start_mowing")]),
    ("turn off the lawn mower", "HassLawnMowerDock",
     [("lawn_mower.lawn_mower", "mower/command", "PARK")]),
])
def test_turning_a_vacuum_or_mower_on_and_off_starts_and_docks_it(
        engine: IntentEngine, sentence: str, intent: str,
        actions: list[tuple[str, str, str]]) -> None:
    """The library leaves vacuums and mowers out of "turn on": said of one, it means start."""
    answer = engine.respond(sentence)
    assert answer.intent == intent
    assert [(a.entity_id, a.topic, a.payload) for a in answer.actions] == actions


def test_a_thermostat_is_turned_on_and_off_through_its_mode_never_its_temperature() -> None:
    office = discovered("climate", "office", "bedroom", name="Office Heat",
                        temp_cmd_t="office/temp", mode_cmd_t="office/mode")
    home = make_home(THERMOSTAT, office)
    with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(home)) as engine:
        on = engine.respond("turn on the office heat")
        assert [(a.topic, a.payload) for a in on.actions] == [("office/mode", "heat")]
        off = engine.respond("turn off the office heat")
        assert [(a.topic, a.payload) for a in off.actions] == [("office/mode", "off")]
        # no mode topic announced: nothing is sent to the target temperature's, and it says so
        refused = engine.respond("turn off the thermostat")
        assert refused.actions == ()
        assert refused.text == "Sorry, the Thermostat can't be turned off from here."


def test_of_several_vacuums_the_one_with_the_area_on_its_map_cleans_it(
        limited: IntentEngine) -> None:
    answer = limited.respond("clean the kitchen")
    assert answer.text == "Sending the Mapper to clean the Kitchen."
    assert [(a.entity_id, a.topic, a.payload) for a in answer.actions] == [
        ("vacuum.mapper", "mapper/segments", '["1"]')]


def test_a_thermostat_without_a_fan_mode_topic_says_so() -> None:
    home = make_home(discovered("climate", "t", "living_room", name="Thermostat",
                                temp_cmd_t="heat/temp/set"))
    with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(home)) as engine:
        answer = engine.respond("set the thermostat fan mode to low")
    assert answer.text == "Sorry, the Thermostat can't change its fan mode."
    assert answer.actions == ()


def test_segments_given_as_a_list_are_found_by_name() -> None:
    home = make_home(discovered(
        "vacuum", "mapper", "kitchen", name="Mapper", cmd_t="mapper/cmd",
        clean_segments_command_topic="mapper/segments", segments=["7.Kitchen", "Pantry"]))
    with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(home)) as engine:
        answer = engine.respond("clean the kitchen")
    assert answer.text == "Sending the Mapper to clean the Kitchen."
    assert answer.actions == (PlannedAction("vacuum.mapper", "mapper/segments", '["7"]'),)


def test_what_to_play_stays_the_askers_own(keyring: Keyring, names: KeyBuilder) -> None:
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=None)
    try:
        with IntentEngine(IntentsSettings(folder=ROOT / "intents"), Registry(HOME),
                          cache=cache, keys=names) as engine:
            match = engine.recognize("play my secret playlist on the tv")
            assert match is not None and match.slots["search_query"].wildcard
            alice = engine.respond("play my secret playlist on the tv", user="alice")
            assert alice.text == "Asked the TV to play my secret playlist."
            assert alice.personal
            bob = engine.respond("play my secret playlist on the tv", user="bob")
            assert [f.source for f in bob.fragments] == ["computed"]  # not alice's copy
            again = engine.respond("play my secret playlist on the tv", user="alice")
            assert [f.source for f in again.fragments] == ["l1"]
    finally:
        cache.close()


@pytest.mark.parametrize(("sentence", "text"), [
    ("hello", "Hello."),
    ("are you always listening", "No. I only hear what a satellite sends me when you speak "
                                 "to it."),
    ("where does my data go", "To this assistant, on your home network. It keeps your words "
                              "only as long as your privacy settings allow."),
    ("what can I say", "Ask me to turn things on and off, set the lights, the heating or the "
                       "volume, start a timer, or ask about the time, the weather and your "
                       "home."),
    ("who made you", "I am built from open-source parts, among them Home Assistant's "
                     "sentences, Whisper and Piper."),
])
def test_questions_about_the_assistant(engine: IntentEngine, sentence: str, text: str) -> None:
    answer = engine.respond(sentence)
    assert (answer.intent, answer.text, answer.actions) == ("HassRespond", text, ())
