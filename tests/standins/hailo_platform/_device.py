"""The stand-in's Hailo-10H: what runs on the device (HailoRT's GenAI server) and the knobs
tests turn. See :mod:`tests.standins.hailo_platform` for what it follows.

The "model" is no network: it reads the whole context as the device holds it and answers
from :data:`script` (else "You said <the user's words>."). It answers a context laid out
the way its chat template lays out one conversation; any other layout (two system
prompts, a stray token between turns) changes its answer, as a different prompt may change
a real model's, so a test sees a prompt the glue got wrong in the text it gets back.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from typing import Any

VERSION = "5.1.1"
"""The HailoRT version modelled: ``5.1.1`` (the ``hailo-h10-all`` apt package today) or
``5.2.0`` (``max_generated_tokens=0`` accepted; a system message on a used context
refused)."""
CAPACITY = 2048
"""``max_context_capacity()``: the KV cache of every Hailo-10H model zoo LLM."""
script: dict[str, str] = {}
"""The user's words -> what the model says to them."""
token_seconds = 0.0
"""Time per generated token."""
first_token_seconds = 0.0
"""Time before the first token (reading the prompt)."""
lost = False
"""The device stopped answering (its server gone): every call fails as HailoRT's do."""
calls: list[tuple[str, dict[str, Any]]] = []
"""Every call on an LLM or Speech2Text: (method, its arguments)."""
contexts: list[str] = []
"""The text of the context each generation ran on, in order (what the model saw)."""

UINT32_MAX = 4294967295
"""``HAILO_RANDOM_SEED``: no seed given."""

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
"""Qwen2-1.5B-Instruct's chat template (its ``hailo-config.json`` ``chat_template``)."""
DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "frequency_penalty": 1.1,
            "max_generated_tokens": 1024, "do_sample": True, "seed": UINT32_MAX}
"""The generation defaults the server falls back on (``llm_server.hpp``)."""
STOP = "<|im_end|>"
EOS = "<|endoftext|>"

_TOKEN = re.compile(r"<\|[a-z_]+\|>|\n|[^\S\n]*[^\s<]+|[^\S\n]+|<")
_vocabulary: dict[str, int] = {}
_lock = threading.Lock()
kv_cache_in_use = False
"""An LLM holds the device's KV cache (one per device)."""
shared_vdevices = 0
unique_vdevice = False


def reset() -> None:
    """A fresh device and fresh knobs (each test starts here)."""
    global VERSION, CAPACITY, token_seconds, first_token_seconds, lost, kv_cache_in_use
    global shared_vdevices, unique_vdevice
    VERSION, CAPACITY, token_seconds, first_token_seconds, lost = "5.1.1", 2048, 0.0, 0.0, False
    kv_cache_in_use, shared_vdevices, unique_vdevice = False, 0, False
    script.clear()
    calls.clear()
    contexts.clear()


def pieces(text: str) -> list[str]:
    """The tokens of ``text``: special tokens whole, words with their leading space."""
    return _TOKEN.findall(text)


def token_ids(text: str) -> list[int]:
    with _lock:
        return [_vocabulary.setdefault(piece, len(_vocabulary) + 100) for piece in pieces(text)]


_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n([^<]*)<\|im_end\|>\n")


def answer(context: str, *, sample: bool, seed: int) -> list[str]:
    """The tokens the model writes after ``context`` (the last one ends its turn)."""
    if not context.endswith("<|im_start|>assistant\n"):
        if context.endswith("<|im_end|>\n"):  # a closed turn: the next one opens
            return ["<|im_start|>", "user", "\n", STOP]
        return [*pieces("Ok"), STOP]
    turns = _TURN.findall(context)
    users = [text for role, text in turns if role == "user"]
    said = script.get(users[-1], f"You said {users[-1]}.") if users else "Hello."
    laid_out = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
    systems = [n for n, (role, _) in enumerate(turns) if role == "system"]
    if laid_out + "<|im_start|>assistant\n" != context or systems not in ([], [0]):
        # Not one conversation as the template lays it out: another prompt, another answer.
        said += f" ({hashlib.sha256(context.encode()).hexdigest()[:6]})"
    if sample:
        rng = random.Random(seed if seed != UINT32_MAX else None)
        said = rng.choice(["", "Well, ", "So, ", "Right: "]) + said
    return [*pieces(said), STOP]
