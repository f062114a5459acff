"""Benchmark of understanding: typed and spoken home requests, and names the home lacks.

Measures, in one run on this machine, over the home of ``bench/understanding_home.yaml``
(every domain, two floors) and the templates in ``intents/``:

- ``text_accuracy``: sentences sampled from the templates the assistant serves (hassil's
  sentences of every intent the recognizer has, with the home's names, areas, floors and
  the library's value lists and numbers; a fixed seed, balanced over intents) recognised
  as typed; right when the intent and every sampled slot value are;
- ``spoken_accuracy``: the same sentences spoken by voices other than the answering piper
  voice (espeak-ng and flite, different speakers and speeds, one with white noise added
  at a fixed SNR), resampled to 16 kHz, transcribed by the default model (tiny.en) with the
  home's hints and several hypotheses, and recognised choosing among them and, when none
  is a sentence of the templates, the sentence the model judged was said among the nearest
  ones the templates allow (``[stt] grammar``, :mod:`assistant.speech.grammar`);
- ``spoken_accuracy_before``: the same audio the way the pipeline did it before (no hints,
  greedy, the one transcript, strict matching only), in the same run;
- ``false_action_rate``: spoken sentences whose match would act (its template has an
  action) on an entity that is not among the sentence's own targets;
- ``unknown_name_correct``: sentences of the same templates naming devices and areas the
  home does not have, answered by ``IntentEngine.respond``: right when the answer is the
  library's error response (the match's stage is ``unknown_name``; for a timer named after
  an area the home lacks, "Sorry, I couldn't find that timer", as Home Assistant answers);
  ``unknown_name_action_rate``: the share of them that acted on the home anyway;
- ``world_taken_for_home`` and ``spoken_world_taken_for_home``: questions about the world,
  typed and spoken by the same voices, taken for a sentence about the home (any match);
- ``recognise_p50_ms``: the median time of recognising a typed sentence (warm);
- ``stt_p50_ms`` and ``stt_before_p50_ms``: the median time of transcribing one clip.

``--variants`` measures other ways of transcribing the same audio (hints or not, beam,
hypotheses) beside them, each with its accuracy, false actions and transcription time;
``--misses`` prints every sentence missed. Run with ``make bench-understanding``; it needs
the ``espeak-ng`` and ``flite`` programs (Debian packages). The last line is one JSON
object with every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hassil.intents import (  # noqa: E402
    Intents,
    TextSlotList,
)

from assistant.answers import Responder  # noqa: E402
from assistant.engine import IntentEngine  # noqa: E402
from assistant.errors import AudioError  # noqa: E402
from assistant.handlers import Handlers  # noqa: E402
from assistant.home import Registry, load_home  # noqa: E402
from assistant.recognition.library import error_response  # noqa: E402
from assistant.recognition.match import Match  # noqa: E402
from assistant.recognition.recognizer import Recognizer  # noqa: E402
from assistant.recognition.sampling import (  # noqa: E402
    Sample,
    recognizer_lists,
    sample_sentences,
)
from assistant.settings import IntentsSettings, SttSettings  # noqa: E402
from assistant.speech.audio import TARGET_RATE, resample, wav_bytes  # noqa: E402
from assistant.speech.grammar import grammar_for  # noqa: E402
from assistant.speech.hints import SpeechHints, hints_for  # noqa: E402
from assistant.speech.stt import Transcriber  # noqa: E402
from assistant.timers import TimerIntents, TimerManager  # noqa: E402
from bench.report import finish  # noqa: E402

HOME_FILE = ROOT / "bench" / "understanding_home.yaml"
SEED = 12
PER_INTENT = 12
"""Sentences sampled per intent (fewer where an intent has fewer)."""
MAX_SENTENCES = 180
UNKNOWN_SENTENCES = 40
WORLD_QUESTIONS = [
    "what is the capital of France", "who wrote pride and prejudice", "tell me a joke",
    "how far away is the moon", "what is the weather in Paris", "is it going to rain",
    "what's the temperature in London", "how tall is mount everest",
    "describe the sea at night in three sentences", "who invented the light bulb",
    "what is a good name for a dog", "how do I make pancakes", "what time is it in Tokyo",
    "is a tomato a fruit", "what is the speed of light", "translate hello into French",
    "why is the sky blue", "who won the world cup in 2018", "how many legs does a spider have",
    "what should I cook tonight", "recommend a good book", "what does a door handle do",
    "how does a light switch work", "what is the best way to clean a window",
    "can you open a bank account online",
]
"""Questions about the world: ``world_taken_for_home`` is the share taken for a sentence
about the home (an unknown name, or an action)."""
SITE = "bench"
"""The satellite the requests come from (timers are kept per satellite)."""
TIMER_NOT_FOUND = error_response("timer_not_found", {})
NOISE_SNR_DB = 15.0

ABSENT_NAMES = [
    ("Garage Heater", {"domain": "switch"}), ("Porch Light", {"domain": "light"}),
    ("Reading Lamp", {"domain": "light"}), ("Pool Pump", {"domain": "switch"}),
    ("Attic Fan", {"domain": "fan"}), ("Patio Awning", {"domain": "cover",
                                                        "device_class": "awning"}),
    ("Shed Door", {"domain": "lock"}), ("Dining Room Speaker", {"domain": "media_player"}),
    ("Water Heater", {"domain": "climate"}), ("Basement Dehumidifier", {"domain": "fan"}),
    ("Nursery Window", {"domain": "binary_sensor", "device_class": "window"}),
    ("Cellar Temperature", {"domain": "sensor", "device_class": "temperature"}),
    ("Lawn Sprinkler", {"domain": "valve"}), ("Mop Robot", {"domain": "vacuum"}),
]
"""Devices the bench home does not have, each with what it would be."""
ABSENT_AREAS = ["Guest Room", "Basement", "Attic", "Laundry Room", "Nursery", "Dining Room"]
ABSENT_FLOORS = ["Third Floor", "Loft"]


@dataclass(frozen=True, slots=True)
class Voice:
    """A speaker the assistant never answers with."""

    name: str
    command: tuple[str, ...]
    """The synthesiser's command; ``{text}`` and ``{out}`` are filled in."""
    snr_db: float | None = None
    """White noise added at this signal-to-noise ratio (None: clean)."""


