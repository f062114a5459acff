"""A tiered cache: in-process LRU, Redis, and encrypted sqlite, with tags and privacy policies.

This package imports nothing from ``assistant``: it is a library the service uses.

Its names are loaded when first used (``from cache import TieredCache`` imports the tiers,
Redis's client and the crypto; ``from cache import check_user`` does not), so that a small
process that needs one helper does not carry the whole library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cache.codec import Codec
    from cache.crypto import Keyring, KeySource, find_key_source, load_keyring, read_keyring
    from cache.errors import (
        BlobError,
        CacheError,
        KeyringError,
        NonDeterministicError,
        TierUnavailable,
    )
    from cache.keys import SLOT, GenerationKey, KeyBuilder, KeySpace
    from cache.metrics import CacheMetrics
    from cache.policy import Placement, PolicyBook, PrivacyPolicy
    from cache.scope import SHARED, check_user, scope_of, user_tag
    from cache.tiered import Outcome, TieredCache
    from cache.tiers import MemoryTier, Record, RedisTier, SqliteTier, Tier
    from cache.tiers.breaker import CircuitBreaker

_WHERE = {
    "Codec": "cache.codec",
    "Keyring": "cache.crypto",
    "KeySource": "cache.crypto",
    "find_key_source": "cache.crypto",
    "load_keyring": "cache.crypto",
    "read_keyring": "cache.crypto",
    "BlobError": "cache.errors",
    "CacheError": "cache.errors",
    "KeyringError": "cache.errors",
    "NonDeterministicError": "cache.errors",
    "TierUnavailable": "cache.errors",
    "GenerationKey": "cache.keys",
    "KeyBuilder": "cache.keys",
    "KeySpace": "cache.keys",
    "SLOT": "cache.keys",
    "CacheMetrics": "cache.metrics",
    "Placement": "cache.policy",
    "PolicyBook": "cache.policy",
    "PrivacyPolicy": "cache.policy",
    "SHARED": "cache.scope",
    "check_user": "cache.scope",
    "scope_of": "cache.scope",
    "user_tag": "cache.scope",
    "Outcome": "cache.tiered",
    "TieredCache": "cache.tiered",
    "MemoryTier": "cache.tiers",
    "Record": "cache.tiers",
    "RedisTier": "cache.tiers",
    "SqliteTier": "cache.tiers",
    "Tier": "cache.tiers",
    "CircuitBreaker": "cache.tiers.breaker",
}


def __getattr__(name: str) -> Any:
    """Load a name of the package when it is first asked for (PEP 562)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value

__all__ = [
    "SHARED",
    "SLOT",
    "BlobError",
    "CacheError",
    "CacheMetrics",
    "CircuitBreaker",
    "Codec",
    "GenerationKey",
    "KeyBuilder",
    "KeySource",
    "KeySpace",
    "Keyring",
    "KeyringError",
    "MemoryTier",
    "NonDeterministicError",
    "Outcome",
    "Placement",
    "PolicyBook",
    "PrivacyPolicy",
    "Record",
    "RedisTier",
    "SqliteTier",
    "Tier",
    "TierUnavailable",
    "TieredCache",
    "check_user",
    "find_key_source",
    "load_keyring",
    "read_keyring",
    "scope_of",
    "user_tag",
]
