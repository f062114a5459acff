"""An Ollama-compatible HTTP API: hailo-ollama (default ``http://localhost:8000``) or Ollama
(``:11434``).

``POST /api/chat`` with ``stream: false`` and ``options`` (temperature, seed, top_p,
top_k, num_predict). The model version is the digest the server lists for the model
(``/api/tags``); where it lists none, a hash of what ``/api/show`` says about it. The
tokenizer version is a hash of the tokenizer fields ``/api/show`` reports, else the model
version.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Self

from assistant.errors import ConfigError, GenerationError, GenerationTimeout
from assistant.generation import base
from assistant.generation.base import Backend, Completion, PrefixStore, Request

log = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0
"""How often the server is asked whether the model was replaced (``ollama pull``)."""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


class OllamaBackend(Backend):
    """A model served over Ollama's HTTP API."""

    name = "ollama"

    def __init__(self, url: str, model: str, *, timeout: float = 5.0) -> None:
        """``url``: the server; ``model``: its model tag; ``timeout``: seconds to wait for
        the server's answers about the model."""
        super().__init__(model)
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._listed = False
        self._checked = 0.0
        self._check_lock = threading.Lock()

    def start(self) -> Self:
        """Ask the server about the model; :class:`ConfigError` if it cannot be reached or
        does not have it."""
        model = self.model_id
        try:
            tags = self._call("GET", "/api/tags", None, self._timeout)
            show = self._call("POST", "/api/show", {"model": model}, self._timeout)
        except GenerationError as error:
            raise ConfigError(f"the model server at {self.url} did not answer about {model!r}: "
                              f"{error}") from error
        digest = self._digest_in(tags, model)
        if digest is None and not show:
            raise ConfigError(f"the model server at {self.url} does not have {model!r}")
        version = str(digest) if digest else _digest(
            {k: show.get(k) for k in ("modelfile", "parameters", "template", "details",
                                      "model_info", "modified_at")})
        info = show.get("model_info") or {}
        tokenizer = {k: v for k, v in info.items() if k.startswith("tokenizer.")}
        self.model_version = version
        self.tokenizer_version = _digest(tokenizer) if tokenizer else version
        self._listed = digest is not None
        self._checked = time.monotonic()
        return self

    @staticmethod
    def _digest_in(tags: dict[str, Any], model: str) -> str | None:
        for entry in tags.get("models", []):
            if model in (entry.get("name"), entry.get("model")) and entry.get("digest"):
                return str(entry["digest"])
        return None

    def refresh(self) -> None:
        """Ask the server for the model's digest again, at most every 30 s; a new digest
        (the model was pulled again) becomes the model version, so new keys."""
        if not self._listed or time.monotonic() - self._checked < RECHECK_SECONDS:
            return
        if not self._check_lock.acquire(blocking=False):
            return  # another request is asking
        try:
            self._checked = time.monotonic()
            digest = self._digest_in(self._call("GET", "/api/tags", None, 1.0), self.model_id)
        except GenerationError as error:
            log.debug("model server not asked about a new version: %s", error)
            return
        finally:
            self._check_lock.release()
        if digest is not None and digest != self.model_version:
            log.info("model %s changed on the server (%s -> %s)", self.model_id,
                     self.model_version[:19], digest[:19])
            self.model_version = digest

    def _call(self, method: str, path: str, body: dict[str, Any] | None,
              timeout: float) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                payload = json.loads(response.read() or b"{}")
        except TimeoutError:
            raise GenerationTimeout(f"{path} did not answer within {timeout:.1f} s") from None
        except urllib.error.HTTPError as error:
            detail = error.read(300).decode("utf-8", "replace")
            raise GenerationError(f"{path}: HTTP {error.code} {detail}") from error
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                raise GenerationTimeout(f"{path} did not answer within {timeout:.1f} s") from None
            raise GenerationError(f"{path}: {type(reason).__name__}: {reason}") from error
        if not isinstance(payload, dict):
            raise GenerationError(f"{path}: the answer is not a JSON object")
        return payload

    def complete(self, request: Request, *, deadline: float,
                 states: PrefixStore | None = None) -> Completion:
        started = time.perf_counter()
        left = base.remaining(deadline)
        if left <= 0:
            raise GenerationTimeout("no time left to generate")
        options: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p,
                                   "top_k": request.top_k, "num_predict": request.max_tokens}
        if request.seed is not None:
            options["seed"] = request.seed
        answer = self._call("POST", "/api/chat", {"model": self.model_id,
                                                  "messages": request.messages(),
                                                  "stream": False, "options": options}, left)
        message = answer.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise GenerationError("/api/chat: the answer has no message content")
        finish = "length" if answer.get("done_reason") == "length" else "stop"
        return Completion(text=base.strip_stop_texts(message["content"]), finish=finish,
                          tokens=int(answer.get("eval_count") or 0),
                          seconds=time.perf_counter() - started)
