"""Real servers for tests: redis-server and mosquitto on free loopback ports, in temp folders."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """The path of a server binary (Debian puts some in /usr/sbin)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs it")
    return path


class _Server:
    """A server process of a test's own."""

    proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as after a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class RedisServer(_Server):
    """A private redis-server started from the project's own configs/redis.conf (so it is
    known to load), its port, directory and ACL file overridden: loopback only, no
    anonymous user, the assistant's account with a password of its own; killable and
    restartable."""

    def __init__(self, workdir: Path, port: int | None = None, *, durable: bool = False) -> None:
        """``durable``: keep an fsync'd append-only file, so a killed server restarts with its data."""
        self.workdir = workdir
        self.port = port or free_port()
        self.durable = durable
        self.password = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://assistant:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        users = self.workdir / "users.acl"
        if not users.exists():
            # Redis 7.0 replays an append-only file's transactions as the "default" user:
            # a durable server (a test of crash recovery; the shipped one keeps no file)
            # leaves it on, else what it kept would be refused on restart.
            default = "on nopass ~* &* +@all" if self.durable else "off"
            # "admin" (tests only) may look at what the assistant may not: CLIENT LIST.
            users.write_text(f"user default {default}\nuser assistant on >{self.password} "
                             f"~* &* +@all -@admin\nuser admin on >{self.password} ~* &* "
                             "+@all\n")
        else:  # restarted: the same account
            self.password = users.read_text().split(">", 1)[1].split()[0]
        self.proc = subprocess.Popen(
            [find_binary("redis-server"), str(CONFIGS / "redis.conf"), "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir), "--aclfile", str(users),
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.durable else []),
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()
        return self



def admin_url(url: str) -> str:
    """The URL of a test server's administrator, from the assistant's."""
    return url.replace("redis://assistant:", "redis://admin:", 1)


class MosquittoServer(_Server):
    """A private mosquitto: anonymous, no persistence, loopback only, Nagle off, logging to a file."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self._port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> MosquittoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto switches to the user "mosquitto", who cannot write the log
            # file in a root-owned temp folder; naming root keeps it as it is.
            lines.append(f"user {pwd.getpwuid(0).pw_name}")
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                    raise RuntimeError(f"mosquitto did not start on port {self.port}: {log}") from None
                time.sleep(0.02)
        return self

