"""A tiered cache: in-process LRU, Redis, and encrypted sqlite, with tags and privacy policies.

This package imports nothing from ``assistant``: it is a library the service uses.
"""

from cache.codec import Codec
from cache.crypto import Keyring, KeySource, find_key_source, load_keyring, read_keyring
from cache.errors import (
    BlobError,
    CacheError,
    KeyringError,
    NonDeterministicError,
    TierUnavailable,
)
from cache.keys import GenerationKey, KeyBuilder
from cache.metrics import CacheMetrics
from cache.policy import Placement, PolicyBook, PrivacyPolicy
from cache.scope import SHARED, check_user, scope_of, user_tag
from cache.tiered import Outcome, TieredCache
from cache.tiers import MemoryTier, Record, RedisTier, SqliteTier, Tier
from cache.tiers.breaker import CircuitBreaker

__all__ = [
    "SHARED",
    "BlobError",
    "CacheError",
    "CacheMetrics",
    "CircuitBreaker",
    "Codec",
    "GenerationKey",
    "KeyBuilder",
    "KeySource",
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
