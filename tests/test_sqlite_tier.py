"""L3 specifics: batching and durability, the size cap, GC, and file handling."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cache import Record, SqliteTier
from tests.conftest import FakeClock


def rec(payload: bytes, clock: FakeClock, ttl: float = 600, user: str | None = None) -> Record:
    return Record(payload, clock() + ttl, (), user, len(payload))


def test_everything_accepted_is_on_disk_after_a_clean_close(tmp_path: Path,
                                                            clock: FakeClock) -> None:
    # A long flush interval and a big batch: only close() can have written these.
    tier = SqliteTier(tmp_path / "c.db", clock=clock, flush_interval=3600, batch_size=100000).start()
    for i in range(5000):
        tier.set(f"v1:t:{i}", rec(b"x" * 100 + str(i).encode(), clock))
    tier.close()
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 5000
    conn.close()


def test_queued_writes_are_read_back_before_they_are_flushed(tmp_path: Path,
                                                             clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock, flush_interval=3600, batch_size=100000).start()
    tier.set("v1:t:a", rec(b"queued", clock))
    assert tier.get("v1:t:a").payload == b"queued"  # type: ignore[union-attr]
    assert tier.stats()["queued"] == 1
    tier.close()


def test_a_full_queue_is_drained_not_dropped(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock, queue_size=50, batch_size=40,
                      flush_interval=3600).start()
    for i in range(500):
        tier.set(f"v1:t:{i}", rec(b"y" * 50, clock))
    tier.flush()
    assert tier.stats()["rows"] == 500
    tier.close()


def test_size_cap_evicts_least_recently_used(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock, max_bytes=100 * 1000,
                      flush_interval=3600).start()
    for i in range(100):
        tier.set(f"v1:t:{i}", rec(bytes(1000), clock))
        clock.advance(1)
    tier.flush()
    clock.advance(1)
    tier.get("v1:t:0")  # the oldest write is read again, so it is recent now
    tier.flush()
    for i in range(100, 130):
        tier.set(f"v1:t:{i}", rec(bytes(1000), clock))
        clock.advance(1)
    tier.flush()
    stats = tier.stats()
    assert stats["bytes"] <= 100 * 1000
    assert stats["evictions"] >= 30
    assert tier.get("v1:t:0") is not None
    assert tier.get("v1:t:1") is None and tier.get("v1:t:129") is not None
    tier.close()


def test_byte_total_follows_overwrites_and_deletes(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock).start()
    tier.set("v1:t:a", rec(bytes(100), clock))
    tier.set("v1:t:b", rec(bytes(50), clock))
    tier.flush()
    tier.set("v1:t:a", rec(bytes(30), clock))
    tier.flush()
    assert tier.stats()["bytes"] == 80
    tier.delete("v1:t:b")
    assert tier.stats()["bytes"] == 30
    tier.close()


def test_gc_removes_only_expired_rows(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock).start()
    tier.set("v1:t:short", rec(b"s", clock, ttl=10))
    tier.set("v1:t:long", rec(b"l", clock, ttl=1000))
    tier.flush()
    clock.advance(11)
    assert tier.gc() == 1
    assert tier.stats()["rows"] == 1 and tier.get("v1:t:long") is not None
    tier.close()


def test_file_uses_wal_and_the_expected_pragmas(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock).start()
    tier.set("v1:t:a", rec(b"a", clock))
    tier.flush()
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert (tmp_path / "c-salts.db").exists()
    tier.close()


def test_meta_values_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock).start()
    tier.set_meta("events.last", "123-0")
    tier.close()
    tier = SqliteTier(tmp_path / "c.db", clock=clock).start()
    assert tier.get_meta("events.last") == "123-0"
    tier.close()


def test_a_batch_being_written_is_still_read(tmp_path: Path, clock: FakeClock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock, flush_interval=3600, batch_size=100000).start()
    tier.set("v1:t:a", rec(b"in flight", clock))
    seen: list[Record | None] = []
    real_apply = tier.writes._apply

    def read_while_applying(pending: dict[str, Record], touched: dict[str, float]) -> None:
        seen.append(tier.get("v1:t:a"))  # taken from the queue, not yet committed
        real_apply(pending, touched)

    monkeypatch.setattr(tier.writes, "_apply", read_while_applying)
    tier.flush()
    assert seen and seen[0] is not None and seen[0].payload == b"in flight"
    tier.close()


def test_new_files_use_large_pages(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock).start()
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    conn.close()
    tier.close()


def test_files_are_private_to_the_service(tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "state" / "c.db", clock=clock).start()
    tier.set("v1:t:a", rec(b"a", clock))
    tier.flush()
    tier.get_salt("u") or tier.put_salt("u", b"s" * 16)
    for path in (tmp_path / "state").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    tier.close()


def test_forgetting_a_queued_overwrite_does_not_resurrect_the_older_row(
        tmp_path: Path, clock: FakeClock) -> None:
    tier = SqliteTier(tmp_path / "c.db", clock=clock, flush_interval=3600, batch_size=100000).start()
    tier.set("v1:t:a", rec(b"older, shared", clock))
    tier.flush()
    tier.set("v1:t:a", rec(b"newer, alice's", clock, user="alice"))  # still queued
    assert tier.forget_user("alice") == 1
    assert tier.get("v1:t:a") is None
    tier.close()
