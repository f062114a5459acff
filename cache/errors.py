"""The cache library's errors: one small hierarchy, foreign errors translated where they enter."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error this library raises."""


class NonDeterministicError(CacheError):
    """A generation request that is not reproducible (sampling without a seed) was asked for a key."""


class KeyringError(CacheError):
    """The master key is missing, malformed, or does not hold the key id that is needed."""


class BlobError(CacheError):
    """A stored blob failed to authenticate, decrypt, decompress or parse.

    Never reaches a caller of :class:`cache.TieredCache`: such a blob is a miss.
    """


class TierUnavailable(CacheError):
    """A tier could not serve an operation (server down, breaker open, file unusable)."""
