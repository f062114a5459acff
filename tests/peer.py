"""A second OS process with its own TieredCache, driven line by line over stdin/stdout.

Commands (one JSON list per line): ["set", key, value, [tags], user], ["get", key, user],
["l1", key], ["close"]. Each answer is one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cache import KeyBuilder, Keyring, MemoryTier, RedisTier, SqliteTier, TieredCache


def main() -> None:
    redis_url, db = sys.argv[1], Path(sys.argv[2])
    keyring = Keyring({1: b"k" * 32})  # the same key as the tests' keyring fixture
    names = KeyBuilder(keyring.naming_secret())
    cache = TieredCache(
        keyring=keyring,
        memory=MemoryTier(1 << 20),
        redis_tier=RedisTier(redis_url, namer=names.name),
        sqlite_tier=SqliteTier(db, flush_interval=0.01),
        listen=True,
        listen_block=0.2,
    ).start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command[0] == "set":
            _, key, value, tags, user = command
            cache.set(key, value, ttl=600, tags=tags, user=user)
            cache.sqlite.flush()  # type: ignore[union-attr]
            answer: object = True
        elif command[0] == "get":
            found = cache.lookup(command[1], user=command[2])
            answer = None if found is None else [found.value, found.source]
        elif command[0] == "l1":
            answer = cache.memory.get(command[1]) is not None
        else:
            cache.close()
            print(json.dumps(True), flush=True)
            return
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
