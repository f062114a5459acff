"""Answers: an intent's response plan rendered fragment by fragment through the cache.

Static fragments are :mod:`assistant.answers.fragments`'. Generated fragments go to the
generator (see :mod:`assistant.generation`), which caches them when they are reproducible;
when it fails, times out, or none is configured, the fragment's fallback text is said
(never cached). A sentence no intent matched is answered by the generator under the default
system prompt, cached per user unless configured otherwise. What the answer does to the
home is :mod:`assistant.answers.actions`'.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from assistant.answers.actions import PlannedAction, planned_actions, refusal
from assistant.answers.context import render, template_context
from assistant.answers.fragments import (
    FragmentResult,
    StaticFragments,
    placement,
    remember,
    said_freely,
)
from assistant.answers.unmatched import DONT_KNOW, about_the_home, holds_to, relevant, seen_states
from assistant.errors import GenerationError
from assistant.generation import Generator
from assistant.generation.generator import Prepared
from assistant.home import Home, entity_tag
from assistant.recognition.library import error_response, library_release
from assistant.recognition.match import UNKNOWN_NAME, Match
from assistant.speech.sentences import join_sentences
from assistant.templates.model import (
    Fragment,
    IntentTemplate,
    Template,
    template_head,
    template_reads,
)
from cache import KeyBuilder, TieredCache, check_user, scope_of

if TYPE_CHECKING:
    from assistant.handlers import Handlers

log = logging.getLogger(__name__)

NOT_UNDERSTOOD = "Sorry, I didn't understand that."
UNMATCHED_TAG = "unmatched"
"""Carried by cached answers to sentences no intent matched."""
UNKNOWN_NAME_TAG = "unknown_name"
"""Carried by cached error responses to sentences naming what the home lacks."""

STATIC_TTL = 24 * 3600.0
"""How long a rendered static fragment is kept by default (less when it varies by time)."""

_Plan = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the assistant says and does for one request."""

    text: str
    """The whole answer, fragments joined."""
    intent: str | None = None
    """The intent recognised, or ``None``."""
    slots: Mapping[str, Any] = field(default_factory=dict)
    """Slot values."""
    targets: tuple[str, ...] = ()
    """Entity ids acted on or asked about."""
    fragments: tuple[FragmentResult, ...] = ()
    """Per fragment: its text, where it came from, how long it took."""
    actions: tuple[PlannedAction, ...] = ()
    """MQTT publishes to make."""
    stage: str = "none"
    """How the sentence was understood: ``strict``, ``fuzzy``, ``unknown_name`` (a home
    sentence naming what the home lacks, answered with the library's error response),
    ``generated`` (no template: the generator answered) or ``none`` (not understood)."""
    effects: tuple[object, ...] = ()
    """What the transport sends for the assistant's own state (a broadcast), like actions."""

    @property
    def personal(self) -> bool:
        """Does it hold anything of the asker's own? Then so does its speech."""
        return any(f.personal for f in self.fragments)


