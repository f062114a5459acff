"""``assistant cache``: stats, purges, forgets, GC and key and file rotation."""

from __future__ import annotations

import argparse
import json
import sys

from assistant.settings import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.app import cache_of, key_source, open_keyring
    from cache import maintenance
    from cache.crypto import append_key

    if args.op == "rotate-key" and not args.no_generate:
        if key_source(settings.keys).kind != "file":
            print("error: the keys come from the environment or a credential: add the new key "
                  "there, then run rotate-key --no-generate", file=sys.stderr)
            return 2
        open_keyring(settings.keys)  # creates the key file on first use
        new_id = append_key(settings.keys.file)
        print(f"added key id {new_id} to {settings.keys.file}")
    if args.op == "rotate-db":
        return _rotate_db(args, settings)
    cache, _keys = cache_of(settings, listen=False)
    with cache:
        if args.op == "stats":
            print(json.dumps(maintenance.stats(cache), indent=2, sort_keys=True, default=str))
        elif args.op == "purge" and args.tag:
            print(json.dumps({"tag": args.tag, "removed": cache.invalidate_tag(args.tag)}))
        elif args.op == "purge":
            from assistant.app import version_tag

            tags = [version_tag(kind, args.model) for kind in ("generator", "voice")]
            print(json.dumps({"model": args.model, "removed": {
                tag: cache.invalidate_tag(tag) for tag in tags}}))
        elif args.op == "forget":
            removed = cache.forget_user(args.user)
            print(json.dumps({"user": args.user, "removed": removed,
                              "complete": not cache.pending_events}))
        elif args.op == "gc":
            print(json.dumps({"expired_removed": maintenance.gc(cache)}))
        elif args.op == "rotate-key":
            count = maintenance.rotate(cache)
            print(json.dumps({"key_id": cache.keyring.current_id, "resealed": count}))
            print("restart running services so they read the new key", file=sys.stderr)
        if cache.pending_events:
            print("error: not applied everywhere yet (Redis unreachable, or the disk tier busy): "
                  "what could not be done is kept and sent by the next run or the service; "
                  "run the command again to be sure", file=sys.stderr)
            return 1
    return 0


def _rotate_db(args: argparse.Namespace, settings: Settings) -> int:
    """``cache rotate-db``: see :func:`assistant.ops.rotate.rotate_db`."""
    from assistant.ops.rotate import NotRotated, rotate_db

    try:
        print(json.dumps(rotate_db(settings, force=args.force)))
    except NotRotated as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    return 0
