"""Loading ``intents/*.yaml``: every intent template read, checked, and versioned.

A file holds, per intent, hassil sentences (for intents of the user's own), a
response plan (fragments, per response key), an optional system prompt and an
optional action, plus the file's lists and expansion rules (the format is shown in
:mod:`assistant.templates.model`). Every mistake is reported with its file and line;
a set of files with any mistake is refused whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hassil.expression import Expression, Group, ListReference, RuleReference
from hassil.parse_expression import parse_sentence
from hassil.parser import ParseError
from jinja2.sandbox import SandboxedEnvironment

from assistant.errors import TemplateError
from assistant.templates.model import (
    ACTION_VARIABLES,
    BASE_VARIABLES,
    VARY_BY,
    Action,
    Fragment,
    Generate,
    IntentTemplate,
    TemplateSet,
)
from assistant.templates.sandbox import check_template, make_environment
from assistant.templates.versioning import version_of
from assistant.yamlfile import key_line, line_of, load_yaml

_FILE_KEYS = {"language", "intents", "lists", "expansion_rules", "skip_words",
              "default_system_prompt"}
_INTENT_KEYS = {"data", "responses", "system_prompt", "action", "vary_by"}
_GENERATE_KEYS = {"prompt", "max_tokens", "temperature", "seed", "scope", "ttl", "fallback"}


def _unknown(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(section) - allowed
    if extra:
        lines = [line for line in (key_line(section, k) for k in extra) if line]
        if lines:  # name the line of the first unknown key, not of its mapping
            where = re.sub(r", line \d+", f", line {min(lines)}", where, count=1)
        raise TemplateError(f"{where}: unknown key(s) {sorted(extra, key=str)}; expected {sorted(allowed)}")


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
        template = check_template(env, item["text"], where=where, allowed=allowed)
        return Fragment(line=line, text=template, uses_user="user" in template.reads,
                        uses=template.reads)
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
    prompt = check_template(env, spec["prompt"], where=where, allowed=allowed)
    return Fragment(
        line=line,
        generate=Generate(
            prompt=prompt,
            max_tokens=_number(spec.get("max_tokens", 64), where, "max_tokens", minimum=1,
                               integer=True, maximum=2048),
            temperature=float(_number(spec.get("temperature", 0.0), where, "temperature",
                                      minimum=0.0, maximum=2.0)),
            seed=seed,
            scope=scope,
            ttl=float(_number(spec.get("ttl", 3600), where, "ttl", minimum=1)),
            fallback=fallback,
        ),
        uses_user=scope == "user" or "user" in prompt.reads,
        uses=prompt.reads,
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
    line = line_of(section, file_line)
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
        _check_block(block, path=path, line=line_of(block, line), name=name)
    if not data and name not in builtin:
        raise TemplateError(f"{where}: intent {name} has no sentences and is not a built-in "
                            "intent (add data: - sentences: [...])")
    responses_in = section.get("responses")
    if not isinstance(responses_in, Mapping) or not responses_in:
        raise TemplateError(f"{where}: intent {name} needs responses: {{default: [...]}}")
    responses: dict[str, tuple[Fragment, ...]] = {}
    for key, fragments in responses_in.items():
        at = line_of(fragments, line)
        if not isinstance(fragments, list) or not fragments:
            raise TemplateError(f"{path}, line {at}: responses.{key} must be a list of fragments")
        responses[str(key)] = tuple(
            _fragment(env, item, where=f"{path}, line {line_of(item, at)} "
                      f"({name}.responses.{key}[{index}])", line=line_of(item, at),
                      allowed=allowed)
            for index, item in enumerate(fragments))
    system_prompt = None
    if section.get("system_prompt") is not None:
        system_prompt = check_template(env, section["system_prompt"],
                                        where=f"{where} ({name}.system_prompt)", allowed=allowed)
    action = None
    if section.get("action") is not None:
        spec = section["action"]
        act = f"{path}, line {line_of(spec, line)} ({name}.action)"
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
            topic=check_template(env, spec["publish"], where=act, allowed=ACTION_VARIABLES),
            payload=check_template(env, spec["payload"], where=act, allowed=ACTION_VARIABLES),
            retain=spec.get("retain", False),
        )
    return IntentTemplate(
        name=name, file=file, line=line,
        version=version_of(section, shared),
        responses=responses, system_prompt=system_prompt, action=action, vary_by=vary_by,
        sentences=tuple(data),
    )


def load_file(path: Path, *, folder: Path, builtin: Iterable[str],
              env: SandboxedEnvironment | None = None) -> tuple[dict[str, IntentTemplate],
                                                                dict[str, Any]]:
    """One file's intents, and its contribution to hassil's sentence dict."""
    env = env or make_environment()
    file = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name
    data = load_yaml(path, TemplateError)
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise TemplateError(f"{path}, line 1: expected a mapping with language and intents")
    _unknown(data, _FILE_KEYS, f"{path}, line {line_of(data, 1)}")
    intents_in = data.get("intents") or {}
    if not isinstance(intents_in, Mapping):
        raise TemplateError(f"{path}, line {line_of(intents_in, 1)}: intents must be a mapping")
    for key, kind in (("lists", Mapping), ("expansion_rules", Mapping), ("skip_words", list)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise TemplateError(f"{path}, line {line_of(data, 1)}: {key} must be a "
                                f"{'mapping' if kind is Mapping else 'list of words'}")
    for rule, text in (data.get("expansion_rules") or {}).items():
        _parse(text, f"{path} (expansion rule {rule!r})")
    shared = {"language": data.get("language"), "lists": data.get("lists") or {},
              "expansion_rules": data.get("expansion_rules") or {}}
    intents = {
        str(name): _intent(env, str(name), section, file=file, path=path,
                           file_line=line_of(intents_in, 1), shared=shared, builtin=builtin)
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
        sentences["default_system_prompt"] = check_template(
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
                errors.append(f"{folder / template.file}, line {line_of(block, template.line)} "
                              f"({template.name}): undefined list(s) or rule(s) {missing}")
    if errors:
        raise TemplateError("\n".join(errors))
    return TemplateSet(intents=intents, language=language, sentences=merged,
                       default_system_prompt=default_prompt)
