"""Lists kept per user through the real tiered cache (redis-server, sqlite): their own, under
their policy, sealed at rest, gone when they are forgotten; and the list intents through the
real templates and sentence library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from assistant.answers import Responder
from assistant.engine import IntentEngine
from assistant.handlers import Handlers
from assistant.home import Registry, load_home
from assistant.lists import SHOPPING_LIST, Item, ListIntents, ListStore
from assistant.settings import IntentsSettings
from cache import KeyBuilder, Keyring, PolicyBook, PrivacyPolicy, TieredCache
from tests.conftest import FakeClock, make_cache

ROOT = Path(__file__).resolve().parent.parent


def redis_values(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return [v for k in client.keys("*") if client.type(k) == b"string"
                and (v := client.get(k)) is not None]
    finally:
        client.close()


def disk_bytes(db: Path) -> list[bytes]:
    """The database file and its write-ahead log, as they are on disk."""
    return [path.read_bytes() for path in (db, Path(f"{db}-wal")) if path.exists()]


def disk_items(cache: TieredCache) -> int:
    assert cache.sqlite is not None
    cache.sqlite.flush()
    return int(cache.sqlite.stats()["rows"])


@pytest.fixture
def store(cache: TieredCache, names: KeyBuilder) -> ListStore:
    return ListStore(cache, names)


def test_a_list_is_its_owners_alone(store: ListStore) -> None:
    store.add("ann", SHOPPING_LIST, "oat  milk")
    store.add("ann", SHOPPING_LIST, "bread")
    assert store.items("ann", SHOPPING_LIST) == [Item("oat milk"), Item("bread")]
    assert store.items("cal", SHOPPING_LIST) == []
    assert store.complete("cal", SHOPPING_LIST, "bread") is None
    assert store.complete("ann", SHOPPING_LIST, "Bread") == Item("bread", complete=True)
    assert store.complete("ann", SHOPPING_LIST, "bread") is None  # checked off already
    assert store.remove("ann", SHOPPING_LIST, "OAT MILK") == Item("oat milk")
    assert store.items("ann", SHOPPING_LIST) == [Item("bread", complete=True)]
    assert store.items("ann", "chores") == []


def test_a_list_is_sealed_at_rest_and_read_by_another_process(
        store: ListStore, cache: TieredCache, keyring: Keyring, names: KeyBuilder,
        redis_url: str, tmp_path: Path) -> None:
    store.add("ann", SHOPPING_LIST, "pregnancy test")
    assert disk_items(cache) == 1
    stored = redis_values(redis_url) + disk_bytes(tmp_path / "cache.db")
    assert stored and not any(b"pregnancy" in value for value in stored)
    # Another node (its own memory, the same Redis): the same list, from Redis.
    other = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "other.db")
    try:
        assert ListStore(other, names).items("ann", SHOPPING_LIST) == [Item("pregnancy test")]
    finally:
        other.close()


def test_forgetting_a_user_removes_their_lists_from_every_tier(
        store: ListStore, cache: TieredCache, keyring: Keyring, names: KeyBuilder,
        redis_url: str, tmp_path: Path) -> None:
    store.add("ann", SHOPPING_LIST, "milk")
    store.add("cal", SHOPPING_LIST, "eggs")
    assert disk_items(cache) == 2
    cache.forget_user("ann")
    assert store.items("ann", SHOPPING_LIST) == []
    assert store.items("cal", SHOPPING_LIST) == [Item("eggs")]
    assert disk_items(cache) == 1
    fresh = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "cache.db")
    try:  # nothing left below memory either
        assert ListStore(fresh, names).items("ann", SHOPPING_LIST) == []
        assert ListStore(fresh, names).items("cal", SHOPPING_LIST) == [Item("eggs")]
    finally:
        fresh.close()


def test_the_owners_policy_decides_disk_and_life(keyring: Keyring, names: KeyBuilder,
                                                 redis_url: str, tmp_path: Path,
                                                 clock: FakeClock) -> None:
    policies = PolicyBook(users={"ann": PrivacyPolicy(max_ttl=600, persist=False)})
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "cache.db", clock=clock, policies=policies)
    try:
        store = ListStore(cache, names)
        store.add("ann", SHOPPING_LIST, "milk")
        assert disk_items(cache) == 0  # ann's policy keeps nothing of hers on disk
        clock.advance(599)
        assert store.items("ann", SHOPPING_LIST) == [Item("milk")]
        clock.advance(2)
        assert store.items("ann", SHOPPING_LIST) == []
    finally:
        cache.close()


# -- the intents, through the real templates ---------------------------------------------------

@pytest.fixture
def engine(cache: TieredCache, names: KeyBuilder) -> Iterator[IntentEngine]:
    responder = Responder(cache, names,
                          handlers=Handlers([ListIntents(ListStore(cache, names))]))
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")),
                          cache=cache, keys=names, responder=responder).start()
    yield engine
    engine.close()


def test_list_intents_keep_each_askers_own_list(engine: IntentEngine) -> None:
    added = engine.respond("add oat milk to my shopping list", user="ann", site="kitchen")
    assert added.text == "Added oat milk to your shopping list."
    assert added.personal and added.fragments[0].source == "computed"
    assert engine.respond("check off oat milk from my shopping list", user="cal").text == \
        "Sorry, oat milk is not on your shopping list."
    assert engine.respond("check off oat milk from my shopping list", user="ann").text == \
        "Checked off oat milk on your shopping list."
    assert engine.respond("add dust the shelves to my chores list", user="ann").text == \
        "Added dust the shelves to your chores list."
    assert engine.respond("remove dust the shelves from my chores list", user="ann").text == \
        "Removed dust the shelves from your chores list."
    assert engine.respond("remove dust the shelves from my chores list", user="ann").text == \
        "Sorry, dust the shelves is not on your chores list."


def test_someone_unknown_is_told_no_list_is_kept(engine: IntentEngine,
                                                 store: ListStore) -> None:
    answer = engine.respond("add milk to my shopping list", user=None)
    assert answer.text.startswith("Sorry, I only keep lists for people I know")


def test_a_policy_that_keeps_nothing_is_said_so(keyring: Keyring, names: KeyBuilder,
                                                redis_url: str, tmp_path: Path) -> None:
    policies = PolicyBook(users={"ann": PrivacyPolicy(max_ttl=0)})
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url,
                       db=tmp_path / "cache.db", policies=policies)
    handlers = Handlers([ListIntents(ListStore(cache, names))])
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")), cache=cache,
                          keys=names, responder=Responder(cache, names, handlers=handlers))
    try:
        engine.start()
        assert engine.respond("add milk to my shopping list", user="ann").text == \
            "Sorry, your privacy settings don't let me keep a list for you."
    finally:
        engine.close()
        cache.close()
