"""Cache keys: ``v1:<kind>:<digest>`` over length-prefixed fields.

Fields are encoded with a type tag and a length prefix, so no two different field
lists produce the same bytes (``("ab", "c")`` and ``("a", "bc")`` differ). The digest
is an HMAC-SHA256 under a secret derived from the master key: a key name seen in
Redis (``SCAN``, ``MONITOR``) says nothing about the prompt behind it, and cannot be
confirmed by hashing a guessed prompt.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cache.errors import CacheError, NonDeterministicError
from cache.scope import check_user, is_scope, tag_user, user_tag

KEY_VERSION = "v1"
_LENGTH = struct.Struct(">I")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

Field = str | bytes | int | float | bool | None


def _encode_float(field: float) -> tuple[bytes, bytes]:
    if not math.isfinite(field):
        raise CacheError(f"a key field must be a finite number, not {field!r}")
    return b"f", repr(field).encode()  # repr round-trips exactly


_ENCODERS: dict[type, Callable[[Any], tuple[bytes, bytes]]] = {
    type(None): lambda field: (b"n", b""),
    bool: lambda field: (b"b", b"\x01" if field else b"\x00"),
    int: lambda field: (b"i", str(field).encode()),
    float: _encode_float,
    str: lambda field: (b"s", field.encode("utf-8")),
    bytes: lambda field: (b"y", field),
}
"""By exact type (bool before int matters: True is an int); subclasses take the slow path."""


def _encode_other(field: Any) -> tuple[bytes, bytes]:
    """Subclasses (enums, say) as their base value, never through their own ``__str__``."""
    if isinstance(field, bool):
        return _ENCODERS[bool](field)
    if isinstance(field, int):
        return b"i", int.__repr__(field).encode()
    if isinstance(field, float):
        return _encode_float(float.__float__(field))
    if isinstance(field, str):
        return b"s", str.encode(field, "utf-8")
    if isinstance(field, bytes):
        return b"y", bytes(memoryview(field))
    raise CacheError(f"unsupported key field type {type(field).__name__}")


def encode_fields(fields: Iterable[Field]) -> bytes:
    """Encode ``fields`` injectively: a one-byte type tag, a 4-byte length, the bytes."""
    parts: list[bytes] = []
    pack = _LENGTH.pack
    for field in fields:
        encoder = _ENCODERS.get(type(field))
        tag, data = encoder(field) if encoder is not None else _encode_other(field)
        parts += (tag, pack(len(data)), data)
    return b"".join(parts)


class KeyBuilder:
    """Builds cache keys under one naming secret (see :meth:`cache.crypto.Keyring.naming_secret`)."""

    def __init__(self, secret: bytes) -> None:
        """``secret``: at least 32 bytes; keys built under another secret never collide with these."""
        if len(secret) < 32:
            raise CacheError("the key naming secret must be at least 32 bytes")
        self._secret = secret

    def key(self, kind: str, *fields: Field) -> str:
        """The key of ``fields`` in the namespace ``kind`` (lower-case word, e.g. ``stt``)."""
        if not _KIND.fullmatch(kind):
            raise CacheError(f"invalid key kind {kind!r}: lower-case letters, digits, underscore")
        mac = hmac.new(self._secret, encode_fields((KEY_VERSION, kind, *fields)), hashlib.sha256)
        return f"{KEY_VERSION}:{kind}:{mac.hexdigest()}"

    def name(self, namespace: str, value: str) -> str:
        """An opaque Redis name for a non-key object (a tag set), e.g. ``v1:tag:<digest>``."""
        return self.key(namespace, value)

    def user_ref(self, user: str) -> str:
        """The name ``user`` goes by in every tier, file and event: ``u`` and 32 hex digits
        of an HMAC under the naming secret. A copied disk or a Redis dump does not list who
        used the assistant, and a guessed id cannot be confirmed without the master key."""
        mac = hmac.new(self._secret, encode_fields((KEY_VERSION, "user", user)), hashlib.sha256)
        return "u" + mac.hexdigest()[:32]

    def generation_key(self, request: GenerationKey) -> str:
        """The key of a generated fragment; refuses requests that are not reproducible."""
        request.check_deterministic()
        return self.key("gen", *request.fields())


@dataclass(frozen=True, slots=True)
class GenerationKey:
    """Everything that decides the text an LLM generates for one fragment."""

    backend: str
    """Backend name (``llama_cpp``, ``hailo``, ``ollama``)."""
    model_id: str
    """Model identifier as configured (file name or model tag)."""
    model_version: str
    """Content hash of the weights file, or what the server reports."""
    tokenizer_version: str
    """Tokenizer identity; a tokenizer change changes the text even with the same weights."""
    template_id: str
    """The intent template that asked for this fragment."""
    template_version: str
    """Content hash of that template."""
    system_prompt: str
    """The rendered system prompt."""
    prompt: str
    """The rendered user prompt."""
    temperature: float
    """Sampling temperature; 0 means greedy."""
    top_p: float
    """Nucleus sampling cut-off."""
    top_k: int
    """Top-k sampling cut-off."""
    max_tokens: int
    """Generation limit."""
    seed: int | None
    """Sampling seed; required when ``temperature > 0``."""
    scope: str
    """``shared`` or ``user:<id>`` (:func:`cache.scope.scope_of`)."""

    def check_deterministic(self) -> None:
        """Raise :class:`NonDeterministicError` unless the output is reproducible."""
        if self.temperature > 0 and self.seed is None:
            raise NonDeterministicError(
                "sampling with temperature > 0 and no seed is not reproducible; it is never cached"
            )
        if not is_scope(self.scope):
            raise CacheError(f"scope must be 'shared' or 'user:<id>', not {self.scope!r}")

    def fields(self) -> tuple[Field, ...]:
        """The key fields in a fixed order."""
        return (
            self.backend,
            self.model_id,
            self.model_version,
            self.tokenizer_version,
            self.template_id,
            self.template_version,
            self.system_prompt,
            self.prompt,
            float(self.temperature),
            float(self.top_p),
            int(self.top_k),
            int(self.max_tokens),
            self.seed,
            self.scope,
        )


class UserRefs:
    """User ids to the refs they go by below the cache's interface, remembered."""

    def __init__(self, names: KeyBuilder, *, size: int = 4096) -> None:
        self._names = names
        self._size = size
        self._refs: dict[str, str] = {}

    def __call__(self, user: str | None) -> str | None:
        """The ref of ``user`` (checked; :class:`CacheError` if malformed); ``None`` for none."""
        if user is None:
            return None
        ref = self._refs.get(user)
        if ref is None:
            ref = self._names.user_ref(check_user(user) or "")
            if len(self._refs) >= self._size:
                self._refs.clear()
            self._refs[user] = ref
        return ref

    def tag(self, tag: str) -> str:
        """``tag`` as the tiers and events know it: a user's tag names their ref."""
        user = tag_user(tag)
        return tag if user is None else user_tag(self(user) or "")
