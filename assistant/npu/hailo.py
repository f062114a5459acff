"""The Hailo-10H NPU (AI HAT+ 2) through HailoRT's Python API (``hailo_platform``): finding
it, sharing one virtual device between the language model and speech recognition, and
turning HailoRT's errors into the service's.

hailo-platform is not on PyPI: on a Pi it comes with the ``hailo-h10-all`` apt package
(HailoRT 5.1.1 today) and the virtualenv needs ``--system-site-packages``. The Hailo-8/8L
of the first AI HAT+ cannot run generative models.

**Errors.** HailoRT raises subclasses of ``HailoRTException``
(``hailo_platform.pyhailort.pyhailort``); its constructors (``LLM``, ``Speech2Text``) raise
the native ``HailoRTStatusException`` carrying the status number instead, which
:func:`translate` maps the way HailoRT's own ``ExceptionWrapper`` does. What each becomes:

- at start, anything (no device, the device in use, a HEF it cannot run): :class:`ConfigError`,
  and ``auto`` uses the CPU;
- ``HailoCommunicationClosedException`` or ``HailoRTDriverOperationFailedException`` later
  (the device's server or driver gone): :class:`DeviceLost`, and ``auto`` moves to the CPU
  for what follows;
- ``HailoRTTimeout``: :class:`GenerationTimeout`;
- ``HailoRTInvalidArgumentException``, ``HailoRTInvalidOperationException`` and the rest: a
  :class:`GenerationError` for that request alone (the part says its fallback).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from types import ModuleType
from typing import Any, ClassVar

from assistant.errors import ConfigError, DeviceLost, GenerationError, GenerationTimeout

log = logging.getLogger(__name__)

SHARED_GROUP = "SHARED"
"""The virtual device group both users of the NPU join (HailoRT's default, "UNIQUE", lets
one process hold the device; Hailo's own voice assistant shares it this way)."""


def platform(module: ModuleType | None = None) -> ModuleType:
    """``hailo_platform`` (or ``module``, a stand-in in tests)."""
    if module is not None:
        return module
    try:
        return importlib.import_module("hailo_platform")
    except ImportError:
        raise ConfigError("hailo_platform is not installed (apt: hailo-h10-all; the venv "
                          "needs --system-site-packages)") from None


def genai(module: ModuleType) -> ModuleType:
    return getattr(module, "genai", None) or importlib.import_module(f"{module.__name__}.genai")


def _errors(module: ModuleType) -> ModuleType:
    return importlib.import_module(f"{module.__name__}.pyhailort.pyhailort")


def architecture(module: ModuleType) -> str:
    """The architecture of the first Hailo device (e.g. ``HAILO10H``), or "" if none."""
    try:
        devices = module.Device.scan()
        if not devices:
            return ""
        device = module.Device(devices[0])
        try:
            identity = device.control.identify()
            return str(getattr(identity.device_architecture, "name",
                               identity.device_architecture))
        finally:
            release = getattr(device, "release", None)
            if release is not None:
                release()
    except Exception as error:  # noqa: BLE001 - any driver failure means "no usable device"
        log.debug("no Hailo device: %s", error)
        return ""


def unavailable(model: Any, module: ModuleType | None = None, *,
                what: str = "language models") -> str | None:
    """Why the NPU cannot run ``model`` (a HEF path) here, or None when it can."""
    try:
        found = platform(module)
        genai(found)
    except (ConfigError, ImportError) as error:
        return str(error)
    if model is None:
        return "no Hailo model (.hef) is configured"
    if not model.is_file():
        return f"the Hailo model {model} does not exist"
    arch = architecture(found)
    if not arch:
        return "no Hailo device was found"
    if "10" not in arch:
        return f"the Hailo device is a {arch}, which cannot run {what} (a Hailo-10H can)"
    return None


def version(module: ModuleType) -> str:
    return str(getattr(module, "__version__", "unknown"))


def _native(module: ModuleType) -> tuple[type[BaseException], ...]:
    """The native module's exception classes: in 5.1.1 none of them derives from
    ``pyhailort.HailoRTException``."""
    native = importlib.import_module(f"{module.__name__}.pyhailort._pyhailort")
    return tuple(kind for name in ("HailoRTStatusException", "HailoRTException",
                                   "HailoRTCustomException")
                 if isinstance(kind := getattr(native, name, None), type))


def translate(error: BaseException, module: ModuleType, doing: str) -> Exception:
    """``error`` (from HailoRT, while ``doing`` something) as the service's own error; a
    constructor's native status exception first mapped as ``ExceptionWrapper`` maps it."""
    errors = _errors(module)
    status = getattr(importlib.import_module(f"{module.__name__}.pyhailort._pyhailort"),
                     "HailoRTStatusException", None)
    wrapper = getattr(errors, "ExceptionWrapper", None)
    if status is not None and type(error) is status and wrapper is not None:
        with contextlib.suppress(ValueError, IndexError, TypeError, AttributeError):
            error = wrapper.create_exception_from_status(int(error.args[0]))
    what = f"{type(error).__name__}: {error}"
    lost = tuple(getattr(errors, name) for name in (
        "HailoCommunicationClosedException", "HailoRTDriverOperationFailedException")
        if hasattr(errors, name))
    if isinstance(error, lost):
        return DeviceLost(f"the Hailo NPU stopped answering while {doing} ({what})")
    if isinstance(error, getattr(errors, "HailoRTTimeout", ())):
        return GenerationTimeout(f"the Hailo NPU timed out while {doing}")
    return GenerationError(f"HailoRT refused {doing}: {what}")


def is_hailo_error(error: BaseException, module: ModuleType) -> bool:
    """Is ``error`` one of HailoRT's own (pyhailort.py's, or the native module's)?"""
    base = getattr(_errors(module), "HailoRTException", None)
    kinds = (*_native(module), *((base,) if isinstance(base, type) else ()))
    return isinstance(error, kinds)


def is_invalid_argument(error: BaseException, module: ModuleType) -> bool:
    kind = getattr(_errors(module), "HailoRTInvalidArgumentException", None)
    return isinstance(kind, type) and isinstance(error, kind)


class SharedDevice:
    """One virtual device per process in the "SHARED" group, opened by its first user and
    released by its last (the language model and speech recognition)."""

    _lock = threading.Lock()
    _open: ClassVar[dict[int, tuple[Any, int]]] = {}

    @classmethod
    def acquire(cls, module: ModuleType) -> Any:
        with cls._lock:
            found = cls._open.get(id(module))
            if found is not None:
                cls._open[id(module)] = (found[0], found[1] + 1)
                return found[0]
            params = module.VDevice.create_params()
            params.group_id = SHARED_GROUP
            vdevice = module.VDevice(params)
            cls._open[id(module)] = (vdevice, 1)
            return vdevice

    @classmethod
    def release(cls, module: ModuleType, vdevice: Any) -> None:
        with cls._lock:
            found = cls._open.get(id(module))
            if found is None or found[0] is not vdevice:
                return
            if found[1] > 1:
                cls._open[id(module)] = (vdevice, found[1] - 1)
                return
            del cls._open[id(module)]
        try:
            vdevice.release()
        except Exception as error:  # noqa: BLE001 - a lost device cannot release cleanly
            log.warning("releasing the Hailo virtual device: %s", error)


def let_go(module: ModuleType | None, model: Any, vdevice: Any, what: str) -> None:
    """Release a model (``LLM`` or ``Speech2Text``), then this user's hold on the shared
    virtual device; a lost device's refusal is logged, not raised."""
    if model is not None:
        try:
            model.release()
        except Exception as error:  # noqa: BLE001 - a lost device cannot release cleanly
            log.warning("releasing the Hailo %s: %s", what, error)
    if vdevice is not None and module is not None:
        SharedDevice.release(module, vdevice)
