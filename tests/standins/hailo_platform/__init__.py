"""A stand-in for ``hailo_platform``, the HailoRT Python API: no NPU exists on test machines.

It follows HailoRT **5.1.1** (the ``hailo-h10-all`` apt package's version), as its own
source has it (``hailo-ai/hailort``, tag v5.1.1):
``hailort/libhailort/bindings/python/platform/hailo_platform/pyhailort/pyhailort.py`` (the
Python classes, ``ExceptionWrapper`` and the exception hierarchy),
``bindings/python/src/llm_api.cpp`` and ``speech2text_api.cpp`` (what the bindings take),
``src/genai/llm/llm.cpp`` (``validate_generator_params``, the order of a generation),
``src/genai/llm/minja_wrapper/minja_wrapper.cpp`` (the prompt template handler's
first-prompt state) and ``hailort/hailort_server/genai/llm/llm_server.cpp`` (context,
recovery sequence, the KV cache taken by one LLM per device). ``_device.VERSION = "5.2.0"``
switches on that version's differences: ``max_generated_tokens=0`` accepted, a system
message on a used context refused, ``tools`` as ``generate``'s second argument.

Where it goes beyond what the source says (the source does not say), it is stricter:
a prompt past the KV cache fails (status 8); a second "UNIQUE" VDevice fails at once
(HailoRT waits 5 s first). Its "model" is a script (:mod:`._device`); its Speech2Text is
Whisper tiny.en on the CPU.
"""

from __future__ import annotations

import enum
from typing import Any

from tests.standins.hailo_platform import _device, genai
from tests.standins.hailo_platform.pyhailort.pyhailort import (
    HailoCommunicationClosedException,
    HailoRTException,
    VDevice,
)

__all__ = ["Device", "HailoCommunicationClosedException", "HailoRTException", "VDevice",
           "genai"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _device.VERSION
    raise AttributeError(name)


class DeviceArchitecture(enum.Enum):
    HAILO8 = "HAILO8"
    HAILO8L = "HAILO8L"
    HAILO10H = "HAILO10H"


ARCHITECTURE: DeviceArchitecture | None = DeviceArchitecture.HAILO10H
"""What the one device reports; a test sets it (``None``: no device)."""

released: list[str] = []
"""Names of what was released, in order."""


class _Identity:
    def __init__(self, arch: DeviceArchitecture) -> None:
        self.device_architecture = arch


class _Control:
    def identify(self) -> _Identity:
        assert ARCHITECTURE is not None
        return _Identity(ARCHITECTURE)


class Device:
    """A physical device."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.control = _Control()

    @staticmethod
    def scan() -> list[str]:
        return [] if ARCHITECTURE is None else ["0001:01:00.0"]

    def release(self) -> None:
        released.append("device")
