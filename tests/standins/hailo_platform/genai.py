"""The stand-in's ``hailo_platform.genai`` (HailoRT 5.1.1 exports these names)."""

from __future__ import annotations

from tests.standins.hailo_platform.pyhailort.pyhailort import (
    LLM,
    Speech2Text,
    Speech2TextTask,
    VDevice,
)

__all__ = ["LLM", "Speech2Text", "Speech2TextTask", "VDevice"]
