"""Cache keys: ``v1:<kind>:<digest>`` over length-prefixed fields.

Fields are encoded with a type tag and a length prefix, so no two different field
lists produce the same bytes (``("ab", "c")`` and ``("a", "bc")`` differ). The digest
is an HMAC-SHA256 under a secret derived from the master key: a key name seen in
Redis (``SCAN``, ``MONITOR``) says nothing about the prompt behind it, and cannot be
confirmed by hashing a guessed prompt.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from cache.errors import CacheError, NonDeterministicError
from cache.scope import check_user, is_scope, tag_user, user_tag

KEY_VERSION = "v1"
_LENGTH = struct.Struct(">I")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

Field = str | bytes | int | float | bool | None


class _Slot:
    """The place of a free field in a :class:`KeySpace`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SLOT"


SLOT: Final = _Slot()
"""Marks a free field among a key space's fields (:meth:`KeyBuilder.space`)."""

MEMO_SIZE = 16384
"""How many names of free values a key space remembers by default."""


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
        _check_kind(kind)
        mac = hmac.new(self._secret, encode_fields((KEY_VERSION, kind, *fields)), hashlib.sha256)
        return f"{KEY_VERSION}:{kind}:{mac.hexdigest()}"

    def space(self, kind: str, *fields: Field | _Slot, memo: int = MEMO_SIZE) -> KeySpace:
        """The keys of ``kind`` whose ``fields`` are fixed but where :data:`SLOT` stands:
        ``space.key(a)`` is ``key(kind, *fields)`` with ``a`` in the slot (see :class:`KeySpace`)."""
        return KeySpace(self._secret, kind, fields, memo=memo)

    def generation_space(self, request: GenerationKey, *, memo: int = MEMO_SIZE) -> KeySpace:
        """The generation keys of everything ``request`` says but its prompt (which is ignored):
        ``space.key(prompt)`` is :meth:`generation_key` of ``request`` with that prompt.

        Refuses requests that are not reproducible, once, here."""
        request.check_deterministic()
        fields: list[Field | _Slot] = list(request.fields())
        fields[_PROMPT_FIELD] = SLOT
        return self.space("gen", *fields, memo=memo)

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
        """The key fields in a fixed order (the prompt is the eighth)."""
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


def _check_kind(kind: str) -> None:
    if not _KIND.fullmatch(kind):
        raise CacheError(f"invalid key kind {kind!r}: lower-case letters, digits, underscore")


class KeySpace:
    """Keys of one kind whose fields are fixed but for a few free ones (a prompt, say).

    ``space.key(*free)`` is the key :meth:`KeyBuilder.key` gives for the whole field list,
    the same HMAC-named string: the fixed fields are encoded and fed to the HMAC once, here,
    so a new name costs the free fields and the hash's finish (about a microsecond, not
    seven). The names of the last ``memo`` free values seen are remembered: a caller that
    asks again (an answer kept in memory, asked for again) gets its name by a dictionary
    lookup. Only names of ``str`` values are remembered: numbers that compare equal are
    different fields (``1``, ``1.0``, ``True``; ``0.0`` and ``-0.0``), so they are hashed
    every time. Thread-safe.
    """

    def __init__(self, secret: bytes, kind: str, fields: tuple[Field | _Slot, ...], *,
                 memo: int = MEMO_SIZE) -> None:
        _check_kind(kind)
        if len(secret) < 32:
            raise CacheError("the key naming secret must be at least 32 bytes")
        runs: list[list[Field]] = [[KEY_VERSION, kind]]
        for field in fields:
            if field is SLOT:
                runs.append([])
            elif isinstance(field, _Slot):
                raise CacheError("a key space's slot is cache.keys.SLOT")
            else:
                runs[-1].append(field)
        if len(runs) < 2:
            raise CacheError("a key space needs at least one SLOT among its fields")
        self.kind = kind
        self.slots = len(runs) - 1
        """How many free fields a key of this space takes."""
        self._prefix = f"{KEY_VERSION}:{kind}:"
        self._head = hmac.new(secret, encode_fields(runs[0]), hashlib.sha256)
        self._runs = tuple(encode_fields(run) for run in runs[1:])
        self._remembered = functools.lru_cache(maxsize=max(memo, 0))(self._name)

    def key(self, *free: Field) -> str:
        """The key with ``free`` in the slots, in order."""
        if len(free) == 1:
            if type(free[0]) is str:
                return self._remembered(free[0])
        elif len(free) == self.slots and all(type(field) is str for field in free):
            return self._remembered(*free)
        return self._name(*free)

    def _name(self, *free: Field) -> str:
        if len(free) != self.slots:
            raise CacheError(f"this key space takes {self.slots} free field(s), not {len(free)}")
        mac = self._head.copy()
        for field, run in zip(free, self._runs, strict=True):
            mac.update(encode_fields((field,)))
            mac.update(run)
        return self._prefix + mac.hexdigest()


_PROMPT_FIELD = 7
"""Where :meth:`GenerationKey.fields` puts the prompt."""


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
