"""A stand-in for ``hailo_platform.genai`` (see the package docstring)."""

from __future__ import annotations

import json
import time
from typing import Any

calls: list[tuple[str, dict[str, Any]]] = []
"""Every call made on any LLM: (method, keyword arguments)."""
script: dict[str, str] = {}
"""User message -> what the model says to it (else an echo)."""
delay: float = 0.0
"""Seconds each generate_all takes."""


class OlderLLM:
    """An LLM loaded on a VDevice from a HEF file, as versions without saved contexts have it."""

    def __init__(self, vdevice: Any, hef_path: str, *args: Any) -> None:
        if args:
            raise TypeError("LLM takes (vdevice, hef_path)")
        self.vdevice = vdevice
        self.hef_path = hef_path
        self.context: list[dict[str, str]] = []
        self.released = False
        calls.append(("__init__", {"hef_path": hef_path}))

    def generate_all(self, *, prompt: list[dict[str, str]], temperature: float, top_p: float,
                     seed: int, max_generated_tokens: int, do_sample: bool) -> str:
        """Keyword arguments only, as the documented API is used."""
        assert not self.released
        calls.append(("generate_all", {"prompt": prompt, "temperature": temperature,
                                       "top_p": top_p, "seed": seed,
                                       "max_generated_tokens": max_generated_tokens,
                                       "do_sample": do_sample}))
        time.sleep(delay)
        self.context += prompt
        users = [m["content"] for m in self.context if m["role"] == "user"]
        if not users:
            return "Ok"
        systems = [m["content"] for m in self.context if m["role"] == "system"]
        said = script.get(users[-1], f"You said {users[-1]}.")
        # What a real model leaks at times: the end-of-turn marker and what follows it.
        return f"{said}<|im_end|>\n<|im_start|>user" if systems else said

    def clear_context(self) -> None:
        calls.append(("clear_context", {}))
        self.context = []

    def release(self) -> None:
        calls.append(("release", {}))
        self.released = True


class LLM(OlderLLM):
    """An LLM whose context can be saved and restored."""

    def save_context(self) -> bytes:
        calls.append(("save_context", {}))
        return json.dumps(self.context).encode()

    def load_context(self, data: bytes) -> None:
        calls.append(("load_context", {}))
        self.context = json.loads(data)
