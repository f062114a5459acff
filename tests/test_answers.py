"""Answers stitched from static and generated fragments, with the real SmolLM2 model behind
the generated ones and the real tiers behind the cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from assistant.answers import NOT_UNDERSTOOD, Responder
from assistant.engine import IntentEngine
from assistant.generation import Generator
from assistant.home import Registry
from assistant.recognition.library import builtin_intents
from assistant.recognition.match import Match
from assistant.settings import GeneratorSettings, IntentsSettings
from assistant.templates.loader import load_templates
from assistant.templates.model import TemplateSet
from cache import KeyBuilder, TieredCache
from tests.test_respond import HOME

ROOT = Path(__file__).resolve().parent.parent

DINNER = """
language: en
intents:
  PlanDinner:
    data:
      - sentences:
          - "what should I cook tonight"
    system_prompt: "You suggest simple dinners to {{ user }}. Answer in one short sentence."
    responses:
      default:
        - text: "Here is an idea"
        - generate:
            prompt: "Suggest one simple dinner for tonight."
            max_tokens: 32
            temperature: 0
            scope: user
            ttl: 600
            fallback: "How about pasta?"
        - text: "Enjoy your meal!"
"""

PATIENT = GeneratorSettings(timeout=120)
"""Generation that may take its time: what these tests check is what is generated and
cached, not the deadline (tested with a deadline of 1 ms), and a machine busy with other
work can take more than the default 10 s."""


@pytest.fixture
def dinner(tmp_path: Path) -> TemplateSet:
    folder = tmp_path / "intents"
    folder.mkdir()
    (folder / "dinner.yaml").write_text(DINNER)
    return load_templates(folder, builtin=builtin_intents("en"))


def test_two_static_and_one_generated_fragment(llama: Any, cache: TieredCache, names: KeyBuilder,
                                               dinner: TemplateSet) -> None:
    generator = Generator(llama, PATIENT, cache=cache, keys=names)
    responder = Responder(cache, names, generator=generator)
    template = dinner.intents["PlanDinner"]
    asked = Match("PlanDinner", {}, "default", ())
    answer = responder.answer(asked, template, HOME, user="ann")
    assert re.fullmatch(r"Here is an idea\. \S.*[.!?] Enjoy your meal!", answer.text), answer.text
    generated = answer.fragments[1]
    assert generated.kind == "generate" and generated.text != "How about pasta?"
    assert [f.source for f in answer.fragments] == ["computed", "computed", "computed"]
    assert all(f.seconds > 0 for f in answer.fragments)
    again = responder.answer(asked, template, HOME, user="ann")
    assert again.text == answer.text
    assert [f.source for f in again.fragments] == ["l1", "l1", "l1"]
    assert generator.calls == 1
    # "scope: user": another user's request is generated for them (their name is in the
    # system prompt too); the static fragments are shared.
    other = responder.answer(asked, template, HOME, user="bob")
    assert [f.source for f in other.fragments] == ["l1", "computed", "l1"]
    # A new process, L1 empty: the shared parts come from Redis, Ann's part too.
    cache.memory.clear()
    third = responder.answer(asked, template, HOME, user="ann")
    assert [f.source for f in third.fragments] == ["l2", "l2", "l2"]
    assert third.text == answer.text


def test_a_failed_generation_says_the_fallback_uncached(llama: Any, cache: TieredCache,
                                                        names: KeyBuilder,
                                                        dinner: TemplateSet) -> None:
    hasty = Generator(llama, GeneratorSettings(timeout=0.001, prefix_cache=False), cache=cache,
                      keys=names)
    llama.reset()
    responder = Responder(cache, names, generator=hasty)
    template = dinner.intents["PlanDinner"]
    asked = Match("PlanDinner", {}, "default", ())
    answer = responder.answer(asked, template, HOME, user="ann")
    assert answer.text == "Here is an idea. How about pasta? Enjoy your meal!"
    assert answer.fragments[1].source == "fallback"
    patient = Responder(cache, names, generator=Generator(llama, PATIENT,
                                                          cache=cache, keys=names))
    again = patient.answer(asked, template, HOME, user="ann")
    assert again.fragments[1].source == "computed"
    assert again.fragments[1].text != "How about pasta?"


def test_an_unmatched_question_is_answered_by_the_model_per_user(
        llama: Any, cache: TieredCache, names: KeyBuilder) -> None:
    generator = Generator(llama, PATIENT, cache=cache, keys=names)
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents", watch=False), Registry(HOME),
                          cache=cache, keys=names, responder=Responder(cache, names,
                                                                       generator=generator)).start()
    try:
        answer = engine.respond("What is the capital of France?", user="ann")
        assert answer.intent is None and "Paris" in answer.text
        assert [f.source for f in answer.fragments] == ["computed"]
        assert [f.source for f in engine.respond("What is the capital of France?",
                                                 user="ann").fragments] == ["l1"]
        bob = engine.respond("What is the capital of France?", user="bob")
        assert [f.source for f in bob.fragments] == ["computed"]  # Ann's words stay hers
        cache.forget_user("ann")
        assert [f.source for f in engine.respond("What is the capital of France?",
                                                 user="ann").fragments] == ["computed"]
        # Intents still answer from templates, without the model.
        calls = generator.calls
        assert engine.respond("turn on the kitchen light").text == "Turned on the Kitchen Light."
        assert generator.calls == calls
    finally:
        engine.close()


def test_without_a_generator_unmatched_is_not_understood(cache: TieredCache,
                                                         names: KeyBuilder) -> None:
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents", watch=False), Registry(HOME),
                          cache=cache, keys=names).start()
    try:
        assert engine.respond("What is the capital of France?").text == NOT_UNDERSTOOD
    finally:
        engine.close()


def test_a_changed_state_is_a_new_generated_part(llama: Any, cache: TieredCache,
                                                 names: KeyBuilder) -> None:
    from dataclasses import replace
    from types import MappingProxyType

    from tests.test_respond import WEATHER

    templates = load_templates(ROOT / "intents", builtin=builtin_intents("en"))
    generator = Generator(llama, PATIENT, cache=cache, keys=names)
    responder = Responder(cache, names, generator=generator)
    weather = templates.intents["HassGetWeather"]
    sunny = responder.answer(Match("HassGetWeather", {}, "default", (WEATHER,)), weather, HOME,
                             default_system_prompt=templates.default_system_prompt)
    assert [f.source for f in sunny.fragments] == ["computed", "computed"]
    snowy = replace(WEATHER, state="snowy", attributes=MappingProxyType({"temperature": -4}))
    cold = responder.answer(Match("HassGetWeather", {}, "default", (snowy,)), weather, HOME,
                            default_system_prompt=templates.default_system_prompt)
    assert [f.source for f in cold.fragments] == ["computed", "computed"]
    assert cold.fragments[0].text == "It is snowy and -4 degrees."
    assert generator.calls == 2
    again = responder.answer(Match("HassGetWeather", {}, "default", (WEATHER,)), weather, HOME,
                             default_system_prompt=templates.default_system_prompt)
    assert again.text == sunny.text and [f.source for f in again.fragments] == ["l1", "l1"]


GREETING = """
language: en
intents:
  Greet:
    data:
      - sentences:
          - "greet me"
    responses:
      default:
        - generate:
            prompt: "Write one short friendly greeting for {{ user }}."
            max_tokens: 32
            fallback: "Hello."
      evening:
        - generate:
            prompt: "Write one short friendly good-evening greeting."
            max_tokens: 32
            fallback: "Good evening."
    system_prompt: "You are the assistant of {{ user }}. Answer in one short sentence."
