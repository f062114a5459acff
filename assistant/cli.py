"""The ``assistant`` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from assistant.caching import open_cache
from assistant.errors import AssistantError, AudioError, TemplateError
from assistant.intents import RELOAD, versions_key
from assistant.recognize import builtin_intents, load_intent_templates
from assistant.settings import Settings, load_settings
from assistant.templates import load_file
from cache import CacheError, KeyBuilder, TieredCache
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

    transcribe = commands.add_parser("transcribe", help="print the words in a WAV (or raw PCM) file")
    transcribe.add_argument("file", type=Path, help="a WAV file, or raw PCM with --rate")
    transcribe.add_argument("--user", help="whose words these are (their privacy policy applies)")
    raw = transcribe.add_argument_group("raw PCM (instead of a WAV file)")
    raw.add_argument("--rate", type=int, help="samples per second: the file is raw PCM")
    raw.add_argument("--bits", type=int, default=16, help="bits per sample (default 16)")
    raw.add_argument("--channels", type=int, default=1, help="interleaved channels (default 1)")
    raw.add_argument("--float", action="store_true", help="IEEE float samples")
    transcribe.add_argument("--no-cache", action="store_true", help="transcribe even if cached")

    say = commands.add_parser("say", help="speak text into a WAV file")
    say.add_argument("text")
    say.add_argument("-o", "--output", type=Path, required=True, help="WAV file to write; - for stdout")
    say.add_argument("--user", help="cache the audio as this user's (personal content)")
    say.add_argument("--stream", action="store_true",
                     help="report each sentence as soon as it is ready")
    say.add_argument("--no-cache", action="store_true", help="synthesise even if cached")

    ask = commands.add_parser("ask", help="answer a sentence in process (no MQTT)")
    ask.add_argument("text")
    ask.add_argument("--user", help="who asks (their privacy policy applies)")
    ask.add_argument("--site", help="the satellite it was said to")
    ask.add_argument("--area", help="the area it was said in")
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    return parser


def _ask(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from assistant.generation import Generator, open_backend
    from assistant.home import Registry, load_home
    from assistant.intents import IntentEngine
    from assistant.respond import Responder

    started = time.perf_counter()
    cache, keys = _open(settings)
    generator = None
    engine = None
    try:
        generator = Generator(open_backend(settings.generator), settings.generator, cache=cache,
                              keys=keys)
        registry = Registry(load_home(settings.home.entities_file))
        engine = IntentEngine(settings.intents, registry, cache=cache, keys=keys,
                              responder=Responder(cache, keys, generator=generator))
        loaded = time.perf_counter() - started
        asked = time.perf_counter()
        answer = engine.respond(args.text, user=args.user, site=args.site, area=args.area)
        took = time.perf_counter() - asked
    finally:
        if engine is not None:
            engine.close()
        if generator is not None:
            generator.close()
        cache.close()
    if args.json:
        print(json.dumps({
            "text": answer.text, "intent": answer.intent, "slots": answer.slots,
            "targets": answer.targets, "actions": [dataclasses.asdict(a) for a in answer.actions],
            "fragments": [{"kind": f.kind, "text": f.text, "source": f.source,
                           "ms": round(f.seconds * 1000, 3)} for f in answer.fragments],
            "ms": round(took * 1000, 3), "load_ms": round(loaded * 1000, 1),
            "backend": generator.backend.describe()}, default=str))
        return 0
    print(answer.text)
    print(f"intent: {answer.intent or '(none)'}", file=sys.stderr)
    for fragment in answer.fragments:
        print(f"  {fragment.kind:8} {fragment.source:9} {fragment.seconds * 1000:9.3f} ms  "
              f"{fragment.text}", file=sys.stderr)
    for action in answer.actions:
        print(f"  action   {action.topic} <- {action.payload}", file=sys.stderr)
    print(f"answered in {took * 1000:.3f} ms (start-up {loaded:.2f} s, "
          f"{generator.backend.name} {generator.backend.model_id})", file=sys.stderr)
    return 0


def _speech_cache(settings: Settings, no_cache: bool) -> tuple[TieredCache | None, KeyBuilder | None]:
    return (None, None) if no_cache else _open(settings)


def _transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.audio import PcmFormat
    from assistant.stt import Transcriber

    fmt = None
    if args.rate is not None:
        fmt = PcmFormat(rate=args.rate, bits=args.bits, channels=args.channels, float=args.float)
    with args.file.open("rb") as handle:  # no more than the limit (plus one to tell) is read
        data = handle.read(settings.stt.max_bytes + 1)
    cache, keys = _speech_cache(settings, args.no_cache)
    try:
        transcriber = Transcriber(settings.stt, cache=cache, keys=keys)
        result = transcriber.transcribe(data, fmt=fmt, user=args.user)
    finally:
        if cache is not None:
            cache.close()
    print(result.text)
    print(f"source={result.source} audio={result.audio_seconds:.2f}s "
          f"took={result.seconds * 1000:.1f}ms rtf={result.seconds / result.audio_seconds:.3f} "
          f"model_load={transcriber.load_seconds:.2f}s", file=sys.stderr)
    return 0


def _say(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from assistant.tts import Speaker

    cache, keys = _speech_cache(settings, args.no_cache)
    try:
        speaker = Speaker(settings.tts, cache=cache, keys=keys)
        started = time.perf_counter()
        if args.stream:
            spoken = []
            for sentence in speaker.stream(args.text, user=args.user):
                print(f"{(time.perf_counter() - started) * 1000:8.1f}ms ready: "
                      f"{sentence.source:8} {sentence.text}", file=sys.stderr)
                spoken.append(sentence)
            wav = speaker.stitch([s.pcm for s in spoken])
        else:
            speech = speaker.speak(args.text, user=args.user)
            spoken, wav = list(speech.sentences), speech.wav
            for sentence in spoken:
                print(f"{sentence.seconds * 1000:8.1f}ms {sentence.source:8} {sentence.text}",
                      file=sys.stderr)
        took = time.perf_counter() - started
    finally:
        if cache is not None:
            cache.close()
    if str(args.output) == "-":
        sys.stdout.buffer.write(wav)
    else:
        args.output.write_bytes(wav)
    audio = (len(wav) - 44) / 2 / speaker.rate
    hits = sum(s.source not in ("computed", "waited") for s in spoken)
    print(f"cached={hits}/{len(spoken)} audio={audio:.2f}s took={took * 1000:.1f}ms "
          f"rtf={took / audio:.3f} voice_load={speaker.load_seconds:.2f}s", file=sys.stderr)
    return 0


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
    cache, keys = _open(settings)
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


def _open(settings: Settings) -> tuple[TieredCache, KeyBuilder]:
    """The cache (no event listener: a command runs once) and its key builder."""
    return open_cache(cache=settings.cache, redis=settings.redis, sqlite=settings.sqlite,
                      keys=settings.keys, privacy=settings.privacy, listen=False)


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
        _open(settings)[0].close()  # creates the key file on first use
        new_id = append_key(settings.keys.file)
        print(f"added key id {new_id} to {settings.keys.file}")
    cache, _keys = _open(settings)
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
        if args.command == "transcribe":
            return _transcribe(args, settings)
        if args.command == "say":
            return _say(args, settings)
        if args.command == "ask":
            return _ask(args, settings)
    except AudioError as error:
        print(f"error[{error.code}]: {error}", file=sys.stderr)
        return 2
    except (CacheError, AssistantError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