VOICES = [
    Voice("espeak-us", ("espeak-ng", "-v", "en-us", "-s", "165", "-w", "{out}", "{text}")),
    Voice("espeak-m3-slow", ("espeak-ng", "-v", "en-us+m3", "-s", "135", "-p", "35",
                             "-w", "{out}", "{text}")),
    Voice("flite-kal", ("flite", "-voice", "kal", "-t", "{text}", "-o", "{out}")),
    Voice("flite-slt-noise", ("flite", "-voice", "slt", "-t", "{text}", "-o", "{out}"),
          snr_db=NOISE_SNR_DB),
]


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of turning audio into a match."""

    name: str
    beam: int = 1
    hypotheses: int = 1
    hints: str | None = None
    """``None``, ``names`` (the pipeline's hints of the home: the names the model rarely
    saw) or ``words`` (the same, and the templates' words it rarely saw)."""
    choose: bool = True
    """Recognition chooses among the hypotheses with every stage; False: the first
    transcript, strict matching only (the pipeline before)."""
    grammar: bool = False
    """When no hypothesis is a sentence of the templates, the model judges the nearest
    sentences they allow (``[stt] grammar``)."""


VARIANTS = {v.name: v for v in [
    Variant("before", choose=False),
    Variant("plain"),
    Variant("names", hints="names"),
    Variant("beam5"),
    Variant("beam5-names", beam=5, hints="names"),
    Variant("nbest3", beam=3, hypotheses=3),
    Variant("nbest5", beam=5, hypotheses=5),
    Variant("nbest3-names", beam=3, hypotheses=3, hints="names"),
    Variant("nbest5-names", beam=5, hypotheses=5, hints="names"),
    Variant("nbest8-names", beam=8, hypotheses=8, hints="names"),
    Variant("words", hints="words"),
    Variant("nbest5-words", beam=5, hypotheses=5, hints="words"),
    Variant("nbest5-names-grammar", beam=5, hypotheses=5, hints="names", grammar=True),
]}
AFTER = "nbest5-names-grammar"
"""The pipeline's way now: what ``spoken_accuracy`` measures."""


# -- sampling ----------------------------------------------------------------------------


def absent_sentences(recognizer: Recognizer, intents: Intents, *, seed: int,
                     count: int) -> list[Sample]:
    """Sentences of the templates that name a device, area or floor the home lacks."""
    home_lists = recognizer_lists(recognizer)
    lists = {**home_lists,
             "name": TextSlotList.from_tuples([(n, n, c) for n, c in ABSENT_NAMES],
                                              allow_template=False, name="name"),
             "area": TextSlotList.from_strings(ABSENT_AREAS, allow_template=False, name="area"),
             "floor": TextSlotList.from_strings(ABSENT_FLOORS, allow_template=False,
                                                name="floor")}
    naming = {name: dataclasses.replace(intent, data=[
        d for d in intent.data if not d.requires_context.get("area")
        and any(ref in {"name", "area", "floor"} for s in d.sentences
                for ref in s.list_names({**intents.expansion_rules, **d.expansion_rules}))])
        for name, intent in intents.intents.items()}
    naming_intents = Intents(language=intents.language,
                             intents={k: v for k, v in naming.items() if v.data},
                             slot_lists=intents.slot_lists,
                             expansion_rules=intents.expansion_rules,
                             skip_words=intents.skip_words)
    picked = sample_sentences(naming_intents, lists, recognizer.home, per_intent=4, seed=seed,
                              limit=count * 3)
    rng = random.Random(seed)
    rng.shuffle(picked)
    return picked[:count]


# -- judging -----------------------------------------------------------------------------


def same_value(got: Any, wanted: Any) -> bool:
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        try:
            return abs(float(got) - float(wanted)) < 1e-6
        except (TypeError, ValueError):
            return False
    return str(got).casefold().strip() == str(wanted).casefold().strip()


def right(match: Match | None, sample: Sample) -> bool:
    """Intent and every sampled slot right."""
    if match is None or match.intent != sample.intent:
        return False
    return all(name in match.slots and same_value(match.slots[name].value, value)
               for name, value in sample.slots.items())


def stage_of(match: Match | None) -> str:
    return str(getattr(match, "stage", "strict")) if match is not None else "none"


def recognise_strict(recognizer: Recognizer, texts: Sequence[str], area: str | None,
                     chosen: str | None = None) -> Match | None:
    """The pipeline before: the first transcript, strict matching only."""
    match = recognizer.recognize(texts[0], area=area)
    return match if stage_of(match) == "strict" else None


def recognise_choosing(recognizer: Recognizer, texts: Sequence[str], area: str | None,
                       chosen: str | None = None) -> Match | None:
    """Recognition choosing among the hypotheses: every stage, strict ones first, earlier
    hypotheses winning ties, and the sentence the model chose among the templates'
    (``Recognizer.recognize_any`` where it exists)."""
    any_of: Callable[..., Match | None] | None = getattr(recognizer, "recognize_any", None)
    if any_of is not None:
        return any_of(list(texts), area=area, chosen=chosen)
    found = [recognizer.recognize(text, area=area) for text in texts]
    strict = [m for m in found if m is not None and stage_of(m) == "strict"]
    if strict:
        return strict[0]
    return next((m for m in found if m is not None), None)


# -- speech ------------------------------------------------------------------------------


_SPOKEN = [(re.compile(r"\b1/2\b"), "half"), (re.compile(r"\b1/4\b"), "a quarter"),
           (re.compile(r"\s*°\s*(?:[CF]\b)?"), " degrees "), (re.compile(r"\s*%"), " percent"),
           (re.compile(r"(?<=\d)-(?=[a-z])"), " ")]


def spoken_form(text: str) -> str:
    """``text`` as a person says it: "88°" is "88 degrees", "1/2" is "half"."""
    for pattern, said in _SPOKEN:
        text = pattern.sub(said, text)
    return " ".join(text.split())


def synthesise(voice: Voice, text: str, out: Path, rng_seed: int) -> bytes:
    """``text`` said by ``voice``, as a 16 kHz 16-bit mono WAV (also written to ``out``)."""
    text = spoken_form(text)
    raw = out.with_suffix(".raw.wav")
    command = [part.replace("{text}", text).replace("{out}", str(raw)) for part in voice.command]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    with wave.open(str(raw)) as reader:
        rate, channels = reader.getframerate(), reader.getnchannels()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    mono = samples.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768
    audio = resample(mono, rate, TARGET_RATE) if rate != TARGET_RATE else mono
    if voice.snr_db is not None:
        noise_rng = np.random.default_rng(rng_seed)
        voiced = audio[np.abs(audio) > 0.01]
        power = float(np.mean(np.square(voiced))) if len(voiced) else 1e-4
        noise = noise_rng.normal(0, np.sqrt(power / 10 ** (voice.snr_db / 10)), len(audio))
        audio = np.clip(audio + noise.astype(np.float32), -1, 1)
    wav = wav_bytes((audio * 32767).astype("<i2").tobytes(), rate=TARGET_RATE)
    out.write_bytes(wav)
    raw.unlink()
    return wav


def missing_programs() -> list[str]:
    return sorted({v.command[0] for v in VOICES if shutil.which(v.command[0]) is None})


def make_hints(kind: str | None, recognizer: Recognizer) -> SpeechHints | None:
    """The hints a variant hears with: the pipeline's (the transcriber prompts with the names
    the model has rarely seen), or none."""
    return None if kind is None else hints_for(recognizer)


@dataclass(slots=True)
class Heard:
    right: int = 0
    total: int = 0
    false_actions: int = 0
    wrong_actions: int = 0
    stt_ms: list[float] = field(default_factory=list)
    alternatives: int = 0
    misses: list[tuple[str, str]] = field(default_factory=list)


def percentile(samples: Iterable[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few sentences (smoke test)")
    parser.add_argument("--sentences", type=int, default=MAX_SENTENCES)
    parser.add_argument("--variants", default="",
                        help=f"other ways to measure, comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--voices", default=",".join(v.name for v in VOICES))
    parser.add_argument("--misses", action="store_true", help="print each spoken miss")
    args = parser.parse_args()
    missing = missing_programs()
    if missing:
        print(f"error: missing {' '.join(missing)}: apt-get install espeak-ng flite",
              file=sys.stderr)
        return 1
    limit = 30 if args.quick else args.sentences
    voices = [v for v in VOICES if v.name in args.voices.split(",")]
    variants = ["before", AFTER] + [v for v in args.variants.split(",")
                                    if v and v not in ("before", AFTER)]

    # Timers answered as the service answers them: a timer manager whose events someone
    # hears, requests from a satellite. A timer that is not there gets the library's
    # "couldn't find that timer", as a device that is not there gets its "not aware of".
    timers = TimerManager().start()
    timers.listen(lambda event: None)
    engine = IntentEngine(IntentsSettings(folder=ROOT / "intents"),
                          Registry(load_home(HOME_FILE)),
                          responder=Responder(None, None, handlers=Handlers(
                              [TimerIntents(timers)]))).start()
    recognizer = engine.recognizer
    intents = recognizer._intents
    samples = sample_sentences(intents, recognizer_lists(recognizer), recognizer.home,
                               per_intent=PER_INTENT, seed=SEED, limit=limit)
    print(f"{len(samples)} sentences of {len({s.intent for s in samples})} intents, "
          f"{len(voices)} voices; variants: {', '.join(variants)}", flush=True)

    # Typed.
    typed: dict[int, Match | None] = {}
    recognise_ms: list[float] = []
    for i, sample in enumerate(samples):
        # Warm (hassil's lazy parts), then timed; remembering nothing, so both match.
        recognizer.recognize(sample.text, area=sample.area, remember=False)
        started = time.perf_counter()
        typed[i] = recognizer.recognize(sample.text, area=sample.area, remember=False)
        recognise_ms.append((time.perf_counter() - started) * 1000)
    typed_right = [i for i, s in enumerate(samples) if right(typed[i], s)]
    expected = {i: {e.entity_id for e in (typed[i].targets if typed[i] else ())}
                for i in typed_right}
    for i, sample in enumerate(samples):
        if i not in typed_right:
            got = typed[i]
            print(f"  typed miss: {sample.intent} {sample.text!r} {sample.slots} -> "
                  f"{got.intent if got else None} "
                  f"{got.slot_values() if got else ''}")

    # Unknown names.
    unknown = absent_sentences(recognizer, intents, seed=SEED, count=UNKNOWN_SENTENCES)
    unknown_right = unknown_acted = 0
    for sample in unknown:
        answer = engine.respond(sample.text, area=sample.area, site=SITE)
        stage = getattr(answer, "stage", None) or stage_of(getattr(answer, "match", None))
        unknown_acted += bool(answer.actions)
        if stage == "unknown_name" or (answer.text == TIMER_NOT_FOUND and not answer.actions):
            unknown_right += 1
        elif args.misses:
            print(f"  unknown name answered as {stage}: {sample.text!r} -> {answer.text!r}")

    # Questions about the world: for the generator, never taken for a name the home lacks.
    world_taken = 0
    for question in WORLD_QUESTIONS:
        answer = engine.respond(question, site=SITE)
        if answer.stage == "unknown_name" or answer.actions:
            world_taken += 1
            if args.misses:
                print(f"  world question taken for the home: {question!r} -> {answer.text!r}")

    # Spoken.
    folder = Path(tempfile.mkdtemp(prefix="bench-understanding-"))
    started = time.perf_counter()
    jobs = [(v, i) for v in voices for i in range(len(samples))]
    # Questions about the world, spoken too: numbered after the samples.
    world = [(v, len(samples) + k) for v in voices for k in range(len(WORLD_QUESTIONS))]
    said = [s.text for s in samples] + WORLD_QUESTIONS
    with ThreadPoolExecutor(max_workers=2) as pool:
        clips = dict(zip(jobs + world, pool.map(
            lambda job: synthesise(job[0], said[job[1]],
                                   folder / f"{job[0].name}-{job[1]}.wav", SEED + job[1]),
            jobs + world), strict=True))
    synth_s = time.perf_counter() - started
    print(f"synthesised {len(clips)} clips in {synth_s:.1f} s into {folder}", flush=True)

    heard: dict[tuple[str, str], Heard] = defaultdict(Heard)
    world_heard: dict[str, int] = Counter()
    templates = recognizer.templates
    for name in variants:
        variant = VARIANTS[name]
        transcriber = Transcriber(SttSettings(beam_size=variant.beam, grammar=variant.grammar),
                                  hypotheses=variant.hypotheses,
                                  prompt_words=variant.hints == "words").start()
        hints = make_hints(variant.hints, recognizer)
        grammar = grammar_for(recognizer) if variant.grammar else None
        recognise = recognise_choosing if variant.choose else recognise_strict
        # Warm the model (and the prompt's tokens) on one clip.
        transcriber.transcribe(clips[jobs[0]], hints=hints)
        started = time.perf_counter()
        for voice, i in jobs:
            sample, cell = samples[i], heard[(name, voice.name)]
            try:
                transcript = transcriber.transcribe(clips[(voice, i)], hints=hints,
                                                    grammar=grammar)
                texts: Sequence[str] = transcript.alternatives or (transcript.text,)
                cell.stt_ms.append(transcript.seconds * 1000)
                cell.alternatives += len(texts)
                match = recognise(recognizer, texts, sample.area, transcript.chosen)
                if transcript.chosen:
                    texts = [*texts, f"chosen: {transcript.chosen}"]
            except AudioError:
                texts, match = ("",), None
            cell.total += 1
            if right(match, sample):
                cell.right += 1
            else:
                cell.misses.append((sample.text, " | ".join(texts)))
            template = templates.intents.get(match.intent) if match else None
            if match is not None and template is not None and template.action is not None \
                    and match.targets:
                acted = {e.entity_id for e in match.targets}
                if not acted <= expected.get(i, set()):
                    cell.false_actions += 1
                    if args.misses:
                        print(f"  false action [{name} {voice.name}] {sample.text!r} heard "
                              f"{' | '.join(texts)!r} -> {match.intent} {sorted(acted)}")
                if not right(match, sample):
                    cell.wrong_actions += 1
        for voice, k in world:
            try:
                transcript = transcriber.transcribe(clips[(voice, k)], hints=hints,
                                                    grammar=grammar)
            except AudioError:
                continue
            match = recognise(recognizer, transcript.alternatives or (transcript.text,), None,
                              transcript.chosen)
            if match is not None:
                world_heard[name] += 1
                if args.misses:
                    print(f"  spoken world question taken for the home [{name} {voice.name}] "
                          f"{said[k]!r} heard {transcript.text!r} -> {match.intent} "
                          f"{match.stage}")
        print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)
        transcriber.close()
    shutil.rmtree(folder, ignore_errors=True)

    def total(name: str, attr: str) -> float:
        cells = [heard[(name, v.name)] for v in voices]
        count = sum(c.total for c in cells)
        return sum(getattr(c, attr) for c in cells) / count if count else 0.0

    def stt_p50(name: str) -> float:
        return statistics.median(ms for v in voices for ms in heard[(name, v.name)].stt_ms)

    print(f"\n{'variant':16} {'voice':16} {'accuracy':>8} {'false_act':>9} {'wrong_act':>9} "
          f"{'stt_p50':>8} {'hyps':>5}")
    for name in variants:
        for voice in voices:
            cell = heard[(name, voice.name)]
            print(f"{name:16} {voice.name:16} {cell.right / cell.total:8.3f} "
                  f"{cell.false_actions / cell.total:9.3f} {cell.wrong_actions / cell.total:9.3f} "
                  f"{statistics.median(cell.stt_ms):6.0f}ms "
                  f"{cell.alternatives / cell.total:5.2f}")
        print(f"{name:16} {'all':16} {total(name, 'right'):8.3f} "
              f"{total(name, 'false_actions'):9.3f} {total(name, 'wrong_actions'):9.3f} "
              f"{stt_p50(name):6.0f}ms")
    if args.misses:
        for voice in voices:
            for said, got in heard[(AFTER, voice.name)].misses:
                print(f"  miss [{voice.name}] {said!r} heard {got!r}")
    by_intent = Counter(s.intent for s in samples)
    print("\nsentences per intent:", dict(sorted(by_intent.items())))

    results: dict[str, Any] = {
        "text_accuracy": round(len(typed_right) / len(samples), 4),
        "spoken_accuracy": round(total(AFTER, "right"), 4),
        "spoken_accuracy_before": round(total("before", "right"), 4),
        "false_action_rate": round(total(AFTER, "false_actions"), 4),
        "false_action_rate_before": round(total("before", "false_actions"), 4),
        "unknown_name_correct": round(unknown_right / len(unknown), 4) if unknown else 0.0,
        "unknown_name_action_rate": round(unknown_acted / len(unknown), 4) if unknown else 0.0,
        "world_taken_for_home": round(world_taken / len(WORLD_QUESTIONS), 4),
        "spoken_world_taken_for_home": round(world_heard[AFTER] / len(world), 4),
        "spoken_world_taken_for_home_before": round(world_heard["before"] / len(world), 4),
        "recognise_p50_ms": round(statistics.median(recognise_ms), 3),
        "stt_p50_ms": round(stt_p50(AFTER), 1),
        "stt_before_p50_ms": round(stt_p50("before"), 1),
        "sentences": len(samples),
        "unknown_sentences": len(unknown),
        "voices": [v.name for v in voices],
        "spoken_accuracy_by_voice": {
            v.name: round(heard[(AFTER, v.name)].right / heard[(AFTER, v.name)].total, 4)
            for v in voices},
        "variants": {name: {"accuracy": round(total(name, "right"), 4),
                            "false_action_rate": round(total(name, "false_actions"), 4),
                            "stt_p50_ms": round(stt_p50(name), 1),
                            "spoken_world_taken_for_home": round(world_heard[name] / len(world), 4)}
                     for name in variants},
    }
    engine.close()
    finish(results, [
        ("text_accuracy >= 0.99", results["text_accuracy"] >= 0.99),
        ("spoken_accuracy >= 0.90", results["spoken_accuracy"] >= 0.90),
        ("false_action_rate <= 0.005", results["false_action_rate"] <= 0.005),
        ("unknown_name_correct >= 0.95", results["unknown_name_correct"] >= 0.95),
        ("recognise_p50_ms <= 5", results["recognise_p50_ms"] <= 5),
    ], quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
