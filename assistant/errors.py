"""The service's errors: one small hierarchy; each carries a code for the error topic."""

from __future__ import annotations


class AssistantError(Exception):
    """Base class of the service's own errors."""

    code = "internal"


class ConfigError(AssistantError):
    """A settings, entities or template file is wrong; the message names the file and line."""

    code = "bad_config"


class TemplateError(ConfigError):
    """An intent template does not load, validate or render."""

    code = "bad_template"


class AudioError(AssistantError):
    """Audio that cannot be used; ``code`` says why (see :mod:`assistant.audio`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GenerationError(AssistantError):
    """The language model gave no usable text; the fragment's fallback is said instead."""

    code = "generation_failed"


class GenerationTimeout(GenerationError):
    """The language model took longer than allowed."""

    code = "generation_timeout"


class DeviceLost(GenerationError):
    """The device a backend runs on stopped answering (the NPU's server or driver gone)."""
