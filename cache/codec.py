"""Blob codec: value -> stable bytes -> zstd -> AES-256-GCM.

Blob layout (all tiers below memory store the same bytes)::

    version (1) | key id (1) | nonce (12) | AES-GCM(plaintext, aad = cache key)
    plaintext = flags (1) | body, zstd-compressed when flags & 1
    body      = tags length (2) | tags joined by 0x1f | value type (1) | value

The cache key is the associated data, so a blob copied under another key fails
to authenticate. Value types: ``b`` bytes, ``s`` str, ``j`` canonical JSON.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import zstandard
from cryptography.exceptions import InvalidTag

from cache.crypto import Keyring
from cache.errors import BlobError, CacheError, KeyringError

BLOB_VERSION = 1
_HEADER = struct.Struct(">BB12s")
_FLAG_ZSTD = 1
_TAG_SEP = "\x1f"

T = TypeVar("T")
SaltLookup = Callable[[str], bytes]
"""Returns a user's salt, creating it on first use."""


def serialize(value: Any) -> bytes:
    """A value as stable bytes: bytes and str verbatim, anything else as canonical JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return b"b" + bytes(value)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CacheError(f"value cannot be cached: {error}") from None
    return b"j" + text.encode("utf-8")


def deserialize(data: bytes | memoryview) -> Any:
    """The inverse of :func:`serialize`."""
    kind, payload = data[0], data[1:]
    if kind == 0x73:  # s
        return str(payload, "utf-8")
    if kind == 0x62:  # b
        return bytes(payload)
    if kind == 0x6A:  # j
        return json.loads(str(payload, "utf-8"))
    raise BlobError(f"unknown value type {kind!r}")


@dataclass(frozen=True, slots=True)
class _Frozen:
    """A JSON value held in memory as its serialized bytes."""

    data: bytes


def frozen(value: Any) -> Any:
    """``value`` as memory keeps it: ``str`` and ``bytes`` as they are (immutable), anything
    else serialized, so that a caller who changes what it got cannot change the cache."""
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return _Frozen(serialize(value))


def thawed(payload: Any) -> Any:
    """The value of what :func:`frozen` made (a fresh copy for JSON values)."""
    return deserialize(payload.data) if type(payload) is _Frozen else payload


def _pack_tags(tags: Sequence[str]) -> bytes:
    if not tags:
        return b"\x00\x00"
    joined = _TAG_SEP.join(tags).encode("utf-8")
    if len(joined) > 0xFFFF or any(_TAG_SEP in tag or not tag for tag in tags):
        raise CacheError("tags must be non-empty, without \\x1f, 64 KiB in all")
    return struct.pack(">H", len(joined)) + joined


def _unpack_tags(body: bytes | memoryview) -> tuple[tuple[str, ...], int]:
    length = body[0] << 8 | body[1]
    if not length:
        return (), 2
    return tuple(str(body[2 : 2 + length], "utf-8").split(_TAG_SEP)), 2 + length


class _Lender(Generic[T]):
    """zstd contexts, each lent to one thread at a time (a context is not thread-safe).

    A compressor keeps the tables sized for the largest input it has compressed: 2.4 MB
    for a spoken answer's audio. One context per thread made as many as there were threads
    that ever sealed a blob (workers, servers, the disk tier's writer), each growing as
    large inputs happened to reach it; lent, there are as many as ever worked at once.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._idle: list[T] = []
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        """Contexts made and not lent now."""
        return len(self._idle)

    @contextmanager
    def lend(self) -> Iterator[T]:
        with self._lock:
            context = self._idle.pop() if self._idle else None
        if context is None:
            context = self._make()
        try:
            yield context
        finally:
            with self._lock:
                self._idle.append(context)


class Codec:
    """Seals and opens blobs under a keyring and per-user salts."""

    def __init__(
        self,
        keyring: Keyring,
        salt_for: SaltLookup,
        *,
        level: int = 3,
        compress_min_bytes: int = 4096,
        max_value_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """
        Args:
            keyring: the master keys.
            salt_for: the salt of a user (created on first use).
            level: zstd compression level.
            compress_min_bytes: bodies smaller than this are stored uncompressed: for short
                answers, decompressing on every hit costs more time than the bytes saved
                are worth.
            max_value_bytes: the largest plaintext a blob may decompress to.
        """
        self.keyring = keyring
        self._salt_for = salt_for
        self._compress_min = compress_min_bytes
        self._max = max_value_bytes
        self._compressors = _Lender(lambda: zstandard.ZstdCompressor(level=level))
        self._decompressors = _Lender(zstandard.ZstdDecompressor)

    def _aead(self, key_id: int, user: str | None) -> Any:
        salt = b"" if user is None else self._salt_for(user)
        return self.keyring.aead(key_id, user, salt)

    def plaintext(self, value: Any, tags: Sequence[str]) -> bytes:
        """The uncompressed body of ``value`` with its tags (its length sizes memory entries)."""
        return _pack_tags(tags) + serialize(value)

    def seal(self, key: str, body: bytes | memoryview, user: str | None,
             key_id: int | None = None) -> bytes:
        """Compress and encrypt a body made by :meth:`plaintext` under ``key``."""
        flags = 0
        if len(body) >= self._compress_min:
            with self._compressors.lend() as compressor:
                packed = compressor.compress(body)
            if len(packed) < len(body):
                body, flags = packed, _FLAG_ZSTD
        key_id = self.keyring.current_id if key_id is None else key_id
        nonce = os.urandom(12)
        sealed = self._aead(key_id, user).encrypt(nonce, bytes([flags]) + body, key.encode())
        return _HEADER.pack(BLOB_VERSION, key_id, nonce) + bytes(sealed)

    def open(self, key: str, blob: bytes, user: str | None) -> bytes | memoryview:
        """The body of a blob; :class:`BlobError` if it is not a valid blob of ``key``."""
        if len(blob) < _HEADER.size + 17:
            raise BlobError("blob is too short")
        version, key_id, nonce = _HEADER.unpack_from(blob)
        if version != BLOB_VERSION:
            raise BlobError(f"unknown blob version {version}")
        try:
            plain = self._aead(key_id, user).decrypt(
                nonce, memoryview(blob)[_HEADER.size :], key.encode())
        except InvalidTag:
            raise BlobError("blob failed authentication") from None
        except KeyringError as error:
            raise BlobError(str(error)) from None
        flags, body = plain[0], memoryview(plain)[1:]
        if not flags & _FLAG_ZSTD:
            return body
        try:
            # max_output_size only binds frames that don't declare their size; ours do.
            if zstandard.frame_content_size(body) > self._max:
                raise BlobError("blob would decompress beyond the value size limit")
            with self._decompressors.lend() as decompressor:
                return bytes(decompressor.decompress(body, max_output_size=self._max))
        except zstandard.ZstdError as error:
            raise BlobError(f"blob failed to decompress: {error}") from None

    def decode(self, key: str, blob: bytes,
               user: str | None) -> tuple[Any, tuple[str, ...], int]:
        """The value, tags and body size in a blob; :class:`BlobError` for anything invalid."""
        body = self.open(key, blob, user)
        try:
            tags, offset = _unpack_tags(body)
            return deserialize(body[offset:]), tags, len(body)
        except (IndexError, UnicodeDecodeError, ValueError) as error:
            raise BlobError(f"blob body is malformed: {error}") from None

    def decode_kept(self, key: str, blob: bytes, user: str | None
                    ) -> tuple[Any, Any, tuple[str, ...], int]:
        """Like :meth:`decode`, and the value as memory keeps it (:func:`frozen`) too, taken
        from the blob's bytes: a JSON value is parsed for the caller, never encoded again."""
        body = self.open(key, blob, user)
        try:
            tags, offset = _unpack_tags(body)
            data = body[offset:]
            value = deserialize(data)
            kept = _Frozen(bytes(data)) if data[0] == 0x6A else value
            return value, kept, tags, len(body)
        except (IndexError, UnicodeDecodeError, ValueError) as error:
            raise BlobError(f"blob body is malformed: {error}") from None

    @staticmethod
    def key_id(blob: bytes) -> int:
        """The master key id a blob is sealed under."""
        return blob[1] if len(blob) > 1 else 0
