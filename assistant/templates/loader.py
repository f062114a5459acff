"""Intent templates: ``intents/*.yaml``, the part of the assistant its users edit.

A file holds, per intent, hassil sentences (for intents of the user's own), a
response plan (fragments, per response key), an optional system prompt and an
optional action, plus the file's lists and expansion rules::

    language: en
    intents:
      HassTurnOn:                 # a built-in intent: sentences come from Home Assistant
        responses:
          default:
            - text: "Turned on {{ targets | names }}."
        action:
          publish: "{{ entity.command_topic }}"
          payload: "ON"
      WhatToCook:                 # an intent of the user's own: hassil sentence format
        data:
          - sentences: ["what should I cook [tonight]"]
        system_prompt: "You suggest simple dinners to {{ user }}."
        responses:
          default:
            - generate: {prompt: "Suggest one dinner.", max_tokens: 40, scope: user,
                         ttl: 3600, fallback: "I have no idea yet."}
    lists: {}
    expansion_rules: {}

Templates are Jinja2 in a sandbox with strict undefined variables: a template
cannot reach Python internals, and a missing variable is an error, not an empty
string. Both are checked when the file is loaded, with the file and line named.
Each intent has a version (a hash of its section and of the file's lists and
rules) that goes into every cache key made from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from hassil.expression import Expression, Group, ListReference, RuleReference
from hassil.parse_expression import parse_sentence
from hassil.parser import ParseError
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from assistant.errors import TemplateError

VARY_BY = ("minute", "hour", "day")
"""Time buckets a template may depend on; the bucket is part of its cache key."""

BASE_VARIABLES = frozenset({"slots", "targets", "target", "user", "site", "intent"})
"""What every response template may use; ``time`` only with ``vary_by``."""

ACTION_VARIABLES = BASE_VARIABLES | {"entity"}


# -- YAML with line numbers ------------------------------------------------------------------


class _Map(dict[str, Any]):
    line = 0
    key_lines: dict[Any, int] = {}  # noqa: RUF012 - replaced per instance


class _List(list[Any]):
    line = 0


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings and lists remember their line."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map(loader.construct_pairs(node, deep=True))
    result.line = node.start_mark.line + 1
    result.key_lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _List:
    result = _List(loader.construct_sequence(node, deep=True))
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _line_of(value: Any, fallback: int) -> int:
    return getattr(value, "line", 0) or fallback


# -- the sandbox ---------------------------------------------------------------------------


def spoken_names(targets: Any) -> str:
    """``the kitchen light and the ceiling light``."""
    names = [f"the {t['name']}" if isinstance(t, Mapping) else str(t) for t in targets or ()]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def make_environment() -> SandboxedEnvironment:
    """The Jinja2 environment every template renders in."""
    # Immutable: a template cannot change the slots or the home it is shown. No random
    # filter or lorem ipsum: a fragment's text must follow from its inputs, it is cached.
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                        keep_trailing_newline=False)
    env.filters.pop("random", None)
    env.globals.pop("lipsum", None)
    env.filters["names"] = spoken_names
    return env


def _check_template(env: SandboxedEnvironment, source: Any, *, where: str,
                    allowed: frozenset[str]) -> jinja2.Template:
    """Compile ``source``; refuse syntax errors, unknown variables and private attributes."""
    if not isinstance(source, str):
        raise TemplateError(f"{where}: a template must be a string")
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"{where}: template syntax: {error.message} "
                            f"(template line {error.lineno})") from None
    unknown = meta.find_undeclared_variables(tree) - allowed
    if unknown:
        raise TemplateError(f"{where}: unknown variable(s) {sorted(unknown)}; "
                            f"available: {sorted(allowed)}")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Filter):  # {{ x | attr('__class__') }}
            if node.name != "attr" or not node.args:
                continue
            name = getattr(node.args[0], "value", None)
        elif isinstance(node, nodes.Getattr):
            name = node.attr
        else:
            name = getattr(getattr(node, "arg", None), "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateError(f"{where}: refused: access to {name!r} is not allowed in "
                                f"templates (template line {node.lineno})")
    template = env.from_string(source)
    template._reads = frozenset(meta.find_undeclared_variables(tree))  # type: ignore[attr-defined]
    template._head = _literal_head(tree)  # type: ignore[attr-defined]
    return template


def _literal_head(tree: nodes.Template) -> str:
    """The text a template always starts with, up to its first expression or statement,
    white space collapsed as rendered fragments are, cut at the last whole word."""
    parts: list[str] = []
    for node in tree.body:
        for child in node.nodes if isinstance(node, nodes.Output) else [node]:
            if not isinstance(child, nodes.TemplateData):
                return _whole_words("".join(parts))
            parts.append(child.data)
    return " ".join("".join(parts).split())


def _whole_words(text: str) -> str:
    words = text.split()
    if not words:
        return ""
    # The last word may run on into the expression after it ("item{{ n }}"): leave it out
    # unless white space separates them.
    return " ".join(words if text[-1:].isspace() else words[:-1])


def template_reads(template: jinja2.Template | None) -> frozenset[str]:
    """The variables a template checked at load time reads (empty for ``None``)."""
    return getattr(template, "_reads", frozenset()) if template is not None else frozenset()


def template_head(template: jinja2.Template | None) -> str:
    """The literal text every rendering of a template checked at load time starts with."""
    return getattr(template, "_head", "") if template is not None else ""


# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generate:
    """A generated part of an answer."""

    prompt: jinja2.Template
    """The prompt, rendered with the same variables as text fragments."""
    max_tokens: int
    """Generation limit."""
    temperature: float
    """0 for greedy decoding."""
    seed: int | None
    """Fixed seed; with temperature > 0 and no seed the output is never cached."""
    scope: str
    """``shared`` (cached once for everyone) or ``user`` (cached per user)."""
    ttl: float
    """Seconds the generated text is kept."""
    fallback: str
    """Said instead when generation fails or times out (never cached)."""


@dataclass(frozen=True, slots=True)
class Fragment:
    """One piece of a response: static text or a generated part."""

    line: int
    """Where it is defined."""
    text: jinja2.Template | None = None
    """A static fragment's template."""
    generate: Generate | None = None
    """A generated fragment's settings."""
    uses_user: bool = False
    """Does it depend on who asks? Then it is cached per user."""
    uses: frozenset[str] = frozenset()
    """The variables it reads: only these go into its cache key."""


