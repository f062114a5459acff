"""Whisper on the Hailo-10H NPU, through ``hailo_platform.genai.Speech2Text`` (HailoRT 5.1.1:
``generate_all_segments(audio, task, language, timeout_ms)``; Whisper-Base is the model
Hailo compiles for it).

It shares the device with the language model (:class:`~assistant.npu.hailo.SharedDevice`).
HailoRT gives the text of each segment and nothing more: no alternative transcripts, no
scores, no prompt, so the grammar's choice among the templates' sentences
(:mod:`assistant.speech.grammar`) is not made on this path; recognition's tolerant
matching still is. Tested against the stand-in in ``tests/standins/hailo_platform``; it has
not run on a Hailo-10H.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np

from assistant.errors import AudioError, ConfigError, DeviceLost
from assistant.model_files import model_version
from assistant.npu import hailo as npu
from assistant.npu.hailo import SharedDevice


class HailoSpeech:
    """A Whisper HEF loaded on the NPU."""

    def __init__(self, hef: Path, *, platform: ModuleType | None = None) -> None:
        self.hef = hef
        self._platform = platform
        self._module: ModuleType | None = None
        self._vdevice: Any = None
        self._model: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self.version = ""
        """The HEF's content hash and the HailoRT version: in every transcript's cache key."""

    def start(self) -> Self:
        module = self._module = npu.platform(self._platform)
        genai = npu.genai(module)
        if not self.hef.is_file():
            raise ConfigError(f"the Hailo speech model {self.hef} does not exist")
        try:
            self._vdevice = SharedDevice.acquire(module)
            self._model = genai.Speech2Text(self._vdevice, str(self.hef))
        except Exception as error:
            self.close()
            if not npu.is_hailo_error(error, module):
                raise
            raise ConfigError(f"cannot load {self.hef} on the Hailo device: "
                              f"{npu.translate(error, module, 'loading the speech model')}") \
                from error
        self._task = genai.Speech2TextTask.TRANSCRIBE
        self.version = f"hailo:{npu.version(module)}:{model_version([self.hef])}"
        return self

    def transcribe(self, samples: np.ndarray[Any, np.dtype[np.float32]],
                   language: str | None) -> str:
        """The words in 16 kHz mono samples. :class:`DeviceLost` when the NPU is gone,
        :class:`AudioError` (``stt_failed``) for any other refusal."""
        if self._model is None or self._module is None:
            raise AudioError("stt_failed", "the Hailo speech model is not loaded")
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        options: dict[str, Any] = {"task": self._task}
        if language:  # else the library's own default (5.1.1: en; 5.2.0: detected)
            options["language"] = language
        try:
            with self._lock:  # one request at a time on the device
                segments = self._model.generate_all_segments(audio, **options)
        except Exception as error:
            if not npu.is_hailo_error(error, self._module):
                raise
            translated = npu.translate(error, self._module, "transcribing")
            if isinstance(translated, DeviceLost):
                raise translated from error
            raise AudioError("stt_failed", str(translated)) from error
        return " ".join(str(segment.text).strip() for segment in segments).strip()

    def close(self) -> None:
        model, vdevice, self._model, self._vdevice = self._model, self._vdevice, None, None
        npu.let_go(self._module, model, vdevice, "speech model")
