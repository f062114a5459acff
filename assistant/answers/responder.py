"""Answers: an intent's response plan rendered fragment by fragment through the cache.

Static fragments are rendered in the template sandbox and cached as text, keyed
by the template's version and everything the template can see (slots, the
target entities with their states, the time bucket it declared, and the user
when it mentions the user), so an edit, a changed state or another user never
meets an old answer. Generated fragments go to the generator (see
:mod:`assistant.generation`), which caches them when they are reproducible; when it fails,
times out, or none is configured, the fragment's fallback text is said (never cached). A
sentence no intent matched is answered by the generator under the default system prompt,
cached per user unless configured otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import jinja2

from assistant.errors import GenerationError, TemplateError
from assistant.generation import Generator
from assistant.generation.generator import Prepared
from assistant.home import Entity, Home
from assistant.recognize import Match
from assistant.templates import (
    Fragment,
    IntentTemplate,
    spoken_names,
    template_head,
    template_reads,
)
from cache import KeyBuilder, TieredCache

log = logging.getLogger(__name__)

NOT_UNDERSTOOD = "Sorry, I didn't understand that."
UNMATCHED_TAG = "unmatched"
"""Carried by cached answers to sentences no intent matched."""

_BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
STATIC_TTL = 24 * 3600.0
"""How long a rendered static fragment is kept (less when it varies by time)."""


@dataclass(frozen=True, slots=True)
class FragmentResult:
    """How one fragment was produced."""

    kind: str
    """``text`` or ``generate``."""
    text: str
    """What it said."""
    source: str
    """``l1``, ``l2``, ``l3``, ``computed``, ``waited``, ``uncached`` (generated, not
    reproducible) or ``fallback``."""
    seconds: float
    """Time it took."""


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """An MQTT publish the answer asks for."""

    entity_id: str
    """The entity it acts on."""
    topic: str
    """Where to publish."""
    payload: str
    """What to publish."""
    retain: bool = False
    """Publish retained."""


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


def entity_view(entity: Entity, home: Home) -> dict[str, Any]:
    """What templates see of an entity."""
    area = home.area_of(entity)
    return {
        "entity_id": entity.entity_id,
        "name": entity.name,
        "domain": entity.domain,
        "area": area.name if area else None,
        "state": entity.state,
        "attributes": dict(entity.attributes),
        "command_topic": entity.command_topic,
        "state_topic": entity.state_topic,
    }


def join_fragments(parts: list[str]) -> str:
    """Fragments joined with clean spacing and sentence punctuation."""
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out and out[-1][-1] not in ".!?":
            out[-1] += "."
        out.append(part)
    return " ".join(out)


def _nothing_to_act_on(match: Match) -> str:
    slots = match.slot_values()
    if match.targets:
        names = spoken_names([{"name": e.name} for e in match.targets])
        return f"Sorry, I can't control {names}."
    if "name" in slots:
        thing = f"the {slots['name']}"
    elif "domain" in slots:
        domain = slots["domain"]
        domain = domain[0] if isinstance(domain, list) and domain else domain
        thing = f"any {str(domain).replace('_', ' ')}s"
    else:
        thing = "anything to control"
    if "area" in slots:
        thing += f" in the {slots['area']}"
    elif "floor" in slots:
        thing += f" on the {slots['floor']}"
    return f"Sorry, I couldn't find {thing}."


_MEMO_SIZE = 4096
"""Entries a responder memo holds before it starts again."""


def _remember(memo: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value


class Responder:
    """Renders answers for matches, through the cache."""

    def __init__(self, cache: TieredCache | None, keys: KeyBuilder | None, *,
                 clock: Callable[[], float] = time.time, tz: tzinfo | None = None,
                 generator: Generator | None = None) -> None:
        """
        Args:
            cache: where rendered fragments are kept (``None``: render every time).
            keys: builds their cache keys (with ``cache``).
            clock: the time templates with ``vary_by`` see.
            tz: their time zone (the system's when ``None``).
            generator: writes generated fragments (``None``: their fallbacks are said).
        """
        self.cache = cache
        self.keys = keys
        self.generator = generator
        # Rendered prompts and their keys, by everything that decides them: an answer from
        # the cache then costs a lookup, not two template renders and a long HMAC.
        # Plain dicts (a get or set is atomic), emptied when full: cheaper to consult than an
        # LRU with its lock, and a miss only costs the rendering the memo saves.
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        self._keys_made: dict[tuple[Any, ...], str] = {}
        self._plans: dict[tuple[Any, ...], tuple[tuple[str, str | None], ...]] = {}
        self.clock = clock
        self.tz = tz

    def _time(self, vary_by: str) -> datetime:
        now = datetime.fromtimestamp(self.clock(), tz=self.tz).astimezone(self.tz)
        if vary_by == "minute":
            return now.replace(second=0, microsecond=0)
        if vary_by == "hour":
            return now.replace(minute=0, second=0, microsecond=0)
        return now.replace(hour=0, minute=0, second=0, microsecond=0)

    def context(self, match: Match, template: IntentTemplate, home: Home, *,
                user: str | None, site: str | None) -> dict[str, Any]:
        """Everything a template of ``match`` may use."""
        targets = [entity_view(e, home) for e in match.targets]
        context: dict[str, Any] = {
            "slots": match.slot_values(), "targets": targets,
            "target": targets[0] if targets else None,
            "user": user or "", "site": site or "", "intent": match.intent,
        }
        if template.vary_by:
            context["time"] = self._time(template.vary_by)
        return context

    def answer(self, match: Match | None, template: IntentTemplate | None, home: Home, *,
               user: str | None = None, site: str | None = None, text: str | None = None,
               default_system_prompt: jinja2.Template | None = None) -> Answer:
        """The answer to ``match`` (``None``: nothing understood).

        ``text``: what was said, answered by the generator when no intent matched;
        ``default_system_prompt``: for that, and for intents that name no system prompt.
        """
        if match is None or template is None:
            return self._unmatched(text, user, site, default_system_prompt)
        if template.action is not None and "name" in match.slots and len(match.targets) > 1:
            # Several things share the name and nothing said which: ask, do not guess (as
            # Home Assistant does with duplicate names).
            return Answer(text=f"There is more than one {match.slots['name'].value}; "
                               "say which room it is in.", intent=match.intent,
                          slots=match.slot_values(),
                          targets=tuple(e.entity_id for e in match.targets))
        if template.action is not None and not any(e.command_topic for e in match.targets):
            # Never claim to have done what nothing was there to do.
            return Answer(text=_nothing_to_act_on(match), intent=match.intent,
                          slots=match.slot_values(),
                          targets=tuple(e.entity_id for e in match.targets))
        context = self.context(match, template, home, user=user, site=site)
        system = template.system_prompt or default_system_prompt
        fragments = template.fragments(match.response)
        plan = self._plan_key(template, match, fragments, context, system)
        results = self._from_plan(plan) if plan is not None else None
        if results is None:
            made: list[tuple[str, str | None]] = []
            results = [self._fragment(template, match, index, fragment, context, user, system,
                                      made)
                       for index, fragment in enumerate(fragments)]
            if plan is not None and len(made) == len(results) and all(k for _, k in made):
                _remember(self._plans, plan, tuple(made))
        actions = self._actions(template, match, home, context)
        return Answer(
            text=join_fragments([r.text for r in results]),
            intent=match.intent,
            slots=match.slot_values(),
            targets=tuple(e.entity_id for e in match.targets),
            fragments=tuple(results),
            actions=tuple(actions),
        )

    def _plan_key(self, template: IntentTemplate, match: Match, fragments: Any,
                  context: Mapping[str, Any],
                  system: jinja2.Template | None) -> tuple[Any, ...] | None:
        """What decides every fragment key of a shared answer; None for a personal one.

        An answer none of whose fragments reads the user or carries words said freely is the
        same for everyone who asks with the same context: its fragment keys are remembered
        together, so an answer given before costs one lookup per fragment.
        """
        if self.cache is None or self.keys is None:
            return None
        if any(s.wildcard for s in match.slots.values()):
            return None
        if "user" in template_reads(system) or any(f.uses_user for f in fragments):
            return None
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

    def _render(self, template: IntentTemplate, fragment: Fragment, source: jinja2.Template,
                context: Mapping[str, Any]) -> str:
        try:
            return " ".join(source.render(context).split())
        except jinja2.TemplateError as error:
            raise TemplateError(f"{template.file}, line {fragment.line} ({template.name}): "
                                f"{error}") from None

    def _unmatched(self, text: str | None, user: str | None, site: str | None,
                   system: jinja2.Template | None) -> Answer:
        started = time.perf_counter()
        if self.generator is None or not text or not text.strip():
            return Answer(text=NOT_UNDERSTOOD)
        settings = self.generator.settings
        context: dict[str, Any] = {"slots": {}, "targets": [], "target": None, "user": user or "",
                   "site": site or "", "intent": None}
        try:
            prompt = system.render(context) if system is not None else ""
        except jinja2.TemplateError as error:
            raise TemplateError(f"default_system_prompt: {error}") from None
        personal = settings.unmatched_scope == "user" or "user" in template_reads(system)
        try:
            out = self.generator.generate(
                system_prompt=" ".join(prompt.split()), prompt=" ".join(text.split()),
                max_tokens=settings.unmatched_max_tokens,
                user=user if personal and user else None,
                ttl=settings.unmatched_ttl, tags=(UNMATCHED_TAG,), template_id="unmatched")
        except GenerationError as error:
            log.warning("no generated answer to an unmatched sentence: %s", error)
            return Answer(text=NOT_UNDERSTOOD, fragments=(FragmentResult(
                "generate", NOT_UNDERSTOOD, "fallback", time.perf_counter() - started),))
        return Answer(text=out.text, fragments=(FragmentResult(
            "generate", out.text, out.source, time.perf_counter() - started),))

    def _generated(self, template: IntentTemplate, match: Match, fragment: Fragment,
                   context: Mapping[str, Any], user: str | None,
                   system: jinja2.Template | None, started: float,
                   made: list[tuple[str, str | None]] | None = None) -> FragmentResult:
        spec = fragment.generate
        assert spec is not None
        if self.generator is None:
            return FragmentResult("generate", spec.fallback, "fallback",
                                  time.perf_counter() - started)
        # A personal fragment (scope: user, or a prompt or system prompt that reads the user),
        # or one carrying words someone said freely, is theirs alone.
        private = any(s.wildcard for s in match.slots.values())
        personal = fragment.uses_user or "user" in template_reads(system)
        owner = user if (personal or private) and user else None
        generator = self.generator
        # Only shared parts are remembered: nothing of a user's stays in this memo, which
        # forget does not reach. A shared part does not depend on who asks.
        memo = None
        if owner is None and not private:
            reads = template_reads(spec.prompt) | template_reads(system)
            memo = (spec, system, template.version, generator.model_version(),
                    repr([(k, v) for k, v in context.items() if k in reads and k != "user"]))
            prepared = self._prepared.get(memo)
        else:
            prepared = None
        if prepared is None:
            prompt = self._render(template, fragment, spec.prompt, context)
            system_prompt = self._render(template, fragment, system, context) if system else ""
            prepared = generator.prepare(
                system_prompt=system_prompt, prompt=prompt, max_tokens=spec.max_tokens,
                temperature=spec.temperature, seed=spec.seed, user=owner,
                template_id=template.name, template_version=template.version,
                prompt_head=template_head(spec.prompt))
            if memo is not None:
                _remember(self._prepared, memo, prepared)
        try:
            out = generator.run(prepared, ttl=spec.ttl, tags=(
                *template.tags, *(f"entity:{e.entity_id}" for e in match.targets)))
        except GenerationError as error:
            log.warning("%s, line %s: fallback said: %s", template.file, fragment.line, error)
            return FragmentResult("generate", spec.fallback, "fallback",
                                  time.perf_counter() - started)
        if made is not None and prepared.user is None:
            made.append(("generate", prepared.key))
        return FragmentResult("generate", out.text, out.source, time.perf_counter() - started)

    def _fragment(self, template: IntentTemplate, match: Match, index: int, fragment: Fragment,
                  context: Mapping[str, Any], user: str | None,
                  system: jinja2.Template | None = None,
                  made: list[tuple[str, str | None]] | None = None) -> FragmentResult:
        """One fragment; its kind and cache key are added to ``made`` when it has one."""
        started = time.perf_counter()
        if fragment.generate is not None:
            return self._generated(template, match, fragment, context, user, system, started,
                                   made)
        assert fragment.text is not None
        source = fragment.text

        def render() -> str:
            return self._render(template, fragment, source, context)

        if self.cache is None or self.keys is None:
            return FragmentResult("text", render(), "computed", time.perf_counter() - started)
        # Words someone said freely (a wildcard slot) are theirs: such a fragment is cached
        # for them alone, under their privacy policy.
        private = "slots" in fragment.uses and any(s.wildcard for s in match.slots.values())
        scope_user = user if (fragment.uses_user or private) and user else None
        # Only what the template reads goes into its key, so an answer that does not depend on
        # who asks, or where, is cached once for everyone.
        seen = {k: v for k, v in context.items() if k in fragment.uses and k != "time"}
        bucket = context["time"].isoformat() if "time" in context else ""
        # The key is canonical JSON under an HMAC; the memo of it only has to tell contexts
        # apart within this process, which their repr does at a fraction of the cost.
        # Only shared fragments' keys are remembered (nothing of a user's stays in the memo).
        memo = None if scope_user or private else (
            fragment, template.version, match.response, index, repr(seen), bucket)
        key = None
        if memo is not None:
            key = self._keys_made.get(memo)
        if key is None:
            visible = json.dumps(seen, sort_keys=True, default=str, ensure_ascii=False)
            key = self.keys.key("frag", template.name, template.version, match.response, index,
                                visible, bucket, f"user:{scope_user}" if scope_user else "shared")
            if memo is not None:
                _remember(self._keys_made, memo, key)
        ttl = _BUCKET_SECONDS.get(template.vary_by or "", STATIC_TTL)
        tags = (*template.tags, *(f"entity:{e.entity_id}" for e in match.targets))
        outcome = self.cache.fetch(key, render, ttl=ttl, tags=tags, user=scope_user)
        if made is not None and scope_user is None:
            made.append(("text", key))
        return FragmentResult("text", str(outcome.value), outcome.source,
                              time.perf_counter() - started)

    def _actions(self, template: IntentTemplate, match: Match, home: Home,
                 context: Mapping[str, Any]) -> list[PlannedAction]:
        if template.action is None:
            return []
        actions = []
        for entity in match.targets:
            view = entity_view(entity, home)
            if not view["command_topic"]:
                continue
            scope = {**context, "entity": view}
            try:
                topic = template.action.topic.render(scope).strip()
                payload = template.action.payload.render(scope).strip()
            except jinja2.TemplateError as error:
                raise TemplateError(f"{template.file}, line {template.line} ({template.name}."
                                    f"action): {error}") from None
            if topic:
                actions.append(PlannedAction(entity.entity_id, topic, payload,
                                             template.action.retain))
        return actions

