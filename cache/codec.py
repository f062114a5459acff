"""Blob codec: value -> stable bytes -> zstd -> AES-256-GCM.

Blob layout (all tiers below memory store the same bytes)::

    version (1) | key id (1) | nonce (12) | AES-GCM(plaintext, aad = cache key)
    plaintext = flags (1) | body, zstd-compressed when flags & 1
    body      = tag count (2) | (tag length (2) | tag)* | value type (1) | value

The cache key is the associated data, so a blob copied under another key fails
to authenticate. Value types: ``b`` bytes, ``s`` str, ``j`` canonical JSON.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag

from cache.crypto import Keyring
from cache.errors import BlobError, CacheError, KeyringError

BLOB_VERSION = 1
_HEADER = struct.Struct(">BB12s")
_FLAG_ZSTD = 1
_MIN_COMPRESS = 64

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


def deserialize(data: bytes) -> Any:
    """The inverse of :func:`serialize`."""
    kind, payload = data[:1], data[1:]
    if kind == b"b":
        return payload
    if kind == b"s":
        return payload.decode("utf-8")
    if kind == b"j":
        return json.loads(payload)
    raise BlobError(f"unknown value type {kind!r}")


def _pack_tags(tags: Sequence[str]) -> bytes:
    out = bytearray(struct.pack(">H", len(tags)))
    for tag in tags:
        raw = tag.encode("utf-8")
        out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


def _unpack_tags(body: bytes) -> tuple[tuple[str, ...], int]:
    (count,) = struct.unpack_from(">H", body, 0)
    offset, tags = 2, []
    for _ in range(count):
        (length,) = struct.unpack_from(">H", body, offset)
        offset += 2
        tags.append(body[offset : offset + length].decode("utf-8"))
        offset += length
    return tuple(tags), offset


class Codec:
    """Seals and opens blobs under a keyring and per-user salts."""

    def __init__(
        self,
        keyring: Keyring,
        salt_for: SaltLookup,
        *,
        level: int = 3,
        max_value_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """
        Args:
            keyring: the master keys.
            salt_for: the salt of a user (created on first use).
            level: zstd compression level.
            max_value_bytes: the largest plaintext a blob may decompress to.
        """
        self.keyring = keyring
        self._salt_for = salt_for
        self._level = level
        self._max = max_value_bytes
        self._local = threading.local()

    def _zstd(self) -> tuple[Any, Any]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.zstd = pair
        return pair

    def _aead(self, key_id: int, user: str | None) -> Any:
        salt = b"" if user is None else self._salt_for(user)
        return self.keyring.aead(key_id, user, salt)

    def plaintext(self, value: Any, tags: Sequence[str]) -> bytes:
        """The uncompressed body of ``value`` with its tags (its length sizes memory entries)."""
        return _pack_tags(tags) + serialize(value)

    def seal(self, key: str, body: bytes, user: str | None, key_id: int | None = None) -> bytes:
        """Compress and encrypt a body made by :meth:`plaintext` under ``key``."""
        flags = 0
        if len(body) >= _MIN_COMPRESS:
            packed = self._zstd()[0].compress(body)
            if len(packed) < len(body):
                body, flags = packed, _FLAG_ZSTD
        key_id = self.keyring.current_id if key_id is None else key_id
        nonce = os.urandom(12)
        sealed = self._aead(key_id, user).encrypt(nonce, bytes([flags]) + body, key.encode())
        return _HEADER.pack(BLOB_VERSION, key_id, nonce) + bytes(sealed)

    def encode(self, key: str, value: Any, tags: Sequence[str], user: str | None) -> bytes:
        """``value`` and its tags as a blob bound to ``key``, sealed for ``user``."""
        return self.seal(key, self.plaintext(value, tags), user)

    def open(self, key: str, blob: bytes, user: str | None) -> bytes:
        """The body of a blob; :class:`BlobError` if it is not a valid blob of ``key``."""
        if len(blob) < _HEADER.size + 17:
            raise BlobError("blob is too short")
        version, key_id, nonce = _HEADER.unpack_from(blob)
        if version != BLOB_VERSION:
            raise BlobError(f"unknown blob version {version}")
        try:
            plain = self._aead(key_id, user).decrypt(nonce, blob[_HEADER.size :], key.encode())
        except InvalidTag:
            raise BlobError("blob failed authentication") from None
        except KeyringError as error:
            raise BlobError(str(error)) from None
        flags, body = plain[0], bytes(plain[1:])
        if flags & _FLAG_ZSTD:
            try:
                # max_output_size only binds frames that don't declare their size; ours do.
                if zstandard.frame_content_size(body) > self._max:
                    raise BlobError("blob would decompress beyond the value size limit")
                body = bytes(self._zstd()[1].decompress(body, max_output_size=self._max))
            except zstandard.ZstdError as error:
                raise BlobError(f"blob failed to decompress: {error}") from None
        return body

    def decode(self, key: str, blob: bytes,
               user: str | None) -> tuple[Any, tuple[str, ...], int]:
        """The value, tags and body size in a blob; :class:`BlobError` for anything invalid."""
        body = self.open(key, blob, user)
        try:
            tags, offset = _unpack_tags(body)
            return deserialize(body[offset:]), tags, len(body)
        except (struct.error, UnicodeDecodeError, ValueError) as error:
            raise BlobError(f"blob body is malformed: {error}") from None

    @staticmethod
    def key_id(blob: bytes) -> int:
        """The master key id a blob is sealed under."""
        return blob[1] if len(blob) > 1 else 0
