"""The privacy promises the README makes, kept when things go wrong: private users, forgets
that fail half-way, quarantined files, reloads while Redis is down, a full disk, bad ids.

Everything runs as a user runs it where it can: the ``assistant`` command in a process of
its own, a real redis-server and sqlite files.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from assistant.app import open_cache
from assistant.settings import load_settings
from cache import Keyring, maintenance
from tests import helpers
from tests.conftest import make_cache
from tests.helpers import until, write_config
from tests.servers import RedisServer, admin_url

ROOT = Path(__file__).resolve().parent.parent
PEER_KEY = "1:" + base64.b64encode(b"k" * 32).decode()
"""The master key tests/intents_peer.py uses."""


def run(config: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=ROOT, env=environ, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def ask(config: Path, text: str, user: str) -> dict[str, object]:
    done = run(config, "ask", text, "--user", user, "--json", check=True)
    return dict(json.loads(done.stdout))


def sources(answer: dict[str, object]) -> list[str]:
    return [str(f["source"]) for f in answer["fragments"]]  # type: ignore[attr-defined, index]


def rows(db: Path) -> list[tuple[str | None, float]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT user, expires_at FROM items"))
    finally:
        conn.close()


def state_files(folder: Path) -> bytes:
    """Every byte the disk tier keeps: data file, WAL, salts, copies moved aside."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir())
                    if p.is_file() and p.name.startswith("cache"))


# -- 1. private users, persist = false, max_ttl: one placement for every item ---------------

PRIVACY = """
[privacy.users.vera]
private = true
[privacy.users.pia]
persist = false
[privacy.users.max]
max_ttl = 60
"""


@pytest.mark.slow
def test_a_private_user_never_shares_an_item(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url, PRIVACY)
    for first, second in (("vera", "walt"), ("xena", "vera")):
        redis.Redis.from_url(redis_url).flushall()
        for db in tmp_path.glob("cache*"):
            db.unlink()
        for sentence in ("turn on the kitchen light", "what's the weather like"):
            assert set(sources(ask(config, sentence, first))) <= {"computed", "fallback"}
            # Another user asking the same never gets the first one's copy, whoever is private.
            assert set(sources(ask(config, sentence, second))) <= {"computed", "fallback"}


@pytest.mark.slow
def test_a_user_who_forbids_disk_adds_nothing_to_it(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url, PRIVACY)
    ask(config, "turn off the kitchen light", "walt")  # the file exists, with walt's items
    before = rows(tmp_path / "cache.db")
    for sentence in ("turn on the kitchen light", "what's the weather like",
                     "what is the capital of France?"):
        answer = ask(config, sentence, "pia")
        assert "computed" in sources(answer)
    assert rows(tmp_path / "cache.db") == before


@pytest.mark.slow
def test_every_item_computed_for_a_short_lived_user_expires_in_time(tmp_path: Path,
                                                                    redis_url: str) -> None:
    config = write_config(tmp_path, redis_url, PRIVACY)
    for sentence in ("turn on the kitchen light", "what's the weather like",
                     "what is the capital of France?"):
        ask(config, sentence, "max")
    raw = redis.Redis.from_url(redis_url)
    ttls = {key: raw.pttl(key) for key in raw.scan_iter("v1:*")}
    raw.close()
    # Every cached item, tag set and epoch expires within the minute (the salts hash and the
    # event stream are not items: they never expire and hold nothing readable).
    assert any(ttl > 0 for ttl in ttls.values())
    assert all(ttl <= 60_000 for key, ttl in ttls.items()
               if key not in (b"v1:salts", b"v1:events")), ttls
    stored = rows(tmp_path / "cache.db")
    assert stored and all(expires <= time.time() + 60 for _user, expires in stored)


# -- 2. a forget names nobody, in Redis or in a dump of it ------------------------------------

