"""Helpers shared by tests: a second OS process driven over stdin, waiting, settings files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def until(condition: Callable[[], Any], what: str = "condition", timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy (its value), failing the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


class Peer:
    """Another OS process (``python -m <module> <args>``) that answers JSON lines on stdin."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self._read() == {"ready": True}

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the other process died")
        return json.loads(line)

    def ask(self, *command: Any) -> Any:
        """Send one command; its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("close")
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def write_config(folder: Path, redis_url: str, extra: str = "",
                 key_file: Path | None = None) -> Path:
    """A settings file keeping its disk cache and key in ``folder`` (``key_file``: a master
    key shared with other nodes); ``extra`` is appended."""
    path = folder / "assistant.toml"
    path.write_text(f"""
[redis]
url = "{redis_url}"
[sqlite]
path = "{folder / 'cache.db'}"
[keys]
file = "{key_file or folder / 'master.key'}"
{extra}
""")
    return path
