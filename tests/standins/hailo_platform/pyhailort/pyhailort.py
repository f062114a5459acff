"""The stand-in's ``hailo_platform.pyhailort.pyhailort``: the Python classes of HailoRT
5.1.1's GenAI API, as ``pyhailort.py`` defines them (see :mod:`tests.standins.hailo_platform`)."""

from __future__ import annotations

import inspect
import json
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.standins.hailo_platform import _device as device
from tests.standins.hailo_platform.pyhailort import _pyhailort
from tests.standins.hailo_platform.pyhailort._pyhailort import LLMGeneratorCompletionStatus

# -- exceptions (pyhailort.py: in 5.1.1 a pure Python hierarchy, apart from the native one) --


class HailoRTException(Exception):
    pass


class HailoRTTimeout(HailoRTException):
    pass


class HailoRTInvalidOperationException(HailoRTException):
    pass


class HailoRTInvalidArgumentException(HailoRTException):
    pass


class HailoRTNotFoundException(HailoRTException):
    pass


class HailoRTInvalidHEFException(HailoRTException):
    pass


class HailoRTHEFNotCompatibleWithDevice(HailoRTException):
    pass


class HailoRTDriverOperationFailedException(HailoRTException):
    pass


class HailoCommunicationClosedException(HailoRTException):
    pass


_BY_STATUS: dict[int, tuple[type[HailoRTException], str]] = {
    4: (HailoRTTimeout, "Received a timeout - hailort has failed because a timeout had occurred"),
    6: (HailoRTInvalidOperationException, "Invalid operation. See hailort.log for more "
                                          "information"),
    2: (HailoRTInvalidArgumentException, "Invalid argument. See hailort.log for more "
                                         "information"),
    61: (HailoRTNotFoundException, "Item not found. See hailort.log for more information"),
    26: (HailoRTInvalidHEFException, "Invalid HEF. See hailort.log for more information"),
    93: (HailoRTHEFNotCompatibleWithDevice, "HEF file is not compatible with device. See "
                                            "hailort.log for more information"),
    36: (HailoRTDriverOperationFailedException, "Failure in hailort driver ioctl. run 'dmesg | "
                                                "grep hailo' for more information"),
    62: (HailoCommunicationClosedException, "Communication closed failure. Check "
                                            "server-client connection"),
}
_NAMES = {8: "HAILO_INTERNAL_FAILURE", 13: "HAILO_OPEN_FILE_FAILURE", 73: "HAILO_DEVICE_IN_USE",
          65: "HAILO_NOT_AVAILABLE"}


class ExceptionWrapper:
    """Translates the native status exception into the class for its status; anything else
    goes through as it is."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        if value is not None and kind is _pyhailort.HailoRTStatusException:
            raise self.create_exception_from_status(int(value.args[0])) from value
        return False

    @staticmethod
    def create_exception_from_status(error_code: int) -> HailoRTException:
        found = _BY_STATUS.get(error_code)
        if found is not None:
            return found[0](found[1])
        return HailoRTException(f"libhailort failed with error: {error_code} "
                                f"({_NAMES.get(error_code, 'HAILO_UNKNOWN')})")


def _fail(code: int) -> None:
    """What the native layer raises for a failed status."""
    raise _pyhailort.HailoRTStatusException(str(code))


def _check_device() -> None:
    if device.lost:
        _fail(62)


# -- VDevice ---------------------------------------------------------------------------------


class VDeviceParams:
    def __init__(self) -> None:
        self.device_ids: list[str] = []
        self.device_count = 1
        self.scheduling_algorithm = "ROUND_ROBIN"
        self.group_id = "UNIQUE"
        self.multi_process_service = False


class VDevice:
    """A virtual device. Its default group is "UNIQUE": a second one while the first is open
    waits and fails as HailoRT's ``VDeviceManager`` does (status 73), so GenAI users that
    share the device (an LLM and Speech2Text) take the "SHARED" group, as Hailo's apps do."""

    def __init__(self, params: VDeviceParams | None = None, *,
                 device_ids: list[str] | None = None) -> None:
        from tests.standins import hailo_platform

        if hailo_platform.ARCHITECTURE is None:
            with ExceptionWrapper():
                _fail(74)  # HAILO_OUT_OF_PHYSICAL_DEVICES
        self.params = params or VDevice.create_params()
        with ExceptionWrapper(), device._lock:
            if device.unique_vdevice or (self.params.group_id == "UNIQUE"
                                         and device.shared_vdevices):
                _fail(73)
            if self.params.group_id == "UNIQUE":
                device.unique_vdevice = True
            else:
                device.shared_vdevices += 1
        self._vdevice: Any = object()

    @staticmethod
    def create_params() -> VDeviceParams:
        return VDeviceParams()

    def release(self) -> None:
        from tests.standins import hailo_platform

        if self._vdevice is None:
            return
        self._vdevice = None
        with device._lock:
            if self.params.group_id == "UNIQUE":
                device.unique_vdevice = False
            else:
                device.shared_vdevices -= 1
        hailo_platform.released.append("vdevice")


