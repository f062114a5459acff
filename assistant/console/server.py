"""The web console, served by the service: one page (``page.html``) and a small JSON API.

- ``GET /api/health``: each part of the service, up or not.
- ``GET /api/figures?hours=6``: hit ratios and latencies per interval (the figures the
  service keeps, :mod:`assistant.ops.figures`) and since it started.
- ``GET /api/requests``: the requests answered lately (:mod:`assistant.console.recent`).
- ``GET /api/templates``, ``GET /api/templates/<file>``: the intent template files.
- ``POST /api/templates/<file>/check``: an edit checked as the service would load it, its
  errors at their lines, and the intents whose cached answers saving it would purge.
- ``PUT /api/templates/<file>``: saved (only when it checks), and the templates reloaded:
  the changed intents' answers purged on every tier and node.
- ``POST /api/ask``: a sentence answered as a request would be (nothing is acted on).

**Who may use it.** It listens on loopback unless ``[console] host`` says otherwise, and
off loopback it refuses to start without ``token_file``: then every request must carry the
token (``Authorization: Bearer``, or the cookie that ``/?token=...`` sets, HttpOnly and
SameSite=Strict). Without a token only requests naming this machine (``Host``: 127.0.0.1,
localhost, ::1) are served, so a site whose name is made to point here cannot use it.
Whatever changes something needs the header ``X-Console: 1``, which a
page of another site cannot send without the browser asking first: no cross-site request
can edit a template. Answers never carry a person's words unless their site allows it.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Self

from assistant.errors import AssistantError, ConfigError, TemplateError
from assistant.ops.figures import point, read_lines, registry_samples, series, snapshot
from assistant.settings import ConsoleSettings

log = logging.getLogger(__name__)

MAX_BODY = 512 * 1024
"""The largest template (or request) accepted."""
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.yaml")
_LINE = re.compile(r", line (\d+)")


class ConsoleServer:
    """The console's HTTP server, on a thread of its own."""

    def __init__(self, settings: ConsoleSettings, *, engine: Any, folder: Path, language: str,
                 registry: Any, figures: Path, health: Callable[[], dict[str, Any]],
                 recent: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.folder = folder
        self.language = language
        self.registry = registry
        self.figures = figures
        self.health = health
        self.recent = recent
        self.token: str | None = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._save_lock = threading.Lock()
        self.port = settings.port

    def start(self) -> Self:
        s = self.settings
        if not s.enabled or not s.port:
            return self
        if s.token_file is not None:
            try:
                self.token = s.token_file.read_text().strip() or None
            except OSError as error:
                raise ConfigError(f"the console's token file: {error}") from error
        if self.token is None and not _loopback(s.host):
            raise ConfigError(f"the console listens on {s.host}, off loopback: set "
                              "[console] token_file (a file holding the token people sign in "
                              "with)")
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self._server = http.server.ThreadingHTTPServer((s.host, s.port), handler)
        except OSError as error:
            raise ConfigError(f"the console cannot listen on {s.host}:{s.port}: {error}") \
                from error
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="console",
                                        daemon=True)
        self._thread.start()
        log.info("console on http://%s:%d/", s.host, self.port)
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- what the API does ---------------------------------------------------------------

    def figures_now(self, hours: float) -> dict[str, Any]:
        points = series(read_lines(self.figures), hours=hours)
        since = point(snapshot(registry_samples(self.registry)), at=time.time())
        return {"points": [asdict(p) for p in points], "since_start": asdict(since)}

    def templates(self) -> list[dict[str, Any]]:
        files = []
        for path in sorted(self.folder.glob("*.yaml")):
            text = path.read_text(encoding="utf-8")
            files.append({"file": path.name, "lines": text.count("\n") + 1})
        return files

    def template(self, name: str) -> str:
        return self._path(name).read_text(encoding="utf-8")

    def check(self, name: str, text: str) -> dict[str, Any]:
        """``text`` as ``name``'s new content: its errors (file, line, message) as loading
        all the templates with it finds them, and the intents it would purge."""
        from assistant.recognition.library import load_intent_templates

        self._path(name, must_exist=False)
        with tempfile.TemporaryDirectory(prefix="console-check-") as scratch:
            copy = Path(scratch) / "intents"
            shutil.copytree(self.folder, copy)
            (copy / name).write_text(text, encoding="utf-8")
            try:
                new = load_intent_templates(copy, self.language)
            except TemplateError as error:
                return {"ok": False, "errors": _errors(str(error), copy, name), "purges": []}
        old = self.engine.recognizer.templates.versions()
        fresh = new.versions()
        changed = sorted(n for n in {*old, *fresh} if old.get(n) != fresh.get(n))
        return {"ok": True, "errors": [], "purges": changed}

    def save(self, name: str, text: str) -> dict[str, Any]:
        with self._save_lock:
            checked = self.check(name, text)
            if not checked["ok"]:
                return checked
            path = self._path(name, must_exist=False)
            tmp = path.with_name(f".{path.name}.console")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            result = self.engine.reload()
            return {**checked, "ok": result.error is None, "error": result.error,
                    "changed": list(result.changed), "added": list(result.added),
                    "removed": list(result.removed), "purged": result.purged}

    def ask(self, text: str) -> dict[str, Any]:
        """``text`` answered with the templates as they are now. Nothing is acted on: device
        commands are planned, never published, and intents answered from the assistant's
        own state (timers, lists, broadcasts) are not asked at all."""
        match = self.engine.recognize(text)
        handlers = self.engine.responder.handlers
        if match is not None and handlers is not None and handlers.handles(match.intent):
            return {"text": None, "intent": match.intent, "match": match.stage,
                    "refused": "not asked here: it would change timers, lists or broadcasts"}
        answer = self.engine.respond(text)
        return {"text": answer.text, "intent": answer.intent, "match": answer.stage,
                "sources": [f.source for f in answer.fragments]}

    def _path(self, name: str, *, must_exist: bool = True) -> Path:
        if not _FILE.fullmatch(name):
            raise ValueError(f"not a template file name: {name!r}")
        path = self.folder / name
        if must_exist and not path.is_file():
            raise FileNotFoundError(name)
        return path


