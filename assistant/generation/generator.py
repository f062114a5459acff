"""Generated parts of answers through the cache, with deadlines and clean-up.

A generated part is cached (kind ``gen``) under every field that decides its text
(:class:`cache.GenerationKey`: backend, model and tokenizer versions, template and its
version, rendered system prompt and prompt, sampling settings, seed, scope), and only when
it is reproducible: greedy, or sampled with a fixed seed. A part cut off at ``max_tokens``
is trimmed to its whole sentences. Failures and timeouts raise, so nothing is cached and the
caller says the fragment's fallback.

The state after each rendered system prompt (:class:`PrefixCache`) is kept in memory and,
when small enough, on this node's disk; not in Redis unless configured, since it is large
and only of use to the same model build.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

from assistant.errors import ConfigError, DeviceLost, GenerationError
from assistant.generation.base import Backend, Completion, Request
from assistant.ops.heap import heavy
from assistant.settings import GeneratorSettings
from assistant.speech.sentences import whole_sentences
from cache import (
    GenerationKey,
    KeyBuilder,
    NonDeterministicError,
    Placement,
    PolicyBook,
    TieredCache,
    scope_of,
)

log = logging.getLogger(__name__)

GEN_TAG = "gen"
"""Every cached generated part carries it: ``assistant cache purge --tag gen`` drops them."""
PREFIX_TAG = "prefix"
"""Every saved system-prompt state carries it."""


class PrefixCache:
    """Saved model states after system prompts, in the tiered cache."""

    def __init__(self, cache: TieredCache, keys: KeyBuilder, settings: GeneratorSettings) -> None:
        self.cache = cache
        self.keys = keys
        self.settings = settings

    def key(self, backend: Backend, system_prompt: str, user: str | None,
            head: str = "") -> str:
        """One key per model build, state format, system prompt, prompt head and owner."""
        return self.keys.key("prefix", backend.name, backend.model_version, backend.state_format,
                             hashlib.sha256(system_prompt.encode()).digest(),
                             hashlib.sha256(head.encode()).digest(), scope_of(user))

    def bound(self, owner: str | None, *, asker: str | None = None) -> BoundStates:
        """The store one request's states go to: ``owner``'s (a personal system prompt's
        state is its user's) or shared, within the policy of ``asker`` (who the request is
        for; the owner when not given)."""
        placement = self.cache.policies.place(
            asker if asker is not None else owner, ttl=self.settings.prefix_ttl,
            personal=owner is not None, redis=self.settings.prefix_redis)
        if placement.owner != owner:
            raise ValueError("a state's owner must follow the asker's policy")
        return BoundStates(self, placement)


class BoundStates:
    """Saved states of one request, placed as its asker's policy allows."""

    def __init__(self, states: PrefixCache, placement: Placement) -> None:
        self._states = states
        self.placement = placement
        """Whose the states are, how long they live, in which tiers."""

    def load(self, backend: Backend, system_prompt: str,
             head: str = "") -> tuple[bytes, str] | None:
        p = self.placement
        found = self._states.cache.lookup(self._states.key(backend, system_prompt, p.owner, head),
                                          user=p.owner, redis=p.redis)
        if found is None or not isinstance(found.value, bytes):
            return None
        return found.value, found.source

    def save(self, backend: Backend, system_prompt: str, state: bytes, head: str = "") -> None:
        p = self.placement
        self._states.cache.set(
            self._states.key(backend, system_prompt, p.owner, head), state, ttl=p.ttl,
            tags=(PREFIX_TAG, f"model:{backend.model_version[:16]}"), user=p.owner,
            redis=p.redis,
            disk=p.disk and len(state) <= self._states.settings.prefix_disk_max_bytes)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A generated part, ready to be looked up or written."""

    request: Request
    """What the model is asked."""
    key: str | None
    """Its cache key; None when it is never cached."""
    user: str | None
    """Whose it is."""
    model_version: str
    """The model build the key was made for."""


@dataclass(frozen=True, slots=True)
class Generated:
    """A generated part and how it was found."""

    text: str
    """Whole sentences."""
    source: str
    """``l1``, ``l2``, ``l3``, ``computed``, ``waited``, or ``uncached`` (not reproducible)."""
    seconds: float
    """Time taken."""
    completion: Completion | None = None
    """The model's own report, when it ran."""


