"""``assistant intents``: check the templates, and reload them everywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from assistant.errors import TemplateError
from assistant.settings import Settings


def check(settings: Settings, path: Path | None) -> int:
    from assistant.recognition.library import builtin_intents, load_intent_templates
    from assistant.templates.loader import load_file

    target = path or settings.intents.folder
    builtin = builtin_intents(settings.intents.language)
    try:
        if target.is_file():
            found, _ = load_file(target, folder=target.parent, builtin=builtin)
            names = sorted(found)
        else:
            names = sorted(load_intent_templates(target, settings.intents.language).intents)
    except TemplateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ok: {len(names)} intents in {target}: {', '.join(names)}")
    return 0


def reload(settings: Settings) -> int:
    from assistant.app import cache_of, version_record
    from assistant.recognition.library import load_intent_templates
    from assistant.templates.reload import RELOAD, Reloader

    intents = settings.intents
    cache, _keys = cache_of(settings, listen=False)
    reloader = Reloader(lambda: load_intent_templates(intents.folder, intents.language),
                        cache=cache, record=version_record(settings))
    try:
        templates = reloader.load()
    except TemplateError as error:
        print(f"error: nothing reloaded: {error}", file=sys.stderr)
        return 1
    with cache:
        result = reloader.apply(templates)
        told = cache.announce(RELOAD, str(intents.folder))
        print(json.dumps({"purged": result.purged, "intents": len(templates.intents),
                          "services_told": told}))
        if cache.pending_events or not told:
            print("error: Redis is unreachable: other nodes and running services are told when "
                  "it is back (the reload is queued on this node's disk)", file=sys.stderr)
            return 1
    return 0