# -- LLM -------------------------------------------------------------------------------------


def _generate_511(prompt: Any, temperature: Any = None, top_p: Any = None, top_k: Any = None,
                  frequency_penalty: Any = None, max_generated_tokens: Any = None,
                  do_sample: Any = None, seed: Any = None) -> None: ...


def _generate_520(prompt: Any, tools: Any = None, temperature: Any = None, top_p: Any = None,
                  top_k: Any = None, frequency_penalty: Any = None,
                  max_generated_tokens: Any = None, do_sample: Any = None,
                  seed: Any = None) -> None: ...


_SIGNATURES = {"5.1.1": inspect.signature(_generate_511), "5.2.0": inspect.signature(_generate_520)}
_TEMPLATES = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


class _Template:
    """``PromptTemplateHandler`` (``minja_wrapper.cpp``): the first structured prompt of a
    context gets the whole template (and so the default system prompt when it has none);
    later ones are rendered after a dummy turn and that rendering's head cut off. Only
    ``clear_context()`` and a new LLM make the next one first again."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._template = _TEMPLATES.from_string(source)
        self.first = True
        self._head = self.render([{"role": "TMP", "content": "TMP"}], generation=False)

    def render(self, messages: list[dict[str, Any]], *, generation: bool = True) -> str:
        return self._template.render(messages=messages, add_generation_prompt=generation)

    def apply(self, messages: list[dict[str, Any]]) -> str:
        if self.first:
            self.first = False
            return self.render(messages)
        if device.VERSION >= "5.2.0" and any(m.get("role") == "system" for m in messages):
            _fail(6)  # "System role messages can only be provided on the first prompt"
        return self.render([{"role": "TMP", "content": "TMP"}, *messages])[len(self._head):]


class LLM:
    """``LLM(vdevice, model_path, lora_name="", optimize_memory_on_device=False)``."""

    def __init__(self, vdevice: VDevice, model_path: str, lora_name: str = "",
                 optimize_memory_on_device: bool = False) -> None:
        # Not wrapped in ExceptionWrapper, as in HailoRT: the raw status exception escapes.
        device.calls.append(("__init__", {"model_path": model_path, "lora_name": lora_name}))
        if vdevice._vdevice is None:
            raise AttributeError("'NoneType' object has no attribute '_vdevice'")
        _check_device()
        try:
            with open(model_path, "rb") as hef:
                self._hash = hef.read(64)
        except OSError:
            _fail(13)
        with device._lock:
            if device.kv_cache_in_use:
                _fail(62)  # "KV-Cache is already in use by another model!": the session drops
            device.kv_cache_in_use = True
        self._llm: _Native | None = _Native(self._hash)

    # Every method but the constructor goes through ExceptionWrapper, as pyhailort.py's do.

    def generate(self, prompt: Any, *args: Any, **kwargs: Any) -> LLMGeneratorCompletion:
        bound = _SIGNATURES[device.VERSION].bind(prompt, *args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        device.calls.append(("generate", given))
        tools = given.get("tools")
        if tools is not None and (not isinstance(tools, list)
                                  or not all(isinstance(t, dict) for t in tools)):
            raise HailoRTException("tools must be a list of dicts")
        if not isinstance(prompt, str):
            if not isinstance(prompt, list):
                raise HailoRTException("prompt must be a list of dicts in chat format")
            if not all(isinstance(m, dict) for m in prompt):
                raise HailoRTException("prompt must be a list of dicts")
            prompt = [json.dumps(m) for m in prompt]
        params = {k: v for k, v in given.items() if k not in ("prompt", "tools") and v is not None}
        with ExceptionWrapper():
            return LLMGeneratorCompletion(self._native().generate(params, prompt))

    def generate_all(self, prompt: Any, *args: Any, timeout_ms: int = 600000,
                     **kwargs: Any) -> str:
        with self.generate(prompt, *args, **kwargs) as completion:
            return completion.read_all(timeout_ms)

    def tokenize(self, text: str) -> list[int]:
        with ExceptionWrapper():
            _check_device()
            self._native()
            return device.token_ids(text)

    def get_context_usage_size(self) -> int:
        with ExceptionWrapper():
            return len(self._native().context)

    def max_context_capacity(self) -> int:
        with ExceptionWrapper():
            self._native()
            return device.CAPACITY

    def clear_context(self) -> None:
        device.calls.append(("clear_context", {}))
        with ExceptionWrapper():
            self._native().clear()

    def prompt_template(self) -> str:
        with ExceptionWrapper():
            return self._native().template.source

    def get_generation_recovery_sequence(self) -> str:
        with ExceptionWrapper():
            return self._native().recovery

    def set_generation_recovery_sequence(self, sequence: str) -> None:
        device.calls.append(("set_generation_recovery_sequence", {"sequence": sequence}))
        with ExceptionWrapper():
            self._native().recovery = sequence

    def save_context(self) -> bytes:
        device.calls.append(("save_context", {}))
        with ExceptionWrapper():
            return bytes(self._native().save())

    def load_context(self, context_data: bytes) -> None:
        device.calls.append(("load_context", {}))
        with ExceptionWrapper():
            self._native().load(list(context_data))

    def release(self) -> None:
        device.calls.append(("release", {}))
        with ExceptionWrapper():
            if self._llm is not None:
                self._llm.release()
        self._llm = None

    def _native(self) -> _Native:
        if self._llm is None:  # what calling a released LLM gives in HailoRT
            raise AttributeError("'NoneType' object has no attribute 'generate'")
        _check_device()
        return self._llm

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *args: Any) -> bool:
        self.release()
        return False


_MAGIC = b"HCTX"


class _Native:
    """The LLM as the device server keeps it: its context (tokens), the template handler
    (on the host in HailoRT), the live generation."""

    def __init__(self, model_hash: bytes) -> None:
        self.model_hash = model_hash
        self.template = _Template(device.QWEN2_TEMPLATE)
        self.context: list[str] = []
        self.recovery = device.EOS
        self.live: _Generation | None = None

    def generate(self, params: dict[str, Any], prompt: str | list[str]) -> _Generation:
        if self.live is not None and self.live.status is LLMGeneratorCompletionStatus.GENERATING:
            _fail(6)
        merged = {**device.DEFAULTS, **params}
        _validate(merged)  # create_generator: before the prompt is read
        if isinstance(prompt, str):
            if not prompt:
                _fail(2)  # "Prompt cannot be empty"
            text = prompt
        else:
            if not prompt:
                _fail(2)
            text = self.template.apply([json.loads(m) for m in prompt])
        tokens = device.pieces(text)
        if len(self.context) + len(tokens) > device.CAPACITY:
            _fail(8)  # the stand-in's choice: HailoRT's behaviour past its KV cache is unknown
        self.context += tokens
        self.live = _Generation(self, merged)
        return self.live

    def clear(self) -> None:
        if self.live is not None and self.live.status is LLMGeneratorCompletionStatus.GENERATING:
            _fail(6)  # "Failed to clear context. Make sure there is no other generation ..."
        self.context = []
        self.template.first = True

    def save(self) -> list[int]:
        body = json.dumps(self.context).encode()
        return list(_MAGIC + len(self.model_hash).to_bytes(2, "big") + self.model_hash + body)

    def load(self, data: list[int]) -> None:
        blob = bytes(data)
        if len(blob) < 6 or blob[:4] != _MAGIC:
            _fail(2)  # "Invalid header magic"
        size = int.from_bytes(blob[4:6], "big")
        if blob[6:6 + size] != self.model_hash:
            _fail(2)  # "Invalid model hash": another model's context
        try:
            context = json.loads(blob[6 + size:])
        except ValueError:
            _fail(2)
        self.context = list(context)  # the template's first-prompt state is left as it was

    def release(self) -> None:
        with device._lock:
            device.kv_cache_in_use = False


def _validate(params: dict[str, Any]) -> None:
    """``LLM::Impl::validate_generator_params`` (``llm.cpp``)."""
    for name in ("top_k", "max_generated_tokens", "seed"):
        if int(params[name]) < 0:
            raise TypeError(f"incompatible function arguments: {name} is a uint32")
    if not params["temperature"] > 0:
        _fail(2)  # "Temperature should be higher than '0'", whatever do_sample says
    if not 0 <= params["top_p"] <= 1:
        _fail(2)
    if not params["top_k"] >= 1:
        _fail(2)
    if params["frequency_penalty"] == 0:
        _fail(2)
    if device.VERSION < "5.2.0" and not params["max_generated_tokens"] >= 1:
        _fail(2)  # "max_generated_tokens should be greater than or equal to '1'"


class _Generation:
    """One generation on the device: tokens come one ``read`` at a time."""

    def __init__(self, llm: _Native, params: dict[str, Any]) -> None:
        self.llm = llm
        self.limit = int(params["max_generated_tokens"])
        sample = bool(params["do_sample"])
        context = "".join(llm.context)
        device.contexts.append(context)
        self.answer = device.answer(context, sample=sample, seed=int(params["seed"]))
        self.generated = 0
        self.pending: list[tuple[str, LLMGeneratorCompletionStatus]] = []
        self.status = LLMGeneratorCompletionStatus.GENERATING
        self.started = time.monotonic()
        self.read_at = self.started + device.first_token_seconds
        if self.limit == 0:  # 5.2.0: prefill only; nothing back, no recovery sequence
            self.status = LLMGeneratorCompletionStatus.MAX_TOKENS_REACHED

    def read(self, timeout_ms: int) -> str:
        if self.status is not LLMGeneratorCompletionStatus.GENERATING:
            _fail(6)  # "read() cannot be called after generation completed!"
        if device.lost:
            _fail(6)  # the token reader thread stopped with the connection
        ready = self.read_at + device.token_seconds  # the device writes ahead of the reader
        wait = ready - time.monotonic()
        if wait > timeout_ms / 1000:
            time.sleep(timeout_ms / 1000)
            _fail(4)  # the token stays due: a later read gets it
        time.sleep(max(0.0, wait))
        self.read_at = ready
        token, status = self._next()
        self.llm.context.append(token)
        if len(self.llm.context) > device.CAPACITY:
            _fail(8)
        self.status = status
        return token

    def _next(self) -> tuple[str, LLMGeneratorCompletionStatus]:
        if self.pending:
            return self.pending.pop(0)
        token = self.answer[self.generated]
        self.generated += 1
        if token == device.STOP:
            return token, LLMGeneratorCompletionStatus.LOGICAL_END_OF_GENERATION
        if self.generated >= self.limit:
            recovery = device.pieces(self.llm.recovery)
            if not recovery:
                return token, LLMGeneratorCompletionStatus.MAX_TOKENS_REACHED
            self.pending = [(t, LLMGeneratorCompletionStatus.GENERATING) for t in recovery]
            self.pending[-1] = (recovery[-1], LLMGeneratorCompletionStatus.MAX_TOKENS_REACHED)
        return token, LLMGeneratorCompletionStatus.GENERATING

    def abort(self) -> None:
        """Leaving a generation under way (``~LLMGeneratorCompletion::Impl``): aborted, its
        recovery sequence still put into the context."""
        device.calls.append(("abort", {"generated": self.generated}))
        self.llm.context += device.pieces(self.llm.recovery)
        self.status = LLMGeneratorCompletionStatus.ABORTED


class LLMGeneratorCompletion:
    """``generate()``'s result: a context manager and an iterator of token texts."""

    def __init__(self, generator_completion: _Generation) -> None:
        self._generator_completion: _Generation | None = generator_completion

    def release(self) -> None:
        completion, self._generator_completion = self._generator_completion, None
        if completion is not None and completion.status is LLMGeneratorCompletionStatus.GENERATING:
            completion.abort()

    def __enter__(self) -> LLMGeneratorCompletion:
        return self

    def __exit__(self, *args: Any) -> bool:
        self.release()
        return False

    @property
    def generation_status(self) -> LLMGeneratorCompletionStatus:
        with ExceptionWrapper():
            return self._completion().status

    def read(self, timeout_ms: int = 10000) -> str:
        with ExceptionWrapper():
            return self._completion().read(timeout_ms)

    def read_all(self, timeout_ms: int = 10000) -> str:
        with ExceptionWrapper():
            completion = self._completion()
            deadline = time.monotonic() + timeout_ms / 1000
            text = ""
            while completion.status is LLMGeneratorCompletionStatus.GENERATING:
                left = max(0, round((deadline - time.monotonic()) * 1000))
                text += completion.read(left)
            return text

    def __iter__(self) -> LLMGeneratorCompletion:
        return self

    def __next__(self) -> str:
        if self.generation_status is not LLMGeneratorCompletionStatus.GENERATING:
            raise StopIteration("Generation complete")
        return self.read()

    def _completion(self) -> _Generation:
        if self._generator_completion is None:
            raise AttributeError("'NoneType' object has no attribute 'read'")
        return self._generator_completion


