"""The caches people use instead, on one workload, in one run: ``make bench-peers``.

10,000 prompts of about 100 characters, answers of 2 KB; 50,000 lookups drawn Zipf(1.1)
over the prompts; then 5,000 writes of new prompts. Through:

- our TieredCache: the memory tier alone; memory and Redis; all three tiers. Each tier's
  hit is forced and timed on its own (the tiers above it emptied of that key, untimed), and
  the key is built inside the timed call, as a caller builds it (model, sampling and
  template in it, HMAC-named for Redis and the disk);
- LangChain's InMemoryCache, SQLiteCache and RedisCache (langchain-community), keyed by
  prompt and model string as LangChain keys them, on the same redis-server.

GPTCache and RedisVL are not in this run yet (see the README). Medians and 99th
percentiles in microseconds; the last line is one JSON object. Goals are reported, never
asserted.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from langchain_community.cache import InMemoryCache, RedisCache, SQLiteCache  # noqa: E402
from langchain_core.outputs import Generation  # noqa: E402

from bench.report import finish  # noqa: E402
from cache import (  # noqa: E402
    GenerationKey,
    KeyBuilder,
    Keyring,
    MemoryTier,
    RedisTier,
    SqliteTier,
    TieredCache,
)
from tests.servers import RedisServer  # noqa: E402

PROMPTS, LOOKUPS, WRITES = 10_000, 50_000, 5_000
ANSWER_BYTES = 2048
LLM_STRING = "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf:temperature=0.0:top_p=1.0:top_k=40"
QUICK = "--quick" in sys.argv


def workload(seed: int = 7) -> tuple[list[str], list[str], list[int], list[str]]:
    rng = random.Random(seed)
    words = ["the", "kitchen", "light", "turn", "on", "off", "set", "timer", "minutes", "what",
             "weather", "like", "today", "how", "warm", "living", "room", "bedroom", "lamp",
             "fan", "speed", "percent", "please", "could", "you", "would"]

    def sentence(n: int) -> str:
        text = f"{n}: " + " ".join(rng.choice(words) for _ in range(20))
        return text[:100]

    count = PROMPTS // 10 if QUICK else PROMPTS
    prompts = [sentence(n) for n in range(count)]
    answers = ["".join(rng.choice("abcdefghij klmnop") for _ in range(ANSWER_BYTES))
               for _ in range(64)]
    # Zipf(1.1) over the prompts' ranks, drawn once for every cache.
    weights = [1 / (rank ** 1.1) for rank in range(1, count + 1)]
    lookups = rng.choices(range(count), weights=weights, k=LOOKUPS // 10 if QUICK else LOOKUPS)
    fresh = [sentence(count + n) for n in range(WRITES // 10 if QUICK else WRITES)]
    return prompts, answers, lookups, fresh


def timed(calls: list[Callable[[], Any]], before: Callable[[int], None] | None = None
          ) -> list[float]:
    """Microseconds each call took (``before(i)``, untimed, runs first)."""
    out = []
    for i, call in enumerate(calls):
        if before is not None:
            before(i)
        started = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_us": round(statistics.median(ordered), 2),
            "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 2)}


def main() -> int:
    prompts, answers, lookups, fresh = workload()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as name:
        folder = Path(name)
        server = RedisServer(folder / "redis").start()
        try:
            run_ours(results, folder, server.url, prompts, answers, lookups, fresh)
            run_langchain(results, folder, server.url, prompts, answers, lookups, fresh)
        finally:
            server.stop()
    ours_l1, ours_l2, ours_l3 = (results[f"ours_{t}_hit"]["p50_us"] for t in ("l1", "l2", "l3"))
    ours_write = results["ours_write_all_tiers"]["p50_us"]
    figures = {
        "l1_hit_vs_inmemory": round(ours_l1 / results["inmemory_hit"]["p50_us"], 2),
        "hit_speedup_vs_langchain_redis": round(results["langchain_redis_hit"]["p50_us"]
                                                / ours_l2, 2),
        "hit_speedup_vs_langchain_sqlite": round(results["langchain_sqlite_hit"]["p50_us"]
                                                 / ours_l3, 2),
        "write_ratio_vs_langchain_sqlite": round(ours_write
                                                 / results["langchain_sqlite_write"]["p50_us"],
                                                 2),
        "write_ratio_vs_langchain_redis": round(ours_write
                                                / results["langchain_redis_write"]["p50_us"], 2),
    }
    print("bench_peers: the same prompts, lookups (Zipf 1.1) and writes through each cache; "
          f"{len(prompts)} prompts, {len(lookups)} lookups, {len(fresh)} writes")
    for name, value in results.items():
        print(f"  {name:32} {value}")
    flat = {f"{name}_{k}": v for name, value in results.items() for k, v in value.items()}
    flat.update(figures)
    finish(flat, [
        ("l1_hit_vs_inmemory <= 5", figures["l1_hit_vs_inmemory"] <= 5),
        ("hit_speedup_vs_langchain_redis >= 2", figures["hit_speedup_vs_langchain_redis"] >= 2),
        ("hit_speedup_vs_langchain_sqlite >= 3",
         figures["hit_speedup_vs_langchain_sqlite"] >= 3),
        ("write_ratio_vs_langchain_sqlite <= 1",
         figures["write_ratio_vs_langchain_sqlite"] <= 1),
        ("write_ratio_vs_langchain_redis <= 1", figures["write_ratio_vs_langchain_redis"] <= 1),
    ], quick=QUICK)
    return 0


def run_ours(results: dict[str, Any], folder: Path, url: str, prompts: list[str],
             answers: list[str], lookups: list[int], fresh: list[str]) -> None:
    keyring = Keyring({1: os.urandom(32)})
    names = KeyBuilder(keyring.naming_secret())

    def key(prompt: str) -> str:  # as the generator builds it, for every call
        return names.generation_key(GenerationKey(
            backend="llama_cpp", model_id="SmolLM2-135M-Instruct.Q4_1.gguf",
            model_version="a" * 32, tokenizer_version="b" * 32, template_id="unmatched",
            template_version="c" * 16, system_prompt="You are a voice assistant.",
            prompt=prompt, temperature=0.0, top_p=1.0, top_k=40, max_tokens=64, seed=None,
            scope="shared"))

    def cache(*, with_redis: bool, with_disk: bool, db: str) -> TieredCache:
        return TieredCache(
            keyring=keyring, memory=MemoryTier(256 * 1024 * 1024),
            redis_tier=RedisTier(url, namer=names.name) if with_redis else None,
            sqlite_tier=SqliteTier(folder / db) if with_disk else None, listen=False).start()

    full = cache(with_redis=True, with_disk=True, db="full.db")
    try:
        keys = [key(p) for p in prompts]
        for i, k in enumerate(keys):
            full.set(k, answers[i % len(answers)], ttl=3600)
        assert full.sqlite is not None and full.redis is not None
        full.sqlite.flush()
        calls = [lambda i=i: full.lookup(key(prompts[i])) for i in lookups]
        results["ours_l1_hit"] = summary(timed(calls))
        results["ours_l2_hit"] = summary(timed(
            calls, before=lambda n: full.memory.delete(keys[lookups[n]])))
        redis_tier = full.redis

        def down_to_disk(n: int) -> None:
            full.memory.delete(keys[lookups[n]])
            redis_tier.delete(keys[lookups[n]])

        results["ours_l3_hit"] = summary(timed(calls, before=down_to_disk))
        results["ours_key_build"] = summary(timed([lambda i=i: key(prompts[i])
                                                   for i in lookups[:5000]]))
        results["ours_write_all_tiers"] = summary(timed(
            [lambda p=p, n=n: full.set(key(p), answers[n % len(answers)], ttl=3600)
             for n, p in enumerate(fresh)]))
        full.sqlite.flush()
    finally:
        full.close()


def run_langchain(results: dict[str, Any], folder: Path, url: str, prompts: list[str],
                  answers: list[str], lookups: list[int], fresh: list[str]) -> None:
    client = redis.Redis.from_url(url)
    peers = {"inmemory": InMemoryCache(),
             "langchain_sqlite": SQLiteCache(database_path=str(folder / "langchain.db")),
             "langchain_redis": RedisCache(redis_=client)}
    for name, peer in peers.items():
        for n, prompt in enumerate(prompts):
            peer.update(prompt, LLM_STRING, [Generation(text=answers[n % len(answers)])])
        results[f"{name}_hit"] = summary(timed(
            [lambda p=prompts[i], peer=peer: peer.lookup(p, LLM_STRING) for i in lookups]))
        if name != "inmemory":
            results[f"{name}_write"] = summary(timed(
                [lambda p=p, n=n, peer=peer: peer.update(
                    p, LLM_STRING, [Generation(text=answers[n % len(answers)])])
                 for n, p in enumerate(fresh)]))
    client.close()


if __name__ == "__main__":
    raise SystemExit(main())
