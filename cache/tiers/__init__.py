"""The three tiers: memory (L1), Redis (L2) and sqlite (L3), and the contract they share."""

from cache.tiers.base import Clock, Record, Tier, wall_clock
from cache.tiers.memory import MemoryTier
from cache.tiers.redis import RedisTier
from cache.tiers.sqlite import SqliteTier

__all__ = ["Clock", "MemoryTier", "Record", "RedisTier", "SqliteTier", "Tier", "wall_clock"]
