"""The entities file and the registry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from assistant.errors import ConfigError
from assistant.home import Entity, Home, Registry, load_home

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "entities.yaml"
    path.write_text(text)
    return path


def test_the_example_home_loads() -> None:
    home = load_home(ROOT / "configs" / "entities.yaml")
    assert home.entities["light.kitchen_light"].area == "kitchen"
    assert home.area_named("lounge") is home.areas["living_room"]
    assert home.floor_named("Downstairs") is home.floors["ground"]
    assert [e.entity_id for e in home.named("television")] == ["media_player.tv"]


def test_a_bare_on_or_off_state_stays_a_state(tmp_path: Path) -> None:
    home = load_home(write(tmp_path, "entities:\n  - {id: light.a, name: A, state: off}\n"))
    assert home.entities["light.a"].state == "off"


@pytest.mark.parametrize(("text", "line", "words"), [
    ("entities:\n  - {id: light.a, name: A}\n  - {id: nodot, name: B}\n", 3, "domain"),
    ("areas:\n  - {id: k, name: K, floor: nowhere}\n", 2, "unknown floor"),
    ("entities:\n  - {id: light.a, name: A, area: attic}\n", 2, "unknown area"),
    ("entities:\n  - {id: light.a, name: A, colour: red}\n", 2, "unknown key"),
    ("entities:\n  - {id: light.a}\n", 2, "'name'"),
    ("entities: [\n", 2, "not valid YAML"),
])
def test_mistakes_name_the_file_and_line(tmp_path: Path, text: str, line: int,
                                         words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_home(path)
    assert f"{path}, line {line}" in str(caught.value) and words in str(caught.value)


def test_a_failing_listener_does_not_stop_the_others() -> None:
    registry = Registry(Home(entities={"light.a": Entity("light.a", "A")}))
    seen: list[frozenset[str]] = []

    def broken(home: Home, changed: frozenset[str], structural: bool) -> None:
        raise RuntimeError("listener bug")

    def good(home: Home, changed: frozenset[str], structural: bool) -> None:
        seen.append(changed)

    registry.listen(broken)
    registry.listen(good)
    assert registry.set_state("light.a", "on")
    assert seen == [frozenset({"light.a"})]
    registry.unlisten(good)
    registry.set_state("light.a", "off")
    assert len(seen) == 1


def test_changes_say_whether_names_changed() -> None:
    registry = Registry(Home(entities={"light.a": Entity("light.a", "A")}))
    events: list[bool] = []
    registry.listen(lambda home, changed, structural: events.append(structural))
    version = registry.home.version
    registry.set_state("light.a", "on")
    assert registry.home.version == version
    registry.put(replace(registry.home.entities["light.a"], name="Lamp"))
    assert registry.home.version != version
    assert registry.home.entities["light.a"].state == "on"  # kept across the rename
    assert events == [False, True]


def test_a_new_entities_file_keeps_discovered_entities() -> None:
    registry = Registry()
    registry.put(Entity("light.found", "Found", source="discovery"))
    registry.replace_config(Home(entities={"light.a": Entity("light.a", "A")}))
    assert set(registry.home.entities) == {"light.a", "light.found"}