@dataclass(frozen=True, slots=True)
class Action:
    """An MQTT publish per target entity."""

    topic: jinja2.Template
    """The topic, e.g. ``{{ entity.command_topic }}``."""
    payload: jinja2.Template
    """The payload, e.g. ``ON``."""
    retain: bool = False
    """Publish retained."""


@dataclass(frozen=True, slots=True)
class IntentTemplate:
    """Everything one intent's section says."""

    name: str
    """The intent, e.g. ``HassTurnOn``."""
    file: str
    """The file it is defined in, relative to the intents folder."""
    line: int
    """Where its section starts."""
    version: str
    """Hash of its section and of its file's lists and expansion rules."""
    responses: Mapping[str, Sequence[Fragment]]
    """Fragments by response key (hassil's ``response``); ``default`` is the fallback."""
    system_prompt: jinja2.Template | None = None
    """The system prompt for its generated parts (or the default one)."""
    action: Action | None = None
    """What it does to the home."""
    vary_by: str | None = None
    """The time bucket its answers depend on."""
    sentences: Sequence[Mapping[str, Any]] = ()
    """hassil ``data`` blocks of an intent of the user's own."""

    @property
    def tags(self) -> tuple[str, ...]:
        """Cache tags of everything made from it."""
        return (f"intent:{self.name}", f"template:{self.file}")

    def fragments(self, response: str | None) -> Sequence[Fragment]:
        """The fragments for a response key, or the default ones."""
        if response and response in self.responses:
            return self.responses[response]
        return self.responses.get("default", ())


@dataclass(frozen=True, slots=True)
class TemplateSet:
    """Every intent template, loaded and checked."""

    intents: Mapping[str, IntentTemplate] = field(default_factory=dict)
    """By intent name."""
    language: str = "en"
    """The language of the sentences."""
    sentences: Mapping[str, Any] = field(default_factory=dict)
    """hassil's dict of the users' own sentences, lists and expansion rules."""
    default_system_prompt: jinja2.Template | None = None
    """Used by intents without a system prompt, and for questions no intent matched."""

    def versions(self) -> dict[str, str]:
        """Intent name -> version."""
        return {name: t.version for name, t in self.intents.items()}


# -- loading -------------------------------------------------------------------------------

_FILE_KEYS = {"language", "intents", "lists", "expansion_rules", "skip_words",
              "default_system_prompt"}