# -- Speech2Text -----------------------------------------------------------------------------


class Speech2TextTask(Enum):
    TRANSCRIBE = _pyhailort.Speech2TextTask.TRANSCRIBE
    TRANSLATE = _pyhailort.Speech2TextTask.TRANSLATE


@dataclass(frozen=True)
class SegmentInfo:
    start_sec: float
    end_sec: float
    text: str


SUPPORTED_LANGUAGE_CODES = frozenset(("en", "de", "es", "fr", "it", "nl", "pt", "ru", "zh"))
_whisper: Any = None
_whisper_lock = threading.Lock()


class Speech2Text:
    """``Speech2Text(vdevice, model_path)`` (5.1.1's keyword API). Whisper-Base on the
    device; here tiny.en from the project's default model package, on the CPU, in the
    device's 10 s chunks."""

    def __init__(self, vdevice: VDevice, model_path: str) -> None:
        device.calls.append(("Speech2Text", {"model_path": model_path}))
        if vdevice._vdevice is None:
            raise AttributeError("'NoneType' object has no attribute '_vdevice'")
        _check_device()
        try:
            with open(model_path, "rb"):
                pass
        except OSError:
            _fail(13)
        self._released = False

    def generate_all_segments(self, audio_data: Any, task: Speech2TextTask =
                              Speech2TextTask.TRANSCRIBE, language: str = "en",
                              timeout_ms: int = 10000) -> list[SegmentInfo]:
        device.calls.append(("generate_all_segments", {"task": task, "language": language,
                                                       "timeout_ms": timeout_ms}))
        if not isinstance(audio_data, np.ndarray) or audio_data.ndim != 1:
            raise ValueError("Audio data must be 1-dimensional")
        if audio_data.dtype != np.float32:
            raise ValueError("Audio data must be float32 type")
        with ExceptionWrapper():
            if self._released:
                _fail(6)
            _check_device()
            if audio_data.size == 0 or language not in SUPPORTED_LANGUAGE_CODES:
                _fail(2)
            return _transcribe(audio_data)

    def generate_all_text(self, audio_data: Any, task: Speech2TextTask =
                          Speech2TextTask.TRANSCRIBE, language: str = "en",
                          timeout_ms: int = 10000) -> str:
        segments = self.generate_all_segments(audio_data, task, language, timeout_ms)
        return "".join(segment.text for segment in segments)

    def release(self) -> None:
        device.calls.append(("release_speech2text", {}))
        self._released = True

    def __enter__(self) -> Speech2Text:
        return self

    def __exit__(self, *args: Any) -> bool:
        self.release()
        return False


def _transcribe(audio: np.ndarray) -> list[SegmentInfo]:
    global _whisper
    from faster_whisper import WhisperModel

    from assistant.speech.stt import default_model

    with _whisper_lock:
        if _whisper is None:
            _whisper = WhisperModel(str(default_model()), device="cpu",
                                    compute_type="int8")
        segments = []
        for start in range(0, len(audio), 10 * 16000):  # the device's 10 s windows
            chunk = audio[start:start + 10 * 16000]
            found, _ = _whisper.transcribe(chunk, language="en", beam_size=1,
                                           condition_on_previous_text=False)
            for s in found:
                segments.append(SegmentInfo(start / 16000 + s.start, start / 16000 + s.end,
                                            s.text))
        return segments
