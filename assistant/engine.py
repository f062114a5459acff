"""The intent engine: recognition and answers over the templates and the home as they are now.

Edits to ``intents/*.yaml`` are picked up by a watcher (:mod:`assistant.templates.watch`),
by another process's announcement, or by :meth:`IntentEngine.reload`. A valid edit is
swapped in whole (a new recognizer is built first, then replaces the old one in one
assignment), and :mod:`assistant.templates.reload` purges the cached answers of exactly the
intents whose version changed, on every tier and node. An invalid edit leaves the old
templates answering, and the error is logged and handed to ``on_error`` (the service
publishes it on its error topic).

Changes to the home swap in a recognizer over the new snapshot and purge the cached answers
about the entities that changed. Reloads and home changes are applied one at a time by the
engine's own worker thread, never on the thread that reported them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from assistant.answers import Answer, Responder
from assistant.errors import TemplateError
from assistant.home import Home, Registry, entity_tag
from assistant.recognition.library import load_intent_templates
from assistant.recognition.match import Match
from assistant.recognition.recognizer import Recognizer
from assistant.settings import IntentsSettings
from assistant.templates.model import TemplateSet
from assistant.templates.reload import RELOAD, Reloader, ReloadResult
from assistant.templates.versioning import VersionRecord
from assistant.templates.watch import TemplateWatcher
from cache import KeyBuilder, PolicyBook, TieredCache, check_user

log = logging.getLogger(__name__)


class IntentEngine:
    """Recognises sentences and answers them, following template and home changes.

    The constructor stores its parts; :meth:`start` loads and checks the templates (raising
    :class:`TemplateError` if they are wrong), builds the recognizer so the first request is
    as fast as the next, and starts following changes; :meth:`close` stops it.
    """

    def __init__(self, settings: IntentsSettings, registry: Registry, *,
                 cache: TieredCache | None = None, keys: KeyBuilder | None = None,
                 on_error: Callable[[str], None] | None = None,
                 responder: Responder | None = None,
                 record: VersionRecord | None = None) -> None:
        """
        Args:
            settings: the ``[intents]`` section.
            registry: the home.
            cache: where answers are cached (and whose announcements are followed).
            keys: the cache's key builder (for the default responder).
            on_error: told why an edit of the templates was refused.
            responder: renders answers (default: one over ``cache`` and ``keys``).
            record: this node's record of the template versions last applied.
        """
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.on_error = on_error
        self.responder = responder or Responder(cache, keys)
        self._policies = cache.policies if cache is not None else PolicyBook()
        self._reloader = Reloader(
            lambda: load_intent_templates(settings.folder, settings.language), cache=cache,
            record=record)
        self._lock = threading.Lock()
        self._recognizer: Recognizer | None = None
        self._work: ThreadPoolExecutor | None = None
        self._watcher: TemplateWatcher | None = None
        self._prepare: list[Callable[[Recognizer], object]] = []

    def start(self) -> Self:
        """Load the templates, build the recognizer, follow the home and other processes."""
        templates = self._reloader.load()
        home = self.registry.home
        self._recognizer = Recognizer(templates, home, language=self.settings.language)
        self._reloader.record(templates)
        self._work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intents")
        self.registry.listen(self._home_changed)
        if self.registry.home is not home:  # changed while the recognizer was being built
            self._home_changed(self.registry.home, frozenset(), True)
        if self.cache is not None:
            self.cache.on_announcement(self._announced)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def recognizer(self) -> Recognizer:
        """The recognizer answering now."""
        if self._recognizer is None:
            raise RuntimeError("the intent engine is not started")
        return self._recognizer

    def keep_ready(self, prepare: Callable[[Recognizer], object]) -> None:
        """Have ``prepare`` build what requests will need of a recognizer (what it would
        otherwise build on the first request that asks): now, for the recognizer answering,
        and for each one that replaces it, before it answers (an error there is logged and
        the recognizer swapped in all the same: it builds the rest lazily)."""
        with self._lock:
            self._prepare.append(prepare)
            self._prepared(self.recognizer)

    def _prepared(self, recognizer: Recognizer) -> Recognizer:
        for prepare in self._prepare:
            try:
                prepare(recognizer)
            except Exception:
                log.exception("could not prepare the recognizer ahead of requests")
        return recognizer

    @property
    def templates(self) -> TemplateSet:
        """The templates answering now."""
        return self.recognizer.templates

    # -- requests ----------------------------------------------------------------------------

    def recognize(self, text: str, *, area: str | None = None) -> Match | None:
        """The intent of ``text`` said in area ``area``, with its target entities."""
        return self.recognizer.recognize(text, area=area)

    def respond(self, text: str, *, user: str | None = None, site: str | None = None,
                area: str | None = None, timings: dict[str, float] | None = None,
                alternatives: Sequence[str] = (), chosen: str | None = None) -> Answer:
        """Recognise ``text`` and answer it; ``timings`` gets the milliseconds of each step
        (``recognise``, ``answer``).

        ``alternatives``: other hypotheses of what was said (speech recognition's, best
        first, ``text`` first among them); the one that matches best is answered (see
        :meth:`Recognizer.recognize_any`), ``text`` when none does; ``chosen``: the
        sentence of the templates the speech model judged was said (:attr:`Transcript.chosen
        <assistant.speech.stt.Transcript.chosen>`), when none of them is one."""
        started = time.perf_counter()
        recognizer = self.recognizer  # one snapshot for the whole request
        private = user is not None and self._policies.for_user(check_user(user) or "").private
        if chosen or any(a != text for a in alternatives):
            match = recognizer.recognize_any([text, *alternatives], area=area,
                                             remember=not private, chosen=chosen)
        else:
            match = recognizer.recognize(text, area=area, remember=not private)
        template = recognizer.templates.intents.get(match.intent) if match else None
        recognised = time.perf_counter()
        answer = self.responder.answer(
            match, template, recognizer.home, user=user, site=site, text=text,
            default_system_prompt=recognizer.templates.default_system_prompt)
        if timings is not None:
            timings["recognise"] = (recognised - started) * 1000
            timings["answer"] = (time.perf_counter() - recognised) * 1000
        return answer

    # -- changes -----------------------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Re-read the templates; swap them in if valid and purge what changed."""
        started = time.perf_counter()
        with self._lock:
            old = self.recognizer.templates
            try:
                new = self._reloader.load()
                recognizer = Recognizer(new, self.registry.home, language=self.settings.language)
            except Exception as error:
                detail = str(error) if isinstance(error, TemplateError) else (
                    f"{type(error).__name__}: {error}")
                message = f"intent templates not reloaded, the previous ones stay: {detail}"
                log.error("%s", message, exc_info=not isinstance(error, TemplateError))
                if self.on_error is not None:
                    try:
                        self.on_error(message)
                    except Exception:
                        log.exception("could not report a template error")
                return ReloadResult(error=detail, seconds=time.perf_counter() - started)
            self._recognizer = self._prepared(recognizer)
            return self._reloader.apply(new, previous=old, started=started)

    def _home_changed(self, home: Home, changed: frozenset[str], structural: bool) -> None:
        # Called on whatever thread changed the home (MQTT's network thread, for discovery
        # and states): the work, which may wait on Redis and disk, is done by our own.
        if self._work is not None:
            self._work.submit(self._apply_home, home, changed)

    def _apply_home(self, home: Home, changed: frozenset[str]) -> None:
        try:
            with self._lock:
                if home is self.registry.home:  # skip snapshots already superseded
                    self._recognizer = self._prepared(self.recognizer.with_home(home))
            if self.cache is not None:
                for entity_id in sorted(changed):
                    self.cache.invalidate_tag(entity_tag(entity_id))
        except Exception:
            log.exception("could not apply a change of the home")

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the changes made so far (home changes, reloads) are applied."""
        if self._work is not None:
            self._work.submit(lambda: None).result(timeout=timeout)

    def _announced(self, name: str, arg: str) -> None:
        if name == RELOAD and self._work is not None:
            self._work.submit(self.reload)

    # -- watching ------------------------------------------------------------------------------

    def watch(self) -> None:
        """Reload on every edit of a ``.yaml`` file under the folder, until :meth:`close`."""
        if self._watcher is None:
            self._watcher = TemplateWatcher(self.settings.folder, self.reload).start()

    def close(self) -> None:
        """Stop watching and applying changes."""
        self.registry.unlisten(self._home_changed)
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._work is not None:
            self._work.shutdown(wait=True)
            self._work = None
