"""What the caches people use instead get wrong, each claim tested on the peer (installed
through the bench extra) and its opposite on ours: keys that ignore the model, keys that
collide or give a prompt away, answers in clear on disk, no time to live."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import redis

from cache import GenerationKey, KeyBuilder, Keyring, MemoryTier, RedisTier, SqliteTier, TieredCache
from tests.servers import RedisServer

# The peers' own deprecation warnings. LangChain's import turns its warnings back on ahead of
# this filter, so it is imported here, its warnings then as they were, before any test runs.
pytestmark = pytest.mark.filterwarnings("ignore")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import langchain_community.cache  # noqa: F401


@pytest.fixture
def ours(redis_server: RedisServer, tmp_path: Path) -> Any:
    keyring = Keyring({1: os.urandom(32)})
    names = KeyBuilder(keyring.naming_secret())
    cache = TieredCache(keyring=keyring, memory=MemoryTier(16 * 1024 * 1024),
                        redis_tier=RedisTier(redis_server.url, namer=names.name),
                        sqlite_tier=SqliteTier(tmp_path / "ours.db"), listen=False).start()
    redis.Redis.from_url(redis_server.url).flushall()
    yield cache, names
    cache.close()


def key(names: KeyBuilder, prompt: str, model: str = "model-a", version: str = "v1") -> str:
    return names.generation_key(GenerationKey(
        backend="llama_cpp", model_id=model, model_version=version, tokenizer_version="t",
        template_id="unmatched", template_version="1", system_prompt="", prompt=prompt,
        temperature=0.0, top_p=1.0, top_k=40, max_tokens=64, seed=None, scope="shared"))


def test_langchain_redis_keys_collide_and_name_the_prompt_ours_do_neither(
        redis_server: RedisServer, ours: Any) -> None:
    from langchain_community.cache import RedisCache
    from langchain_core.outputs import Generation

    client = redis.Redis.from_url(redis_server.url)
    peer = RedisCache(redis_=client)
    peer.update("ab", "c", [Generation(text="an answer to ab, from model c")])
    # Another prompt of another model reads it: md5 of the two joined without a separator.
    assert peer.lookup("a", "bc") == [Generation(text="an answer to ab, from model c")]
    # Whoever sees Redis's key names can confirm a guessed prompt.
    assert hashlib.md5(b"abc").hexdigest().encode() in {k.split(b":")[-1]
                                                        for k in client.keys("*")}
    assert client.ttl(client.keys("*")[0]) == -1  # kept for ever
    client.flushall()
    cache, names = ours
    cache.set(key(names, "ab", "c"), "an answer to ab, from model c", ttl=600)
    assert key(names, "ab", "c") != key(names, "a", "bc")
    assert cache.lookup(key(names, "a", "bc")) is None
    stored = client.keys("*")
    guesses = {hashlib.md5(b"abc").hexdigest(), hashlib.sha256(b"abc").hexdigest(),
               hashlib.sha256(b"ab").hexdigest()}  # what a guess of the prompt would give
    assert stored and all(g.encode() not in k for k in stored for g in guesses)
    assert all(client.pttl(k) > 0 for k in stored)  # every item expires


def test_langchain_sqlite_keeps_prompts_and_answers_in_clear_ours_does_not(
        tmp_path: Path, ours: Any) -> None:
    from langchain_community.cache import SQLiteCache
    from langchain_core.outputs import Generation

    prompt, answer = "my neighbour's door code is 4711", "noted, Mrs Example"
    peer = SQLiteCache(database_path=str(tmp_path / "langchain.db"))
    peer.update(prompt, "model-a", [Generation(text=answer)])
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("langchain.db*"))
    assert prompt.encode() in on_disk and answer.encode() in on_disk
    cache, names = ours
    cache.set(key(names, prompt), answer, ttl=600)
    assert cache.sqlite is not None
    cache.sqlite.flush()
    ours_on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("ours.db*"))
    assert ours_on_disk and prompt.encode() not in ours_on_disk
    assert answer.encode() not in ours_on_disk


def test_gptcache_keys_on_the_prompt_alone_ours_on_the_model_too(
        tmp_path: Path, ours: Any) -> None:
    from gptcache import Cache
    from gptcache.adapter.api import get, put
    from gptcache.manager import get_data_manager
    from gptcache.processor.pre import get_prompt

    peer = Cache()
    peer.init(pre_embedding_func=get_prompt,
              data_manager=get_data_manager(data_path=str(tmp_path / "gptcache.txt")))
    put("what is the weather like", "model A: sunny, take a hat", cache_obj=peer)
    # Asked for model B (or at another temperature): the call cannot even say so.
    assert get("what is the weather like", cache_obj=peer) == "model A: sunny, take a hat"
    cache, names = ours
    cache.set(key(names, "what is the weather like"), "model A: sunny", ttl=600)
    assert cache.lookup(key(names, "what is the weather like", model="model-b")) is None
    assert cache.lookup(key(names, "what is the weather like", version="v2")) is None
    found = cache.lookup(key(names, "what is the weather like"))
    assert found is not None and found.value == "model A: sunny"


def test_gptcache_exact_mode_on_sqlite_serves_one_models_answer_for_another_ours_does_not(
        tmp_path: Path, ours: Any) -> None:
    # As bench/bench_peers.py runs it: sqlite, a faiss index beside it, exact matching.
    pytest.importorskip("faiss")
    from gptcache import Cache
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.exact_match import ExactMatchEvaluation

    from bench.bench_peers import GPTCACHE_DIM, prompt_vector

    manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{tmp_path}/gptcache.db"),
        VectorBase("faiss", dimension=GPTCACHE_DIM, index_path=str(tmp_path / "faiss.index")))
    peer = Cache()
    peer.init(pre_embedding_func=get_prompt, embedding_func=prompt_vector,
              data_manager=manager, similarity_evaluation=ExactMatchEvaluation())
    prompt, answer = "my neighbour's door code is 4711", "model A: noted"
    put(prompt, answer, cache_obj=peer)
    assert get(prompt, cache_obj=peer) == answer  # for any model: it cannot be told
    assert get(prompt + "?", cache_obj=peer) is None  # exact: another prompt misses
    on_disk = (tmp_path / "gptcache.db").read_bytes()
    assert prompt.encode() in on_disk and answer.encode() in on_disk  # in clear
    manager.close()
    cache, names = ours
    space = names.generation_space(GenerationKey(
        backend="llama_cpp", model_id="model-a", model_version="v1", tokenizer_version="t",
        template_id="unmatched", template_version="1", system_prompt="", prompt="",
        temperature=0.0, top_p=1.0, top_k=40, max_tokens=64, seed=None, scope="shared"))
    cache.set(space.key(prompt), answer, ttl=600)
    assert cache.get(space.key(prompt)) == answer
    assert cache.lookup(key(names, prompt, model="model-b")) is None
    assert space.key(prompt) == key(names, prompt)  # the same name as a key built whole