class Generator:
    """Writes generated parts with one backend, through the cache."""

    def __init__(self, backend: Backend, settings: GeneratorSettings, *,
                 cache: TieredCache | None = None, keys: KeyBuilder | None = None,
                 fallback: Callable[[], Backend] | None = None) -> None:
        """``fallback``: the backend to use instead when ``backend`` cannot start, or its
        device is lost while running (``[generator] backend = auto``: the CPU for the NPU)."""
        if (cache is None) != (keys is None):
            raise ValueError("cache and keys go together")
        self.backend = backend
        self.fallback = fallback
        self._swap = threading.Lock()
        self.settings = settings
        self.cache = cache
        self.keys = keys
        self.calls = 0
        """Requests that reached the model (cache hits do not count)."""
        self.states = PrefixCache(cache, keys, settings) if (
            cache is not None and keys is not None and settings.prefix_cache) else None
        """Where the model's states after system prompts are kept (``None``: not kept)."""

    def start(self) -> Self:
        """Load the model (or the fallback's, when the model's device cannot be used)."""
        try:
            self.backend.start()
        except ConfigError as error:
            if self.fallback is None:
                raise
            log.warning("%s; generating on the fallback backend instead", error)
            self.backend = self.fallback().start()
            self.fallback = None
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, request: Request, states: BoundStates | None) -> tuple[str, Completion]:
        self.calls += 1
        backend = self.backend
        try:
            with heavy():
                completion = backend.complete(
                    request, deadline=time.monotonic() + self.settings.timeout, states=states)
        except DeviceLost:
            self._fall_back(backend)
            raise  # this part says its fallback (never cached); the next go to the new backend
        text = completion.text
        if completion.finish == "length":
            text = whole_sentences(text)
        text = " ".join(text.split())
        if not text:
            raise GenerationError("the model wrote no whole sentence within "
                                  f"{request.max_tokens} tokens")
        return text, completion

    def _fall_back(self, lost: Backend) -> None:
        """``lost``'s device is gone: the fallback backend takes over, once."""
        with self._swap:
            fallback, self.fallback = self.fallback, None
            if fallback is None or self.backend is not lost:
                self.fallback = fallback
                return
            log.error("the %s device was lost: generating on the fallback backend from now on",
                      lost.name)
            try:
                self.backend = fallback().start()
            except ConfigError as error:  # tried once: parts say their fallbacks from now on
                log.error("the fallback backend cannot start either: %s", error)
                return
        with contextlib.suppress(Exception):
            lost.close()

    def model_version(self) -> str:
        """The backend's model version now (a server's model may be replaced while running)."""
        self.backend.refresh()
        return self.backend.model_version

    def prepare(self, *, system_prompt: str, prompt: str, max_tokens: int,
                temperature: float = 0.0, seed: int | None = None, user: str | None = None,
                template_id: str = "", template_version: str = "",
                prompt_head: str = "") -> Prepared:
        """The request and its cache key (None when it is not reproducible, or no cache).

        Depends only on its arguments and the backend's versions, so a caller may keep it
        for the same arguments (see :class:`~assistant.answers.Responder`).
        """
        request = Request(system_prompt=system_prompt, prompt=prompt, max_tokens=max_tokens,
                          temperature=temperature, top_p=self.settings.top_p,
                          top_k=self.settings.top_k, seed=seed,
                          prompt_head=prompt_head if prompt.startswith(prompt_head) else "")
        backend = self.backend
        version = self.model_version()
        key = None
        if self.keys is not None:
            try:
                key = self.keys.generation_key(GenerationKey(
                    backend=backend.name, model_id=backend.model_id,
                    model_version=version,
                    tokenizer_version=backend.tokenizer_version, template_id=template_id,
                    template_version=template_version, system_prompt=system_prompt,
                    prompt=prompt, temperature=temperature, top_p=request.top_p,
                    top_k=request.top_k, max_tokens=max_tokens, seed=seed,
                    scope=scope_of(user)))
            except NonDeterministicError:
                key = None  # sampled without a seed: never cached
        return Prepared(request, key, user, version)

    def placement(self, user: str | None, *, ttl: float, personal: bool) -> Placement:
        """Where a part generated for ``user`` lives (see :meth:`PolicyBook.place`)."""
        policies = self.cache.policies if self.cache is not None else PolicyBook()
        return policies.place(user, ttl=ttl, personal=personal)

    def run(self, prepared: Prepared, *, ttl: float, tags: Iterable[str] = (),
            asker: str | None = None) -> Generated:
        """The generated part of ``prepared``: from the cache, or written by the model.

        ``asker``: who it is generated for (default: its owner); their policy caps how long
        the part, and the model state it leaves, may live and where.
        """
        started = time.perf_counter()
        request, owner = prepared.request, prepared.user
        place = self.placement(asker if asker is not None else owner, ttl=ttl,
                               personal=owner is not None)
        if place.owner != owner:
            raise ValueError("a generated part's owner must follow the asker's policy")
        states = self.states.bound(owner, asker=asker) if self.states is not None else None
        if prepared.key is None or self.cache is None:
            text, completion = self._run(request, states)
            source = "uncached" if self.cache is not None else "computed"
            return Generated(text, source, time.perf_counter() - started, completion)
        ran: list[Completion] = []

        def compute() -> str:
            if self.backend.model_version != prepared.model_version:
                # The model changed since the key was made (the NPU lost, a server's model
                # replaced): its text must not be kept under the old model's key.
                raise GenerationError("the model changed while this part waited")
            text, completion = self._run(request, states)
            ran.append(completion)
            return text

        outcome = self.cache.fetch(
            prepared.key, compute, ttl=place.ttl,
            tags=(GEN_TAG, f"model:{prepared.model_version[:16]}", *tags), user=owner,
            redis=place.redis, disk=place.disk)
        return Generated(str(outcome.value), outcome.source, time.perf_counter() - started,
                         ran[0] if ran else None)

    def generate(self, *, system_prompt: str, prompt: str, max_tokens: int,
                 temperature: float = 0.0, seed: int | None = None, user: str | None = None,
                 personal: bool | None = None, ttl: float, tags: Iterable[str] = (),
                 template_id: str = "", template_version: str = "") -> Generated:
        """One generated part for ``user``; :class:`GenerationError` when there is none.

        ``personal``: the part is ``user``'s own, cached for them alone (default: whenever a
        user is named); otherwise it is shared unless their policy is private. Either way
        their policy caps its life and tiers.
        """
        owner = self.placement(user, ttl=ttl, personal=user is not None if personal is None
                               else personal).owner
        prepared = self.prepare(system_prompt=system_prompt, prompt=prompt,
                                max_tokens=max_tokens, temperature=temperature, seed=seed,
                                user=owner, template_id=template_id,
                                template_version=template_version)
        return self.run(prepared, ttl=ttl, tags=tags, asker=user)

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()