"""


def test_a_part_that_reads_the_user_is_theirs_though_scope_is_shared(
        llama: Any, cache: TieredCache, names: KeyBuilder, tmp_path: Path) -> None:
    folder = tmp_path / "greet"
    folder.mkdir()
    (folder / "greet.yaml").write_text(GREETING)
    template = load_templates(folder, builtin=builtin_intents("en")).intents["Greet"]
    generator = Generator(llama, PATIENT, cache=cache, keys=names)
    responder = Responder(cache, names, generator=generator)
    for response in ("default", "evening"):  # the prompt reads the user; the system prompt does
        asked = Match("Greet", {}, response, ())
        ann = responder.answer(asked, template, HOME, user="ann")
        assert ann.fragments[0].source == "computed"
        assert responder.answer(asked, template, HOME, user="ann").fragments[0].source == "l1"
        assert responder.answer(asked, template, HOME, user="bob").fragments[0].source == \
            "computed"
    # Nothing of theirs stays in the responder's memos, which forget cannot reach.
    memos = repr(list(responder._prepared.keys())) + repr(list(responder.texts._keys_made.keys()))
    assert "ann" not in memos and "bob" not in memos
    cache.forget_user("ann")
    asked = Match("Greet", {}, "default", ())
    assert responder.answer(asked, template, HOME, user="ann").fragments[0].source == "computed"


def test_a_remembered_answer_plan_never_outlives_what_it_points_at(
        llama: Any, cache: TieredCache, names: KeyBuilder) -> None:
    from tests.test_respond import WEATHER

    templates = load_templates(ROOT / "intents", builtin=builtin_intents("en"))
    responder = Responder(cache, names, generator=Generator(llama, PATIENT,
                                                            cache=cache, keys=names))
    weather = templates.intents["HassGetWeather"]

    def ask(user: str | None = None) -> Any:
        return responder.answer(Match("HassGetWeather", {}, "default", (WEATHER,)), weather,
                                HOME, user=user,
                                default_system_prompt=templates.default_system_prompt)

    first = ask("ann")
    assert [f.source for f in first.fragments] == ["computed", "computed"]
    assert len(responder._plans) == 1 and "ann" not in repr(responder._plans)
    assert [f.source for f in ask("bob").fragments] == ["l1", "l1"]  # shared: the same plan
    cache.invalidate_tag("intent:HassGetWeather")  # e.g. the template was edited elsewhere
    again = ask()
    assert [f.source for f in again.fragments] == ["computed", "computed"]
    assert again.text == first.text
    assert [f.source for f in ask().fragments] == ["l1", "l1"]
