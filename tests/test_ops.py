"""Running on a Pi for months: the systemd units verify, the service tells systemd it is
ready and pets its watchdog, and the shipped settings file holds every setting."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from assistant.settings import Settings
from tests.helpers import until
from tests.servers import RedisServer
from tests.service import ROOT, Broker, ServiceProcess, service_config

UNITS = sorted((ROOT / "systemd").glob("assistant*.*"))


def test_every_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify``: every directive known, every command there (the installed
    path is the venv's here)."""
    assert {u.name for u in UNITS} >= {"assistant.service", "assistant-satellite.service",
                                       "assistant-redis.service", "assistant-warm.service",
                                       "assistant-warm.timer", "assistant-cache-gc.service",
                                       "assistant-cache-gc.timer"}
    binary = Path(sys.executable).parent / "assistant"
    for unit in UNITS:
        text = unit.read_text().replace("/opt/assistant/.venv/bin/assistant", str(binary))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run([shutil.which("systemd-analyze") or "systemd-analyze", "verify",
                           *(str(tmp_path / u.name) for u in UNITS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip() and not done.stdout.strip(), done.stderr + done.stdout


def test_the_service_unit_is_hardened_and_placed() -> None:
    unit = (ROOT / "systemd" / "assistant.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "StateDirectory=assistant",
                 "LoadCredentialEncrypted=assistant-master-key", "Restart=on-failure",
                 "LimitNOFILE=", "MemoryMax=", "CPUAffinity=1-3", "ProtectSystem=strict",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "ProtectHome=yes",
                 "SystemCallFilter=@system-service", "After=network-online.target "
                 "assistant-redis.service mosquitto.service"):
        assert line in unit, line
    redis_unit = (ROOT / "systemd" / "assistant-redis.service").read_text()
    assert "CPUAffinity=0" in redis_unit  # not on the models' cores


@pytest.mark.slow
def test_the_service_says_ready_only_when_it_answers_and_pets_the_watchdog(
        broker: Broker, redis_server: RedisServer, tmp_path: Path) -> None:
    address = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(0.1)
    heard: list[tuple[float, str]] = []

    def drain() -> list[str]:
        while True:
            try:
                heard.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                return [m for _, m in heard]

    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url)
    service = ServiceProcess(config, env={"NOTIFY_SOCKET": str(address),
                                          "WATCHDOG_USEC": "400000"})
    service.start()  # returns once it printed "ready": READY=1 was sent just before
    try:
        messages = until(lambda: [m for m in drain() if m.startswith("READY=1")],
                         "READY=1", 10)
        assert "STATUS=answering on 127.0.0.1" in messages[0]
        until(lambda: sum(m == "WATCHDOG=1" for m in drain()) >= 3, "three pets", 5)
        order = [m.split("\n")[0] for _, m in heard]
        assert order.index("READY=1") < order.index("WATCHDOG=1")  # not before it can answer
    finally:
        service.stop()
    assert "STOPPING=1" in drain()
    sock.close()


# -- the shipped settings file -------------------------------------------------------------------

_COMMENTED = re.compile(r"^#\s*([a-z_]+)\s*=")


def shipped_keys() -> set[str]:
    """Every key of configs/assistant.toml, set or shown commented out (``# hef = ...``: a
    setting without a default value TOML can spell)."""
    path = ROOT / "configs" / "assistant.toml"
    keys: set[str] = set()

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict) and not (prefix == "privacy." and key == "users"):
                walk(value, f"{prefix}{key}.")
            else:
                keys.add(prefix + key)

    walk(tomllib.loads(path.read_text()), "")
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip().strip("[]") + "."
        elif (found := _COMMENTED.match(line)) and not section.startswith("privacy.users"):
            keys.add(section + found.group(1))
    return keys


def setting_names(model: BaseModel, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            names |= setting_names(value, f"{prefix}{name}.")
        elif name != "users":
            names.add(prefix + name)
    return names


def test_the_shipped_settings_file_holds_every_setting_and_nothing_else() -> None:
    shipped, real = shipped_keys(), setting_names(Settings())
    assert not shipped - real, f"not settings: {sorted(shipped - real)}"
    assert not real - shipped, f"missing from configs/assistant.toml: {sorted(real - shipped)}"
    # Each value set says in a comment what it is.
    bare = [line for line in (ROOT / "configs" / "assistant.toml").read_text().splitlines()
            if re.match(r"^[a-z_]+\s*=", line) and "#" not in line]
    assert not bare, bare
    # And its defaults are the settings' own.
    from assistant.settings import load_settings

    assert load_settings(ROOT / "configs" / "assistant.toml").model_dump() == \
        Settings().model_dump()


# -- warming -------------------------------------------------------------------------------------

def assistant(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_warm_fills_the_tiers_and_a_warmed_sentence_is_answered_from_them(
        redis_server: RedisServer, tmp_path: Path) -> None:
    from tests.helpers import write_config

    config = write_config(tmp_path, redis_server.url, extra='[mqtt]\nembedded = "never"\n')
    done = assistant(config, "warm", "--per-intent", "1", "--limit", "40", "--rate", "0",
                     "--seed", "5", "--show")
    report = json.loads(done.stdout)
    assert report["answered"] >= 25 and report["spoken"] == report["answered"]
    assert report["skipped"] >= 1  # timers, lists, broadcasts: never set by warming
    for tier in ("l2", "l3"):
        assert report["tiers"][tier]["after"]["items"] > report["tiers"][tier]["before"]["items"]
    warmed = re.findall(r"^warmed: '(.+)' -> '(.+)'$", done.stderr, re.MULTILINE)
    sentence, answer = next((s, a) for s, a in warmed if "{" not in a)
    # Another process: nothing in its memory, everything from Redis or the disk.
    asked = json.loads(assistant(config, "ask", sentence, "--json").stdout)
    assert asked["text"] == answer
    assert all(f["source"] in ("l2", "l3") for f in asked["fragments"]), asked["fragments"]
    said = assistant(config, "say", answer, "-o", str(tmp_path / "answer.wav"))
    spoken = re.search(r"cached=(\d+)/(\d+)", said.stderr)
    assert spoken and spoken.group(1) == spoken.group(2) != "0"  # no sentence synthesised


# -- what Prometheus and Grafana see --------------------------------------------------------------

_FUNCTIONS = {"sum", "by", "rate", "histogram_quantile", "le", "without", "avg", "max", "min",
              "irate", "increase", "on", "ignoring"}


def queried_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "configs" / "grafana" / "assistant.json").read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", target["expr"]))
            for word in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr):
                if word not in _FUNCTIONS and not word.startswith(("result", "tier", "stage",
                                                                   "kind", "code", "op")):
                    names.add(word)
    return names


@pytest.mark.slow
def test_the_metrics_carry_the_stores_and_every_metric_the_dashboard_queries(
        broker: Broker, redis_server: RedisServer, tmp_path: Path) -> None:
    from tests.servers import free_port

    port = free_port()
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            metrics_port=port)
    service = ServiceProcess(config).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        service.stop()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    series = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
              if line and not line.startswith("#")}
    for name in ("cache_redis_used_memory_bytes", "cache_redis_evicted_keys_total",
                 "cache_redis_keyspace_hits_total", "cache_redis_keyspace_misses_total",
                 "cache_disk_bytes", "cache_disk_items", "cache_memory_bytes",
                 "cache_memory_items"):
        assert name in series, name
    assert re.search(r'^cache_latency_seconds_count\{op="get",tier="l3"\}', text, re.MULTILINE)
    for name in queried_metrics():
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert {name, family} & (series | exported), f"the dashboard queries {name}"
    assert len(queried_metrics()) >= 10