def test_a_forget_leaves_no_user_id_in_redis(tmp_path: Path, own_redis: RedisServer) -> None:
    config = write_config(tmp_path, own_redis.url)
    config.write_text(config.read_text().replace("[redis]\n", "[redis]\nevents_ttl = 1\n"))
    settings = load_settings(config)
    cache, names = open_cache(cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
                              keys=settings.keys, privacy=settings.privacy, listen=False)
    cache.set(names.key("answer", "ursula"), "Ursula's note", ttl=600, user="ursula",
              tags=["user:ursula", "intent:Notes"])
    cache.invalidate_tag("intent:Notes")
    cache.close()
    time.sleep(1.2)  # the first event is now older than events_ttl
    done = run(config, "cache", "forget", "ursula", check=True)
    assert json.loads(done.stdout)["complete"] is True
    raw = redis.Redis.from_url(own_redis.url)
    events = raw.xrange("v1:events")
    assert len(events) == 1  # the purge that came first left the stream with its time
    assert b"ursula" not in repr(events).encode()
    raw.close()
    admin = redis.Redis.from_url(admin_url(own_redis.url))
    admin.save()  # SAVE is not the assistant's
    admin.close()
    dump = own_redis.workdir / "dump.rdb"
    assert dump.exists() and b"ursula" not in dump.read_bytes()


# -- 3. a forget that did not complete says so, and is finished later ------------------------

def test_a_forget_the_salts_file_refused_is_reported_and_retried(tmp_path: Path,
                                                                 redis_url: str) -> None:
    config = write_config(tmp_path, redis_url)
    settings = load_settings(config)
    cache, names = open_cache(cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
                              keys=settings.keys, privacy=settings.privacy, listen=False)
    for user in ("sid", "tess", "uma"):
        cache.set(names.key("answer", user), f"{user}'s answer", ttl=600, user=user)
    sid = cache.ref_of("sid")
    cache.close()
    salts = tmp_path / "cache-salts.db"
    with salts.open("r+b") as file:  # its table damaged, its header intact
        file.seek(4096)
        file.write(os.urandom(8192))
    failed = run(config, "cache", "forget", "sid")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["complete"] is False
    assert "not applied everywhere" in failed.stderr
    again = run(config, "cache", "forget", "sid")
    assert again.returncode == 0, again.stderr
    conn = sqlite3.connect(tmp_path / "cache.db")
    assert conn.execute("SELECT count(*) FROM items WHERE user = ?", (sid,)).fetchone()[0] == 0
    conn.close()


# -- 4. files moved aside: reached by a forget, gone after a while ----------------------------

def test_files_moved_aside_go_with_a_forget_and_with_time(tmp_path: Path, keyring: Keyring,
                                                          redis_url: str) -> None:
    from cache import KeyBuilder

    names = KeyBuilder(keyring.naming_secret())
    db = tmp_path / "cache.db"

    def damaged_copy() -> None:
        cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
        cache.set(names.key("answer", "vic"), "Vic's appointment", ttl=600, user="vic")
        cache.close()
        with db.open("r+b") as file:
            file.write(b"this is no database")  # the header: quarantined at the next start

    damaged_copy()
    cache = make_cache(keyring=keyring, names=names, redis_url=redis_url, db=db)
    copies = sorted(tmp_path.glob("cache.db.corrupt-*"))
    assert copies and cache.sqlite is not None
    assert maintenance.stats(cache)["l3"]["quarantined"] == 1
    cache.forget_user("vic")
    assert not list(tmp_path.glob("cache.db.corrupt-*"))
    cache.close()

    damaged_copy()
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db)  # moves it aside
    cache.close()
    copies = sorted(tmp_path.glob("cache.db.corrupt-*"))
    assert copies
    again = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    # Another process sees what is on disk, not only what it moved aside itself.
    assert maintenance.stats(again)["l3"]["quarantined"] == 1
    again.close()
    day_old = time.time() - 86400 - 60
    for copy in copies:
        os.utime(copy, (day_old, day_old))
    late = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    assert not list(tmp_path.glob("cache.db.corrupt-*"))  # kept a day at most
    late.close()


# -- 5. a reload made while Redis is down reaches running services when it is back -----------

@pytest.mark.slow
def test_a_reload_while_redis_is_down_is_announced_when_it_is_back(
        tmp_path: Path, own_redis: RedisServer) -> None:
    folder = tmp_path / "intents"
    shutil.copytree(ROOT / "intents", folder)
    config = write_config(tmp_path, own_redis.url, f'[intents]\nfolder = "{folder}"\n')
    peer = helpers.Peer("tests.intents_peer", own_redis.url, str(tmp_path / "cache.db"),
                        str(folder), "nowatch")
    try:
        assert peer.ask("ask", "never mind")[0] == "Okay."
        own_redis.stop()
        text = (folder / "info.yaml").read_text()
        (folder / "info.yaml").write_text(text.replace('- text: "Okay."',
                                                       '- text: "Fine, forget it."'))
        queued = run(config, "intents", "reload", env={"ASSISTANT_MASTER_KEY": PEER_KEY})
        assert queued.returncode == 1 and "told when it is back" in queued.stderr
        assert peer.ask("ask", "never mind")[0] == "Okay."  # nobody has told it yet
        own_redis.start()
        until(lambda: peer.ask("ask", "never mind")[0] == "Fine, forget it.",
              "the running service's reload", timeout=20)
    finally:
        peer.close()


