"""A language model on the Hailo-10H NPU (AI HAT+ 2) through ``hailo_platform.genai.LLM``.

Written against HailoRT's own source (``hailo-ai/hailort``, 5.1.1 and 5.2.0: the Python
binding ``pyhailort.py``, ``src/genai/llm/llm.cpp`` and the prompt template handler) and
tested against a stand-in that follows it (``tests/standins/hailo_platform``); it has not
run on a Hailo-10H. What it does, and why:

- **One prompt, laid out here.** The model's chat template (``prompt_template()``) is
  rendered by this module (Jinja2, as Hugging Face and HailoRT's minja render it) and sent
  as a raw string. HailoRT renders a list of messages differently on the first prompt of a
  context (the whole template, with the model's default system prompt when none is given)
  and after it, and ``load_context()`` does not reset that state: a restored system prompt
  followed by the user's turn as a message would get the default system prompt inserted
  after it. A raw string is sent as it is, so a fresh request, one whose system prompt was
  computed and saved, and one restored from a saved context all give the model exactly the
  same tokens.
- **A clean saved prefix.** The context after the system prompt is saved with nothing
  after it: HailoRT 5.2.0 reads a prompt without generating (``max_generated_tokens=0``).
  5.1.1 must generate at least one token: it generates one greedily with no recovery
  sequence, and the prefix is kept only if that token is the one the layout continues with
  (``<|im_start|>`` for the Qwen templates), the rest of the layout then sent after it;
  otherwise nothing is saved on that version.
- **Greedy as HailoRT takes it.** HailoRT refuses ``temperature <= 0`` even with
  ``do_sample=False`` (its greedy decoding takes the top token whatever the temperature):
  greedy requests send ``temperature=1.0, do_sample=False``. ``top_k`` is sent, and
  ``frequency_penalty=1.0`` (no repetition penalty: the cache key does not hold one).
- **Streaming.** ``generate()`` gives one token per ``read``: the time to the first token
  is measured, the finish reason is the generation's own status (``MAX_TOKENS_REACHED`` is
  ``length``, ``LOGICAL_END_OF_GENERATION`` is ``stop``), tokens are counted with
  ``tokenize()``, and at the deadline the generation is left, which aborts it on the device
  instead of leaving the NPU busy with an answer nobody waits for.
- **Room.** A prompt and answer that would not fit ``max_context_capacity()`` (2048 tokens on
  every Hailo-10H model) are refused before the device sees them.
- **Errors** are translated where they enter (:mod:`assistant.npu.hailo`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from jinja2 import TemplateError as JinjaError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from assistant.errors import ConfigError, DeviceLost, GenerationError, GenerationTimeout
from assistant.generation import base
from assistant.generation.base import Backend, Completion, PrefixStore, Request
from assistant.model_files import model_version
from assistant.npu import hailo as npu
from assistant.npu.hailo import SharedDevice, unavailable

__all__ = ["HailoBackend", "unavailable"]

log = logging.getLogger(__name__)

GREEDY_TEMPERATURE = 1.0
"""What a greedy request sends (HailoRT refuses 0; the top token is the same at any)."""
MARKUP_ALLOWANCE = 64
"""Tokens allowed for a chat template's markup when the prompt is not laid out here."""
_CONSUMED = b"\0"
"""Separates, in a saved state, the text of the layout already in the context from it."""


def _raise(message: str) -> None:
    """``raise_exception``, which chat templates call to refuse a conversation."""
    raise ValueError(message)


def _strftime_now(layout: str) -> str:
    """``strftime_now``, which minja gives templates (today's date in some)."""
    return time.strftime(layout)


def _seed(seed: int) -> int:
    """A seed as HailoRT takes it: unsigned 32 bits, 4294967295 (random) excluded."""
    return seed % (2**32 - 1)


