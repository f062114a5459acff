"""The Hailo-10H path against the stand-in of HailoRT 5.1.1 (and 5.2.0's differences), in
``tests/standins/hailo_platform``: no NPU exists on the machines these run on.

First the stand-in itself, on what the glue depends on (so a glue that passes here would
pass on the library); then the glue: greedy requests, the same prompt fresh, computed and
restored, streaming with the generation's own status, a deadline that aborts, the context's
capacity, errors and the fall back to the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assistant.errors import ConfigError, DeviceLost, GenerationError, GenerationTimeout
from assistant.generation import Generator, Request, cpu_fallback, open_backend
from assistant.generation.hailo import HailoBackend
from assistant.generation.llama_cpp import LlamaCppBackend
from assistant.npu.hailo import SharedDevice
from assistant.settings import GeneratorSettings, SttSettings, TtsSettings
from assistant.speech.stt import Transcriber
from assistant.speech.tts import Speaker
from cache import KeyBuilder, TieredCache
from tests.helpers import write_config
from tests.service import ROOT
from tests.speech_data import STEADY_VOICE
from tests.standins import hailo_platform as standin
from tests.standins.hailo_platform import _device as device
from tests.standins.hailo_platform.pyhailort import _pyhailort
from tests.standins.hailo_platform.pyhailort import pyhailort as hailort

SYSTEM = "You are a voice assistant in a home. Answer in one short spoken sentence."
QUESTION = "What is the capital of France?"
USER = {"role": "user", "content": QUESTION}


@pytest.fixture
def hef(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HEF file and a fresh stand-in device (a Hailo-10H, HailoRT 5.1.1)."""
    path = tmp_path / "Qwen2-1.5B-Instruct.hef"
    path.write_bytes(b"HEF stand-in weights")
    device.reset()
    device.script[QUESTION] = "The capital of France is Paris."
    monkeypatch.setattr(standin, "ARCHITECTURE", standin.DeviceArchitecture.HAILO10H)
    monkeypatch.setattr(standin, "released", [])
    yield path
    device.reset()
    SharedDevice._open.clear()  # what a failed test left open


def generator(backend: Any, cache: TieredCache, names: KeyBuilder, **settings: Any) -> Generator:
    return Generator(backend, GeneratorSettings(**settings), cache=cache, keys=names)


def generated(name: str = "generate") -> list[dict[str, Any]]:
    return [kw for call, kw in device.calls if call == name]


def backend(hef: Path) -> HailoBackend:
    return HailoBackend(hef, platform=standin).start()


def complete(b: HailoBackend, prompt: str = QUESTION, *, timeout: float = 10,
             states: Any = None, **request: Any) -> Any:
    return b.complete(Request(system_prompt=SYSTEM, prompt=prompt,
                              max_tokens=request.pop("max_tokens", 32), **request),
                      deadline=time.monotonic() + timeout, states=states)


# -- the stand-in behaves as HailoRT 5.1.1 does ----------------------------------------------

def test_the_standin_refuses_what_hailort_refuses(hef: Path) -> None:
    vdevice = standin.VDevice()
    llm = standin.genai.LLM(vdevice, str(hef))
    for bad in ({"temperature": 0.0, "do_sample": False}, {"top_p": 1.5}, {"top_k": 0},
                {"frequency_penalty": 0.0}, {"max_generated_tokens": 0}):
        with pytest.raises(hailort.HailoRTInvalidArgumentException):
            llm.generate([USER], **{"temperature": 1.0, **bad})
    with pytest.raises(hailort.HailoRTException, match="list of dicts"):
        llm.generate({"role": "user"})
    assert llm.max_context_capacity() == 2048
    # Constructors are not wrapped: a missing file is the native status exception, which in
    # 5.1.1 is not a HailoRTException of pyhailort.py.
    with pytest.raises(_pyhailort.HailoRTStatusException) as missing:
        standin.genai.LLM(vdevice, str(hef) + ".missing")
    assert missing.value.args == ("13",) and not isinstance(missing.value,
                                                            hailort.HailoRTException)
    with pytest.raises(_pyhailort.HailoRTStatusException, match="62"):
        standin.genai.LLM(vdevice, str(hef))  # one LLM per device: the KV cache is taken
    with pytest.raises(hailort.HailoRTException, match="HAILO_DEVICE_IN_USE"):
        standin.VDevice()  # a second "UNIQUE" virtual device
    llm.release()
    vdevice.release()


