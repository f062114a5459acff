"""The ``assistant cache`` commands, run as a user runs them: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.app import open_cache
from assistant.settings import load_settings
from tests.helpers import write_config
from tests.servers import free_port
from tests.speech_data import STEADY_VOICE, wer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> Path:
    return write_config(tmp_path, redis_url)


def run(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "assistant", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=ROOT, env=environ, timeout=60)


def _fill(config: Path) -> None:
    settings = load_settings(config)
    cache, names = open_cache(cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
                              keys=settings.keys, privacy=settings.privacy, listen=False)
    cache.set(names.key("answer", "on"), "Light on.", ttl=600, tags=["intent:HassTurnOn"])
    cache.set(names.key("answer", "erin"), "Erin's note", ttl=600, user="erin")
    cache.set(names.key("answer", "old"), "expires", ttl=1)
    cache.close()


def test_stats_creates_the_key_and_reports_tiers(config: Path, tmp_path: Path) -> None:
    result = run(config, "cache", "stats")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert {"l1", "l2", "l3", "metrics"} <= stats.keys()
    key_file = tmp_path / "master.key"
    assert key_file.exists() and key_file.stat().st_mode & 0o777 == 0o600


def test_purge_forget_gc(config: Path) -> None:
    _fill(config)
    purge = run(config, "cache", "purge", "--tag", "intent:HassTurnOn")
    assert purge.returncode == 0, purge.stderr
    assert json.loads(purge.stdout)["removed"]["l3"] == 1
    forget = run(config, "cache", "forget", "erin")
    assert json.loads(forget.stdout)["removed"] == {"l1": 0, "l2": 1, "l3": 1}
    time.sleep(1.1)  # the one-second item expires (a real process, a real clock)
    gc = run(config, "cache", "gc")
    assert json.loads(gc.stdout) == {"expired_removed": 1}
    stats = json.loads(run(config, "cache", "stats").stdout)
    assert stats["l3"]["rows"] == 0


def test_rotate_key_adds_a_key_and_reseals(config: Path, tmp_path: Path) -> None:
    _fill(config)
    result = run(config, "cache", "rotate-key")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("added key id 2")
    assert json.loads(lines[1]) == {"key_id": 2, "resealed": 3}
    assert len((tmp_path / "master.key").read_text().split()) == 2
    # The items are still readable under the new key.
    settings = load_settings(config)
    cache, names = open_cache(cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
                              keys=settings.keys, privacy=settings.privacy, listen=False)
    cache.redis.client.flushall()  # type: ignore[union-attr]
    assert cache.get(names.key("answer", "erin"), user="erin") == "Erin's note"
    cache.close()


def test_rotate_key_refuses_to_generate_when_keys_come_from_the_environment(config: Path) -> None:
    result = run(config, "cache", "rotate-key",
                 env={"ASSISTANT_MASTER_KEY": "1:" + "QUFB" * 10 + "QUE="})
    assert result.returncode == 2
    assert "--no-generate" in result.stderr


def test_bad_input_gives_a_clear_error(config: Path, tmp_path: Path) -> None:
    missing = run(tmp_path / "nope.toml", "cache", "stats")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_key = run(config, "cache", "stats", env={"ASSISTANT_MASTER_KEY": "not base64!"})
    assert bad_key.returncode == 2 and "environment variable" in bad_key.stderr
    bad_setting = run(config, "cache", "stats", env={"ASSISTANT_CACHE__MEMORY_BYTES": "-5"})
    assert bad_setting.returncode == 2 and "memory_bytes" in bad_setting.stderr
    assert "Traceback" not in missing.stderr + bad_key.stderr + bad_setting.stderr


def test_purge_reports_failure_when_redis_is_unreachable(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    result = run(path, "cache", "purge", "--tag", "intent:X")
    assert result.returncode == 1
    assert "redis" in result.stderr.lower()


@pytest.mark.slow
def test_say_then_transcribe_with_the_cache(tmp_path: Path, redis_url: str) -> None:
    steady = "\n".join(f"{name} = {value}" for name, value in STEADY_VOICE.items())
    config = write_config(tmp_path, redis_url, f"[tts]\n{steady}\n")
    out = tmp_path / "answer.wav"
    said = run(config, "say", "Turn on the porch light. It is dark outside.", "-o", str(out))
    assert said.returncode == 0, said.stderr
    assert "cached=0/2" in said.stderr and "rtf=" in said.stderr
    assert out.read_bytes()[:4] == b"RIFF"
    again = run(config, "say", "It is dark outside.", "-o", str(tmp_path / "again.wav"),
                "--stream")
    assert again.returncode == 0, again.stderr
    assert "ready: l2" in again.stderr and "cached=1/1" in again.stderr  # a new process: Redis

    heard = run(config, "transcribe", str(out), "--user", "erin")
    assert heard.returncode == 0, heard.stderr
    assert wer(["Turn on the porch light. It is dark outside."], [heard.stdout]) <= 0.2, heard.stdout
    assert "source=computed" in heard.stderr
    twice = run(config, "transcribe", str(out), "--user", "erin")
    assert twice.stdout == heard.stdout and "source=l2" in twice.stderr

    raw = run(config, "transcribe", str(out), "--rate", "22050", "--bits", "12")
    assert raw.returncode == 2 and raw.stderr.startswith("error[bad_format]:")
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("just some words")
    bad = run(config, "transcribe", str(not_audio))
    assert bad.returncode == 2 and bad.stderr.startswith("error[not_wav]:")
    assert "Traceback" not in raw.stderr + bad.stderr


@pytest.mark.slow
def test_ask_runs_the_whole_text_pipeline(config: Path) -> None:
    turned = run(config, "ask", "turn on the kitchen light")
    assert turned.returncode == 0, turned.stderr
    assert turned.stdout.strip() == "Turned on the Kitchen Light."
    assert "intent: HassTurnOn" in turned.stderr and "computed" in turned.stderr
    assert "home/kitchen/light/set <- ON" in turned.stderr
    again = run(config, "ask", "turn on the kitchen light", "--json")
    answer = json.loads(again.stdout)
    assert answer["intent"] == "HassTurnOn"
    assert [f["source"] for f in answer["fragments"]] == ["l2"]  # a new process: from Redis
    assert answer["backend"]["backend"] == "llama_cpp"
    asked = run(config, "ask", "What is the capital of France?", "--user", "ann", "--json")
    unmatched = json.loads(asked.stdout)
    assert unmatched["intent"] is None and "Paris" in unmatched["text"]
    assert [(f["kind"], f["source"]) for f in unmatched["fragments"]] == [("generate", "computed")]
    twice = json.loads(run(config, "ask", "What is the capital of France?", "--user", "ann",
                           "--json").stdout)
    assert twice["text"] == unmatched["text"] and twice["fragments"][0]["source"] == "l2"


def test_rotate_key_refuses_to_generate_when_keys_come_from_a_credential(
        config: Path, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "assistant-master-key").write_text("1:" + "QUFB" * 10 + "QUE=\n")
    result = run(config, "cache", "rotate-key", env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert result.returncode == 2 and "--no-generate" in result.stderr


@pytest.mark.slow
def test_the_default_ttl_is_how_long_a_rendered_answer_lives(tmp_path: Path,
                                                              redis_url: str) -> None:
    import redis

    config = write_config(tmp_path, redis_url, "[cache]\ndefault_ttl = 120\n")
    asked = run(config, "ask", "turn off the kitchen light")
    assert asked.returncode == 0, asked.stderr
    raw = redis.Redis.from_url(redis_url)
    ttls = [raw.pttl(key) for key in raw.scan_iter("v1:frag:*")]
    raw.close()
    assert ttls and all(0 < ttl <= 120_000 for ttl in ttls), ttls


def test_an_error_is_one_line_and_its_cause_stays_in_the_log(config: Path,
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "whisper"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a model")
    (broken / "config.json").write_text("{}")
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    extra = f'\n[stt]\nmodel = "{broken}"\n'
    config.write_text(config.read_text() + extra)
    plain = run(config, "transcribe", str(wav), "--no-cache")
    assert plain.returncode == 2
    assert plain.stderr.strip().count("\n") == 0  # one line for the person at the terminal
    assert plain.stderr.startswith("error: cannot load the Whisper model")
    verbose = run(config, "-v", "transcribe", str(wav), "--no-cache")
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr and "The above exception was the direct cause" in \
        verbose.stderr  # the model library's own error, kept for the operator


def test_a_part_that_fails_to_start_stops_the_parts_started_before_it(config: Path,
                                                                       tmp_path: Path) -> None:
    import threading

    from assistant.app import App
    from assistant.errors import ConfigError

    settings = load_settings(config)
    settings.home.entities_file = tmp_path / "no-such-home.yaml"
    before = {t.ident for t in threading.enumerate()}
    app = App(settings)
    with pytest.raises(ConfigError, match="no-such-home"):
        app.start()
    assert app.cache is not None and app.cache.sqlite is not None
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == []  # the cache's writer and event threads were stopped again
    with pytest.raises(Exception, match="closed"):
        app.cache.sqlite.get("v1:any:key")
