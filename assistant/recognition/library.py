"""Home Assistant's sentence library (``home-assistant-intents``), read once per process, and
the templates checked against it."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from home_assistant_intents import get_intents

from assistant.errors import ConfigError
from assistant.templates.loader import load_templates
from assistant.templates.model import TemplateSet
from assistant.templates.sandbox import make_environment

_LIBRARY: dict[str, dict[str, Any]] = {}
_LIBRARY_LOCK = threading.Lock()


def library(language: str) -> dict[str, Any]:
    """Home Assistant's sentence library for ``language`` (read once per process)."""
    with _LIBRARY_LOCK:
        if language not in _LIBRARY:
            data = get_intents(language, json_load=json.load)
            if data is None:
                raise ConfigError(f"no sentence library for language {language!r}")
            _LIBRARY[language] = data
        return _LIBRARY[language]


def builtin_intents(language: str) -> frozenset[str]:
    """The intents the library has sentences for."""
    return frozenset(library(language)["intents"])


def load_intent_templates(folder: Path, language: str = "en") -> TemplateSet:
    """The templates under ``folder``, checked against the library's intents, lists and rules."""
    data = library(language)
    return load_templates(folder, builtin=builtin_intents(language), language=language,
                          known_lists=data.get("lists", {}),
                          known_rules=data.get("expansion_rules", {}))


@functools.cache
def library_release() -> str:
    """The release of the sentence library installed (its error responses are part of the
    keys of the answers made from them)."""
    try:
        return metadata.version("home-assistant-intents")
    except metadata.PackageNotFoundError:
        return "unknown"


_ERRORS = make_environment()


def error_response(key: str, args: Mapping[str, str], language: str = "en", *,
                   otherwise: str | None = None) -> str:
    """The library's error response ``key`` (``no_entity``, ``no_area``, ``timer_not_found``...)
    said with ``args``; ``otherwise`` (by default its generic "couldn't understand") when it
    has no such response."""
    errors = library(language).get("responses", {}).get("errors", {})
    source = errors.get(key) or otherwise or errors.get("no_intent") or \
        "Sorry, I couldn't understand that"
    text = " ".join(_ERRORS.from_string(source).render(dict(args)).split())
    return text if text.endswith((".", "!", "?")) else f"{text}."
