"""A stand-in for ``hailo_platform``, the HailoRT Python API: no NPU exists on test machines.

It follows the documented surface the assistant uses (``VDevice``, ``Device.scan``,
``Device(...).control.identify().device_architecture``, and ``genai.LLM``) and records
every call, so tests can check the glue: keyword arguments only, a cleared context per
request, saved and restored contexts, release on shutdown. It generates nothing real: its
"model" answers from a script the test sets.
"""

from __future__ import annotations

import enum
from typing import Any

from tests.standins.hailo_platform import genai

__all__ = ["Device", "VDevice", "genai"]


class DeviceArchitecture(enum.Enum):
    HAILO8 = "HAILO8"
    HAILO8L = "HAILO8L"
    HAILO10H = "HAILO10H"


ARCHITECTURE = DeviceArchitecture.HAILO10H
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


class VDevice:
    """A virtual device over the physical ones."""

    def __init__(self, params: Any = None) -> None:
        if ARCHITECTURE is None:
            raise RuntimeError("HAILO_OUT_OF_PHYSICAL_DEVICES")
        self.open = True

    def release(self) -> None:
        self.open = False
        released.append("vdevice")