_INTENT_KEYS = {"data", "responses", "system_prompt", "action", "vary_by"}
_GENERATE_KEYS = {"prompt", "max_tokens", "temperature", "seed", "scope", "ttl", "fallback"}


def _version(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unknown(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(section) - allowed
    if extra:
        key_lines = getattr(section, "key_lines", {})
        lines = [key_lines[k] for k in extra if k in key_lines]
        if lines:  # name the line of the first unknown key, not of its mapping
            where = re.sub(r", line \d+", f", line {min(lines)}", where, count=1)
        raise TemplateError(f"{where}: unknown key(s) {sorted(extra)}; expected {sorted(allowed)}")


def _number(value: Any, where: str, key: str, *, minimum: float, integer: bool = False,
            maximum: float | None = None) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise TemplateError(f"{where}: {key} must be a{'n integer' if integer else ' number'} "
                            f">= {minimum}{bound}, not {value!r}")
    return value


def _fragment(env: SandboxedEnvironment, item: Any, *, where: str, line: int,
              allowed: frozenset[str]) -> Fragment:
    if not isinstance(item, Mapping) or len(item) != 1 or next(iter(item)) not in ("text",
                                                                                    "generate"):
        raise TemplateError(f"{where}: a fragment is {{text: ...}} or {{generate: {{...}}}}")
    if "text" in item:
        template = _check_template(env, item["text"], where=where, allowed=allowed)
        used = frozenset(meta.find_undeclared_variables(env.parse(item["text"])))
        return Fragment(line=line, text=template, uses_user="user" in used, uses=used)
    spec = item["generate"]
    if not isinstance(spec, Mapping):
        raise TemplateError(f"{where}: generate must be a mapping")
    _unknown(spec, _GENERATE_KEYS, where)
    if "prompt" not in spec:
        raise TemplateError(f"{where}: generate needs a prompt")
    scope = spec.get("scope", "shared")
    if scope not in ("shared", "user"):
        raise TemplateError(f"{where}: scope must be 'shared' or 'user', not {scope!r}")
    seed = spec.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TemplateError(f"{where}: seed must be an integer")
    fallback = spec.get("fallback", "")
    if not isinstance(fallback, str):
        raise TemplateError(f"{where}: fallback must be a string")
    used = frozenset(meta.find_undeclared_variables(env.parse(str(spec["prompt"]))))
    return Fragment(
        line=line,
        generate=Generate(
            prompt=_check_template(env, spec["prompt"], where=where, allowed=allowed),
            max_tokens=_number(spec.get("max_tokens", 64), where, "max_tokens", minimum=1,
                               integer=True, maximum=2048),
            temperature=float(_number(spec.get("temperature", 0.0), where, "temperature",
                                      minimum=0.0, maximum=2.0)),
            seed=seed,
            scope=scope,
            ttl=float(_number(spec.get("ttl", 3600), where, "ttl", minimum=1)),
            fallback=fallback,
        ),
        uses_user=scope == "user" or "user" in used,
        uses=used,
    )


def _references(expression: Expression, lists: set[str], rules: set[str]) -> None:
    if isinstance(expression, ListReference):
        lists.add(expression.list_name)
    elif isinstance(expression, RuleReference):
        rules.add(expression.rule_name)
    elif isinstance(expression, Group):
        for item in expression.items:
            _references(item, lists, rules)


def _parse(text: Any, where: str) -> tuple[set[str], set[str]]:
    """The lists and rules a hassil sentence template refers to; TemplateError if malformed."""
    if not isinstance(text, str) or not text.strip():
        raise TemplateError(f"{where}: a sentence must be a non-empty string, not {text!r}")
    try:
        sentence = parse_sentence(text)
    except (ParseError, ValueError, AssertionError, IndexError, KeyError, TypeError) as error:
        raise TemplateError(f"{where}: sentence {text!r} does not parse: {error}") from None
    lists: set[str] = set()
    rules: set[str] = set()
    _references(sentence.expression, lists, rules)
    return lists, rules


def _check_block(block: Mapping[str, Any], *, path: Path, line: int, name: str) -> None:
    where = f"{path}, line {line} ({name}.data)"
    _unknown(block, {"sentences", "slots", "requires_context", "excludes_context", "metadata",
                     "expansion_rules", "response", "wildcard_list"}, where)
    sentences = block["sentences"]
    if not isinstance(sentences, list):
        raise TemplateError(f"{where}: sentences must be a list of strings")
    for key in ("slots", "requires_context", "excludes_context", "metadata", "expansion_rules"):
        if key in block and not isinstance(block[key], Mapping):
            raise TemplateError(f"{where}: {key} must be a mapping")
    for text in sentences:
        _parse(text, where)


def _intent(env: SandboxedEnvironment, name: str, section: Any, *, file: str, path: Path,
            file_line: int, shared: Mapping[str, Any], builtin: Iterable[str]) -> IntentTemplate:
    line = _line_of(section, file_line)
    where = f"{path}, line {line}"
    if not isinstance(section, Mapping):
        raise TemplateError(f"{where}: intent {name} must be a mapping")
    _unknown(section, _INTENT_KEYS, where)
    vary_by = section.get("vary_by")
    if vary_by is not None and vary_by not in VARY_BY:
        raise TemplateError(f"{where}: vary_by must be one of {list(VARY_BY)}, not {vary_by!r}")
    allowed = BASE_VARIABLES | ({"time"} if vary_by else set())
    data = section.get("data") or []
    if not isinstance(data, list) or not all(isinstance(d, Mapping) and d.get("sentences")
                                             for d in data):
        raise TemplateError(f"{where}: data must be a list of blocks with sentences")
    for block in data:
        _check_block(block, path=path, line=_line_of(block, line), name=name)
    if not data and name not in builtin:
        raise TemplateError(f"{where}: intent {name} has no sentences and is not a built-in "
                            "intent (add data: - sentences: [...])")
    responses_in = section.get("responses")
    if not isinstance(responses_in, Mapping) or not responses_in:
        raise TemplateError(f"{where}: intent {name} needs responses: {{default: [...]}}")
    responses: dict[str, tuple[Fragment, ...]] = {}
    for key, fragments in responses_in.items():
        at = _line_of(fragments, line)
        if not isinstance(fragments, list) or not fragments:
            raise TemplateError(f"{path}, line {at}: responses.{key} must be a list of fragments")
        responses[str(key)] = tuple(
            _fragment(env, item, where=f"{path}, line {_line_of(item, at)} "
                      f"({name}.responses.{key}[{index}])", line=_line_of(item, at),
                      allowed=allowed)
            for index, item in enumerate(fragments))
    system_prompt = None
    if section.get("system_prompt") is not None:
        system_prompt = _check_template(env, section["system_prompt"],
                                        where=f"{where} ({name}.system_prompt)", allowed=allowed)
    action = None
    if section.get("action") is not None:
        spec = section["action"]
        act = f"{path}, line {_line_of(spec, line)} ({name}.action)"
        if not isinstance(spec, Mapping):
            raise TemplateError(f"{act}: action must be a mapping")
        _unknown(spec, {"publish", "payload", "retain"}, act)
        if "publish" not in spec or "payload" not in spec:
            raise TemplateError(f"{act}: action needs publish (a topic) and payload")
        if not isinstance(spec["payload"], str):
            # YAML reads a bare ON as true: a payload must be written as a string.
            raise TemplateError(f"{act}: payload must be a quoted string, not "
                                f"{spec['payload']!r} (write \"ON\", not ON)")
        if not isinstance(spec.get("retain", False), bool):
            raise TemplateError(f"{act}: retain must be true or false")
        action = Action(
            topic=_check_template(env, spec["publish"], where=act, allowed=ACTION_VARIABLES),
            payload=_check_template(env, spec["payload"], where=act, allowed=ACTION_VARIABLES),
            retain=spec.get("retain", False),
        )
    return IntentTemplate(
        name=name, file=file, line=line,
        version=_version(section, shared),
        responses=responses, system_prompt=system_prompt, action=action, vary_by=vary_by,
        sentences=tuple(data),
    )


def load_file(path: Path, *, folder: Path, builtin: Iterable[str],
              env: SandboxedEnvironment | None = None) -> tuple[dict[str, IntentTemplate],
                                                                dict[str, Any]]:
    """One file's intents, and its contribution to hassil's sentence dict."""
    env = env or make_environment()
    file = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - safe
    except OSError as error:
        raise TemplateError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise TemplateError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") \
            from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise TemplateError(f"{path}{at}: not valid YAML: {getattr(error, 'problem', error)}") \
            from None
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise TemplateError(f"{path}, line 1: expected a mapping with language and intents")
    _unknown(data, _FILE_KEYS, f"{path}, line {_line_of(data, 1)}")
    intents_in = data.get("intents") or {}
    if not isinstance(intents_in, Mapping):
        raise TemplateError(f"{path}, line {_line_of(intents_in, 1)}: intents must be a mapping")
    for key, kind in (("lists", Mapping), ("expansion_rules", Mapping), ("skip_words", list)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise TemplateError(f"{path}, line {_line_of(data, 1)}: {key} must be a "
                                f"{'mapping' if kind is Mapping else 'list of words'}")
    for rule, text in (data.get("expansion_rules") or {}).items():
        _parse(text, f"{path} (expansion rule {rule!r})")
    shared = {"language": data.get("language"), "lists": data.get("lists") or {},
              "expansion_rules": data.get("expansion_rules") or {}}
    intents = {
        str(name): _intent(env, str(name), section, file=file, path=path,
                           file_line=_line_of(intents_in, 1), shared=shared, builtin=builtin)
        for name, section in intents_in.items()
    }
    sentences: dict[str, Any] = {
        "intents": {
            name: {"data": [
                {**_plain(block), "metadata": {**(block.get("metadata") or {}),
                                               "custom": True, "file": file}}
                for block in t.sentences]}
            for name, t in intents.items() if t.sentences
        },
        "lists": _plain(shared["lists"]),
        "expansion_rules": _plain(shared["expansion_rules"]),
    }
    if data.get("skip_words"):
        sentences["skip_words"] = list(data["skip_words"])
    if data.get("default_system_prompt") is not None:
        sentences["default_system_prompt"] = _check_template(
            env, data["default_system_prompt"], allowed=BASE_VARIABLES,
            where=f"{path} (default_system_prompt)")
    return intents, sentences


def _plain(value: Any) -> Any:
    """Plain dicts and lists (hassil copies and merges them)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_templates(folder: Path, *, builtin: Iterable[str], language: str = "en",
                   known_lists: Iterable[str] = (), known_rules: Iterable[str] = ()
                   ) -> TemplateSet:
    """Every ``*.yaml`` under ``folder``; :class:`TemplateError` lists every mistake found.

    ``known_lists`` and ``known_rules`` are those sentences may use without defining them
    (the sentence library's, and the home's ``name``, ``area`` and ``floor`` lists).
    """
    env = make_environment()
    builtin = frozenset(builtin)
    errors: list[str] = []
    intents: dict[str, IntentTemplate] = {}
    merged: dict[str, Any] = {"language": language, "intents": {}, "lists": {},
                              "expansion_rules": {}}
    default_prompt = None
    if not folder.is_dir():
        raise TemplateError(f"{folder}: the intents folder does not exist")
    for path in sorted(folder.rglob("*.yaml")):
        try:
            found, sentences = load_file(path, folder=folder, builtin=builtin, env=env)
        except TemplateError as error:
            errors.append(str(error))
            continue
        for name, template in found.items():
            if name in intents:
                errors.append(f"{path}, line {template.line}: intent {name} is already defined "
                              f"in {intents[name].file}")
                continue
            intents[name] = template
        merged["intents"].update(sentences.get("intents", {}))
        for key in ("lists", "expansion_rules"):
            for name, value in sentences.get(key, {}).items():
                if name in merged[key]:
                    errors.append(f"{path}: {key} {name!r} is already defined in another file")
                merged[key][name] = value
        if sentences.get("skip_words"):
            merged.setdefault("skip_words", []).extend(sentences["skip_words"])
        if "default_system_prompt" in sentences:
            default_prompt = sentences["default_system_prompt"]
    lists = {"name", "area", "floor"} | set(known_lists) | set(merged["lists"])
    rules = set(known_rules) | set(merged["expansion_rules"])
    for template in intents.values():
        for block in template.sentences:
            used_lists: set[str] = set()
            used_rules: set[str] = set()
            for text in [*block["sentences"], *(block.get("expansion_rules") or {}).values()]:
                found_lists, found_rules = _parse(text, "")
                used_lists |= found_lists
                used_rules |= found_rules
            missing = sorted((used_lists - lists - set(block.get("slots") or {}))
                             | {f"<{r}>" for r in used_rules - rules
                                - set(block.get("expansion_rules") or {})})
            if missing:
                errors.append(f"{folder / template.file}, line {_line_of(block, template.line)} "
                              f"({template.name}): undefined list(s) or rule(s) {missing}")
    if errors:
        raise TemplateError("\n".join(errors))
    return TemplateSet(intents=intents, language=language, sentences=merged,
                       default_system_prompt=default_prompt)
