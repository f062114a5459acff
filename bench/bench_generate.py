"""Benchmark of answers with a generated part, and of the saved system-prompt state.

Measures, in one run on this machine, with SmolLM2-135M-Instruct (Q4_1) on llama.cpp and the
repo's own templates and home (``intents/``, ``configs/entities.yaml``):

- ``cold_ms``: "what's the weather like" answered with nothing of the answer cached (its
  intent's items purged before each round, the model's context reset): recognition, the
  static fragment rendered, the generated part written by the model;
- ``cached_us``: the same answer again, every fragment from L1 (``Responder.answer`` for the
  recognised match), next to ``cached_respond_us``, the whole ``IntentEngine.respond``
  (recognition from its memory included), and ``raw_l1_reads_us``, the floor: the two
  fragments' texts read from L1 by key, with no rendering or key building;
- ``ttft_ms``: time to the first token of that generated part with the model's context reset
  and no saved state (the whole prompt is evaluated), next to ``ttft_prefix_cached_ms``, the
  same with the saved state restored from L1: the state after the system prompt and the
  template's literal start of the user turn ("In one short sentence, suggest what to wear
  outside when it is");
- ``tokens_per_s``: tokens generated per second after the first.

Redis (a private redis-server on a free loopback port) and sqlite (a temporary folder) are
real. Latencies are medians. Goals are reported, never asserted; the last line is JSON.
Run it with ``make bench-generate``; ``--quick`` for a smoke test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assistant.answers import Responder  # noqa: E402
from assistant.engine import IntentEngine  # noqa: E402
from assistant.generation import Generator, Request  # noqa: E402
from assistant.generation.llama_cpp import LlamaCppBackend  # noqa: E402
from assistant.home import Registry, load_home  # noqa: E402
from assistant.settings import GeneratorSettings, IntentsSettings  # noqa: E402
from assistant.templates.model import template_head  # noqa: E402
from bench.report import finish  # noqa: E402
from cache import KeyBuilder, Keyring, MemoryTier, RedisTier, SqliteTier, TieredCache  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

SENTENCE = "what's the weather like"


def run(rounds: int, repeats: int, workdir: Path) -> dict[str, Any]:
    server = RedisServer(workdir / "redis").start()
    keyring = Keyring({1: os.urandom(32)})
    keys = KeyBuilder(keyring.naming_secret())
    cache = TieredCache(keyring=keyring, memory=MemoryTier(256 * 1024 * 1024),
                        redis_tier=RedisTier(server.url, namer=keys.name),
                        sqlite_tier=SqliteTier(workdir / "cache.db"), listen=False).start()
    backend = LlamaCppBackend().start()
    settings = GeneratorSettings()
    generator = Generator(backend, settings, cache=cache, keys=keys)
    responder = Responder(cache, keys, generator=generator)
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents", watch=False),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")), cache=cache,
                          keys=keys, responder=responder).start()
    try:
        first = engine.respond(SENTENCE)
        kinds = [f.kind for f in first.fragments]
        assert first.intent == "HassGetWeather" and "generate" in kinds, first

        # Cold: nothing of this answer cached, the model's context empty.
        cold, prefix_sources, answer = [], [], first
        for _ in range(rounds):
            cache.invalidate_tag("intent:HassGetWeather")
            backend.reset()
            started = time.perf_counter()
            answer = engine.respond(SENTENCE)
            cold.append(time.perf_counter() - started)
            assert [f.source for f in answer.fragments] == ["computed", "computed"], answer
        # Warm: the same answer from L1.
        recognizer = engine.recognizer
        match = recognizer.recognize(SENTENCE)
        assert match is not None
        template = recognizer.templates.intents[match.intent]
        system = recognizer.templates.default_system_prompt

        def answer_cached() -> Any:
            return responder.answer(match, template, recognizer.home, text=SENTENCE,
                                    default_system_prompt=system)

        assert [f.source for f in answer_cached().fragments] == ["l1", "l1"]
        # The floor under it, same run: the two fragments' texts read straight from L1.
        texts = [f.text for f in answer_cached().fragments]
        keys_in_l1 = [k for k in list(cache.memory._store.keys())
                      if cache.get(k) in texts][:2]
        cached, whole, floor = [], [], []
        for _ in range(repeats):
            started = time.perf_counter_ns()
            answer_cached()
            cached.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            engine.respond(SENTENCE)
            whole.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            for key in keys_in_l1:
                cache.get(key)
            floor.append(time.perf_counter_ns() - started)

        # Time to first token, with and without the saved system-prompt state.
        context = responder.context(match, template, recognizer.home, user=None, site=None)
        spec = next(f.generate for f in template.fragments(match.response) if f.generate)
        request = Request(system_prompt=" ".join(system.render(context).split()) if system else "",
                          prompt=" ".join(spec.prompt.render(context).split()),
                          max_tokens=spec.max_tokens, prompt_head=template_head(spec.prompt))
        store = generator.states
        plain, restored, rates = [], [], []
        prefix_tokens = prompt_tokens = 0
        for _ in range(rounds):  # the two take turns
            backend.reset()
            done = backend.complete(request, deadline=time.monotonic() + 60)
            assert done.first_token_seconds is not None
            plain.append(done.first_token_seconds)
            if done.tokens > 1:
                rates.append((done.tokens - 1) / (done.seconds - done.first_token_seconds))
            backend.reset()
            done = backend.complete(request, deadline=time.monotonic() + 60, states=store.bound(None))
            assert done.first_token_seconds is not None
            prefix_sources.append(done.prefix)
            restored.append(done.first_token_seconds)
        prefix = backend._prefix(request.system_prompt, request.prompt_head) or []
        prefix_tokens = len(prefix)
        prompt_tokens = len(backend._tokens(backend._format(messages=request.messages()).prompt))
        results: dict[str, Any] = {
            "cold_ms": round(statistics.median(cold) * 1000, 2),
            "cached_us": round(statistics.median(cached) / 1000, 2),
            "cached_respond_us": round(statistics.median(whole) / 1000, 2),
            "raw_l1_reads_us": round(statistics.median(floor) / 1000, 2),
            "ttft_ms": round(statistics.median(plain) * 1000, 2),
            "ttft_prefix_cached_ms": round(statistics.median(restored) * 1000, 2),
            "tokens_per_s": round(statistics.median(rates), 1) if rates else 0.0,
            "prompt_tokens": prompt_tokens,
            "system_prefix_tokens": prefix_tokens,
            "prefix_sources": sorted(set(prefix_sources)),
            "answer": answer.text,
        }
        results["ratio_ttft_prefix_plain"] = round(
            results["ttft_prefix_cached_ms"] / results["ttft_ms"], 3)
        results["ratio_cold_cached"] = round(results["cold_ms"] * 1000 / results["cached_us"])
        return results
    finally:
        engine.close()
        generator.close()
        cache.close()
        server.stop()


def report(results: dict[str, Any], quick: bool) -> None:
    print(f"generation benchmark on {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}{' (quick)' if quick else ''}")
    print(f"answer: {results['answer']!r}\n")
    rows = [("cold_ms", "ms", "uncached answer with one generated part"),
            ("cached_us", "us", "the same answer, every fragment from L1"),
            ("cached_respond_us", "us", "the same through IntentEngine.respond"),
            ("raw_l1_reads_us", "us", "its two fragment texts read from L1 (the floor)"),
            ("ttft_ms", "ms", "first token, whole prompt evaluated"),
            ("ttft_prefix_cached_ms", "ms", "first token, system-prompt state from L1"),
            ("tokens_per_s", "/s", "generation speed after the first token"),
            ("prompt_tokens", "", "tokens in the prompt"),
            ("system_prefix_tokens", "", "of which kept in the saved state")]
    print(f"{'name':24}{'value':>12}  what")
    for name, unit, what in rows:
        print(f"{name:24}{results[name]:>12} {unit:2} {what}")
    print(f"\nttft_prefix_cached/ttft    {results['ratio_ttft_prefix_plain']}x")
    print(f"cold/cached               {results['ratio_cold_cached']}x")
    finish(results, [
        ("ttft_prefix_cached_ms <= 0.5 x ttft_ms", results["ratio_ttft_prefix_plain"] <= 0.5),
        ("cached_us <= 50", results["cached_us"] <= 50)], quick=quick, omit=("answer",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    args = parser.parse_args()
    rounds, repeats = (2, 50) if args.quick else (7, 2000)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as folder:
        results = run(rounds, repeats, Path(folder))
    report(results, args.quick)


if __name__ == "__main__":
    main()