class Responder:
    """Renders answers for matches, through the cache."""

    def __init__(self, cache: TieredCache | None, keys: KeyBuilder | None, *,
                 clock: Callable[[], float] = time.time, tz: tzinfo | None = None,
                 generator: Generator | None = None, static_ttl: float = STATIC_TTL,
                 handlers: Handlers | None = None) -> None:
        """
        Args:
            cache: where rendered fragments are kept (``None``: render every time).
            keys: builds their cache keys (with ``cache``).
            clock: the time templates with ``vary_by`` see.
            tz: their time zone (the system's when ``None``).
            generator: writes generated fragments (``None``: their fallbacks are said).
            static_ttl: seconds a rendered static fragment is kept (``[cache] default_ttl``).
            handlers: answer the intents that need the assistant's state (timers, lists,
                broadcasts); without them those intents' templates are rendered as they are.
        """
        self.cache = cache
        self.keys = keys
        self.generator = generator
        self.handlers = handlers
        self.texts = StaticFragments(cache, keys, ttl=static_ttl)
        # Prepared generation requests of shared parts, and the keys of whole shared answers,
        # by everything that decides them: an answer from the cache then costs a lookup per
        # fragment, not template renders and a long HMAC. Nothing of a user's is kept here.
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self.clock = clock
        self.tz = tz

    def context(self, match: Match, template: IntentTemplate, home: Home, *,
                user: str | None, site: str | None) -> dict[str, Any]:
        """Everything a template of ``match`` may use."""
        return template_context(match, template, home, user=user, site=site, clock=self.clock,
                                tz=self.tz)

    def answer(self, match: Match | None, template: IntentTemplate | None, home: Home, *,
               user: str | None = None, site: str | None = None, text: str | None = None,
               default_system_prompt: Template | None = None) -> Answer:
        """The answer to ``match`` (``None``: nothing understood).

        ``text``: what was said, answered by the generator when no intent matched;
        ``default_system_prompt``: for that, and for intents that name no system prompt.
        """
        check_user(user)
        if match is not None and match.stage == UNKNOWN_NAME:
            return self._unknown_name(match, user)
        if match is None or template is None:
            return self._unmatched(text, user, site, home, default_system_prompt)
        refused = refusal(template, match)
        if refused is not None:
            return Answer(text=refused, intent=match.intent, slots=match.slot_values(),
                          targets=tuple(e.entity_id for e in match.targets), stage=match.stage)
        context = self.context(match, template, home, user=user, site=site)
        if self.handlers is not None and self.handlers.handles(match.intent):
            return dataclasses.replace(self.handlers.answer(
                match, template, home, user=user, site=site, context=context),
                stage=match.stage)
        system = template.system_prompt or default_system_prompt
        fragments = template.fragments(match.response)
        plan = self._plan_key(template, match, fragments, context, system, user)
        results = self._from_plan(plan) if plan is not None else None
        if results is None:
            made: list[tuple[str, str | None]] = []
            results = [self._fragment(template, match, index, fragment, context, user, system,
                                      made)
                       for index, fragment in enumerate(fragments)]
            if plan is not None and len(made) == len(results) and all(k for _, k in made):
                remember(self._plans, plan, tuple(made))
        return Answer(
            text=join_sentences(r.text for r in results),
            intent=match.intent,
            slots=match.slot_values(),
            targets=tuple(e.entity_id for e in match.targets),
            fragments=tuple(results),
            actions=tuple(planned_actions(template, match, home, context)),
            stage=match.stage,
        )

    def _plan_key(self, template: IntentTemplate, match: Match, fragments: Sequence[Fragment],
                  context: Mapping[str, Any], system: Template | None,
                  user: str | None) -> tuple[Any, ...] | None:
        """What decides every fragment key of a shared answer; None for a personal one.

        An answer none of whose fragments reads the user or carries words said freely is the
        same for everyone who asks with the same context: its fragment keys are remembered
        together, so an answer given before costs one lookup per fragment.
        """
        if self.cache is None or self.keys is None or said_freely(match):
            return None
        if "user" in template_reads(system) or any(f.uses_user for f in fragments):
            return None
        if self.texts.policies.place(user, ttl=0.0).owner is not None:
            return None  # a private user's answers are theirs alone
        version = self.generator.model_version() if self.generator is not None and any(
            f.generate is not None for f in fragments) else ""
        # The system prompt by identity: the memo keeps it alive, and a reload makes a new one.
        return (template.name, template.version, match.response, system, version,
                repr([(k, v) for k, v in context.items() if k != "user"]))

    def _from_plan(self, plan: tuple[Any, ...]) -> list[FragmentResult] | None:
        """The fragments of a remembered plan, all from the cache; None if any is missing."""
        made = self._plans.get(plan)
        if made is None or self.cache is None:
            return None
        results = []
        for kind, key in made:
            started = time.perf_counter()
            found = self.cache.lookup(key)  # type: ignore[arg-type]
            if found is None:
                return None  # gone (expired, purged): the whole answer takes the usual way
            results.append(FragmentResult(kind, str(found.value), found.source,
                                          time.perf_counter() - started))
        return results

    def _unknown_name(self, match: Match, user: str | None) -> Answer:
        """The library's error response to a home sentence naming what the home lacks.

        Cached under the error's key and the words it repeats (and the library's release):
        the same words always give the same answer, and a name the home gains is matched
        before it ever comes here again. What was said is the asker's when their policy is
        private."""
        started = time.perf_counter()
        error = match.error or "no_intent"
        said = {k: str(v) for k, v in dict(match.metadata.get("error_args", {})).items()}

        def rendered() -> str:
            return error_response(error, said)

        source = "computed"
        if self.cache is not None and self.keys is not None:
            place = self.texts.policies.place(user, ttl=self.texts.ttl)
            key = self.keys.key("error", library_release(), error,
                                json.dumps(said, sort_keys=True, ensure_ascii=False),
                                scope_of(place.owner))
            outcome = self.cache.fetch(key, rendered, ttl=place.ttl, tags=(UNKNOWN_NAME_TAG,),
                                       user=place.owner, redis=place.redis, disk=place.disk)
            text, source = str(outcome.value), outcome.source
            personal = place.owner is not None
        else:
            text, personal = rendered(), False
        return Answer(text=text, intent=match.intent, slots=match.slot_values(),
                      fragments=(FragmentResult("text", text, source,
                                                time.perf_counter() - started, personal),),
                      stage=UNKNOWN_NAME)

    def _unmatched(self, text: str | None, user: str | None, site: str | None, home: Home,
                   system: Template | None) -> Answer:
        """A sentence no template matched: the generator answers, shown the states of what
        of the home it is about (see :mod:`assistant.answers.unmatched`), and its answer is
        kept only if it gives no device a state the registry does not hold."""
        started = time.perf_counter()
        if not text or not text.strip():
            return Answer(text=NOT_UNDERSTOOD)
        seen = relevant(text, home)
        if not seen and about_the_home(text, home):
            return Answer(text=DONT_KNOW, fragments=(FragmentResult(
                "text", DONT_KNOW, "computed", time.perf_counter() - started),))
        if self.generator is None:
            return Answer(text=NOT_UNDERSTOOD)
        settings = self.generator.settings
        context = template_context(None, None, home, user=user, site=site, clock=self.clock,
                                   tz=self.tz)
        prompt = render(system, context, where="default_system_prompt") if system else ""
        if seen:
            prompt = (f"{prompt}\n\nWhat you can see of the home now:\n"
                      f"{seen_states(seen, home)}\nSpeak only of these devices and these "
                      "states. Of anything else in the home, say you don't know.").strip()
        personal = settings.unmatched_scope == "user" or "user" in template_reads(system)
        owned = self.generator.placement(user, ttl=settings.unmatched_ttl,
                                         personal=personal).owner is not None
        try:
            out = self.generator.generate(
                system_prompt=prompt, prompt=" ".join(text.split()),
                max_tokens=settings.unmatched_max_tokens, user=user, personal=personal,
                ttl=settings.unmatched_ttl,
                tags=(UNMATCHED_TAG, *(entity_tag(e.entity_id) for e in seen)),
                template_id="unmatched")
        except GenerationError as error:
            log.warning("no generated answer to an unmatched sentence: %s", error,
                        exc_info=error if error.__cause__ else None)
            return Answer(text=NOT_UNDERSTOOD, fragments=(FragmentResult(
                "generate", NOT_UNDERSTOOD, "fallback", time.perf_counter() - started),))
        said = out.text
        if not holds_to(said, seen, home):
            log.info("a generated answer gave the home a state it does not have; "
                     "said instead: %s", DONT_KNOW)
            said = DONT_KNOW
        return Answer(text=said, fragments=(FragmentResult(
            "generate", said, out.source, time.perf_counter() - started, owned),),
            stage="generated")

    def _generated(self, template: IntentTemplate, match: Match, fragment: Fragment,
                   context: Mapping[str, Any], user: str | None,
                   system: Template | None) -> tuple[FragmentResult, str | None]:
        started = time.perf_counter()
        spec = fragment.generate
        assert spec is not None
        if self.generator is None:
            return FragmentResult("generate", spec.fallback, "fallback",
                                  time.perf_counter() - started), None
        generator = self.generator
        reads = spec.prompt.reads | template_reads(system)
        free_text = said_freely(match)
        owner = placement(self.texts.policies, user, ttl=spec.ttl, reads=reads,
                          personal=spec.scope == "user", free_text=free_text).owner
        # Only shared parts are remembered: nothing of a user's stays in this memo, which
        # forget does not reach. A shared part does not depend on who asks.
        memo = None
        prepared = None
        if owner is None and not free_text:
            memo = (spec, system, template.version, generator.model_version(),
                    repr([(k, v) for k, v in context.items() if k in reads and k != "user"]))
            prepared = self._prepared.get(memo)
        if prepared is None:
            where = f"{template.file}, line {fragment.line} ({template.name})"
            prepared = generator.prepare(
                system_prompt=render(system, context, where=where) if system else "",
                prompt=render(spec.prompt, context, where=where), max_tokens=spec.max_tokens,
                temperature=spec.temperature, seed=spec.seed, user=owner,
                template_id=template.name, template_version=template.version,
                prompt_head=template_head(spec.prompt))
            if memo is not None:
                remember(self._prepared, memo, prepared)
        try:
            out = generator.run(prepared, ttl=spec.ttl, asker=user, tags=(
                *template.tags, *(entity_tag(e.entity_id) for e in match.targets)))
        except GenerationError as error:
            log.warning("%s, line %s: fallback said: %s", template.file, fragment.line, error,
                        exc_info=error if error.__cause__ else None)
            return FragmentResult("generate", spec.fallback, "fallback",
                                  time.perf_counter() - started), None
        return (FragmentResult("generate", out.text, out.source, time.perf_counter() - started,
                               owner is not None),
                prepared.key if prepared.user is None else None)

    def _fragment(self, template: IntentTemplate, match: Match, index: int, fragment: Fragment,
                  context: Mapping[str, Any], user: str | None, system: Template | None,
                  made: list[tuple[str, str | None]]) -> FragmentResult:
        """One fragment; its kind and shared cache key are added to ``made`` when it has one."""
        if fragment.generate is not None:
            result, key = self._generated(template, match, fragment, context, user, system)
        else:
            result, key = self.texts.fetch(template, match, index, fragment, context, user)
        if key is not None and result.source != "fallback":
            made.append((result.kind, key))
        return result
