"""Editing templates while running: exactly the edited intents are re-rendered, everywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.engine import IntentEngine
from assistant.home import Registry, load_home
from assistant.recognition.recognizer import Recognizer
from assistant.settings import IntentsSettings
from assistant.speech.grammar import prepare as prepare_grammar
from assistant.templates.reload import RELOAD
from cache import KeyBuilder, Keyring, TieredCache
from tests import helpers
from tests.conftest import make_cache
from tests.helpers import until, write_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "intents"
    shutil.copytree(ROOT / "intents", target)
    return target


@pytest.fixture
def cache(keyring: Keyring, names: KeyBuilder, redis_url: str,
          tmp_path: Path) -> Iterator[TieredCache]:
    tiered = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                        db=tmp_path / "cache.db", listen=True)
    yield tiered
    tiered.close()


@pytest.fixture
def registry() -> Registry:
    return Registry(load_home(ROOT / "configs" / "entities.yaml"))


@pytest.fixture
def engine(folder: Path, registry: Registry, cache: TieredCache,
           names: KeyBuilder) -> Iterator[IntentEngine]:
    errors: list[str] = []
    engine = IntentEngine(IntentsSettings(folder=folder), registry, cache=cache, keys=names,
                          on_error=errors.append).start()
    engine.errors = errors  # type: ignore[attr-defined]
    yield engine
    engine.close()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def sources(engine: IntentEngine, text: str) -> tuple[str, list[str]]:
    answer = engine.respond(text)
    return answer.text, [f.source for f in answer.fragments]


def test_an_edit_rerenders_only_the_edited_intent(engine: IntentEngine, folder: Path) -> None:
    assert sources(engine, "turn on the kitchen light") == ("Turned on the Kitchen Light.",
                                                            ["computed"])
    assert sources(engine, "turn off the kitchen light")[1] == ["computed"]
    assert sources(engine, "never mind")[1] == ["computed"]
    for sentence in ("turn on the kitchen light", "turn off the kitchen light", "never mind"):
        assert sources(engine, sentence)[1] == ["l1"]

    _edit(folder / "lights.yaml", "Turned on {{ ns.done | names }}.",
          "Switched on {{ ns.done | names }} for you.")
    result = engine.reload()
    assert result.error is None
    assert result.changed == ("HassTurnOn",)
    assert result.purged["HassTurnOn"]["l1"] >= 1 and result.purged["HassTurnOn"]["l2"] >= 1

    assert sources(engine, "turn on the kitchen light") == (
        "Switched on the Kitchen Light for you.", ["computed"])
    # The same file's other intent and another file's intent still come from the cache.
    assert sources(engine, "turn off the kitchen light")[1] == ["l1"]
    assert sources(engine, "never mind")[1] == ["l1"]


def test_the_watcher_picks_up_an_edit(engine: IntentEngine, folder: Path) -> None:
    engine.watch()
    assert engine.respond("never mind").text == "Okay."
    time.sleep(0.3)  # let the watcher start before the edit it must see
    _edit(folder / "info.yaml", '- text: "Okay."', '- text: "Alright, never mind."')
    until(lambda: engine.respond("never mind").text == "Alright, never mind.")


def test_an_invalid_edit_keeps_the_old_templates(engine: IntentEngine, folder: Path) -> None:
    assert engine.respond("never mind").text == "Okay."
    _edit(folder / "info.yaml", '- text: "Okay."', '- text: "{{ nonsense }}"')
    result = engine.reload()
    assert result.error is not None and "info.yaml" in result.error and "nonsense" in result.error
    assert engine.errors and "info.yaml" in engine.errors[0]  # type: ignore[attr-defined]
    assert engine.respond("never mind").text == "Okay."
    (folder / "info.yaml").write_text("intents: [broken")
    assert engine.reload().error is not None
    assert engine.respond("never mind").text == "Okay."


def test_a_home_change_purges_answers_about_that_entity(engine: IntentEngine,
                                                        registry: Registry,
                                                        cache: TieredCache) -> None:
    assert engine.respond("is the kitchen light on").text == "No, Kitchen Light is off."
    purges = cache.metrics.value("cache_invalidations_total", kind="tag", origin="local")
    registry.set_state("light.kitchen_light", "on")
    engine.settle()
    assert cache.metrics.value("cache_invalidations_total", kind="tag",
                               origin="local") == purges + 1
    assert engine.respond("is the kitchen light on").text == "Yes, Kitchen Light is on."


def test_two_processes_both_see_an_edit(engine: IntentEngine, folder: Path, redis_url: str,
                                        tmp_path: Path) -> None:
    engine.watch()
    peer = helpers.Peer("tests.intents_peer", redis_url, str(tmp_path / "peer.db"), str(folder))
    try:
        assert peer.ask("ask", "never mind") == ["Okay.", ["computed"]]
        assert peer.ask("ask", "never mind") == ["Okay.", ["l1"]]
        assert engine.respond("never mind").text == "Okay."
        time.sleep(0.3)
        _edit(folder / "info.yaml", '- text: "Okay."', '- text: "Fine, forget it."')
        until(lambda: engine.respond("never mind").text == "Fine, forget it.")
        until(lambda: peer.ask("ask", "never mind")[0] == "Fine, forget it.")
    finally:
        peer.close()


def test_cli_reload_purges_changed_intents(folder: Path, redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, redis_url, f'[intents]\nfolder = "{folder}"')

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                               "intents", "reload"], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)

    first = reload()
    assert first.returncode == 0, first.stderr
    _edit(folder / "media.yaml", '"Paused."', '"Paused it."')
    second = reload()
    assert second.returncode == 0, second.stderr
    assert list(json.loads(second.stdout)["purged"]) == ["HassMediaPause"]
    (folder / "media.yaml").write_text("intents: [")
    broken = reload()
    assert broken.returncode == 1 and "media.yaml" in broken.stderr


def test_an_answer_that_does_not_depend_on_who_asks_is_cached_once(engine: IntentEngine) -> None:
    first = engine.respond("turn on the kitchen light", user="alice", site="kitchen")
    second = engine.respond("turn on the kitchen light", user="bob", site="hall")
    assert [f.source for f in first.fragments] == ["computed"]
    assert [f.source for f in second.fragments] == ["l1"]


def add_note_intent(folder: Path, response: str) -> None:
    """An intent of the user's own that captures free text (a wildcard slot)."""
    (folder / "notes.yaml").write_text(f"""
language: en
intents:
  RememberThis:
    data:
      - sentences: ["remember {{note}}"]
    responses:
      default:
        - text: "{response}"
lists:
  note:
    wildcard: true
""")


