"""The Jinja2 sandbox templates render in, and the checks a template passes when loaded.

Templates are Jinja2 in a sandbox with strict undefined variables: a template cannot reach
Python internals, and a missing variable is an error, not an empty string. Both are checked
when the file is loaded, with the file and line named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from assistant.errors import TemplateError
from assistant.templates.model import Template


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


def check_template(env: SandboxedEnvironment, source: Any, *, where: str,
                   allowed: frozenset[str]) -> Template:
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
    return Template(env.from_string(source), frozenset(meta.find_undeclared_variables(tree)),
                    _literal_head(tree))


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
