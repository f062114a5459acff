"""The Hailo-10H NPU (AI HAT+ 2) through ``hailo_platform.genai``.

hailo-platform is not on PyPI: on a Pi it comes with the ``hailo-h10-all`` apt package
and the virtualenv needs ``--system-site-packages``. The Hailo-8/8L of the first AI HAT+
cannot run LLMs; :func:`unavailable` says why the NPU is not used, and ``auto`` then
falls back to the CPU.

The calls follow the documented API: ``VDevice()``, ``LLM(vdevice, hef_path)``,
``generate_all(prompt=[messages], temperature=..., top_p=..., seed=...,
max_generated_tokens=..., do_sample=...)`` with keyword arguments only,
``clear_context()`` before each independent request, ``release()`` on shutdown. Where
the installed version has ``save_context``/``load_context``, the context after a system
prompt is saved and restored instead of being computed again. Stop-token text that leaks
into the output (``<|im_end|>``) is cut off.
"""

from __future__ import annotations

import importlib
import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from assistant.errors import ConfigError, GenerationError, GenerationTimeout
from assistant.generation import base
from assistant.generation.base import Backend, Completion, PrefixStore, Request
from assistant.model_files import model_version
from assistant.speech.sentences import ends_sentence

log = logging.getLogger(__name__)


def _platform(module: ModuleType | None) -> ModuleType:
    if module is not None:
        return module
    try:
        return importlib.import_module("hailo_platform")
    except ImportError:
        raise ConfigError("hailo_platform is not installed (apt: hailo-h10-all; the venv "
                          "needs --system-site-packages)") from None


def architecture(platform: ModuleType) -> str:
    """The architecture of the first Hailo device (e.g. ``HAILO10H``), or "" if none."""
    try:
        devices = platform.Device.scan()
        if not devices:
            return ""
        device = platform.Device(devices[0])
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


def unavailable(hef: Path | None, platform: ModuleType | None = None) -> str | None:
    """Why the NPU cannot generate here, or None when it can."""
    try:
        module = _platform(platform)
        if platform is None:
            importlib.import_module(f"{module.__name__}.genai")
    except (ConfigError, ImportError) as error:
        return str(error)
    if hef is None:
        return "no Hailo model (.hef) is configured"
    if not hef.is_file():
        return f"the Hailo model {hef} does not exist"
    arch = architecture(module)
    if not arch:
        return "no Hailo device was found"
    if "10" not in arch:
        return f"the Hailo device is a {arch}, which cannot run language models (a Hailo-10H can)"
    return None


class HailoBackend(Backend):
    """An LLM compiled for the Hailo-10H."""

    name = "hailo"

    def __init__(self, hef: Path, *, platform: ModuleType | None = None) -> None:
        """``hef``: the compiled model; ``platform``: the ``hailo_platform`` module (a
        stand-in in tests; no NPU is here)."""
        super().__init__(hef.name)
        self._hef = hef
        self._platform = platform
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._vdevice: Any = None
        self._llm: Any = None
        self._saves = False
        self._runtime = "unknown"

    def start(self) -> Self:
        """Open the device and load the model."""
        if self._llm is not None:
            return self
        module = _platform(self._platform)
        genai = getattr(module, "genai", None) or importlib.import_module(
            f"{module.__name__}.genai")
        hef = self._hef
        if not hef.is_file():
            raise ConfigError(f"the Hailo model {hef} does not exist")
        version = model_version([hef])
        try:
            self._vdevice = module.VDevice()
            self._llm = genai.LLM(self._vdevice, str(hef))
        except Exception as error:
            raise ConfigError(f"cannot load {hef} on the Hailo device: {error}") from error
        self.model_version = self.tokenizer_version = version  # the tokenizer is in the HEF
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hailo")
        self._saves = hasattr(self._llm, "save_context") and hasattr(self._llm, "load_context")
        self._runtime = str(getattr(module, "__version__", "unknown"))
        return self

    @property
    def state_format(self) -> str:
        return f"hailo context, hailort {self._runtime}"

    def _generate(self, messages: list[dict[str, str]], request: Request,
                  max_tokens: int) -> str:
        sample = request.temperature > 0
        # Unseeded sampling must not repeat itself: a fresh seed each time.
        seed = request.seed if request.seed is not None else (
            secrets.randbelow(2**31) if sample else 0)
        return str(self._llm.generate_all(
            prompt=messages, temperature=request.temperature if sample else 0.0,
            top_p=request.top_p, seed=seed, max_generated_tokens=max_tokens, do_sample=sample))

    def _restored(self, state: bytes) -> bool:
        try:
            self._llm.load_context(state)
            return True
        except Exception as error:  # noqa: BLE001 - a stale or damaged context: made again
            log.warning("saved Hailo context not loaded (%s); reading the system prompt again",
                        error)
            self._llm.clear_context()
            return False

    def _run(self, request: Request, deadline: float,
             states: PrefixStore | None) -> tuple[str, str]:
        with self._lock:
            if time.monotonic() > deadline:  # given up on while it waited: do not run it
                raise GenerationTimeout("the request's deadline passed while it waited")
            self._llm.clear_context()  # each request is independent
            store = states if self._saves else None
            if store is None:
                return self._generate(request.messages(), request, request.max_tokens), "off"
            system = [{"role": "system", "content": request.system_prompt}]
            found = store.load(self, request.system_prompt)
            if found is not None and self._restored(found[0]):
                source = found[1]
            else:
                # Read the system prompt alone (one token out, not kept) and save that context.
                self._generate(system, request, 1)
                store.save(self, request.system_prompt, bytes(self._llm.save_context()))
                source = "computed"
            user_turn = [{"role": "user", "content": request.prompt}]
            return self._generate(user_turn, request, request.max_tokens), source

    def complete(self, request: Request, *, deadline: float,
                 states: PrefixStore | None = None) -> Completion:
        if self._worker is None:
            raise GenerationError("the Hailo model is not loaded")
        started = time.perf_counter()
        future: Future[tuple[str, str]] = self._worker.submit(self._run, request, deadline,
                                                              states)
        try:
            text, prefix = future.result(timeout=base.remaining(deadline))
        except FutureTimeout:
            # Not started yet: it never will be. Started: the NPU finishes the call in the
            # background and its result is dropped; requests queued behind it that run out
            # of time meanwhile are skipped, not run.
            future.cancel()
            raise GenerationTimeout("the NPU did not answer in time") from None
        except GenerationTimeout:
            raise
        except Exception as error:  # any driver error
            raise GenerationError(f"hailo generation failed: {error}") from error
        clean = base.strip_stop_texts(text)
        # generate_all does not say why it stopped: text that ends mid-sentence was cut off.
        finish = "stop" if ends_sentence(clean) else "length"
        return Completion(text=clean, finish=finish, tokens=len(clean.split()),
                          seconds=time.perf_counter() - started, prefix=prefix)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        with self._lock:
            for thing in (self._llm, self._vdevice):
                release: Any = getattr(thing, "release", None)
                if release is not None:
                    release()
            self._llm = self._vdevice = None
