"""One reload of the templates, the same for a running service and for ``intents reload``.

A reload reads and checks every file (a set with any mistake is refused whole and the old
templates keep answering), then purges the cached answers of exactly the intents whose
version changed (on every tier and node) and records the new versions. What changed is
judged against both the templates answering in this process, if any, and the versions
recorded on this node, so a command-line reload knows what changed since the service last
loaded them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from assistant.templates.model import TemplateSet, intent_tag
from assistant.templates.versioning import VersionRecord
from cache import TieredCache

log = logging.getLogger(__name__)

RELOAD = "intents-reload"
"""The announcement that makes every other process re-read its templates."""


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


class Reloader:
    """Loads the templates and applies a new set: purge what changed, record the versions."""

    def __init__(self, load: Callable[[], TemplateSet], *, cache: TieredCache | None,
                 record: VersionRecord | None) -> None:
        """
        Args:
            load: reads and checks every template file (:class:`TemplateError` if wrong).
            cache: where the answers made from templates are cached (``None``: nothing to
                purge).
            record: this node's record of the versions last applied (``None``: none kept).
        """
        self._load = load
        self._cache = cache
        self._record = record

    def load(self) -> TemplateSet:
        """The templates as the files say now; :class:`TemplateError` if they are wrong."""
        return self._load()

    def record(self, templates: TemplateSet) -> None:
        """Record ``templates``' versions as applied (e.g. at start)."""
        if self._record is not None:
            try:
                self._record.save(templates.versions())
            except OSError as error:
                log.error("template versions not recorded in %s: %s", self._record.path, error)

    def apply(self, new: TemplateSet, *, previous: TemplateSet | None = None,
              started: float | None = None) -> ReloadResult:
        """Purge the cached answers of the intents ``new`` changed or removed, against
        ``previous`` (the set answering until now) and the recorded versions; record
        ``new``'s versions. The purges raise nothing: one that fails is logged."""
        started = time.perf_counter() if started is None else started
        after = new.versions()
        known: list[Mapping[str, str]] = [previous.versions()] if previous is not None else []
        if self._record is not None:
            known.append(self._record.load())
        stale = sorted({name for versions in known for name, version in versions.items()
                        if after.get(name) != version})
        seen = {name for versions in known for name in versions}
        changed = tuple(n for n in stale if n in after)
        removed = tuple(n for n in stale if n not in after)
        added = tuple(sorted(set(after) - seen))
        purged: dict[str, dict[str, int]] = {}
        if self._cache is not None:
            try:
                purged = {name: self._cache.invalidate_tag(intent_tag(name)) for name in stale}
            except Exception:  # the new templates answer; a purge that failed is logged
                log.exception("could not purge the cached answers of changed intents")
        self.record(new)
        if changed or removed or added:
            log.info("intent templates reloaded: changed %s, added %s, removed %s",
                     list(changed), list(added), list(removed))
        return ReloadResult(changed, added, removed, None, time.perf_counter() - started, purged)
