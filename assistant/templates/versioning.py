"""Template versions: what each intent's version is, and the record of those last applied.

An intent's version is a hash of its section and of its file's lists and rules; it is in
every cache key made from the intent, so an edit can never meet an answer rendered before
it. The versions last applied are recorded in a small file of this node's state (not in the
cache, whose privacy policies would cap how long the record lives), so that a reload made
from the command line knows which intents changed since and purges exactly theirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def version_of(*parts: Any) -> str:
    """A short, stable hash of ``parts`` (JSON-like values)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class VersionRecord:
    """The intent versions last applied on this node, in a JSON file."""

    def __init__(self, path: Path) -> None:
        """``path``: the record's file (created on the first :meth:`save`)."""
        self.path = path

    def load(self) -> dict[str, str]:
        """Intent name -> version last applied; empty when there is no (readable) record."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("template version record %s unreadable (%s): every intent counts as "
                        "new", self.path, error)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def save(self, versions: Mapping[str, str]) -> None:
        """Replace the record with ``versions`` (atomically: a crash leaves the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(dict(sorted(versions.items())), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