def test_words_said_freely_are_cached_per_user(engine: IntentEngine, folder: Path,
                                               cache: TieredCache) -> None:
    add_note_intent(folder, "I'll remember {{ slots.note }}.")
    assert engine.reload().added == ("RememberThis",)
    alice = engine.respond("remember my pin is 4321", user="alice")
    assert alice.text == "I'll remember my pin is 4321."
    bob = engine.respond("remember my pin is 4321", user="bob")
    assert [f.source for f in bob.fragments] == ["computed"]  # not alice's copy
    again = engine.respond("remember my pin is 4321", user="alice")
    assert [f.source for f in again.fragments] == ["l1"]
    cache.forget_user("alice")
    after = engine.respond("remember my pin is 4321", user="alice")
    assert [f.source for f in after.fragments] == ["computed"]


def test_free_text_is_not_kept_in_the_recognizers_memory(engine: IntentEngine,
                                                         folder: Path) -> None:
    add_note_intent(folder, "Noted.")
    engine.reload()
    engine.respond("remember the safe code is 1234", user="alice")
    engine.respond("never mind")
    seen = engine.recognizer._seen
    assert all("1234" not in text for text, _area in seen)
    assert any(text == "never mind" for text, _area in seen)


def test_the_version_record_outlives_the_cache_policies(folder: Path, redis_url: str,
                                                        tmp_path: Path) -> None:
    # Shared items may live one second here: a record kept as a cache item would be gone by
    # the second reload, and the edit's cached answers left unpurged.
    config = write_config(tmp_path, redis_url, f'[intents]\nfolder = "{folder}"\n'
                                               "[privacy.shared]\nmax_ttl = 1")

    def reload() -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                               "intents", "reload"], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    reload()
    assert json.loads((tmp_path / "intent-versions.json").read_text())["HassMediaPause"]
    time.sleep(1.5)
    _edit(folder / "media.yaml", '"Paused."', '"Paused it."')
    assert list(reload()["purged"]) == ["HassMediaPause"]  # type: ignore[call-overload]


def test_announced_reloads_run_on_the_engines_own_worker(
        engine: IntentEngine, cache: TieredCache, keyring: Keyring, names: KeyBuilder,
        redis_url: str, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.settle()  # the engine's worker exists from here on
    other = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "other.db")
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        _edit(folder / "info.yaml", '- text: "Okay."', '- text: "As you wish."')
        for _ in range(5):
            assert other.announce(RELOAD, str(folder))
        until(lambda: engine.respond("never mind").text == "As you wish.")
        engine.settle()
        assert started == []  # no thread per announcement
    finally:
        monkeypatch.undo()
        other.close()


def test_a_recognizer_is_prepared_before_it_answers(engine: IntentEngine, folder: Path,
                                                    registry: Registry) -> None:
    prepared: list[tuple[Recognizer, bool]] = []

    def prepare(recognizer: Recognizer) -> None:
        prepared.append((recognizer, engine.recognizer is recognizer))

    engine.keep_ready(prepare)
    assert prepared == [(engine.recognizer, True)]  # the one answering now

    _edit(folder / "info.yaml", '- text: "Okay."', '- text: "As you wish."')
    assert engine.reload().error is None
    assert prepared[-1] == (engine.recognizer, False)  # before it was swapped in

    registry.set_state("light.kitchen_light", "on")
    engine.settle()
    assert len(prepared) == 3 and prepared[-1] == (engine.recognizer, False)


def test_a_failed_preparation_still_swaps_the_recognizer_in(engine: IntentEngine,
                                                            folder: Path) -> None:
    def prepare(recognizer: Recognizer) -> None:
        if recognizer is not engine.recognizer:
            raise RuntimeError("out of memory")

    engine.keep_ready(prepare)
    _edit(folder / "info.yaml", '- text: "Okay."', '- text: "As you wish."')
    assert engine.reload().error is None
    assert engine.respond("never mind").text == "As you wish."


def test_the_grammar_of_a_new_recognizer_is_built_before_it_answers(
        engine: IntentEngine, folder: Path) -> None:
    built: list[bool] = []
    engine.keep_ready(prepare_grammar)
    engine.keep_ready(lambda recognizer: built.append(recognizer._nearest._value is not None))
    _edit(folder / "info.yaml", '- text: "Okay."', '- text: "As you wish."')
    assert engine.reload().error is None
    assert built == [True, True]
    assert engine.recognizer._nearest._value is not None