class HailoBackend(Backend):
    """An LLM compiled for the Hailo-10H."""

    name = "hailo"

    def __init__(self, hef: Path, *, platform: ModuleType | None = None) -> None:
        """``hef``: the compiled model; ``platform``: the ``hailo_platform`` module (a
        stand-in in tests; no NPU is here)."""
        super().__init__(hef.name)
        self._hef = hef
        self._platform = platform
        self._module: ModuleType | None = None
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._vdevice: Any = None
        self._llm: Any = None
        self._layout: Callable[[list[dict[str, str]], bool], str] | None = None
        self._saves = False
        self._clean_prefill: bool | None = None  # 0-token prefill accepted (5.2.0+)?
        self._capacity = 0
        self._runtime = "unknown"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Open the (shared) device and load the model; :class:`ConfigError` if either fails."""
        if self._llm is not None:
            return self
        module = self._module = npu.platform(self._platform)
        genai = npu.genai(module)
        hef = self._hef
        if not hef.is_file():
            raise ConfigError(f"the Hailo model {hef} does not exist")
        version = model_version([hef])
        try:
            self._vdevice = SharedDevice.acquire(module)
            self._llm = genai.LLM(self._vdevice, str(hef))
            self._capacity = int(self._llm.max_context_capacity())
        except Exception as error:
            self._release()
            if not npu.is_hailo_error(error, module):
                raise
            raise ConfigError(f"cannot load {hef} on the Hailo device: "
                              f"{npu.translate(error, module, 'loading the model')}") from error
        self._layout = self._template(module)
        self._saves = self._layout is not None and hasattr(self._llm, "save_context")
        self.model_version = self.tokenizer_version = version  # the tokenizer is in the HEF
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hailo")
        self._runtime = npu.version(module)
        return self

    def _template(self, module: ModuleType) -> Callable[[list[dict[str, str]], bool], str] | None:
        """The model's chat template, to lay prompts out here (None: the HEF has none, and
        prompts go as messages, each request on a cleared context)."""
        try:
            source = str(self._llm.prompt_template())
        except Exception as error:
            if not npu.is_hailo_error(error, module):
                raise
            log.warning("the Hailo model has no prompt template (%s): prompts go as messages "
                        "and system prompts are not saved", error)
            return None
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        try:
            template = environment.from_string(source)
        except JinjaError as error:
            log.warning("the Hailo model's prompt template does not compile (%s)", error)
            return None

        def layout(messages: list[dict[str, str]], generation: bool) -> str:
            try:
                return template.render(messages=messages, add_generation_prompt=generation)
            except (JinjaError, TypeError, ValueError) as error:
                raise GenerationError(f"the Hailo model's prompt template: {error}") from error

        return layout

    @property
    def state_format(self) -> str:
        return f"hailo context, hailort {self._runtime}"

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        with self._lock:
            self._release()

    def _release(self) -> None:
        llm, vdevice, self._llm, self._vdevice = self._llm, self._vdevice, None, None
        npu.let_go(self._module, llm, vdevice, "language model")

    # -- one request -------------------------------------------------------------------------

    def complete(self, request: Request, *, deadline: float,
                 states: PrefixStore | None = None) -> Completion:
        if self._worker is None or self._module is None:
            raise GenerationError("the Hailo model is not loaded")
        started = time.perf_counter()
        try:
            future: Future[Completion] = self._worker.submit(self._run, request, deadline,
                                                             states, started)
        except RuntimeError as error:  # closed meanwhile (its device lost, say)
            raise GenerationError("the Hailo model was closed") from error
        try:
            # The worker leaves the generation at the deadline itself; the second is for a
            # device call already under way then.
            return future.result(timeout=base.remaining(deadline) + 1.0)
        except FutureTimeout:
            future.cancel()
            raise GenerationTimeout("the NPU did not answer in time") from None
        except CancelledError:  # queued when the model was closed
            raise GenerationError("the Hailo model was closed before this part ran") from None
        except GenerationError:
            raise
        except Exception as error:
            if not npu.is_hailo_error(error, self._module):
                raise
            raise npu.translate(error, self._module, "generating") from error

    def _run(self, request: Request, deadline: float, states: PrefixStore | None,
             started: float) -> Completion:
        with self._lock:
            if time.monotonic() > deadline:  # given up on while it waited: do not run it
                raise GenerationTimeout("the request's deadline passed while it waited")
            llm = self._llm
            if llm is None:
                raise GenerationError("the Hailo model is not loaded")
            llm.clear_context()  # each request is independent
            if self._layout is None:
                messages = request.messages()
                # The template's markup (and a default system prompt) are not counted here.
                self._check_room(request.system_prompt + "\n" + request.prompt, request,
                                 markup=MARKUP_ALLOWANCE)
                return self._stream(messages, request, deadline, started, "off")
            system = [{"role": "system", "content": request.system_prompt}]
            whole = self._layout([*system, {"role": "user", "content": request.prompt}], True)
            head = self._layout(system, False)
            self._check_room(whole, request)
            if not self._saves or states is None or not whole.startswith(head):
                return self._stream(whole, request, deadline, started, "off")
            rest = whole[len(head):]
            found = states.load(self, request.system_prompt)
            restored = self._restore(found[0], rest) if found is not None else None
            if restored is not None:
                assert found is not None
                return self._stream(rest[len(restored):], request, deadline, started, found[1])
            primed = self._prime(head, rest, deadline)
            if primed is None:  # no clean prefix on this version: the whole prompt at once
                llm.clear_context()
                return self._stream(whole, request, deadline, started, "off")
            context, consumed = primed
            states.save(self, request.system_prompt, consumed.encode() + _CONSUMED + context)
            return self._stream(rest[len(consumed):], request, deadline, started, "computed")

    def _restore(self, state: bytes, rest: str) -> str | None:
        """Load a saved context; the part of ``rest`` it already holds, or None (not loaded:
        the system prompt is read again)."""
        consumed, separator, context = state.partition(_CONSUMED)
        text = consumed.decode("utf-8", "replace")
        if not separator or not rest.startswith(text):
            return None
        try:
            self._llm.load_context(context)
            return text
        except Exception as error:
            assert self._module is not None
            if not npu.is_hailo_error(error, self._module):
                raise
            translated = npu.translate(error, self._module, "loading a saved context")
            if isinstance(translated, DeviceLost):
                raise translated from error
            log.warning("saved Hailo context not loaded (%s); reading the system prompt again",
                        translated)
            self._llm.clear_context()
            return None

    def _prime(self, head: str, rest: str, deadline: float) -> tuple[bytes, str] | None:
        """Read the system prompt's layout alone and save the context: nothing after it
        (5.2.0), or the one token 5.1.1 must generate when it is where the layout goes on.
        The saved context and the text of the layout it holds, or None."""
        llm = self._llm
        assert self._module is not None
        if self._clean_prefill is not False:
            try:
                with llm.generate(prompt=head, temperature=GREEDY_TEMPERATURE, do_sample=False,
                                  frequency_penalty=1.0, max_generated_tokens=0):
                    pass  # finished at once: the prompt read, nothing generated
                self._clean_prefill = True
                return bytes(llm.save_context()), ""
            except Exception as error:
                # 5.1.1 refuses 0 tokens before it reads the prompt; anything else is an
                # error of this request, not of the version.
                if self._clean_prefill or not npu.is_invalid_argument(error, self._module):
                    raise
                self._clean_prefill = False  # 5.1.1: at least one token (nothing was read)
                log.info("HailoRT %s reads no prompt without generating: the saved system "
                         "prompt contexts hold the next token of the layout", self._runtime)
                llm.clear_context()
        recovery = llm.get_generation_recovery_sequence()
        llm.set_generation_recovery_sequence("")  # no end-of-text token after the one
        try:
            with llm.generate(prompt=head, temperature=GREEDY_TEMPERATURE, do_sample=False,
                              top_k=1, frequency_penalty=1.0,
                              max_generated_tokens=1) as completion:
                token = completion.read_all(
                    timeout_ms=max(1, int(base.remaining(deadline) * 1000)))
        finally:
            llm.set_generation_recovery_sequence(recovery)
        if token and rest.startswith(token):
            return bytes(llm.save_context()), token
        log.warning("the Hailo model does not continue a system prompt with %r: system "
                    "prompts are read with every request on HailoRT %s", rest[:12],
                    self._runtime)
        self._saves = False
        return None

    def _lost_while_reading(self, error: Exception) -> None:
        """A ``read`` failed: when the connection to the device went with it (its reader
        thread stops, and ``read`` says only "invalid operation"), that is a lost device."""
        assert self._module is not None
        if not npu.is_hailo_error(error, self._module):
            return
        try:
            self._llm.get_context_usage_size()  # a call to the device's server
        except Exception as probe:
            if npu.is_hailo_error(probe, self._module):
                raise npu.translate(probe, self._module, "generating") from error
            raise

    def _check_room(self, prompt: str, request: Request, *, markup: int = 0) -> None:
        """Refuse a request the model's context cannot hold (its prompt, the answer, the
        end-of-text token), before the device sees it."""
        needed = len(self._llm.tokenize(prompt)) + markup
        if needed + request.max_tokens + 1 > self._capacity:
            raise GenerationError(
                f"the prompt is {needed} tokens and the answer may be {request.max_tokens}: "
                f"more than the {self._capacity} the Hailo model's context holds")

    def _stream(self, prompt: str | list[dict[str, str]], request: Request, deadline: float,
                started: float, source: str) -> Completion:
        sample = request.temperature > 0
        params: dict[str, Any] = {
            "temperature": request.temperature if sample else GREEDY_TEMPERATURE,
            "top_p": request.top_p, "frequency_penalty": 1.0,
            "max_generated_tokens": request.max_tokens, "do_sample": sample}
        if request.top_k >= 1:  # 0 (no cut-off) is refused by HailoRT: the model's own then
            params["top_k"] = request.top_k
        if sample:  # unseeded sampling must not repeat itself: a fresh seed each time
            params["seed"] = _seed(request.seed) if request.seed is not None else \
                secrets.randbelow(2**31)
        text, first = "", None
        with self._llm.generate(prompt=prompt, **params) as completion:
            while (status := completion.generation_status.name) == "GENERATING":
                left = deadline - time.monotonic()
                if left <= 0:  # leaving the block aborts the generation on the device
                    raise GenerationTimeout("the NPU did not finish in time; aborted")
                try:
                    text += completion.read(timeout_ms=max(1, int(left * 1000)))
                except Exception as error:
                    self._lost_while_reading(error)
                    raise
                if first is None:
                    first = time.perf_counter() - started
        if status == "ABORTED":
            raise GenerationError("the generation was aborted on the device")
        clean = base.strip_stop_texts(text)
        return Completion(text=clean, finish="length" if status == "MAX_TOKENS_REACHED"
                          else "stop", tokens=len(self._llm.tokenize(clean)) if clean else 0,
                          seconds=time.perf_counter() - started, first_token_seconds=first,
                          prefix=source)
