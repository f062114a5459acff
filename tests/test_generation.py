"""Generation: llama.cpp with the real SmolLM2 model, and the Ollama backend against a local
server speaking its API (the Hailo glue: tests/test_hailo.py)."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from assistant.errors import ConfigError, GenerationError, GenerationTimeout
from assistant.generation import Generator, Request, open_backend
from assistant.generation.base import strip_stop_texts
from assistant.generation.llama_cpp import LlamaCppBackend
from assistant.generation.ollama import OllamaBackend
from assistant.settings import GeneratorSettings
from assistant.speech.sentences import whole_sentences
from cache import GenerationKey, KeyBuilder, TieredCache

SYSTEM = "You are a voice assistant in a home. Answer in one short spoken sentence."
QUESTION = "What is the capital of France?"


def generator(backend: Any, cache: TieredCache, names: KeyBuilder, **settings: Any) -> Generator:
    return Generator(backend, GeneratorSettings(**settings), cache=cache, keys=names)


# -- text clean-up ---------------------------------------------------------------------------

def test_stop_markers_and_cut_sentences_are_removed() -> None:
    assert strip_stop_texts("Paris.<|im_end|>\n<|im_start|>user\nmore") == "Paris."
    assert strip_stop_texts("  It is warm. </s>") == "It is warm."
    assert whole_sentences("It is warm. Wear a light") == "It is warm."
    assert whole_sentences("Take 2.5 litres! Then") == "Take 2.5 litres!"
    assert whole_sentences("no end at all") == ""


# -- llama.cpp, the real model ---------------------------------------------------------------

def test_llama_reports_versions_of_weights_and_tokenizer(llama: LlamaCppBackend) -> None:
    assert llama.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(llama.model_version) == 32 and len(llama.tokenizer_version) == 32
    assert llama.model_version != llama.tokenizer_version
    again = LlamaCppBackend(threads=1, context=512).start()  # the digest is remembered, not redone
    assert (again.model_version, again.tokenizer_version) == (llama.model_version,
                                                              llama.tokenizer_version)
    again.close()


def test_a_deterministic_request_is_generated_once(llama: LlamaCppBackend, cache: TieredCache,
                                                   names: KeyBuilder) -> None:
    gen = generator(llama, cache, names)
    first = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32, ttl=600)
    assert first.source == "computed" and gen.calls == 1
    assert "Paris" in first.text and first.text[-1] in ".!?"
    second = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32, ttl=600)
    assert (second.source, second.text, gen.calls) == ("l1", first.text, 1)
    # The model itself is deterministic at temperature 0 (the cache is not hiding that).
    llama.reset()
    direct = llama.complete(Request(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32),
                            deadline=time.monotonic() + 30, states=gen.states.bound(None))
    assert strip_stop_texts(direct.text) == first.text
    # A seeded sampled request is cached too; an unseeded one never is.
    seeded = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32, ttl=600,
                          temperature=0.7, seed=7)
    assert seeded.source == "computed"
    assert gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32, ttl=600,
                        temperature=0.7, seed=7).source == "l1"
    calls = gen.calls
    for _ in range(2):  # sampled at random: the text may be anything, but it always runs
        try:
            unseeded = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32,
                                    ttl=600, temperature=0.7)
        except GenerationError:
            continue
        assert unseeded.source == "uncached"
    assert gen.calls == calls + 2


def test_everything_that_decides_the_text_is_in_the_key(llama: LlamaCppBackend,
                                                       cache: TieredCache,
                                                       names: KeyBuilder) -> None:
    base = GenerationKey(backend="llama_cpp", model_id=llama.model_id,
                         model_version=llama.model_version,
                         tokenizer_version=llama.tokenizer_version, template_id="t",
                         template_version="1", system_prompt=SYSTEM, prompt=QUESTION,
                         temperature=0.5, top_p=1.0, top_k=40, max_tokens=32, seed=1,
                         scope="shared")
    import dataclasses

    changed = [dataclasses.replace(base, **change) for change in (
        {"temperature": 0.6}, {"seed": 2}, {"model_version": "0" * 32},
        {"tokenizer_version": "1" * 32}, {"system_prompt": SYSTEM + " Be brief."},
        {"scope": "user:ann"}, {"max_tokens": 33}, {"template_version": "2"})]
    keys = {names.generation_key(k) for k in [base, *changed]}
    assert len(keys) == 1 + len(changed)
    # And end to end: a new model build or another system prompt means a new answer.
    gen = generator(llama, cache, names)
    gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32, ttl=600)
    other = gen.generate(system_prompt=SYSTEM + " Be brief.", prompt=QUESTION, max_tokens=32,
                         ttl=600)
    assert other.source == "computed"
    version = llama.model_version
    try:
        llama.model_version = "f" * 32
        assert gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32,
                            ttl=600).source == "computed"
    finally:
        llama.model_version = version
    assert gen.calls == 3


def test_a_timeout_says_nothing_is_cached_and_the_next_request_generates(
        llama: LlamaCppBackend, cache: TieredCache, names: KeyBuilder) -> None:
    hasty = generator(llama, cache, names, timeout=0.01, prefix_cache=False)
    llama.reset()
    with pytest.raises(GenerationTimeout):
        hasty.generate(system_prompt=SYSTEM, prompt="Describe a sunset over the sea.",
                       max_tokens=64, ttl=600)
    patient = generator(llama, cache, names)
    again = patient.generate(system_prompt=SYSTEM, prompt="Describe a sunset over the sea.",
                             max_tokens=64, ttl=600)
    assert again.source == "computed" and patient.calls == 1 and again.text


def test_waiting_for_a_busy_model_counts_against_the_deadline(llama: LlamaCppBackend) -> None:
    request = Request(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=8)
    with llama._lock:  # another request holds the model
        started = time.monotonic()
        with pytest.raises(GenerationTimeout, match="busy"):
            llama.complete(request, deadline=time.monotonic() + 0.1)
        assert time.monotonic() - started < 1.0


def test_no_sampler_outlives_its_completion(llama: LlamaCppBackend) -> None:
    from llama_cpp._internals import LlamaSampler

    def unfreed() -> int:
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, LlamaSampler) and o.sampler is not None)

    gc.collect()
    gc.disable()  # as in a busy service, where the oldest objects are seldom collected
    try:
        for question in (QUESTION, "What is the capital of Spain?", "Name a colour."):
            llama.complete(Request(system_prompt=SYSTEM, prompt=question, max_tokens=8),
                           deadline=time.monotonic() + 60)
        assert unfreed() == 0
    finally:
        gc.enable()


def test_a_part_with_no_whole_sentence_is_a_failure(llama: LlamaCppBackend, cache: TieredCache,
                                                    names: KeyBuilder) -> None:
    gen = generator(llama, cache, names)
    with pytest.raises(GenerationError, match="no whole sentence"):
        gen.generate(system_prompt=SYSTEM, prompt="Count slowly from one to one hundred.",
                     max_tokens=3, ttl=600)
    with pytest.raises(GenerationError):  # and it was not cached
        gen.generate(system_prompt=SYSTEM, prompt="Count slowly from one to one hundred.",
                     max_tokens=3, ttl=600)
    assert gen.calls == 2


def test_the_system_prompt_state_is_saved_and_restored(llama: LlamaCppBackend,
                                                       cache: TieredCache, names: KeyBuilder,
                                                       redis_url: str) -> None:
    system = "You are a cheerful assistant in a small flat in Lisbon. Answer in one sentence."
    gen = generator(llama, cache, names)
    llama.reset()
    first = gen.generate(system_prompt=system, prompt=QUESTION, max_tokens=32, ttl=600)
    assert first.completion is not None and first.completion.prefix == "computed"
    second = gen.generate(system_prompt=system, prompt="What is the capital of Spain?",
                          max_tokens=32, ttl=600)
    assert second.completion is not None and second.completion.prefix == "kept"
    llama.reset()  # as after another system prompt, or in a new process with L3
    third = gen.generate(system_prompt=system, prompt="What is the capital of Italy?",
                         max_tokens=32, ttl=600)
    assert third.completion is not None and third.completion.prefix == "l1"
    # The restored state gives exactly what evaluating the whole prompt gives.
    plain = LlamaCppBackend(threads=2).start()
    direct = plain.complete(Request(system_prompt=system, prompt="What is the capital of Italy?",
                                    max_tokens=32), deadline=time.monotonic() + 30)
    plain.close()
    assert strip_stop_texts(direct.text) == third.text
    # Kept in memory and on disk, never in Redis.
    assert gen.states is not None
    key = gen.states.key(llama, system, None)
    raw = redis.Redis.from_url(redis_url)
    assert raw.exists(key) == 0
    raw.close()
    cache.memory.clear()
    llama.reset()
    fourth = gen.generate(system_prompt=system, prompt="What is the capital of Peru?",
                          max_tokens=32, ttl=600)
    assert fourth.completion is not None and fourth.completion.prefix == "l3"


def test_the_templates_literal_start_is_kept_with_the_system_prompt(
        llama: LlamaCppBackend, cache: TieredCache, names: KeyBuilder) -> None:
    gen = generator(llama, cache, names)
    store = gen.states
    assert store is not None
    head = "In one short sentence, suggest what to wear outside when it is"

    def ask(prompt: str, head: str) -> Any:
        llama.reset()
        prepared = gen.prepare(system_prompt=SYSTEM, prompt=prompt, max_tokens=8,
                               prompt_head=head)
        return llama.complete(prepared.request, deadline=time.monotonic() + 30,
                              states=store.bound(None))

    assert ask(f"{head} rainy and 8 degrees.", head).prefix == "computed"
    assert ask(f"{head} sunny and 20 degrees.", head).prefix == "l1"
    assert cache.get(store.key(llama, SYSTEM, None, head)) is not None
    # A head that the whole prompt tokenizes differently ("Sugg|est" inside "Suggestions")
    # falls back to the system prompt's own state.
    assert ask("Suggestions for a quick dinner, please.", "Sugg").prefix == "computed"
    assert cache.get(store.key(llama, SYSTEM, None, "")) is not None
    assert cache.get(store.key(llama, SYSTEM, None, "Sugg")) is None


def test_a_personal_system_prompt_state_is_the_users(llama: LlamaCppBackend, cache: TieredCache,
                                                     names: KeyBuilder) -> None:
    gen = generator(llama, cache, names)
    system = "You are the assistant of Ann, who lives in Oslo. Answer in one sentence."
    prepared = gen.prepare(system_prompt=system, prompt=QUESTION, max_tokens=8, user="ann")

    def ask() -> str:
        # The model's words do not matter here, only where the state it started from came from.
        llama.reset()
        return llama.complete(prepared.request, deadline=time.monotonic() + 30,
                              states=gen.states.bound("ann")).prefix

    assert ask() == "computed"
    assert ask() == "l1"
    cache.forget_user("ann")
    assert ask() == "computed"


# -- Ollama, against a local server ----------------------------------------------------------

class OllamaServer:
    """A small HTTP server speaking the parts of Ollama's API the backend uses."""

    def __init__(self, digest: str | None = "sha256:abc123") -> None:
        self.requests: list[dict[str, Any]] = []
        self.digest = digest
        self.delay = 0.0
        self.broken = False
        self.answer = "The capital of France is Paris."
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != "/api/tags":
                    return self._reply({"error": "not found"}, 404)
                model = {"name": "qwen2:1.5b", "model": "qwen2:1.5b"}
                if server.digest:
                    model["digest"] = server.digest
                return self._reply({"models": [model]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                if self.path == "/api/show":
                    if body.get("model") != "qwen2:1.5b":
                        return self._reply({"error": "model not found"}, 404)
                    return self._reply({"details": {"family": "qwen2"}, "model_info": {
                        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"}})
                if self.path == "/api/chat" and server.broken:
                    self.send_response(200)  # promises more than it sends, then hangs up
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"message": {"con')
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if self.path == "/api/chat":
                    time.sleep(server.delay)
                    return self._reply({"model": body["model"], "done": True,
                                        "done_reason": "stop", "eval_count": 8,
                                        "message": {"role": "assistant",
                                                    "content": server.answer + "<|im_end|>"}})
                return self._reply({"error": "not found"}, 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ollama() -> Iterator[OllamaServer]:
    server = OllamaServer()
    yield server
    server.close()


def test_ollama_backend_speaks_the_chat_api(ollama: OllamaServer, cache: TieredCache,
                                           names: KeyBuilder) -> None:
    backend = open_backend(GeneratorSettings(backend="ollama", ollama_url=ollama.url,
                                             ollama_model="qwen2:1.5b")).start()
    assert isinstance(backend, OllamaBackend)
    assert backend.model_version == "sha256:abc123"
    assert backend.tokenizer_version != backend.model_version
    gen = generator(backend, cache, names)
    out = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24, ttl=600, seed=5)
    assert out.text == "The capital of France is Paris."
    chat = [r for r in ollama.requests if r["path"] == "/api/chat"]
    assert chat == [{"path": "/api/chat", "model": "qwen2:1.5b", "stream": False,
                     "messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": QUESTION}],
                     "options": {"temperature": 0.0, "top_p": 1.0, "top_k": 40,
                                 "num_predict": 24, "seed": 5}}]
    assert gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24, ttl=600,
                        seed=5).source == "l1"


def test_ollama_new_model_build_new_key_and_timeouts(ollama: OllamaServer, cache: TieredCache,
                                                     names: KeyBuilder) -> None:
    settings = {"backend": "ollama", "ollama_url": ollama.url, "ollama_model": "qwen2:1.5b"}
    gen = generator(open_backend(GeneratorSettings(**settings)).start(), cache, names)
    gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24, ttl=600)
    ollama.digest = "sha256:def456"  # the model was pulled again
    ollama.answer = "Paris is the capital of France."
    rolled = generator(open_backend(GeneratorSettings(**settings)).start(), cache, names)
    assert rolled.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24,
                           ttl=600).text == "Paris is the capital of France."
    ollama.delay = 0.5
    hasty = generator(rolled.backend, cache, names, timeout=0.1)
    with pytest.raises(GenerationTimeout):
        hasty.generate(system_prompt=SYSTEM, prompt="Is it raining?", max_tokens=24, ttl=600)
    with pytest.raises(ConfigError, match=r"did not answer about 'missing:7b'"):
        open_backend(GeneratorSettings(backend="ollama", ollama_url=ollama.url,
                                       ollama_model="missing:7b")).start()
    with pytest.raises(ConfigError):
        open_backend(GeneratorSettings(backend="ollama", ollama_url="http://127.0.0.1:9",
                                       ollama_model="qwen2:1.5b")).start()


def test_ollama_notices_a_model_pulled_again_while_running(
        ollama: OllamaServer, cache: TieredCache, names: KeyBuilder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import assistant.generation.ollama

    monkeypatch.setattr(assistant.generation.ollama, "RECHECK_SECONDS", 0.0)
    gen = generator(open_backend(GeneratorSettings(backend="ollama", ollama_url=ollama.url,
                                                   ollama_model="qwen2:1.5b")).start(), cache, names)
    first = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24, ttl=600)
    ollama.digest = "sha256:fresh"
    ollama.answer = "Paris, of course."
    again = gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24, ttl=600)
    assert (first.text, again.text, again.source) == (
        "The capital of France is Paris.", "Paris, of course.", "computed")
    assert gen.backend.model_version == "sha256:fresh"


def test_ollama_reply_cut_off_is_a_generation_error(ollama: OllamaServer, cache: TieredCache,
                                                    names: KeyBuilder) -> None:
    gen = generator(open_backend(GeneratorSettings(backend="ollama", ollama_url=ollama.url,
                                                   ollama_model="qwen2:1.5b")).start(), cache, names)
    ollama.broken = True
    with pytest.raises(GenerationError):
        gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=24, ttl=600)
