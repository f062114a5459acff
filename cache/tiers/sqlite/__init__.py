"""L3, the disk tier: an encrypted-blob sqlite file (the file, its writer, the tier)."""

from cache.tiers.sqlite.tier import SqliteTier

__all__ = ["SqliteTier"]