# -- rollout ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_voice_or_model_that_changed_since_the_last_start_has_its_items_purged(
        broker: Broker, redis_server: RedisServer, tmp_path: Path) -> None:
    from assistant.app import cache_of, model_record
    from assistant.settings import load_settings

    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url)
    settings = load_settings(config)
    old_voice, old_model = "a" * 64, "b" * 64
    cache, keys = cache_of(settings, listen=False)
    with cache:
        spoken = keys.key("tts", "an old voice's sentence")
        written = keys.key("gen", "an old model's part")
        kept = keys.key("tts", "another voice's sentence")
        cache.set(spoken, "pcm", ttl=3600, tags=[f"voice:{old_voice[:16]}"])
        cache.set(written, "text", ttl=3600, tags=[f"model:{old_model[:16]}"])
        cache.set(kept, "pcm", ttl=3600, tags=[f"voice:{'c' * 16}"])
    model_record(settings).save({"voice": old_voice, "generator": old_model})
    ServiceProcess(config, speech=True).start().stop()
    cache, keys = cache_of(settings, listen=False)
    with cache:
        assert cache.lookup(spoken) is None and cache.lookup(written) is None
        assert cache.lookup(kept) is not None
    now = model_record(settings).load()
    assert now["voice"] != old_voice and now["generator"] != old_model and now["stt"]


