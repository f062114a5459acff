"""A private MQTT broker for a machine that has none: mosquitto with the project's config.

When nothing listens at ``[mqtt] host:port`` on this machine and ``[mqtt] embedded`` is
``auto``, :class:`EmbeddedBroker` starts mosquitto (the Debian package ``make`` installs)
with ``configs/mosquitto.conf``: its listener on that address, its data, password file and
log under ``[mqtt] broker_dir``, and ``configs/mosquitto.acl``. It makes the service's own
account (``[mqtt] username``, a random password kept in ``<broker_dir>/<username>.secret``
with mode 0600) and any others it is given.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from assistant.errors import ConfigError
from assistant.settings import MqttSettings

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_REWRITTEN = ("listener", "password_file", "acl_file", "persistence_location", "log_dest",
              "allow_anonymous", "user")


def listening(host: str, port: int) -> bool:
    """Does something accept connections at ``host:port``?"""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_mosquitto() -> str | None:
    """The mosquitto binary (Debian puts it in /usr/sbin), if installed."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def service_password(settings: MqttSettings) -> str | None:
    """The service account's password: the configured one, else the embedded broker's."""
    if settings.password is not None:
        return settings.password
    secret = settings.broker_dir / f"{settings.username or 'assistant'}.secret"
    return secret.read_text().strip() if secret.is_file() else None


class EmbeddedBroker:
    """mosquitto on loopback, started when needed and stopped with the service."""

    def __init__(self, settings: MqttSettings, *, config: Path | None = None,
                 acl: Path | None = None, accounts: Mapping[str, str] | None = None) -> None:
        """
        Args:
            settings: where it listens, where it keeps its files, the service's account.
            config: the config to start from (``[mqtt] broker_config``).
            acl: the ACL (``configs/mosquitto.acl`` beside the config).
            accounts: more accounts (username -> password).
        """
        self.settings = settings
        self.config = config or settings.broker_config
        self.acl = acl or self.config.with_name("mosquitto.acl")
        self.accounts = dict(accounts or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def folder(self) -> Path:
        return self.settings.broker_dir

    def wanted(self) -> bool:
        """Should one be started? Only for a loopback address nothing listens on."""
        s = self.settings
        return s.embedded == "auto" and s.host in _LOOPBACK and not listening(s.host, s.port)

    def start(self) -> Self:
        """Start mosquitto if :meth:`wanted`; return once it accepts connections."""
        if self.proc is not None or not self.wanted():
            return self
        binary = find_mosquitto()
        if binary is None:
            raise ConfigError(f"nothing listens on {self.settings.host}:{self.settings.port} "
                              "and mosquitto is not installed: `make run` installs it (apt "
                              "package mosquitto), or set [mqtt] host and port to a broker")
        conf = self._write_config()
        log_file = self.folder / "mosquitto.log"
        with log_file.open("ab") as errors:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=errors)
        deadline = time.monotonic() + 10
        while not listening(self.settings.host, self.settings.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = log_file.read_text(errors="replace")[-2000:]
                raise ConfigError(f"the private MQTT broker did not start: {tail}")
            time.sleep(0.05)
        log.warning("started a private MQTT broker (mosquitto) on %s:%d; its files are in %s",
                    self.settings.host, self.settings.port, self.folder)
        return self

    def _write_config(self) -> Path:
        from cache.salts import private_file  # not at import: clients (a satellite) need none

        s = self.settings
        folder = self.folder.resolve()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        passwords = folder / "passwd"
        accounts = {s.username or "assistant": self._service_secret(), **self.accounts}
        passwords.unlink(missing_ok=True)
        private_file(passwords)
        # Written in clear to a private file and hashed in place (-U): no password is ever
        # on a command line, where other users could read it in /proc.
        passwords.write_text("".join(f"{user}:{password}\n"
                                     for user, password in accounts.items()), encoding="utf-8")
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise ConfigError("mosquitto_passwd is missing (apt package mosquitto)")
        done = subprocess.run([tool, "-U", str(passwords)], capture_output=True, text=True)
        if done.returncode != 0:
            passwords.unlink(missing_ok=True)
            raise ConfigError(f"the broker's password file could not be made: "
                              f"{done.stderr.strip() or done.stdout.strip()}")
        try:
            text = self.config.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{self.config}: {error.strerror or error}") from error
        kept = [line for line in text.splitlines()
                if not re.match(rf"\s*({'|'.join(_REWRITTEN)})\b", line)]
        lines = [*kept,
                 f"listener {s.port} {s.host}",
                 "allow_anonymous false",
                 f"password_file {passwords}",
                 f"acl_file {self.acl.resolve()}",
                 f"persistence_location {folder}/",
                 f"log_dest file {folder / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            # As root, mosquitto switches to the user "mosquitto", who cannot read these
            # private files; naming root keeps it as it is.
            import pwd

            lines.append(f"user {pwd.getpwuid(0).pw_name}")
        conf = folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def _service_secret(self) -> str:
        from cache.salts import private_file

        s = self.settings
        if s.password is not None:
            return s.password
        secret = self.folder / f"{s.username or 'assistant'}.secret"
        if not secret.is_file():
            private_file(secret)
            secret.write_text(secrets.token_urlsafe(24) + "\n")
        return secret.read_text().strip()

    def close(self) -> None:
        """Stop it (it saves its sessions and queued messages on the way out)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