def test_a_restored_context_leaves_the_template_in_its_first_prompt_state(hef: Path) -> None:
    vdevice = standin.VDevice()
    llm = standin.genai.LLM(vdevice, str(hef))
    system = {"role": "system", "content": SYSTEM}
    llm.generate_all([system], temperature=1.0, do_sample=False, max_generated_tokens=1)
    saved = llm.save_context()
    llm.clear_context()
    llm.load_context(saved)
    text = llm.generate_all([USER], temperature=1.0, do_sample=False)
    # Rendered as a first prompt: the model's default system prompt after the restored one,
    # and the junk of the priming between them; the answer is not the fresh one.
    assert "You are a helpful assistant." in device.contexts[-1]
    assert not text.startswith("The capital of France is Paris.<|im_end|>")
    llm.clear_context()
    fresh = llm.generate_all([system, USER], temperature=1.0, do_sample=False)
    assert fresh == "The capital of France is Paris.<|im_end|>"
    llm.release()
    vdevice.release()


def test_version_5_2_reads_a_prompt_without_generating_and_refuses_late_system_prompts(
        hef: Path) -> None:
    device.VERSION = "5.2.0"
    vdevice = standin.VDevice()
    llm = standin.genai.LLM(vdevice, str(hef))
    with llm.generate("<|im_start|>system\nHi<|im_end|>\n", temperature=1.0,
                      max_generated_tokens=0) as completion:
        assert completion.generation_status is _pyhailort.LLMGeneratorCompletionStatus \
            .MAX_TOKENS_REACHED
    assert llm.get_context_usage_size() > 0
    llm.generate_all([USER], temperature=1.0, do_sample=False)
    with pytest.raises(hailort.HailoRTInvalidOperationException):
        llm.generate([{"role": "system", "content": "x"}], temperature=1.0)
    with pytest.raises(hailort.HailoRTException, match="tools must be a list of dicts"):
        llm.generate([USER], 1.0)  # 5.2.0's second argument is tools: keywords only
    llm.release()
    vdevice.release()


# -- the glue ----------------------------------------------------------------------------------

def test_greedy_requests_are_sent_as_hailort_accepts_them(hef: Path) -> None:
    b = backend(hef)
    done = complete(b)
    assert done.text == "The capital of France is Paris."
    sent = generated()[-1]
    assert (sent["temperature"], sent["do_sample"], sent["top_k"], sent["top_p"],
            sent["frequency_penalty"], sent["max_generated_tokens"]) == (1.0, False, 40, 1.0,
                                                                          1.0, 32)
    assert sent["seed"] is None  # greedy: no seed sent
    seeded = complete(b, "Is it raining?", temperature=0.7, seed=3)
    sent = generated()[-1]
    assert (sent["temperature"], sent["do_sample"], sent["seed"]) == (0.7, True, 3)
    assert complete(b, "Is it raining?", temperature=0.7, seed=3).text == seeded.text
    b.close()


@pytest.mark.parametrize("version", ["5.1.1", "5.2.0"])
def test_fresh_computed_and_restored_prompts_are_the_same(
        hef: Path, cache: TieredCache, names: KeyBuilder, version: str) -> None:
    device.VERSION = version
    b = backend(hef)
    states = generator(b, cache, names).states
    assert states is not None
    results = {}
    for path, bound in (("fresh", None), ("computed", states.bound(None)),
                        ("restored", states.bound(None))):
        for label, extra in (("greedy", {}), ("seeded", {"temperature": 0.8, "seed": 11})):
            done = complete(b, states=bound, **extra)
            results[path, label] = (done.text, device.contexts[-1], done.prefix)
    for label in ("greedy", "seeded"):
        fresh, computed, restored = (results[p, label] for p in ("fresh", "computed",
                                                                 "restored"))
        assert fresh[0] == computed[0] == restored[0], (fresh, computed, restored)
        assert fresh[1] == computed[1] == restored[1]  # the model saw the same tokens
        assert fresh[1].count("<|im_start|>system") == 1
    assert results["computed", "greedy"][2] == "computed"
    assert results["restored", "greedy"][2] in ("l1", "l2", "l3")
    assert results["fresh", "greedy"][0] == "The capital of France is Paris."
    b.close()


