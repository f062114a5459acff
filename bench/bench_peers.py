"""The caches people use instead, on one workload, in one run: ``make bench-peers``.

10,000 prompts of about 100 characters, answers of 2 KB; 50,000 lookups drawn Zipf(1.1)
over the prompts; then 5,000 writes of new prompts. Through:

- our TieredCache: each tier's hit forced on its own. An L1 and an L2 hit on a cache whose
  items are in every tier (the L2 hit's item is first dropped from memory, untimed); an L3
  hit on one whose items were written to the disk tier only, so Redis misses on the way (the
  item dropped from memory first, untimed). The key is made inside the timed call, as a
  caller makes it: from the prompt, in a key space of the model, sampling and template
  (HMAC-named for Redis and the disk; a prompt seen before is named from memory). Redis's
  replies are polled for (``[redis] spin``, 100 µs); ``ours_l2_hit_no_poll`` is the L2 hit
  of a cache that sleeps on them at once, and ``redis_py_get`` a plain redis-py ``GET`` of
  the same items, the raw baseline;
- LangChain's InMemoryCache, SQLiteCache and RedisCache (langchain-community), keyed by
  prompt and model string as LangChain keys them, on the same redis-server;
- GPTCache in exact-match mode on sqlite (its SQLAlchemy store, a faiss index beside it,
  a vector made from the prompt's hash, ``ExactMatchEvaluation``), on the first 2,000
  lookups only: its hits take milliseconds;
- RedisVL's SemanticCache only when redis-server has the search module (``FT.*``): the JSON
  says why it was not run otherwise.

The caches' runs are interleaved in 50 slices each, so a machine that is busier for a while
slows every cache alike. What holding the prompts costs each cache is measured while it is
filled: the bytes it allocates in this process (``tracemalloc``: Python's allocators, so not
faiss's index), Redis's ``used_memory`` growth, and the size of its files on disk. Medians
and 99th percentiles in microseconds; the last line is one JSON object. Goals are reported, never asserted.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
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

# LangChain's import turns its own pending deprecations on, ahead of ``-W ignore``: one of them
# (``allowed_objects``) comes with every hit. Still paid for on every hit, not printed.
warnings.filterwarnings("ignore", category=PendingDeprecationWarning)

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


SLICES = 50
GPTCACHE_LOOKUPS = 2_000
GPTCACHE_DIM = 8


@dataclass
class Phase:
    """One measured series: ``calls`` timed one by one, ``before(i)`` (untimed) first."""

    name: str
    calls: list[Callable[[], Any]]
    before: Callable[[int], None] | None = None
    samples: list[float] | None = None


class Footprint:
    """Bytes a cache takes while it is filled: in this process, in Redis, in its files."""

    def __init__(self, url: str, files: tuple[Path, ...] = ()) -> None:
        self.url, self.files = url, files
        self.figures: dict[str, float] = {}

    def _redis_used(self) -> int:
        client = redis.Redis.from_url(self.url)
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()

    def __enter__(self) -> Footprint:
        self._redis = self._redis_used()
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        process = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        disk = sum(f.stat().st_size for path in self.files
                   for f in (path, path.with_name(path.name + "-wal")) if f.exists())
        self.figures = {"process_mb": round(process / 2**20, 1),
                        "redis_mb": round(max(0, self._redis_used() - self._redis) / 2**20, 1),
                        "disk_mb": round(disk / 2**20, 1)}


def own(answers: list[str], n: int) -> str:
    """The answer to prompt ``n``, a string of its own: a cache that keeps answers in this
    process is charged for them (the answers list holds a few, shared)."""
    return answers[n % len(answers)][:-8] + f"{n:08d}"


def timed(calls: list[Callable[[], Any]], before: Callable[[int], None] | None = None,
          offset: int = 0) -> list[float]:
    """Microseconds each call took (``before(offset + i)``, untimed, runs first)."""
    out = []
    for i, call in enumerate(calls):
        if before is not None:
            before(offset + i)
        started = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


def interleaved(phases: list[Phase]) -> None:
    """Run every phase in ``SLICES`` slices, one slice of each in turn."""
    for phase in phases:
        phase.samples = []
    for n in range(SLICES):
        for phase in phases:
            size = -(-len(phase.calls) // SLICES)
            part = phase.calls[n * size:(n + 1) * size]
            assert phase.samples is not None
            phase.samples += timed(part, phase.before, n * size)


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
        closers: list[Callable[[], None]] = []
        sizes: dict[str, dict[str, float]] = {}
        try:
            phases = [*ours(closers, folder, server.url, prompts, answers, lookups, fresh, sizes),
                      *langchain(closers, folder, server.url, prompts, answers, lookups, fresh,
                                 sizes),
                      *gptcache(server.url, prompts, answers, lookups, fresh, sizes)]
            interleaved(phases)
            for phase in phases:
                assert phase.samples is not None
                results[phase.name] = summary(phase.samples)
            redisvl = redisvl_state(server.url)
        finally:
            for close in closers:
                close()
            server.stop()
    ours_l1, ours_l2, ours_l3 = (results[f"ours_{t}_hit"]["p50_us"] for t in ("l1", "l2", "l3"))
    ours_write = results["ours_write_all_tiers"]["p50_us"]
    figures: dict[str, Any] = {
        "l1_hit_vs_inmemory": round(ours_l1 / results["inmemory_hit"]["p50_us"], 2),
        "hit_speedup_vs_langchain_redis": round(results["langchain_redis_hit"]["p50_us"]
                                                / ours_l2, 2),
        "hit_speedup_vs_langchain_sqlite": round(results["langchain_sqlite_hit"]["p50_us"]
                                                 / ours_l3, 2),
        "hit_speedup_vs_gptcache": round(results["gptcache_hit"]["p50_us"] / ours_l3, 2),
    }
    for peer in ("langchain_sqlite", "langchain_redis", "gptcache"):
        figures[f"write_ratio_vs_{peer}"] = round(ours_write
                                                  / results[f"{peer}_write"]["p50_us"], 2)
    print("bench_peers: the same prompts, lookups (Zipf 1.1) and writes through each cache; "
          f"{len(prompts)} prompts, {len(lookups)} lookups, {len(fresh)} writes "
          f"(GPTCache: {min(len(lookups), GPTCACHE_LOOKUPS)} lookups)")
    for name, value in results.items():
        print(f"  {name:32} {value}")
    print(f"  {'redisvl':32} {redisvl}")
    print(f"holding {len(prompts)} prompts (MB):")
    for name, value in sizes.items():
        print(f"  {name:32} {value}")
    flat: dict[str, Any] = {f"{name}_{k}": v for name, value in results.items()
                            for k, v in value.items()}
    flat.update({f"{name}_{k}": v for name, value in sizes.items() for k, v in value.items()})
    flat.update(figures)
    flat["redisvl"] = redisvl
    finish(flat, [
        ("l1_hit_vs_inmemory <= 5", figures["l1_hit_vs_inmemory"] <= 5),
        ("hit_speedup_vs_langchain_redis >= 2", figures["hit_speedup_vs_langchain_redis"] >= 2),
        ("hit_speedup_vs_langchain_sqlite >= 3",
         figures["hit_speedup_vs_langchain_sqlite"] >= 3),
        ("hit_speedup_vs_gptcache >= 5", figures["hit_speedup_vs_gptcache"] >= 5),
        ("write_ratio_vs_langchain_sqlite <= 1",
         figures["write_ratio_vs_langchain_sqlite"] <= 1),
        ("write_ratio_vs_langchain_redis <= 1", figures["write_ratio_vs_langchain_redis"] <= 1),
        ("write_ratio_vs_gptcache <= 1", figures["write_ratio_vs_gptcache"] <= 1),
    ], quick=QUICK)
    return 0


def ours(closers: list[Callable[[], None]], folder: Path, url: str, prompts: list[str],
         answers: list[str], lookups: list[int], fresh: list[str],
         sizes: dict[str, dict[str, float]]) -> list[Phase]:
    keyring = Keyring({1: os.urandom(32)})
    names = KeyBuilder(keyring.naming_secret())
    request = GenerationKey(
        backend="llama_cpp", model_id="SmolLM2-135M-Instruct.Q4_1.gguf",
        model_version="a" * 32, tokenizer_version="b" * 32, template_id="unmatched",
        template_version="c" * 16, system_prompt="You are a voice assistant.",
        prompt="", temperature=0.0, top_p=1.0, top_k=40, max_tokens=64, seed=None,
        scope="shared")
    # Made once, as a generator makes it for its model and template (LangChain's model
    # string is made once too); a key of it is then made from the prompt in every call.
    space = names.generation_space(request)
    cold = names.generation_space(request, memo=0)  # a name made afresh every time

    def cache(db: str, spin: float = 100e-6) -> TieredCache:
        made = TieredCache(keyring=keyring, memory=MemoryTier(256 * 1024 * 1024),
                           redis_tier=RedisTier(url, namer=names.name, spin=spin),
                           sqlite_tier=SqliteTier(folder / db), listen=False).start()
        closers.append(made.close)
        return made

    full, disk = cache("full.db"), cache("disk.db")
    # The same items read by a cache whose thread sleeps on Redis's reply at once (``spin=0``):
    # what polling for the reply buys.
    sleeper = cache("sleeper.db", spin=0.0)
    plain = redis.Redis.from_url(url)
    closers.append(plain.close)
    # Two copies of each prompt, each under its own key space's names: one cache's items
    # in every tier, the other's on disk only (so its reads miss Redis on the way).
    disk_space = names.generation_space(GenerationKey(**{
        **{f: getattr(request, f) for f in request.__dataclass_fields__}, "template_id": "disk"}))
    assert full.sqlite is not None and disk.sqlite is not None
    with Footprint(url, (folder / "full.db",)) as held:
        for i, prompt in enumerate(prompts):
            full.set(space.key(prompt), own(answers, i), ttl=3600)
        full.sqlite.flush()
    sizes["ours_all_tiers"] = held.figures
    for i, prompt in enumerate(prompts):
        disk.set(disk_space.key(prompt), answers[i % len(answers)], ttl=3600, redis=False)
    disk.sqlite.flush()
    disk.memory.clear()
    keys = [space.key(p) for p in prompts]
    disk_keys = [disk_space.key(p) for p in prompts]
    return [
        Phase("ours_l1_hit", [lambda p=prompts[i]: full.get(space.key(p)) for i in lookups]),
        Phase("ours_l1_hit_lookup", [lambda p=prompts[i]: full.lookup(space.key(p))
                                     for i in lookups]),
        Phase("ours_l2_hit", [lambda p=prompts[i]: full.lookup(space.key(p)) for i in lookups],
              before=lambda n: full.memory.delete(keys[lookups[n]])),
        Phase("ours_l2_hit_no_poll", [lambda p=prompts[i]: sleeper.lookup(space.key(p))
                                      for i in lookups],
              before=lambda n: sleeper.memory.delete(keys[lookups[n]])),
        Phase("redis_py_get", [lambda k=keys[i]: plain.get(k) for i in lookups]),
        Phase("ours_l3_hit", [lambda p=prompts[i]: disk.lookup(disk_space.key(p))
                              for i in lookups],
              before=lambda n: disk.memory.delete(disk_keys[lookups[n]])),
        Phase("ours_key_new", [lambda p=prompts[i]: cold.key(p) for i in lookups[:5000]]),
        Phase("ours_key_full_build", [lambda p=prompts[i]: names.generation_key(GenerationKey(
            **{**{f: getattr(request, f) for f in request.__dataclass_fields__}, "prompt": p}))
            for i in lookups[:5000]]),
        Phase("ours_write_all_tiers", [
            lambda p=p, n=n: full.set(space.key(p), answers[n % len(answers)], ttl=3600)
            for n, p in enumerate(fresh)]),
    ]


def langchain(closers: list[Callable[[], None]], folder: Path, url: str, prompts: list[str],
              answers: list[str], lookups: list[int], fresh: list[str],
              sizes: dict[str, dict[str, float]]) -> list[Phase]:
    client = redis.Redis.from_url(url)
    closers.append(client.close)
    peers = {"inmemory": InMemoryCache(),
             "langchain_sqlite": SQLiteCache(database_path=str(folder / "langchain.db")),
             "langchain_redis": RedisCache(redis_=client)}
    phases = []
    for name, peer in peers.items():
        with Footprint(url, (folder / "langchain.db",) if name == "langchain_sqlite" else ()) \
                as held:
            for n, prompt in enumerate(prompts):
                peer.update(prompt, LLM_STRING, [Generation(text=own(answers, n))])
        sizes[name] = held.figures
        phases.append(Phase(f"{name}_hit", [lambda p=prompts[i], peer=peer: peer.lookup(
            p, LLM_STRING) for i in lookups]))
        if name != "inmemory":
            phases.append(Phase(f"{name}_write", [
                lambda p=p, n=n, peer=peer: peer.update(
                    p, LLM_STRING, [Generation(text=answers[n % len(answers)])])
                for n, p in enumerate(fresh)]))
    return phases


def prompt_vector(text: str, **_: Any) -> Any:
    """GPTCache's exact mode still searches a vector store: a vector of the prompt's hash."""
    digest = hashlib.sha256(text.encode()).digest()[:GPTCACHE_DIM * 4]
    return np.frombuffer(digest, dtype=np.uint32).astype("float32") / 2**32


def gptcache(url: str, prompts: list[str], answers: list[str], lookups: list[int],
             fresh: list[str], sizes: dict[str, dict[str, float]]) -> list[Phase]:
    from gptcache import Cache
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.exact_match import ExactMatchEvaluation

    # GPTCache saves its index when the process exits: its folder outlives the run's.
    folder = tempfile.mkdtemp(prefix="bench-peers-gptcache-")
    atexit.register(shutil.rmtree, folder, True)
    manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{folder}/gptcache.db"),
        VectorBase("faiss", dimension=GPTCACHE_DIM, index_path=f"{folder}/faiss.index"),
        max_size=len(prompts) + len(fresh) + 1)
    peer = Cache()
    peer.init(pre_embedding_func=get_prompt, embedding_func=prompt_vector,
              data_manager=manager, similarity_evaluation=ExactMatchEvaluation())
    with Footprint(url, (Path(folder) / "gptcache.db",)) as held:
        for n, prompt in enumerate(prompts):
            put(prompt, own(answers, n), cache_obj=peer)
    sizes["gptcache"] = held.figures
    # Asked with the prompt alone: GPTCache has no place for the model (tests/test_peers.py).
    assert get(prompts[lookups[0]], cache_obj=peer) is not None
    return [
        Phase("gptcache_hit", [lambda p=prompts[i]: get(p, cache_obj=peer)
                               for i in lookups[:GPTCACHE_LOOKUPS]]),
        Phase("gptcache_write", [lambda p=p, n=n: put(p, answers[n % len(answers)],
                                                      cache_obj=peer)
                                 for n, p in enumerate(fresh)]),
    ]


def redisvl_state(url: str) -> str:
    """Whether RedisVL's SemanticCache could run here: it needs the search module."""
    client = redis.Redis.from_url(url)
    try:
        client.execute_command("FT._LIST")
    except redis.ResponseError as error:
        return f"not run: redis-server has no search module (FT.* unknown: {error})"
    finally:
        client.close()
    return "not run: redis-server has the search module, but this bench has no RedisVL run yet"


if __name__ == "__main__":
    raise SystemExit(main())
