"""What every generation backend offers: the request, the completion, the class they share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

STOP_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<|im_start|>")
"""Chat-template markers a model may write out as text; never part of an answer."""


@dataclass(frozen=True, slots=True)
class Request:
    """One generated part: what to say and how to sample."""

    system_prompt: str
    """The rendered system prompt."""
    prompt: str
    """The rendered user prompt."""
    max_tokens: int
    """At most this many tokens are generated."""
    temperature: float = 0.0
    """0 decodes greedily."""
    top_p: float = 1.0
    """Nucleus sampling cut-off."""
    top_k: int = 40
    """Top-k sampling cut-off."""
    seed: int | None = None
    """Sampling seed."""
    prompt_head: str = ""
    """How every prompt of its template begins (the template's leading literal text): kept
    with the system prompt's saved state, so only the rest is evaluated per request."""

    def messages(self) -> list[dict[str, str]]:
        """As chat messages."""
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.prompt}]


@dataclass(frozen=True, slots=True)
class Completion:
    """What the model wrote."""

    text: str
    """The text, stop markers removed."""
    finish: str
    """``stop`` (the model ended) or ``length`` (cut at ``max_tokens``)."""
    tokens: int
    """Tokens generated."""
    seconds: float
    """Time taken."""
    first_token_seconds: float | None = None
    """Time to the first token, where the backend can tell."""
    prefix: str = "off"
    """Where the state after the system prompt came from: ``l1``, ``l2``, ``l3`` (saved),
    ``computed`` (evaluated and saved now), ``kept`` (still in the model), or ``off``."""


class PrefixStore(Protocol):
    """Keeps a backend's state after a system prompt for one request's owner, so the next
    request with that system prompt skips it."""

    def load(self, backend: Backend, system_prompt: str,
             head: str = "") -> tuple[bytes, str] | None:
        """The saved state after ``system_prompt`` (and the user turn's ``head``), and the
        tier it came from, or None."""

    def save(self, backend: Backend, system_prompt: str, state: bytes, head: str = "") -> None:
        """Keep ``state``."""


class Backend(ABC):
    """A language model behind one small interface; every method is thread-safe.

    The constructor stores the configuration; :meth:`start` loads the model (and fills in
    the versions), :meth:`close` releases it.
    """

    name: ClassVar[str]
    """``llama_cpp``, ``hailo`` or ``ollama``."""

    def __init__(self, model_id: str = "") -> None:
        self.model_id = model_id
        """The model as configured (file name or model tag)."""
        self.model_version = ""
        """A content hash of the weights, or what the server reports: in every cache key."""
        self.tokenizer_version = ""
        """The tokenizer's identity: in every cache key."""

    @abstractmethod
    def start(self) -> Self:
        """Load the model; :class:`~assistant.errors.ConfigError` when it cannot be."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state_format(self) -> str:
        """What a saved state depends on besides the model (runtime version, context size)."""
        return ""

    @abstractmethod
    def complete(self, request: Request, *, deadline: float,
                 states: PrefixStore | None = None) -> Completion:
        """Generate for ``request`` by ``deadline`` (``time.monotonic()``).

        ``states``: where this request's states after system prompts are kept (``None``:
        none are); it knows whose they are.
        Raises :class:`~assistant.errors.GenerationTimeout` after the deadline and
        :class:`~assistant.errors.GenerationError` on any failure.
        """

    def refresh(self) -> None:  # noqa: B027 - a weights file's version is fixed once loaded
        """Update :attr:`model_version` if the model can change under a running process."""

    def reset(self) -> None:  # noqa: B027 - most backends keep nothing between requests
        """Forget any state kept from earlier requests."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release the model and its device."""

    def describe(self) -> dict[str, str]:
        """What is loaded."""
        return {"backend": self.name, "model": self.model_id,
                "model_version": self.model_version, "tokenizer_version": self.tokenizer_version}


def strip_stop_texts(text: str) -> str:
    """``text`` up to the first chat-template marker, with other markers removed."""
    for marker in STOP_TEXTS:
        at = text.find(marker)
        if at >= 0:
            text = text[:at]
    return text.strip()


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (never negative)."""
    return max(0.0, deadline - time.monotonic())
