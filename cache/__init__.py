"""A tiered cache: in-process LRU, Redis, and encrypted sqlite, with tags and privacy policies.

This package imports nothing from ``assistant``: it is a library the service uses.
"""

from cache.breaker import CircuitBreaker
from cache.codec import Codec
from cache.crypto import Keyring, load_keyring
from cache.errors import (
    BlobError,
    CacheError,
    KeyringError,
    NonDeterministicError,
    TierUnavailable,
)
from cache.keys import GenerationKey, KeyBuilder
from cache.memory import MemoryTier
from cache.metrics import CacheMetrics
from cache.policy import PolicyBook, PrivacyPolicy
from cache.redis_tier import RedisTier
from cache.sqlite_tier import SqliteTier
from cache.tier import Record, Tier
from cache.tiered import Outcome, TieredCache

__all__ = [
    "BlobError",
    "CacheError",
    "CacheMetrics",
    "CircuitBreaker",
    "Codec",
    "GenerationKey",
    "KeyBuilder",
    "Keyring",
    "KeyringError",
    "MemoryTier",
    "NonDeterministicError",
    "Outcome",
    "PolicyBook",
    "PrivacyPolicy",
    "Record",
    "RedisTier",
    "SqliteTier",
    "Tier",
    "TierUnavailable",
    "TieredCache",
    "load_keyring",
]