@pytest.mark.parametrize("version", ["5.1.1", "5.2.0"])
def test_the_saved_context_is_the_system_prompt_and_nothing_after_it(
        hef: Path, cache: TieredCache, names: KeyBuilder, version: str) -> None:
    device.VERSION = version
    b = backend(hef)
    states = generator(b, cache, names).states
    assert states is not None
    complete(b, states=states.bound(None))
    saved, _ = states.bound(None).load(b, SYSTEM) or (b"", "")
    consumed, _, blob = saved.partition(b"\0")
    held = "".join(json.loads(blob[6 + int.from_bytes(blob[4:6], "big"):]))
    head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    # 5.2.0 reads it without generating; 5.1.1 generates one token, kept only because it is
    # the one the layout goes on with (no end-of-text token after it).
    assert held == head + consumed.decode()
    assert consumed == (b"" if version == "5.2.0" else b"<|im_start|>")
    b.close()


def test_the_finish_reason_tokens_and_first_token_come_from_the_generation(hef: Path) -> None:
    device.script["Say yes"] = "Yes"  # no full stop: ended by the model all the same
    device.first_token_seconds = 0.05
    b = backend(hef)
    done = complete(b, "Say yes")
    assert (done.text, done.finish, done.tokens) == ("Yes", "stop", 1)
    assert done.first_token_seconds is not None and done.first_token_seconds >= 0.05
    cut = complete(b, max_tokens=3)
    assert (cut.text, cut.finish, cut.tokens) == ("The capital of", "length", 3)
    b.close()


def test_the_deadline_aborts_the_generation_and_frees_the_npu(hef: Path) -> None:
    device.script["Tell a story"] = " ".join(["word"] * 60) + "."
    device.token_seconds = 0.02
    b = backend(hef)
    started = time.monotonic()
    with pytest.raises(GenerationTimeout):
        complete(b, "Tell a story", max_tokens=100, timeout=0.3)
    assert time.monotonic() - started < 0.8
    aborted = generated("abort")
    assert len(aborted) == 1 and 5 < aborted[0]["generated"] < 30
    device.token_seconds = 0.0
    started = time.monotonic()
    assert complete(b).text == "The capital of France is Paris."
    assert time.monotonic() - started < 0.3  # not behind an answer nobody waits for
    b.close()


def test_a_request_the_context_cannot_hold_is_refused_before_the_device(hef: Path) -> None:
    device.CAPACITY = 64
    b = backend(hef)
    with pytest.raises(GenerationError, match="more than the 64"):
        complete(b, "tell me " * 30)
    assert not generated()
    assert complete(b, max_tokens=16).text == "The capital of France is Paris."
    b.close()


