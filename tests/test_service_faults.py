"""The running service broken while a stream of requests goes on: Redis killed and started
again, the broker restarted, the service killed in the middle of its disk writes, the disk
tier's filesystem full, the disk tier's file overwritten. Each time, every request published
with QoS 1 gets exactly one answer or one error, the service lives on, and the report (printed
at the end of the run) says what the fault cost. ``make test-faults`` runs them longer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from assistant.protocol import Response
from tests.faults import PEOPLE, SECONDS, FaultReport, Stream, integrity, through
from tests.helpers import until
from tests.servers import RedisServer, admin_url
from tests.service import Broker, ServiceProcess, service_config

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def running(tmp_path: Path, *, broker: Broker, redis_url: str,
            env: dict[str, str] | None = None) -> Iterator[ServiceProcess]:
    config = service_config(tmp_path, broker=broker, redis_url=redis_url,
                            extra="requests_per_minute = 0\ntimeout = 30")
    node = ServiceProcess(config, env=env).start()
    try:
        yield node
    finally:
        node.stop()


def exactly_once(report: FaultReport) -> None:
    """Every request had one reply, the same however often it was delivered; none failed."""
    assert report.sent >= 5 * SECONDS, report
    assert report.unanswered == 0, report
    assert report.answered_two_ways == 0, report


def test_redis_killed_and_started_again(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    own = RedisServer(tmp_path / "redis").start()
    try:
        with running(tmp_path, broker=broker, redis_url=own.url) as node:
            report = through(broker, "redis kill -9", fault=own.kill, heal=own.start)
            # Redis is used again once it is back: answers computed after are there.
            admin = redis.Redis.from_url(admin_url(own.url))
            until(lambda: admin.dbsize() > 0, "Redis written to again")
            admin.close()
            assert node.alive()
        exactly_once(report)
        assert not report.errors, report  # Redis is a cache: nothing fails without it
    finally:
        broker.stop()
        own.stop()


def test_the_broker_restarted(tmp_path: Path, redis_server: RedisServer) -> None:
    broker = Broker(tmp_path / "broker").start()
    try:
        with running(tmp_path, broker=broker, redis_url=redis_server.url) as node:
            report = through(broker, "mosquitto restart", fault=broker.stop, heal=broker.start)
            assert node.alive()
        exactly_once(report)
        assert not report.errors, report
    finally:
        broker.stop()


def test_the_service_killed_while_writing_to_disk(tmp_path: Path,
                                                 redis_server: RedisServer) -> None:
    broker = Broker(tmp_path / "broker").start()
    db = tmp_path / "cache.db"
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            extra="requests_per_minute = 0\ntimeout = 30")
    node = ServiceProcess(config, client_id="assistant-crash").start()
    left: list[str] = []

    def crash() -> None:
        assert node.proc is not None
        node.proc.kill()  # SIGKILL: no flush, no goodbye, the broker keeps its session
        node.proc.wait()
        node.stop()  # what is left of it: its pipe
        left.append(integrity(db))

    try:
        # Started again with the same client id: the same session, its unacknowledged
        # requests and those sent while it was away.
        report = through(broker, "assistant kill -9", fault=crash, heal=node.start,
                         before=lambda: until(lambda: Path(f"{db}-wal").exists(),
                                              "the disk tier writing"))
        assert node.alive()
    finally:
        node.stop()
        broker.stop()
    assert left == ["ok"]
    assert integrity(db) == "ok"
    exactly_once(report)
    assert not report.errors, report
    # What it was sent while away is answered when it is back: late, not lost.
    assert report.late >= 1, report


def test_the_disk_full(tmp_path: Path, redis_server: RedisServer) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    broker = Broker(tmp_path / "broker").start()
    filler = disk / "filler"

    def fill() -> None:
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
        assert os.statvfs(disk).f_bavail == 0

    try:
        with running(tmp_path, broker=broker, redis_url=redis_server.url,
                     env={"ASSISTANT_SQLITE__PATH": str(disk / "cache.db")}) as node:
            report = through(broker, "disk full", fault=fill, heal=filler.unlink)
            assert node.alive()
        exactly_once(report)
        assert not report.errors, report
        assert integrity(disk / "cache.db") == "ok"
    finally:
        broker.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_the_disk_file_overwritten(tmp_path: Path, redis_server: RedisServer) -> None:
    broker = Broker(tmp_path / "broker").start()
    db = tmp_path / "cache.db"

    def garbage() -> None:  # as after a bad SD card write
        for path in (db, Path(f"{db}-wal")):
            with path.open("r+b") as out:
                out.write(b"\x13\x37garbage" * 8192)

    try:
        with running(tmp_path, broker=broker, redis_url=redis_server.url) as node:
            report = through(broker, "disk file garbage", fault=garbage,
                             before=lambda: until(lambda: Path(f"{db}-wal").exists(),
                                                  "the disk tier writing"))
            assert node.alive()
        exactly_once(report)
        assert not report.errors, report
        # The garbage was found and moved aside; the file in its place is sound.
        assert list(tmp_path.glob("cache.db.corrupt-*")), sorted(os.listdir(tmp_path))
        assert integrity(db) == "ok"
    finally:
        broker.stop()


def test_each_reply_is_a_real_answer(tmp_path: Path, redis_server: RedisServer) -> None:
    """The stream's own check: with no fault, every reply is an answer, on time."""
    broker = Broker(tmp_path / "broker").start()
    try:
        with running(tmp_path, broker=broker, redis_url=redis_server.url):
            stream = Stream(broker, users=PEOPLE).start()
            stream.mark("fault")
            time.sleep(SECONDS)
            stream.stop()
            stream.close()
        replies = [a.replies[0][1] for a in stream.asked.values() if a.replies]
        assert replies and all(isinstance(r, Response) for r in replies)
        assert {r.intent for r in replies if isinstance(r, Response)} >= {
            "HassTurnOn", "HassLightSet", "HassNevermind"}
    finally:
        broker.stop()
