"""Home Assistant's sentence library (``home-assistant-intents``), read once per process, and
the templates checked against it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from home_assistant_intents import get_intents

from assistant.errors import ConfigError
from assistant.templates.loader import load_templates
from assistant.templates.model import TemplateSet

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