def _errors(message: str, folder: Path, name: str) -> list[dict[str, Any]]:
    """Each error of a load as ``{file, line, message}``, the scratch copy's path taken out."""
    out = []
    for part in message.split("\n"):
        part = part.strip().lstrip("- ").strip()
        if not part:
            continue
        where = str(folder / name)
        file = name if where in part else None
        for path in folder.glob("*.yaml"):
            if str(path) in part:
                file = path.name
        text = part.replace(str(folder) + "/", "")
        found = _LINE.search(text) if file else None
        out.append({"file": file, "line": int(found.group(1)) if found else None,
                    "message": text})
    return out


def _loopback(host: str) -> bool:
    """Is ``host`` reachable only from this machine? ("" and 0.0.0.0 are every address.)"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: ConsoleServer
    server_version = "assistant-console"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console: " + format, *args)

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, kind: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                         "style-src 'self' 'unsafe-inline'; img-src 'self' data:")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, default=str).encode(), "application/json")

    def _host_ok(self) -> bool:
        """Without a token, only this machine's own names in ``Host``: a page of another
        site whose name was made to point here (DNS rebinding) is refused."""
        if self.owner.token is not None:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in ("127.0.0.1", "localhost", "::1", self.owner.settings.host)

    def _allowed(self, path: str, query: dict[str, list[str]]) -> bool:
        token = self.owner.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        cookie = self.headers.get("Cookie", "")
        for part in cookie.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "console_token":
                given = given or value
        if path in ("/", "/index.html"):  # the address people open once; then the cookie
            given = given or (query.get("token") or [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"more than {MAX_BODY} bytes")
        data = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def _route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if not self._host_ok():
            self._json(421, {"error": "open the console at 127.0.0.1 or localhost"})
            return
        if not self._allowed(url.path, query):
            self._json(401, {"error": "sign in: open the console with ?token=..."})
            return
        if method != "GET" and self.headers.get("X-Console") != "1":
            self._json(403, {"error": "changes come from the console page only"})
            return
        try:
            self._dispatch(method, url.path, query)
        except (FileNotFoundError, KeyError) as error:
            self._json(404, {"error": f"not found: {error}"})
        except (ValueError, TemplateError) as error:
            self._json(400, {"error": str(error)})
        except AssistantError as error:
            self._json(500, {"error": str(error)})

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        owner = self.owner
        if method == "GET" and path in ("/", "/index.html"):
            page = resources.files("assistant.console").joinpath("page.html").read_bytes()
            headers = {}
            if owner.token is not None and query.get("token"):
                headers["Set-Cookie"] = (f"console_token={query['token'][0]}; HttpOnly; "
                                         "SameSite=Strict; Path=/")
            self._send(200, page, "text/html; charset=utf-8", headers)
        elif method == "GET" and path == "/api/health":
            self._json(200, owner.health())
        elif method == "GET" and path == "/api/figures":
            hours = float((query.get("hours") or ["6"])[0])
            self._json(200, owner.figures_now(min(max(hours, 0.1), 48.0)))
        elif method == "GET" and path == "/api/requests":
            self._json(200, owner.recent.rows())
        elif method == "GET" and path == "/api/templates":
            self._json(200, owner.templates())
        elif path.startswith("/api/templates/"):
            name = urllib.parse.unquote(path.removeprefix("/api/templates/"))
            if method == "GET":
                self._json(200, {"file": name, "text": owner.template(name)})
            elif method == "POST" and name.endswith("/check"):
                self._json(200, owner.check(name.removesuffix("/check"),
                                            str(self._body().get("text", ""))))
            elif method == "PUT":
                result = owner.save(name, str(self._body().get("text", "")))
                self._json(200 if result["ok"] else 422, result)
            else:
                self._json(405, {"error": f"{method} {path}"})
        elif method == "POST" and path == "/api/ask":
            text = str(self._body().get("text", "")).strip()
            if not text:
                raise ValueError("say something to ask")
            self._json(200, owner.ask(text))
        else:
            self._json(404, {"error": f"no {method} {path}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")
