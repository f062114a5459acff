"""Intent template files: loading, versions, errors with file and line, the sandbox, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jinja2
import pytest
from jinja2.exceptions import SecurityError

from assistant.answers import Responder
from assistant.errors import TemplateError
from assistant.home import Area, Entity, Home
from assistant.recognition.library import builtin_intents
from assistant.recognition.match import Match, Slot
from assistant.recognition.recognizer import Recognizer
from assistant.templates.loader import load_file, load_templates
from assistant.templates.model import IntentTemplate
from assistant.templates.sandbox import make_environment

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def builtin() -> frozenset[str]:
    return builtin_intents("en")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    """The number of the first line of ``path`` containing ``marker``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def load(path: Path, builtin: frozenset[str]) -> dict[str, IntentTemplate]:
    intents, _sentences = load_file(path, folder=path.parent, builtin=builtin)
    return intents


def load_error(path: Path, builtin: frozenset[str]) -> str:
    with pytest.raises(TemplateError) as caught:
        load_file(path, folder=path.parent, builtin=builtin)
    return str(caught.value)


LIGHTS = """
language: en
intents:
  HassTurnOn:
    responses:
      default:
        - text: "Turned on {{ targets | names }}."
    action:
      publish: "{{ entity.command_topic }}"
      payload: "ON"
  HassTurnOff:
    responses:
      default:
        - text: "Turned off {{ targets | names }}."
lists:
  colour:
    values: [red, green]
"""


# ---------------------------------------------------------------- loading and versions


def test_a_valid_file_loads_with_versions(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "lights.yaml", LIGHTS)
    intents = load(path, builtin)
    assert set(intents) == {"HassTurnOn", "HassTurnOff"}
    on = intents["HassTurnOn"]
    assert on.file == "lights.yaml"
    assert on.line == line_of(path, "HassTurnOn:") + 1  # where its section starts
    assert len(on.version) == 16 and on.version != intents["HassTurnOff"].version
    assert on.action is not None and len(on.fragments("default")) == 1
    assert on.tags == ("intent:HassTurnOn", "template:lights.yaml")
    templates = load_templates(tmp_path, builtin=builtin)
    assert templates.versions() == {name: t.version for name, t in intents.items()}


def test_version_changes_with_its_own_section(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "lights.yaml", LIGHTS)
    before = {name: t.version for name, t in load(path, builtin).items()}
    # a second fragment for HassTurnOn also moves HassTurnOff down two lines
    write(tmp_path, "lights.yaml", LIGHTS.replace(
        '        - text: "Turned on {{ targets | names }}."\n',
        '        - text: "Turned on {{ targets | names }}."\n        - text: "Enjoy."\n'))
    after = load(path, builtin)
    assert after["HassTurnOn"].version != before["HassTurnOn"]
    assert after["HassTurnOff"].version == before["HassTurnOff"]


def test_version_ignores_another_intent_of_the_same_file(tmp_path: Path,
                                                         builtin: frozenset[str]) -> None:
    path = write(tmp_path, "lights.yaml", LIGHTS)
    before = {name: t.version for name, t in load(path, builtin).items()}
    write(tmp_path, "lights.yaml", LIGHTS.replace("Turned off", "Switched off"))
    after = load(path, builtin)
    assert after["HassTurnOff"].version != before["HassTurnOff"]
    assert after["HassTurnOn"].version == before["HassTurnOn"]


def test_version_changes_when_the_files_lists_change(tmp_path: Path,
                                                     builtin: frozenset[str]) -> None:
    path = write(tmp_path, "lights.yaml", LIGHTS)
    before = {name: t.version for name, t in load(path, builtin).items()}
    write(tmp_path, "lights.yaml", LIGHTS.replace("[red, green]", "[red, green, blue]"))
    after = load(path, builtin)
    assert after["HassTurnOn"].version != before["HassTurnOn"]
    assert after["HassTurnOff"].version != before["HassTurnOff"]


# ---------------------------------------------------------------- errors name the file and line


