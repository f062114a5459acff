"""The ``assistant`` command: subcommands over the same parts the service runs.

The parser, and the commands that run or ask the service, are here; ``cache``, ``intents``
and ``speech`` (``transcribe``, ``say``) have modules of their own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.cli import cache as cache_command
from assistant.cli import intents, speech
from assistant.errors import AssistantError, AudioError
from assistant.settings import Settings, load_settings
from cache.errors import CacheError
from cache.scope import check_user

if TYPE_CHECKING:
    from assistant.app import App
    from assistant.protocol import Response

# Each command imports what it needs when it runs: the satellite, on a small device, must
# not load the service's models and libraries just to parse its arguments.

log = logging.getLogger("assistant")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="Edge voice assistant")
    parser.add_argument("--config", type=Path, help="settings file (default: configs/assistant.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    cache = commands.add_parser("cache", help="inspect and maintain the tiered cache")
    ops = cache.add_subparsers(dest="op", required=True)
    ops.add_parser("stats", help="print counters and the state of every tier (JSON)")
    purge = ops.add_parser("purge", help="remove every item carrying a tag, on every tier and node")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--tag", help="e.g. intent:HassTurnOn or template:light.yaml")
    which.add_argument("--model", metavar="VERSION",
                       help="every item a model or voice of this version made (its version "
                            "hash, or its first 16 characters): for deployment pipelines")
    forget = ops.add_parser("forget", help="remove a user's items everywhere, destroy their data key")
    forget.add_argument("user")
    ops.add_parser("gc", help="remove expired rows from the disk tier")
    rotate = ops.add_parser("rotate-key", help="re-encrypt the disk tier under the newest key")
    rotate.add_argument(
        "--no-generate", action="store_true",
        help="do not add a key to the key file (use when the new key was added by hand, "
             "or the keys come from the environment or a credential)",
    )
    rotate_db = ops.add_parser("rotate-db", help="a clean slate for the disk tier, without "
                                                 "stopping the service: its file replaced by "
                                                 "an empty one")
    rotate_db.add_argument("--force", action="store_true",
                           help="rotate even when a service holds the file and did not answer")
    intents = commands.add_parser("intents", help="check and reload the intent templates")
    intent_ops = intents.add_subparsers(dest="op", required=True)
    check = intent_ops.add_parser("check", help="validate templates; exit 1 on any error")
    check.add_argument("path", nargs="?", type=Path,
                       help="a folder or one .yaml file (default: the configured folder)")
    intent_ops.add_parser(
        "reload", help="validate, purge the cached answers of changed intents everywhere, "
                       "and make running services re-read the templates")

    homeassistant = commands.add_parser("homeassistant",
                                        help="the assistant as a device in Home Assistant")
    ha_ops = homeassistant.add_subparsers(dest="op", required=True)
    ha_ops.add_parser("remove", help="take the device out of Home Assistant (an empty retained "
                                     "discovery config); set [homeassistant] device = false too")

    satellite = commands.add_parser("satellite", help="the device people speak to: wake word, "
                                                      "request, answer played")
    satellite.add_argument("--site", required=True, help="where it stands (its area)")
    satellite.add_argument("--user", required=True, help="whose requests (the MQTT username)")
    satellite.add_argument("--input", default="alsa",
                           help="alsa (the microphone, [satellite] input_device), alsa:DEVICE, "
                                "a 16 kHz 16-bit mono WAV, or - for raw PCM on standard input")
    satellite.add_argument("--output", type=Path,
                           help="write the answers' audio to this folder instead of playing it "
                                "([satellite] output_device)")
    satellite.add_argument("--push-to-talk", action="store_true",
                           help="no wake word: Enter (or a message on the listen topic) starts "
                                "a request; with a recording, one request follows another")
    satellite.add_argument("--password", help="the user's MQTT password "
                                              "(default: [mqtt] password)")
    satellite.add_argument("--count", type=int, help="stop after this many requests")
    satellite.add_argument("--report", type=Path,
                           help="write each request's timings (JSON lines) and peak memory")

    stats = commands.add_parser("stats", help="the running service's figures since it "
                                              "started: a table (from its metrics endpoint)")
    stats.add_argument("--json", action="store_true", help="as JSON")
    report = commands.add_parser("report", help="hit ratios and latencies over the last hours, "
                                                "drawn (from the figures the service keeps)")
    report.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    report.add_argument("--hours", type=float, default=6.0, help="how far back (6)")

    warm = commands.add_parser("warm", help="answer likely sentences ahead of people: their "
                                            "answers and speech into the cache")
    warm.add_argument("--per-intent", type=int, default=8,
                      help="sentences sampled of each intent (8)")
    warm.add_argument("--limit", type=int, default=2000, help="sentences at most (2000)")
    warm.add_argument("--rate", type=float, default=4.0,
                      help="sentences a second at most; 0: as fast as it goes (4)")
    warm.add_argument("--idle-only", action="store_true",
                      help="wait while the running service is answering (its metrics)")
    warm.add_argument("--no-speech", action="store_true", help="answers only, no speech")
    warm.add_argument("--seed", type=int, help="the same sentences each run (default: new)")
    warm.add_argument("--show", action="store_true",
                      help="print each sentence warmed and its answer (stderr)")

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

    ask = commands.add_parser("ask", help="answer a sentence: in process, or with --mqtt from "
                                          "a running service")
    ask.add_argument("text", nargs="?", help="what is said (or --audio)")
    ask.add_argument("--user", help="who asks (their privacy policy applies)")
    ask.add_argument("--site", help="the satellite it was said to")
    ask.add_argument("--area", help="the area it was said in")
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    over = ask.add_argument_group("over MQTT, to a running `assistant serve`")
    over.add_argument("--mqtt", action="store_true", help="ask the running service")
    over.add_argument("--audio", type=Path, help="a WAV file to send instead of text")
    over.add_argument("--play-to", type=Path, help="write the spoken answer to this WAV file")
    over.add_argument("--stream", action="store_true", help="speech one sentence at a time")
    over.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (30)")

    serve = commands.add_parser("serve", help="answer requests over MQTT until stopped")
    serve.add_argument("--no-speech", action="store_true",
                       help="text only: do not load the speech models")
    return parser


def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.app import App
    from assistant.pipeline import Handled, response_of

    if args.mqtt or args.audio or args.play_to:
        return _ask_mqtt(args, settings)
    if not args.text:
        print("error: say what to ask (or --mqtt --audio FILE.wav)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with App(settings, listen=False) as app:
        assert app.engine is not None and app.generator is not None
        loaded = time.perf_counter() - started
        asked = time.perf_counter()
        timings: dict[str, float] = {}
        answer = app.engine.respond(args.text, user=check_user(args.user), site=args.site,
                                    area=args.area, timings=timings)
        took = time.perf_counter() - asked
        backend = app.generator.backend
    reply = response_of("cli", Handled(answer, timings=timings))
    extra = {"ms": round(took * 1000, 3), "load_ms": round(loaded * 1000, 1),
             "backend": backend.describe()}
    _print_reply(reply, args.json, extra, f"answered in {took * 1000:.3f} ms (start-up "
                 f"{loaded:.2f} s, {backend.name} {backend.model_id})")
    return 0


def _print_reply(reply: Response, as_json: bool, extra: dict[str, Any], last: str) -> None:
    """An answer as the ask command shows it: the text, then how it was found (stderr)."""
    if as_json:
        print(json.dumps({**reply.to_json(), **extra}, default=str))
        return
    print(reply.text)
    if reply.transcript is not None:
        print(f"heard: {reply.transcript}", file=sys.stderr)
    print(f"intent: {reply.intent or '(none)'}  match: {reply.match}", file=sys.stderr)
    for fragment in reply.fragments:
        print(f"  {fragment.get('kind', ''):8} {fragment.get('source', ''):9} "
              f"{fragment.get('ms', 0):9.3f} ms  {fragment.get('text', '')}", file=sys.stderr)
    for action in reply.actions:
        print(f"  action   {action.get('topic')} <- {action.get('payload')}", file=sys.stderr)
    print(last, file=sys.stderr)


def _ask_mqtt(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.protocol import ErrorReply, Topics
    from assistant.speech.audio import AudioLimits, parse_wav, wav_bytes
    from assistant.transports.mqtt_client import Asker

    if (args.text is None) == (args.audio is None):
        print("error: give either the text or --audio FILE.wav", file=sys.stderr)
        return 2
    wav = args.audio.read_bytes() if args.audio is not None else None
    user = check_user(args.user) or settings.mqtt.username or "assistant"
    with Asker(settings.mqtt, user=user, site=args.site or "default",
               topics=Topics(settings.service.topic_prefix)) as asker:
        asked = asker.ask(text=args.text, wav=wav, area=args.area, speak=args.play_to is not None,
                          stream=args.stream, timeout=args.timeout)
    reply = asked.reply
    if reply is None:
        print(f"error: no answer within {args.timeout:g} s: is `assistant serve` running "
              f"and connected to {settings.mqtt.host}:{settings.mqtt.port}?", file=sys.stderr)
        return 1
    if isinstance(reply, ErrorReply):
        print(f"error[{reply.code}]: {reply.message}", file=sys.stderr)
        return 1
    if args.play_to is not None and asked.speech:
        clips = [parse_wav(c.wav, AudioLimits(max_bytes=len(c.wav)))
                 for c in sorted(asked.speech, key=lambda c: c.seq)]
        args.play_to.write_bytes(wav_bytes(b"".join(pcm for _, pcm in clips),
                                           rate=clips[0][0].rate))
    stages = " ".join(f"{k}={v:.2f}ms" for k, v in reply.timings.items())
    _print_reply(reply, args.json, {"round_trip_ms": round(asked.seconds * 1000, 3)},
                 f"round trip {asked.seconds * 1000:.2f} ms ({stages})")
    if args.play_to is not None:
        print(f"speech: {len(asked.speech)} chunk(s) written to {args.play_to}", file=sys.stderr)
    return 0


def _satellite(args: argparse.Namespace, settings: Settings) -> int:
    """``satellite``: hear the input until it ends (or the process is stopped), answering
    each request in it; exit 1 when none was answered."""
    import signal

    from assistant.satellite.device import Satellite
    from assistant.satellite.sound import Folder, Player, Speaker, open_source

    mqtt = settings.mqtt.model_copy(update={
        "username": args.user, "password": args.password or settings.mqtt.password,
        "client_id": f"satellite-{args.site}-{args.user}"})
    config = settings.satellite
    source = open_source(args.input, config.input_device)
    player = Player(Folder(args.output) if args.output is not None
                    else Speaker(config.output_device))
    device = Satellite(config, mqtt, site=args.site, user=args.user, player=player,
                       prefix=settings.service.topic_prefix, push_to_talk=args.push_to_talk,
                       report=args.report, count=args.count)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: device.stop())
    answered = device.run(source)
    return 0 if answered else 1


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    """``stats``: the running service's figures since it started, as a table."""
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from assistant.ops.figures import current, metrics_url

    service = settings.service
    if not service.metrics_port:
        print("error: the service has no metrics endpoint ([service] metrics_port = 0)",
              file=sys.stderr)
        return 2
    url = metrics_url(service.metrics_host, service.metrics_port)
    try:
        now = current(url)
    except OSError as error:
        print(f"error: no service answers at {url}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(now)))
        return 0
    table = Table(title=f"assistant: {now.requests:g} requests since it started")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for tier in ("l1", "l2", "l3"):
        if tier in now.hit_ratio:
            table.add_row(f"{tier} hit ratio", f"{now.hit_ratio[tier]:.1%}")
        if tier in now.tier_p50_ms:
            table.add_row(f"{tier} read, median", f"{now.tier_p50_ms[tier] * 1000:.0f} µs")
    for stage, p50 in now.stage_p50_ms.items():
        table.add_row(f"{stage}, median / 95th", f"{p50:.1f} / {now.stage_p95_ms[stage]:.1f} ms")
    for code, count in sorted(now.errors.items()):
        table.add_row(f"errors: {code}", f"{count:g}")
    table.add_row("queue", f"{now.queue:g}")
    Console().print(table)
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    """``report -o FILE.png``: the figures the service kept over the last hours, drawn."""
    from assistant.app import figures_path
    from assistant.ops.figures import read_lines, series
    from assistant.ops.report import draw

    path = figures_path(settings)
    points = series(read_lines(path), hours=args.hours)
    if not points:
        print(f"error: no figures kept yet in {path} (the service writes one line every "
              f"[service] figures_interval seconds)", file=sys.stderr)
        return 1
    draw(points, args.output, hours=args.hours)
    print(f"{args.output}: {len(points)} intervals over {args.hours:g} hours")
    return 0


def _warm(args: argparse.Namespace, settings: Settings) -> int:
    """``warm``: see :func:`assistant.ops.warm.warm`; the report as JSON."""
    from assistant.ops.warm import warm

    report = warm(settings, per_intent=args.per_intent, limit=args.limit, rate=args.rate,
                  idle_only=args.idle_only, speech=not args.no_speech, seed=args.seed,
                  show=args.show)
    print(json.dumps(report.to_json()))
    return 0


def _remove_device(settings: Settings) -> int:
    """``homeassistant remove``: the device's discovery config emptied, on the broker."""
    from assistant.transports.ha_device import HomeAssistantDevice

    device = HomeAssistantDevice(settings.homeassistant, settings.mqtt,
                                 prefix=settings.service.topic_prefix,
                                 discovery_prefix=settings.home.discovery_prefix,
                                 stats=dict, purge=lambda: None, reload=lambda: None)
    device.remove()
    print(f"removed: {device.config_topic}")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from rich.console import Console

    from assistant.app import App
    from assistant.model_files import cpu_threads
    from assistant.ops.heap import limit_heaps

    # Before any thread of the models starts, so that all of them share these heaps.
    limit_heaps(settings.service.heaps or cpu_threads())
    console = Console(stderr=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.perf_counter()
    with console.status("starting") as status:
        app = App(settings, serve=True, speech=not args.no_speech, listen=True,
                  watch=settings.intents.watch,
                  progress=lambda step: status.update(f"starting: {step}"))
        app.start()
    from assistant.ops.systemd import Watchdog, notify

    watchdog = Watchdog(app.healthy).start()
    try:
        _say_ready(app, settings, console, time.perf_counter() - started)
        # Only now: every part has started, the requests are subscribed to.
        notify(f"READY=1\nSTATUS=answering on {settings.mqtt.host}:{settings.mqtt.port}")
        stop.wait()
        notify("STOPPING=1")
        console.print("stopping")
    finally:
        watchdog.close()
        app.close()
    return 0


def _say_ready(app: App, settings: Settings, console: Any, took: float) -> None:
    from cache import TierUnavailable

    m, service = settings.mqtt, settings.service
    assert app.cache is not None
    if app.cache.redis is not None:
        try:
            app.cache.redis.info()
        except TierUnavailable:
            console.print(f"[yellow]Redis at {settings.redis.url} is unreachable: answering "
                          "from memory and disk, and using it as soon as it answers[/]")
    if app.cache.sqlite is None and settings.sqlite.enabled:
        console.print("[yellow]the disk cache could not be opened: running without it[/]")
    broker = "a private broker started for it" if app.broker and app.broker.proc else "the broker"
    console.print(f"[green]ready[/] in {took:.1f} s: answering on {broker} at "
                  f"{m.host}:{m.port} (topics {service.topic_prefix}/<site>/request/<user>, "
                  f".../audio/<user>; answers on .../response/<user>)")
    if service.metrics_port:
        console.print(f"metrics: http://{service.metrics_host}:{service.metrics_port}/metrics")
    console.print('try: assistant ask --mqtt "turn on the kitchen light" [--user U] '
                  "[--play-to answer.wav]")
    print(f"ready mqtt://{m.host}:{m.port} {service.topic_prefix}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        if args.command == "cache":
            return cache_command.run(args, settings)
        if args.command == "intents":
            return (intents.check(settings, args.path) if args.op == "check"
                    else intents.reload(settings))
        if args.command == "transcribe":
            return speech.transcribe(args, settings)
        if args.command == "say":
            return speech.say(args, settings)
        if args.command == "ask":
            return _ask(args, settings)
        if args.command == "serve":
            return _serve(args, settings)
        if args.command == "homeassistant":
            return _remove_device(settings)
        if args.command == "satellite":
            return _satellite(args, settings)
        if args.command == "warm":
            return _warm(args, settings)
        if args.command == "stats":
            return _stats(args, settings)
        if args.command == "report":
            return _report(args, settings)
    except AudioError as error:
        print(f"error[{error.code}]: {error}", file=sys.stderr)
        log.debug("why", exc_info=error)
        return 2
    except (CacheError, AssistantError, OSError, ValueError) as error:
        # One line for the person at the terminal; the cause (Redis refusing, a corrupt file,
        # a model that does not load) stays in the log, with -v.
        print(f"error: {error}", file=sys.stderr)
        log.debug("why", exc_info=error)
        return 2
    return 0
