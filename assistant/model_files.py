"""Where the models are, and what version they are.

The default models ship inside PyPI packages; their folders are found with
:func:`importlib.util.find_spec`, without importing the packages (some need other
packages to import). Every path can be configured instead.

A model's version is the SHA-256 of its files' contents. It goes into cache keys, so
replacing a model never serves what the old one produced. Hashing a few hundred MB takes
seconds, so a digest is remembered per file by path, size and modification time, and
computed again only when one of them changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from assistant.errors import ConfigError

_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def package_folder(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(f"the package {package!r} that ships the default model is not "
                          "installed; install it, or configure the model's path")
    return Path(locations[0])


def find_one(folder: Path, pattern: str, what: str) -> Path:
    """The one file or folder under ``folder`` matching ``pattern`` (a recursive glob)."""
    found = sorted(folder.rglob(pattern))
    if not found:
        raise ConfigError(f"no {what} ({pattern}) under {folder}")
    return found[0]


def file_digest(path: Path) -> str:
    """SHA-256 of one file's bytes, remembered while its path, size and mtime stay the same."""
    stat = path.stat()
    ident = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        known = _digests.get(ident)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    value = digest.hexdigest()
    with _digests_lock:
        _digests[ident] = value
    return value


def model_version(paths: Iterable[Path]) -> str:
    """The version of a model made of ``paths`` (files, or folders whose files all count).

    Names count as well as contents, so a renamed file is a different model.
    """
    files: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            files += [(str(f.relative_to(path)), f) for f in sorted(path.rglob("*")) if f.is_file()]
        elif path.is_file():
            files.append((path.name, path))
        else:
            raise ConfigError(f"model file {path} does not exist")
    total = hashlib.sha256()
    for name, file in files:
        total.update(f"{name}\0{file_digest(file)}\n".encode())
    return total.hexdigest()[:32]


def cpu_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
