"""Telling systemd how the service is: ``READY=1`` once it can answer, ``WATCHDOG=1`` while it
still can, ``STOPPING=1`` on the way out (``Type=notify``, ``WatchdogSec=`` in
``systemd/assistant.service``).

The protocol is one datagram per message to the socket named by ``$NOTIFY_SOCKET`` (a path,
or an abstract socket when it starts with ``@``), as ``sd_notify(3)`` sends it. Outside
systemd nothing is sent. The watchdog is petted at half the interval systemd asks for
(``$WATCHDOG_USEC``), and only while ``healthy()`` says so: a service whose broker
connection or workers are gone stops petting, and systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` (``KEY=value`` lines) to systemd; False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
        return True
    except OSError as error:
        log.warning("systemd was not told %r: %s", message.split("\n")[0], error)
        return False


def watchdog_seconds() -> float | None:
    """The watchdog interval systemd set for this process, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000
    except ValueError:
        return None


class Watchdog:
    """Pets systemd's watchdog while ``healthy()`` is true (nothing without one)."""

    def __init__(self, healthy: Callable[[], bool]) -> None:
        self._healthy = healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval = watchdog_seconds()

    def start(self) -> Watchdog:
        if self.interval is None or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval is not None
        sick = False
        while not self._stop.wait(self.interval / 2):
            try:
                fine = self._healthy()
            except Exception:  # a failing check is a failing service
                log.exception("the health check failed")
                fine = False
            if fine:
                notify("WATCHDOG=1")
            elif not sick:
                log.error("unhealthy: the watchdog is no longer petted, systemd will restart it")
            sick = not fine

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