def test_bad_yaml(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
               misplaced: x
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "not valid YAML" in message
    assert f"line {line_of(path, 'misplaced')}:" in message


def test_unknown_top_level_key(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
        sentences: []
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "unknown key(s) ['sentences']" in message
    assert f"line {line_of(path, 'sentences:')}:" in message


def test_unknown_intent_key(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
            respones:
              lights_area:
                - text: "ok"
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "unknown key(s) ['respones']" in message
    assert f"line {line_of(path, 'respones:')}:" in message


def test_a_fragment_neither_text_nor_generate(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
                - say: "hello"
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "a fragment is" in message
    assert f"line {line_of(path, 'say:')} (HassTurnOn.responses.default[1])" in message


def test_a_jinja_syntax_error(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
                - text: "{% if target %}on"
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "template syntax" in message
    assert f"line {line_of(path, '{% if')} " in message


def test_an_unknown_variable_is_refused_at_load(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
                - text: "Hello {{ usr }}."
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "unknown variable(s) ['usr']" in message
    assert f"line {line_of(path, 'usr')} " in message


def test_time_without_vary_by_is_refused(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassGetCurrentTime:
            responses:
              default:
                - text: "It is {{ time.hour }} o'clock."
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "unknown variable(s) ['time']" in message
    assert f"line {line_of(path, 'time.hour')} " in message


def test_time_with_vary_by_is_allowed(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "time.yaml", """
        language: en
        intents:
          HassGetCurrentTime:
            vary_by: hour
            responses:
              default:
                - text: "It is {{ time.hour }} o'clock."
        """)
    assert load(path, builtin)["HassGetCurrentTime"].vary_by == "hour"


def test_a_custom_intent_needs_sentences(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
          MakeCoffee:
            responses:
              default:
                - text: "Brewing."
        """)
    message = load_error(path, builtin)
    assert str(path) in message and "intent MakeCoffee has no sentences" in message
    # the line where the intent's section starts, as IntentTemplate.line
    assert f"line {line_of(path, 'MakeCoffee:') + 1}:" in message


def test_the_same_intent_in_two_files(tmp_path: Path, builtin: frozenset[str]) -> None:
    write(tmp_path, "a.yaml", LIGHTS)
    second = write(tmp_path, "b.yaml", """
        language: en
        # the same again
        intents:
          HassTurnOff:
            responses:
              default:
                - text: "Off."
        """)
    with pytest.raises(TemplateError) as caught:
        load_templates(tmp_path, builtin=builtin)
    message = str(caught.value)
    assert f"{second}, line {line_of(second, 'HassTurnOff:') + 1}:" in message
    assert "intent HassTurnOff is already defined in a.yaml" in message


@pytest.mark.parametrize(("spec", "expected"), [
    pytest.param("{max_tokens: 20, fallback: 'no'}", "generate needs a prompt", id="no-prompt"),
    pytest.param("{prompt: 'Say hi.', scope: everyone}",
                 "scope must be 'shared' or 'user', not 'everyone'", id="bad-scope"),
    pytest.param("{prompt: 'Say hi.', max_tokens: 0}", "max_tokens must be an integer >= 1",
                 id="zero-max-tokens"),
    pytest.param("{prompt: 'Say hi.', max_tokens: 12.5}", "max_tokens must be an integer",
                 id="fractional-max-tokens"),
])
def test_a_bad_generate_fragment(tmp_path: Path, builtin: frozenset[str], spec: str,
                                 expected: str) -> None:
    path = write(tmp_path, "bad.yaml", f"""
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
                - generate: {spec}
        """)
    message = load_error(path, builtin)
    assert str(path) in message and expected in message
    assert f"line {line_of(path, 'generate:')} (HassTurnOn.responses.default[1])" in message


# ---------------------------------------------------------------- the sandbox


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ slots.__class__ }}",
    "{{ target['__dict__'] }}",
])
def test_internals_are_refused_at_check_time(tmp_path: Path, builtin: frozenset[str],
                                             source: str) -> None:
    path = write(tmp_path, "bad.yaml", f"""
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "{source}"
        """)
    message = load_error(path, builtin)
    assert "refused" in message
    assert f"{path}, line {line_of(path, source)} " in message


def test_internals_are_refused_in_actions(tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "ok"
            action:
              publish: "{{ entity.__class__ }}"
              payload: "ON"
        """)
    message = load_error(path, builtin)
    assert "refused" in message and "HassTurnOn.action" in message


def test_internals_stay_out_of_reach_at_render_time() -> None:
    template = make_environment().from_string("{{ ''.__class__.__mro__ }}")
    with pytest.raises(SecurityError):
        template.render()


def test_the_attr_filter_with_a_private_name_is_refused_at_check_time(
        tmp_path: Path, builtin: frozenset[str]) -> None:
    path = write(tmp_path, "sly.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "{{ slots | attr('__class__') }}"
        """)
    with pytest.raises(TemplateError, match="refused"):
        load(path, builtin)


def test_a_template_past_the_check_still_cannot_reach_internals(tmp_path: Path,
                                                                builtin: frozenset[str]) -> None:
    # The attribute name comes from what was said: no check at load time can see it.
    path = write(tmp_path, "sly.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "{{ slots | attr(slots.name) }}"
        """)
    template = load(path, builtin)["HassTurnOn"]
    match = Match("HassTurnOn", {"name": Slot("__class__", "class")}, "default")
    with pytest.raises(TemplateError) as caught:
        Responder(None, None).answer(match, template, Home())
    assert "unsafe" in str(caught.value)
    assert f"sly.yaml, line {line_of(path, 'attr(')}" in str(caught.value)


def test_a_missing_variable_at_render_time_names_file_and_line(tmp_path: Path,
                                                                builtin: frozenset[str]) -> None:
    path = write(tmp_path, "lights.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "Turned on the lights in the {{ slots.area }}."
        """)
    template = load(path, builtin)["HassTurnOn"]
    match = Match("HassTurnOn", {"name": Slot("Kitchen Light", "kitchen light")}, "default")
    with pytest.raises(TemplateError) as caught:
        Responder(None, None).answer(match, template, Home())
    message = str(caught.value)
    assert f"lights.yaml, line {line_of(path, 'slots.area')} (HassTurnOn)" in message
    assert "area" in message
    assert not isinstance(caught.value, jinja2.TemplateError)  # translated at the boundary


# ---------------------------------------------------------------- intents of the users' own


PARTY = """
language: en
intents:
  StartParty:
    data:
      - sentences:
          - "turn on [the] party mode"
          - "start [the] {party_kind} party"
    responses:
      default:
        - text: "Starting the {{ slots.party_kind | default('') }} party."
lists:
  party_kind:
    values: [disco, quiet]
"""


def party_home() -> Home:
    return Home(areas={"kitchen": Area("kitchen", "Kitchen")},
                entities={"switch.party_mode": Entity("switch.party_mode", "Party Mode",
                                                      area="kitchen", command_topic="p/set")})


def test_a_custom_intent_is_recognised_and_wins_ties(tmp_path: Path,
                                                      builtin: frozenset[str]) -> None:
    write(tmp_path, "lights.yaml", LIGHTS)
    # without the custom intent, the built-in one takes the sentence (an entity has that name)
    plain = Recognizer(load_templates(tmp_path, builtin=builtin), party_home())
    builtin_match = plain.recognize("turn on the party mode")
    assert builtin_match is not None and builtin_match.intent == "HassTurnOn"
    assert builtin_match.slot_values() == {"name": "Party Mode"}

    write(tmp_path, "party.yaml", PARTY)
    templates = load_templates(tmp_path, builtin=builtin)
    assert "StartParty" in templates.intents
    recognizer = Recognizer(templates, party_home())
    match = recognizer.recognize("turn on the party mode")
    assert match is not None
    assert match.intent == "StartParty" and match.custom
    assert match.metadata["file"] == "party.yaml"
    from_list = recognizer.recognize("start the disco party")
    assert from_list is not None
    assert from_list.intent == "StartParty" and from_list.slot_values() == {"party_kind": "disco"}
    assert recognizer.recognize("start the rave party") is None  # not in the list


# ---------------------------------------------------------------- assistant intents check


def check(path: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    return subprocess.run([sys.executable, "-m", "assistant", "intents", "check", str(path)],
                          capture_output=True, text=True, cwd=ROOT, env=environ, timeout=60)


def test_check_accepts_the_repo_intents() -> None:
    result = check(ROOT / "intents")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    assert "HassTurnOn" in result.stdout and "HassGetWeather" in result.stdout


def test_check_rejects_a_bad_file_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", """
        language: en
        intents:
          HassTurnOn:
            responses:
              default:
                - text: "Turned on {{ tragets | names }}."
        """)
    result = check(path)
    assert result.returncode == 1
    assert f"{path}, line {line_of(path, 'tragets')} " in result.stderr
    assert "tragets" in result.stderr
