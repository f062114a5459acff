"""Generation backends behind one small class, and the factory that picks one.

Each backend module imports its heavy library only when it is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

from assistant.generation.base import Backend, Completion, PrefixStore, Request
from assistant.generation.generator import Generated, Generator, PrefixCache
from assistant.settings import GeneratorSettings

log = logging.getLogger(__name__)

__all__ = ["Backend", "Completion", "Generated", "Generator", "PrefixCache", "PrefixStore",
           "Request", "cpu_fallback", "open_backend"]


def open_backend(settings: GeneratorSettings, *, hailo: ModuleType | None = None) -> Backend:
    """The configured backend (not yet started: :meth:`Backend.start` loads it).

    ``auto`` takes the Hailo-10H when ``hailo_platform``, a Hailo-10H and a configured
    ``.hef`` are all present, else llama.cpp on the CPU. ``hailo``: the ``hailo_platform``
    module to use (a stand-in in tests).
    """
    choice = settings.backend
    if choice in ("auto", "hailo"):
        from assistant.generation.hailo import HailoBackend, unavailable

        reason = unavailable(settings.hef, hailo)
        if reason is None:
            assert settings.hef is not None
            return HailoBackend(settings.hef, platform=hailo)
        if choice == "hailo":
            from assistant.errors import ConfigError

            raise ConfigError(f"the Hailo backend cannot run here: {reason}")
        log.info("generating on the CPU: %s", reason)
    if choice == "ollama":
        from assistant.generation.ollama import OllamaBackend

        return OllamaBackend(settings.ollama_url, settings.ollama_model,
                             timeout=min(settings.timeout, 5.0))
    return _cpu(settings)


def cpu_fallback(settings: GeneratorSettings) -> Callable[[], Backend] | None:
    """What ``auto`` falls back on when the NPU it chose cannot start or is lost: llama.cpp
    on the CPU (None for an explicit backend: its failure is reported, not hidden)."""
    if settings.backend != "auto":
        return None
    return lambda: _cpu(settings)


def _cpu(settings: GeneratorSettings) -> Backend:
    from assistant.generation.llama_cpp import LlamaCppBackend

    return LlamaCppBackend(settings.model, threads=settings.threads, context=settings.context)
