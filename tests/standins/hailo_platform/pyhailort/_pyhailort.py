"""What the stand-in's native module would hold: the status exception raised by unwrapped
calls (constructors), and the enums the bindings define (HailoRT 5.1.1,
``bindings/python/src/pyhailort.cpp``, ``llm_api.cpp``, ``speech2text_api.cpp``)."""

from __future__ import annotations

import enum


class HailoRTException(Exception):
    """The native base. 5.1.1 registers each native exception with base ``Exception``
    (``pyhailort.cpp``): none of them is a ``pyhailort.HailoRTException``."""


class HailoRTCustomException(Exception):
    pass


class HailoRTStatusException(Exception):
    """A failed call; ``args[0]`` is the numeric status as a string (``utils.hpp``)."""


class LLMGeneratorCompletionStatus(enum.Enum):
    """``genai::LLMGeneratorCompletion::Status`` (``llm.hpp``)."""

    GENERATING = 0
    MAX_TOKENS_REACHED = 1
    LOGICAL_END_OF_GENERATION = 2
    ABORTED = 3


class Speech2TextTask(enum.Enum):
    TRANSCRIBE = 0
    TRANSLATE = 1