def test_hailort_errors_are_translated_where_they_enter(hef: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(hef)

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        with hailort.ExceptionWrapper():
            raise _pyhailort.HailoRTStatusException("6")

    monkeypatch.setattr(hailort.LLM, "generate", refuse)
    with pytest.raises(GenerationError, match="HailoRTInvalidOperationException") as refused:
        complete(b)
    assert not isinstance(refused.value, DeviceLost)
    monkeypatch.undo()
    assert complete(b, top_k=0, temperature=0.5, seed=2**40).text  # 0: the model's own cut-off
    sent = generated()[-1]
    assert sent["top_k"] is None and 0 <= sent["seed"] < 2**32 - 1
    # Lost while generating: read says only "invalid operation" (its reader thread stopped),
    # the device's server does not answer: a lost device.
    device.script["Tell a story"] = " ".join(["word"] * 80) + "."
    device.token_seconds = 0.01
    threading.Timer(0.2, lambda: setattr(device, "lost", True)).start()
    with pytest.raises(DeviceLost, match="HailoCommunicationClosedException"):
        complete(b, "Tell a story", max_tokens=100)
    with pytest.raises(DeviceLost, match="HailoCommunicationClosedException"):
        complete(b)
    b.close()


def test_auto_uses_the_cpu_when_the_npu_is_busy_or_lost(hef: Path, cache: TieredCache,
                                                       names: KeyBuilder) -> None:
    settings = GeneratorSettings(backend="auto", hef=hef, context=512)
    # Another program's model on the device: the constructor's native status exception.
    other = standin.VDevice(standin.VDevice.create_params())
    params = standin.VDevice.create_params()
    params.group_id = "SHARED"
    other.release()
    other = standin.VDevice(params)
    taken = standin.genai.LLM(other, str(hef))
    gen = Generator(open_backend(settings, hailo=standin), settings, cache=cache, keys=names,
                    fallback=cpu_fallback(settings)).start()
    assert isinstance(gen.backend, LlamaCppBackend)
    gen.close()
    taken.release()
    other.release()
    held = standin.VDevice()  # another program holds the device
    gen = Generator(open_backend(settings, hailo=standin), settings, cache=cache, keys=names,
                    fallback=cpu_fallback(settings)).start()
    assert isinstance(gen.backend, LlamaCppBackend)
    gen.close()
    with pytest.raises(ConfigError, match="HAILO_DEVICE_IN_USE"):
        Generator(open_backend(GeneratorSettings(backend="hailo", hef=hef), hailo=standin),
                  settings).start()
    held.release()
    gen = Generator(open_backend(settings, hailo=standin), settings, cache=cache, keys=names,
                    fallback=cpu_fallback(settings)).start()
    assert isinstance(gen.backend, HailoBackend)
    assert gen.generate(system_prompt=SYSTEM, prompt=QUESTION, max_tokens=32,
                        ttl=60).text == "The capital of France is Paris."
    waiting = gen.prepare(system_prompt=SYSTEM, prompt="Where is Paris?", max_tokens=32)
    device.lost = True
    with pytest.raises(DeviceLost):  # that part says its fallback; it is not cached
        gen.generate(system_prompt=SYSTEM, prompt="Where is Rome?", max_tokens=32, ttl=60)
    assert isinstance(gen.backend, LlamaCppBackend)
    with pytest.raises(GenerationError, match="model changed"):  # made for the NPU's key
        gen.run(waiting, ttl=60)
    answer = gen.generate(system_prompt=SYSTEM, prompt="Where is Rome?", max_tokens=32, ttl=60)
    assert answer.source == "computed" and answer.text
    gen.close()


def test_without_a_hailo_10h_auto_uses_the_cpu_and_hailo_says_why(
        hef: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standin, "ARCHITECTURE", standin.DeviceArchitecture.HAILO8L)
    chosen = open_backend(GeneratorSettings(backend="auto", hef=hef, context=512), hailo=standin)
    assert isinstance(chosen, LlamaCppBackend)
    with pytest.raises(ConfigError, match="HAILO8L, which cannot run language models"):
        open_backend(GeneratorSettings(backend="hailo", hef=hef), hailo=standin).start()
    monkeypatch.setattr(standin, "ARCHITECTURE", None)
    with pytest.raises(ConfigError, match="no Hailo device"):
        open_backend(GeneratorSettings(backend="hailo", hef=hef), hailo=standin).start()
    with pytest.raises(ConfigError, match="does not exist"):
        open_backend(GeneratorSettings(backend="hailo", hef=hef.with_suffix(".missing")),
                     hailo=standin).start()


def test_the_model_and_device_are_released_on_close(hef: Path) -> None:
    b = open_backend(GeneratorSettings(backend="hailo", hef=hef), hailo=standin).start()
    b.close()
    assert device.calls[-1][0] == "release" and not device.kv_cache_in_use
    assert standin.released == ["device", "vdevice"]  # the probe's device, then ours


# -- assistant ask, in a process of its own, on the stand-in ------------------------------------

def run(config: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'standins' / 'site'}:{ROOT}"}
    done = subprocess.run([sys.executable, "-m", "assistant", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def ask(config: Path, text: str) -> dict[str, Any]:
    return json.loads(run(config, "ask", text, "--json"))  # type: ignore[no-any-return]


@pytest.mark.slow
def test_assistant_ask_on_the_npu_says_the_same_fresh_and_restored(
        hef: Path, redis_url: str, tmp_path: Path) -> None:
    """Greedy (a question no intent matches) and seeded (the weather's generated advice, made
    seeded here): each fresh, then computed and saved, then restored from the saved context."""
    intents = tmp_path / "intents"
    shutil.copytree(ROOT / "intents", intents)
    info = intents / "info.yaml"
    info.write_text(info.read_text().replace(
        "            temperature: 0\n", "            temperature: 0.8\n            seed: 5\n"))
    question, other, weather = "Why is the sky blue?", "Why is grass green?", \
        "what's the weather like"

    def config(name: str, prefix_cache: bool) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        return write_config(folder, redis_url, extra=f"""
[intents]
folder = "{intents}"
[generator]
backend = "hailo"
hef = "{hef}"
prefix_cache = {str(prefix_cache).lower()}
""")

    fresh = [ask(config(f"fresh-{n}", False), text)
             for n, text in enumerate((question, other, weather))]
    saving = config("saving", True)
    computed = ask(saving, question)
    restored = ask(saving, other)  # the same system prompt, restored from the saved context
    assert fresh[0]["text"] == computed["text"] and fresh[1]["text"] == restored["text"]
    assert fresh[0]["text"] != fresh[1]["text"]
    assert fresh[0]["match"] == "generated" and computed["backend"]["backend"] == "hailo"
    seeded = ask(saving, weather)
    run(saving, "cache", "purge", "--tag", "gen")  # the answers go, the saved contexts stay
    again = ask(saving, weather)
    assert again["fragments"][1]["kind"] == "generate"
    assert again["fragments"][1]["source"] == "computed"  # generated again, not remembered
    assert fresh[2]["text"] == seeded["text"] == again["text"]


# -- speech on the NPU -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def request_wav() -> bytes:
    with Speaker(TtsSettings(**STEADY_VOICE)) as voice:
        return voice.speak("Turn on the kitchen light.").wav


@pytest.fixture
def whisper_hef(hef: Path) -> Path:
    path = hef.with_name("Whisper-Base.hef")
    path.write_bytes(b"HEF stand-in: Whisper-Base")
    return path


def test_speech_is_recognised_on_the_npu_when_auto_finds_it(
        whisper_hef: Path, request_wav: bytes, cache: TieredCache, names: KeyBuilder) -> None:
    npu = Transcriber(SttSettings(hef=whisper_hef), cache=cache, keys=names,
                      hailo=standin).start()
    cpu = Transcriber(SttSettings(backend="cpu"), cache=cache, keys=names).start()
    assert (npu.backend, cpu.backend) == ("hailo", "cpu")
    heard = npu.transcribe(request_wav, user="ann")
    assert "kitchen light" in heard.text.casefold() and heard.source == "computed"
    sent = generated("generate_all_segments")
    assert len(sent) == 1 and sent[0]["language"] == "en"  # a 1-D float32 array, or ValueError
    # The model is in the key: the CPU's transcript is its own, and the NPU's is found again.
    assert npu.key(request_wav, None, "ann") != cpu.key(request_wav, None, "ann")
    assert npu.transcribe(request_wav, user="ann").source == "l1"
    assert cpu.transcribe(request_wav, user="ann").source == "computed"
    npu.close()
    cpu.close()


def test_the_language_model_and_speech_share_the_npu(hef: Path, whisper_hef: Path,
                                                     request_wav: bytes) -> None:
    llm = backend(hef)
    speech = Transcriber(SttSettings(backend="hailo", hef=whisper_hef), hailo=standin).start()
    assert "kitchen light" in speech.transcribe(request_wav).text.casefold()
    assert complete(llm).text == "The capital of France is Paris."
    speech.close()
    assert standin.released.count("vdevice") == 0  # the language model still holds it
    llm.close()
    assert standin.released.count("vdevice") == 1


def test_speech_falls_back_to_the_cpu_when_the_npu_is_lost_or_absent(
        whisper_hef: Path, request_wav: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    speech = Transcriber(SttSettings(hef=whisper_hef), hailo=standin).start()
    device.lost = True
    assert "kitchen light" in speech.transcribe(request_wav).text.casefold()
    assert speech.backend == "cpu"
    speech.close()
    monkeypatch.setattr(standin, "ARCHITECTURE", standin.DeviceArchitecture.HAILO8)
    with pytest.raises(ConfigError, match="HAILO8, which cannot run speech models"):
        Transcriber(SttSettings(backend="hailo", hef=whisper_hef), hailo=standin).start()
    assert Transcriber(SttSettings(hef=whisper_hef), hailo=standin).start().backend == "cpu"
