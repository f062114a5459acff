"""YAML files people edit, read safely with the line of every mapping and list remembered.

The entities file and the intent templates are both written by hand: an error in either
names the file and the line, so both are read here, the one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from assistant.errors import ConfigError


class YamlMap(dict[str, Any]):
    """A mapping that knows its line and the line of each of its keys."""

    line = 0
    key_lines: dict[Any, int] = {}  # noqa: RUF012 - replaced per instance


class YamlList(list[Any]):
    """A list that knows its line."""

    line = 0


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings and lists remember their line."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    try:
        result = YamlMap(loader.construct_pairs(node, deep=True))
        result.key_lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    except TypeError:  # a list or mapping as a key ("? [a]"): nothing here means that
        raise yaml.constructor.ConstructorError(
            "while reading a mapping", node.start_mark, "found a key that is not a single "
            "value", node.start_mark) from None
    result.line = node.start_mark.line + 1
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> YamlList:
    result = YamlList(loader.construct_sequence(node, deep=True))
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def line_of(value: Any, fallback: int = 0) -> int:
    """The line a mapping or list read by :func:`load_yaml` starts on, else ``fallback``."""
    return getattr(value, "line", 0) or fallback


def key_line(mapping: Any, key: Any, fallback: int = 0) -> int:
    """The line of ``key`` in a mapping read by :func:`load_yaml`, else ``fallback``."""
    return getattr(mapping, "key_lines", {}).get(key, 0) or fallback


def load_yaml(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """The document in ``path`` (``None`` when empty), its mappings and lists knowing their
    lines; anything unreadable raises ``error`` naming the file and, where known, the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text ({problem.reason} at byte {problem.start})"
                    ) from problem
    except OSError as problem:
        raise error(f"{path}: {problem.strerror or problem}") from problem
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{at}: not valid YAML: {getattr(problem, 'problem', problem)}"
                    ) from problem
