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
from assistant.errors import AssistantError, TemplateError
from assistant.intents import RELOAD, versions_key
from assistant.recognize import builtin_intents, load_intent_templates
from assistant.settings import Settings, load_settings
from assistant.templates import load_file
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
    intents = commands.add_parser("intents", help="check and reload the intent templates")
    intent_ops = intents.add_subparsers(dest="op", required=True)
    check = intent_ops.add_parser("check", help="validate templates; exit 1 on any error")
    check.add_argument("path", nargs="?", type=Path,
                       help="a folder or one .yaml file (default: the configured folder)")
    intent_ops.add_parser(
        "reload", help="validate, purge the cached answers of changed intents everywhere, "
                       "and make running services re-read the templates")
    return parser


def _check(settings: Settings, path: Path | None) -> int:
    target = path or settings.intents.folder
    builtin = builtin_intents(settings.intents.language)
    try:
        if target.is_file():
            found, _ = load_file(target, folder=target.parent, builtin=builtin)
            names = sorted(found)
        else:
            names = sorted(load_intent_templates(target, settings.intents.language).intents)
    except TemplateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ok: {len(names)} intents in {target}: {', '.join(names)}")
    return 0


def _reload(settings: Settings) -> int:
    try:
        templates = load_intent_templates(settings.intents.folder, settings.intents.language)
    except TemplateError as error:
        print(f"error: nothing reloaded: {error}", file=sys.stderr)
        return 1
    cache, keys = open_cache(
        cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
        keys=settings.keys, privacy=settings.privacy, listen=False,
    )
    try:
        before = cache.get(versions_key(keys)) or {}
        after = templates.versions()
        stale = sorted(n for n in before if before[n] != after.get(n))
        purged = {name: cache.invalidate_tag(f"intent:{name}") for name in stale}
        cache.set(versions_key(keys), after, ttl=10 * 365 * 86400)
        told = cache.announce(RELOAD, str(settings.intents.folder))
        print(json.dumps({"purged": purged, "intents": len(after), "services_told": told}))
        if cache.pending_events or not told:
            print("error: Redis is unreachable: other nodes and running services were not told",
                  file=sys.stderr)
            return 1
    finally:
        cache.close()
    return 0


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
        if args.command == "intents":
            return _check(settings, args.path) if args.op == "check" else _reload(settings)
    except (CacheError, AssistantError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
