"""The intent engine: templates, recognition and answers, kept current while running.

Edits to ``intents/*.yaml`` are picked up by a watcher (watchfiles) or by
``assistant intents reload``. A valid edit is swapped in whole (a new
recognizer is built first, then replaces the old one in one assignment), and
the tags of exactly the intents whose version changed are purged on every tier
and node; other intents keep their cached answers. An invalid edit leaves the
old templates answering, and the error is logged and handed to ``on_error``
(the MQTT service publishes it on its error topic).

Changes to the home purge the cached answers about the entities that changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import watchfiles

from assistant.errors import TemplateError
from assistant.home import Home, Registry
from assistant.recognize import Match, Recognizer, load_intent_templates
from assistant.respond import Answer, Responder
from assistant.settings import IntentsSettings
from assistant.templates import TemplateSet
from cache import KeyBuilder, TieredCache

log = logging.getLogger(__name__)

RELOAD = "intents-reload"
"""The announcement that makes every process re-read its templates."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did."""

    changed: tuple[str, ...] = ()
    """Intents whose version changed (their cached answers were purged)."""
    added: tuple[str, ...] = ()
    """Intents that are new."""
    removed: tuple[str, ...] = ()
    """Intents that are gone (their cached answers were purged)."""
    error: str | None = None
    """Why the edit was refused (the old templates keep answering)."""
    seconds: float = 0.0
    """Time it took, recognizer rebuild included."""
    purged: dict[str, dict[str, int]] = field(default_factory=dict)
    """Items removed per intent tag and tier."""


def versions_key(keys: KeyBuilder) -> str:
    """Where the versions last applied are kept in the cache (for ``intents reload``)."""
    return keys.key("meta", "intent-versions")


class IntentEngine:
    """Recognises sentences and answers them, following template and home changes."""

    def __init__(self, settings: IntentsSettings, registry: Registry, *,
                 cache: TieredCache | None = None, keys: KeyBuilder | None = None,
                 on_error: Callable[[str], None] | None = None,
                 responder: Responder | None = None) -> None:
        """Load and check the templates (:class:`TemplateError` if they are wrong) and build
        the recognizer, so the first request is as fast as the next."""
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.keys = keys
        self.on_error = on_error
        self.responder = responder or Responder(cache, keys)
        self._lock = threading.Lock()
        templates = self._load()
        home = registry.home
        self._recognizer = Recognizer(templates, home, language=settings.language)
        self._record_versions(templates)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._changes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="home-changes")
        registry.listen(self._home_changed)
        if registry.home is not home:  # changed while the recognizer was being built
            self._home_changed(registry.home, frozenset(), True)
        if cache is not None:
            cache.on_announcement(self._announced)

    # -- state -----------------------------------------------------------------------------

    @property
    def templates(self) -> TemplateSet:
        """The templates answering now."""
        return self._recognizer.templates

    def _load(self) -> TemplateSet:
        return load_intent_templates(self.settings.folder, self.settings.language)

    # -- requests ----------------------------------------------------------------------------

    def recognize(self, text: str, *, area: str | None = None) -> Match | None:
        """The intent of ``text`` said in area ``area``, with its target entities."""
        return self._recognizer.recognize(text, area=area)

    def respond(self, text: str, *, user: str | None = None, site: str | None = None,
                area: str | None = None) -> Answer:
        """Recognise ``text`` and answer it."""
        recognizer = self._recognizer  # one snapshot for the whole request
        match = recognizer.recognize(text, area=area)
        template = recognizer.templates.intents.get(match.intent) if match else None
        return self.responder.answer(
            match, template, recognizer.home, user=user, site=site, text=text,
            default_system_prompt=recognizer.templates.default_system_prompt)

    # -- changes -----------------------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Re-read the templates; swap them in if valid and purge what changed."""
        started = time.perf_counter()
        with self._lock:
            old = self._recognizer.templates
            try:
                new = self._load()
                recognizer = Recognizer(new, self.registry.home, language=self.settings.language)
            except Exception as error:  # noqa: BLE001 - any failure refuses the edit, never kills
                detail = str(error) if isinstance(error, TemplateError) else (
                    f"{type(error).__name__}: {error}")
                message = f"intent templates not reloaded, the previous ones stay: {detail}"
                log.error("%s", message)
                if self.on_error is not None:
                    try:
                        self.on_error(message)
                    except Exception:
                        log.exception("could not report a template error")
                return ReloadResult(error=detail, seconds=time.perf_counter() - started)
            self._recognizer = recognizer
            before, after = old.versions(), new.versions()
            changed = tuple(sorted(n for n in before.keys() & after.keys()
                                   if before[n] != after[n]))
            removed = tuple(sorted(before.keys() - after.keys()))
            added = tuple(sorted(after.keys() - before.keys()))
            try:
                purged = self._purge((*changed, *removed))
                self._record_versions(new)
            except Exception:  # the new templates answer; a purge that failed is logged
                log.exception("could not purge the cached answers of changed intents")
                purged = {}
        if changed or removed or added:
            log.info("intent templates reloaded: changed %s, added %s, removed %s",
                     list(changed), list(added), list(removed))
        return ReloadResult(changed, added, removed, None, time.perf_counter() - started, purged)

    def _purge(self, intents: tuple[str, ...]) -> dict[str, dict[str, int]]:
        if self.cache is None:
            return {}
        return {name: self.cache.invalidate_tag(f"intent:{name}") for name in intents}

    def _record_versions(self, templates: TemplateSet) -> None:
        if self.cache is not None and self.keys is not None:
            self.cache.set(versions_key(self.keys), templates.versions(), ttl=10 * 365 * 86400)

    def _home_changed(self, home: Home, changed: frozenset[str], structural: bool) -> None:
        # Called on whatever thread changed the home (MQTT's network thread, for discovery
        # and states): the work, which may wait on Redis and disk, is done by our own.
        self._changes.submit(self._apply_home, home, changed)

    def _apply_home(self, home: Home, changed: frozenset[str]) -> None:
        try:
            with self._lock:
                if home is self.registry.home:  # skip snapshots already superseded
                    self._recognizer = self._recognizer.with_home(home)
            if self.cache is not None:
                for entity_id in sorted(changed):
                    self.cache.invalidate_tag(f"entity:{entity_id}")
        except Exception:
            log.exception("could not apply a change of the home")

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the changes of the home made so far are applied."""
        self._changes.submit(lambda: None).result(timeout=timeout)

    def _announced(self, name: str, arg: str) -> None:
        if name == RELOAD:
            threading.Thread(target=self.reload, name="intents-reload", daemon=True).start()

    # -- watching ------------------------------------------------------------------------------

    def watch(self) -> None:
        """Reload on every edit of a ``.yaml`` file under the folder, until :meth:`close`."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="intents-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        def yaml_only(change: watchfiles.Change, path: str) -> bool:
            return path.endswith(".yaml")

        while not self._stop.is_set():
            try:
                for _changes in watchfiles.watch(self.settings.folder, watch_filter=yaml_only,
                                                 stop_event=self._stop, debounce=200, step=20,
                                                 rust_timeout=500, yield_on_timeout=False,
                                                 raise_interrupt=False):
                    self.reload()
            except Exception:  # keep watching: one bad moment must not end reloads for good
                log.exception("intent template watcher failed; watching again")
                self._stop.wait(1.0)

    def close(self) -> None:
        """Stop watching and applying changes."""
        self._stop.set()
        self.registry.unlisten(self._home_changed)
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._changes.shutdown(wait=True)