def test_a_deployment_purges_what_a_model_version_made(redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    from assistant.app import cache_of
    from assistant.settings import load_settings
    from tests.helpers import write_config

    config = write_config(tmp_path, redis_server.url, extra='[mqtt]\nembedded = "never"\n')
    version = "d" * 64
    cache, keys = cache_of(load_settings(config), listen=False)
    with cache:
        made = keys.key("gen", "made by it")
        other = keys.key("gen", "made by another")
        cache.set(made, "text", ttl=3600, tags=[f"model:{version[:16]}"])
        cache.set(other, "text", ttl=3600, tags=[f"model:{'e' * 16}"])
    done = assistant(config, "cache", "purge", "--model", version)
    assert json.loads(done.stdout)["removed"][f"model:{version[:16]}"]["l3"] == 1
    cache, keys = cache_of(load_settings(config), listen=False)
    with cache:
        assert cache.lookup(made) is None and cache.lookup(other) is not None


@pytest.mark.slow
def test_rotate_db_gives_the_running_service_a_clean_disk_tier_without_stopping_it(
        broker: Broker, redis_server: RedisServer, tmp_path: Path) -> None:
    import sqlite3

    from assistant.protocol import Response
    from assistant.transports.mqtt_client import Asker

    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url)
    db = tmp_path / "cache.db"
    service = ServiceProcess(config).start()
    try:
        with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
            assert isinstance(ann.ask(text="what time is it", timeout=20).reply, Response)

            def items() -> int:
                with sqlite3.connect(db) as conn:
                    return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])

            until(lambda: items() > 0, "items on the disk tier", 10)
            with sqlite3.connect(db) as conn:  # what the file keeps besides items
                position = conn.execute("SELECT name FROM meta WHERE name != 'bytes'").fetchall()
            done = json.loads(assistant(config, "cache", "rotate-db").stdout)
            assert done["by"] == "the running service" and done["dropped"] >= 1
            assert items() == 0
            with sqlite3.connect(db) as conn:
                kept = conn.execute("SELECT name FROM meta WHERE name != 'bytes'").fetchall()
            assert position and set(position) <= set(kept), (position, kept)  # carried over
            # Still answering, and writing to the new file.
            answer = ann.ask(text="turn on the kitchen light", timeout=20).reply
            assert isinstance(answer, Response) and answer.text == "Turned on the Kitchen Light."
            until(lambda: items() > 0, "new items in the new file", 10)
    finally:
        service.stop()
    # Without a service: this command rotates it, what it holds besides items kept.
    done = json.loads(assistant(config, "cache", "rotate-db").stdout)
    assert done["by"] == "this command" and done["dropped"] >= 0
    # A service that holds the file but does not answer: nothing rotated, unless forced.
    import fcntl

    from assistant.ops.rotate import service_lock_path
    from assistant.settings import load_settings

    lock = service_lock_path(load_settings(config))
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config),
                                  "cache", "rotate-db"], capture_output=True, text=True,
                                 cwd=ROOT, timeout=60)
        assert refused.returncode == 1 and "holds" in refused.stderr
        forced = json.loads(assistant(config, "cache", "rotate-db", "--force").stdout)
        assert forced["by"] == "this command"


def test_warming_gives_way_while_the_service_answers() -> None:
    import http.server
    import threading

    from assistant.ops.figures import metrics_url
    from assistant.ops.warm import ServiceActivity

    count = {"n": 0}

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (f'assistant_requests_total{{kind="text"}} {count["n"]}.0\n').encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = [1000.0]
    try:
        url = metrics_url("127.0.0.1", server.server_address[1])
        activity = ServiceActivity(url, quiet=10, clock=lambda: now[0])
        assert activity.idle()  # nothing answered since it started looking
        count["n"] = 3  # the service answers
        assert not activity.idle()
        now[0] += 5
        assert not activity.idle()  # quiet for 5 s only
        now[0] += 6
        assert activity.idle()
        assert ServiceActivity(metrics_url("127.0.0.1", 9)).idle()  # no service: no one waits
        assert metrics_url("::", 9464) == "http://[::1]:9464/metrics"
    finally:
        server.shutdown()
        server.server_close()


# -- figures over the hours -------------------------------------------------------------------------

@pytest.mark.slow
def test_stats_shows_the_running_service_and_report_draws_what_it_kept(
        broker: Broker, redis_server: RedisServer, tmp_path: Path) -> None:
    import struct

    from assistant.protocol import Response
    from assistant.transports.mqtt_client import Asker
    from tests.servers import free_port

    port = free_port()
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            metrics_port=port, extra="figures_interval = 0.3")
    figures = tmp_path / "figures.jsonl"
    service = ServiceProcess(config).start()
    try:
        with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann:
            for _ in range(3):
                for text in ("turn on the kitchen light", "what time is it"):
                    assert isinstance(ann.ask(text=text, timeout=20).reply, Response)
                lines = len(figures.read_text().splitlines()) if figures.exists() else 0
                until(lambda lines=lines: figures.exists()
                      and len(figures.read_text().splitlines()) > lines, "a line of figures", 10)
        stats = json.loads(assistant(config, "stats", "--json").stdout)
        assert stats["requests"] == 6
        assert 0 < stats["hit_ratio"]["l1"] < 1  # the same sentences asked again
        assert stats["stage_p50_ms"]["total"] > 0
        table = assistant(config, "stats").stdout
        assert "l1 hit ratio" in table and "total, median" in table
    finally:
        service.stop()
    png = tmp_path / "report.png"
    done = assistant(config, "report", "-o", str(png), "--hours", "1")
    assert "intervals" in done.stdout
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 900)
