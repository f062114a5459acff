"""A second OS process running the intent engine over a shared Redis, driven over stdin.

Arguments: Redis URL, sqlite file, intents folder, and ``nowatch`` to leave the folder
unwatched (the process then hears of edits only from announcements). Commands (one JSON
list per line): ["ask", text], ["close"]. Answers are JSON lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from assistant.engine import IntentEngine
from assistant.home import Registry, load_home
from assistant.settings import IntentsSettings
from cache import KeyBuilder, Keyring, MemoryTier, RedisTier, SqliteTier, TieredCache

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    redis_url, db, folder = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    keyring = Keyring({1: b"k" * 32})  # the tests' keyring fixture
    keys = KeyBuilder(keyring.naming_secret())
    cache = TieredCache(keyring=keyring, memory=MemoryTier(1 << 22),
                        redis_tier=RedisTier(redis_url, namer=keys.name),
                        sqlite_tier=SqliteTier(db, flush_interval=0.01), listen=True,
                        listen_block=0.2).start()
    engine = IntentEngine(IntentsSettings(folder=folder),
                          Registry(load_home(ROOT / "configs" / "entities.yaml")),
                          cache=cache, keys=keys).start()
    if sys.argv[4:] != ["nowatch"]:
        engine.watch()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command[0] == "ask":
            answer = engine.respond(command[1])
            print(json.dumps([answer.text, [f.source for f in answer.fragments]]), flush=True)
        else:
            engine.close()
            cache.close()
            print(json.dumps(True), flush=True)
            return


if __name__ == "__main__":
    main()