# -- 6. a bounded WAL, true messages on a full disk, quarantines counted from the disk -------

def test_the_wal_stays_bounded(tmp_path: Path, keyring: Keyring) -> None:
    from cache import KeyBuilder
    from cache.tiers.sqlite.file import WAL_BYTES

    names = KeyBuilder(keyring.naming_secret())
    db = tmp_path / "cache.db"
    cache = make_cache(keyring=keyring, names=names, redis_url=None, db=db)
    assert cache.sqlite is not None
    reader = sqlite3.connect(db)
    largest = 0
    for batch in range(12):
        for i in range(50):
            cache.set(names.key("wal", batch, i), os.urandom(6000), ttl=600)
        cache.sqlite.flush()
        reader.execute("SELECT count(*) FROM items").fetchone()  # a reader, as in service
        largest = max(largest, Path(str(db) + "-wal").stat().st_size)
    reader.close()
    cache.close()
    assert largest <= 2 * WAL_BYTES, largest  # 600 rows of 6 KB: 16 MB of WAL before


def test_a_full_disk_reports_only_what_is_lost(tmp_path: Path, keyring: Keyring,
                                               own_redis: RedisServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from cache import KeyBuilder

    names = KeyBuilder(keyring.naming_secret())

    def full_disk_cache(name: str) -> object:
        cache = make_cache(keyring=keyring, names=names, redis_url=own_redis.url,
                           db=tmp_path / name)
        assert cache.sqlite is not None
        with cache.sqlite.file.write_lock:  # every write now fails, as on a full disk
            cache.sqlite.file.writer.execute("PRAGMA query_only = ON")
        return cache

    own_redis.stop()
    with caplog.at_level(logging.ERROR):
        quiet = full_disk_cache("quiet.db")
        quiet.close()  # type: ignore[attr-defined]
    assert "lost" not in caplog.text  # nothing was queued: nothing is lost
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        busy = full_disk_cache("busy.db")
        busy.invalidate_tag("intent:HassTurnOn")  # type: ignore[attr-defined]
        busy.close()  # type: ignore[attr-defined]
    assert "1 purges, forgets or announcements could not be kept on disk" in caplog.text


# -- 7. an empty or malformed user id is refused where it enters ------------------------------

@pytest.mark.parametrize("user", ["", " ", "a/b", "a#", "x" * 65])
def test_a_malformed_user_id_is_refused(tmp_path: Path, redis_url: str, user: str) -> None:
    config = write_config(tmp_path, redis_url)
    for args in (("cache", "forget", user), ("say", "Hello.", "-o", str(tmp_path / "a.wav"),
                                             "--user", user)):
        done = run(config, *args)
        assert done.returncode == 2 and "invalid user id" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_empty_user_id_is_refused_on_every_request(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url)
    wav = tmp_path / "a.wav"
    run(config, "say", "Turn on the light.", "-o", str(wav), check=True)
    for args in (("ask", "never mind", "--user", ""), ("transcribe", str(wav), "--user", "")):
        done = run(config, *args)
        assert done.returncode == 2 and "invalid user id ''" in done.stderr, done.stderr


# -- 8. a copied disk does not list who used the assistant ------------------------------------

@pytest.mark.slow
def test_user_ids_are_not_written_to_disk_in_clear(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url, "[privacy.users.zoe-ursine]\nprivate = true\n")
    wav = tmp_path / "a.wav"
    run(config, "say", "Turn on the light.", "-o", str(wav), "--user", "zoe-ursine", check=True)
    run(config, "transcribe", str(wav), "--user", "zoe-ursine", check=True)
    ask(config, "turn on the kitchen light", "zoe-ursine")
    ask(config, "what is the capital of France?", "yuri-lupine")
    stored = state_files(tmp_path)
    assert stored and [u for u, _ in rows(tmp_path / "cache.db") if u]
    for user in (b"zoe-ursine", b"yuri-lupine"):
        assert user not in stored
