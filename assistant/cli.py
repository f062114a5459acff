"""The ``assistant`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from assistant.caching import open_cache
from assistant.settings import Settings, load_settings
from cache import CacheError, TieredCache
from cache.crypto import append_key


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="Edge voice assistant")
    parser.add_argument("--config", type=Path, help="settings file (default: configs/assistant.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    cache = commands.add_parser("cache", help="inspect and maintain the tiered cache")
    ops = cache.add_subparsers(dest="op", required=True)
    ops.add_parser("stats", help="print counters and the state of every tier (JSON)")
    purge = ops.add_parser("purge", help="remove every item carrying a tag, on every tier and node")
    purge.add_argument("--tag", required=True, help="e.g. intent:HassTurnOn or template:light.yaml")
    forget = ops.add_parser("forget", help="remove a user's items everywhere, destroy their data key")
    forget.add_argument("user")
    ops.add_parser("gc", help="remove expired rows from the disk tier")
    rotate = ops.add_parser("rotate-key", help="re-encrypt the disk tier under the newest key")
    rotate.add_argument(
        "--no-generate", action="store_true",
        help="do not add a key to the key file (use when the new key was added by hand, "
             "or the keys come from the environment or a credential)",
    )
    return parser


def _open(settings: Settings) -> TieredCache:
    cache, _names = open_cache(
        cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
        keys=settings.keys, privacy=settings.privacy, listen=False,
    )
    return cache


def _keys_from_file(settings: Settings) -> bool:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / settings.keys.credential).exists():
        return False
    return not os.environ.get(settings.keys.env_var)


def _cache_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.op == "rotate-key" and not args.no_generate:
        if not _keys_from_file(settings):
            print("error: the keys come from the environment or a credential: add the new key "
                  "there, then run rotate-key --no-generate", file=sys.stderr)
            return 2
        _open(settings).close()  # creates the key file on first use
        new_id = append_key(settings.keys.file)
        print(f"added key id {new_id} to {settings.keys.file}")
    cache = _open(settings)
    try:
        if args.op == "stats":
            print(json.dumps(cache.stats(), indent=2, sort_keys=True, default=str))
        elif args.op == "purge":
            print(json.dumps({"tag": args.tag, "removed": cache.invalidate_tag(args.tag)}))
        elif args.op == "forget":
            print(json.dumps({"user": args.user, "removed": cache.forget_user(args.user)}))
        elif args.op == "gc":
            print(json.dumps({"expired_removed": cache.gc()}))
        elif args.op == "rotate-key":
            count = cache.rotate()
            print(json.dumps({"key_id": cache.keyring.current_id, "resealed": count}))
            print("restart running services so they read the new key", file=sys.stderr)
        if cache.pending_events:
            print("error: not applied everywhere yet (Redis unreachable, or the disk tier busy): "
                  "what could not be done is kept and sent by the next run or the service; "
                  "run the command again to be sure", file=sys.stderr)
            return 1
    finally:
        cache.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        if args.command == "cache":
            return _cache_command(args, settings)
    except (CacheError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
