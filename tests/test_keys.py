"""Cache keys: injective field encoding, the key format, HMAC naming, generation keys."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache import CacheError, GenerationKey, KeyBuilder, Keyring, NonDeterministicError
from cache.keys import Field, encode_fields

KEY_FORMAT = re.compile(r"\Av1:[a-z][a-z0-9_]*:[0-9a-f]{64}\Z")

fields_strategy = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
field_lists = st.lists(fields_strategy, max_size=6)


def canonical(fields: list[Field] | tuple[Field, ...]) -> tuple[tuple[type, str], ...]:
    """Fields compared by type and exact value (``1 == 1.0 == True`` in Python, not here)."""
    return tuple((type(field), repr(field)) for field in fields)


# ---------------------------------------------------------------- encode_fields


TRICKY: list[tuple[Field, ...]] = [
    (),
    ("",),
    ("", ""),
    (None,),
    (None, None),
    (b"",),
    ("ab", "c"),
    ("a", "bc"),
    ("abc",),
    ("a", "b", "c"),
    ("ab", ""),
    ("", "ab"),
    ("abc", ""),
    (b"ab", b"c"),
    (b"a", b"bc"),
    (b"abc",),
    ("abc", b""),
    (1,),
    (1.0,),
    (True,),
    ("1",),
    (b"1",),
    (0,),
    (0.0,),
    (-0.0,),
    (False,),
    ("0",),
    ("",),
    ("None",),
    ("True",),
    (10,),
    (1, 0),
    ("1", "0"),
    ("10",),
    (1, "0"),
    ("a\x00", "b"),
    ("a", "\x00b"),
    ("s\x00\x00\x00\x01a",),
    ("as", "b"),
    ("assb",),
    ("a", "s\x00\x00\x00\x01b"),
    ("as\x00\x00\x00\x01b",),
    ("a:b",),
    ("a", "b"),
    ("a|b",),
    ("a\x00b",),
    ("a\x1fb",),
]


def test_tricky_field_lists_all_encode_differently() -> None:
    distinct = {canonical(fields) for fields in TRICKY}
    encodings = {encode_fields(fields) for fields in TRICKY}
    assert len(encodings) == len(distinct)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        (("abc",), (b"abc",)),
        ((1,), (1.0,)),
        ((1,), (True,)),
        ((1,), ("1",)),
        ((1.0,), (True,)),
        ((1.0,), ("1.0",)),
        ((True,), ("1",)),
        ((None,), ("",)),
        ((None,), (b"",)),
        (("",), (b"",)),
        ((None,), ()),
        (("",), ()),
        ((0.0,), (-0.0,)),
        ((False,), (0,)),
        (("as", "b"), ("assb",)),
        (("a", "b"), ("a:b",)),
        (("a", "b"), ("a\x00b",)),
        (("a", "b"), ("as\x00\x00\x00\x01b",)),
        ((b"a", b"b"), (b"a" + encode_fields([b"b"]),)),
    ],
)
def test_lookalike_fields_encode_differently(left: tuple[Field, ...], right: tuple[Field, ...]) -> None:
    assert encode_fields(left) != encode_fields(right)


@given(field_lists, field_lists)
def test_encoding_is_injective(left: list[Field], right: list[Field]) -> None:
    same_fields = canonical(left) == canonical(right)
    assert (encode_fields(left) == encode_fields(right)) == same_fields


def _retyped(field: Field) -> list[Field]:
    """Values that look like ``field`` but are of another type or spelling."""
    text = field.decode("latin-1") if isinstance(field, bytes) else str(field)
    out: list[Field] = [text, text.encode("utf-8"), None, "", b""]
    if isinstance(field, bool | int | float) and abs(field) < 2**53:
        out += [int(field), float(field), bool(field), str(int(field))]
    return out


@st.composite
def near_pairs(draw: st.DrawFn) -> tuple[list[Field], list[Field]]:
    """A field list and a close variant: a field retyped, split, merged, or a boundary moved."""
    left = draw(st.lists(fields_strategy, min_size=1, max_size=5))
    right = list(left)
    index = draw(st.integers(0, len(left) - 1))
    field = left[index]
    how = draw(st.sampled_from(["retype", "split", "merge", "smuggle", "insert_empty"]))
    if how == "retype":
        right[index] = draw(st.sampled_from(_retyped(field)))
    elif how == "split" and isinstance(field, str | bytes):
        cut = draw(st.integers(0, len(field)))
        right[index : index + 1] = [field[:cut], field[cut:]]
    elif how == "merge" and index + 1 < len(left):
        first, second = left[index], left[index + 1]
        if type(first) is type(second) and isinstance(first, str | bytes):
            right[index : index + 2] = [first + second]  # type: ignore[operator]
    elif how == "smuggle" and isinstance(field, str | bytes) and index + 1 < len(left):
        # one field carrying the encoding of the next one, as if it were two fields
        smuggled = encode_fields([left[index + 1]])
        merged = field + smuggled if isinstance(field, bytes) else field + smuggled.decode("latin-1")
        right[index : index + 2] = [merged]
    else:
        right.insert(index, draw(st.sampled_from([None, "", b""])))
    return left, right


@given(near_pairs())
def test_close_variants_encode_differently(pair: tuple[list[Field], list[Field]]) -> None:
    left, right = pair
    if canonical(left) != canonical(right):
        assert encode_fields(left) != encode_fields(right)
    else:
        assert encode_fields(left) == encode_fields(right)


def test_non_finite_and_unsupported_fields_are_rejected() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(CacheError):
            encode_fields([bad])
    for unsupported in ([1], {"a": 1}, (1,), bytearray(b"x"), object()):
        with pytest.raises(CacheError):
            encode_fields([unsupported])  # type: ignore[list-item]


# ---------------------------------------------------------------- KeyBuilder


def test_key_format(names: KeyBuilder) -> None:
    for kind in ("stt", "gen", "tts", "a", "intent_2", "a" * 32):
        key = names.key(kind, "hello", 1, None)
        assert KEY_FORMAT.match(key), key
        assert key.split(":")[1] == kind


def test_key_is_stable_and_depends_on_every_part(names: KeyBuilder) -> None:
    key = names.key("stt", "hello", 1)
    assert names.key("stt", "hello", 1) == key
    assert names.key("tts", "hello", 1) != key
    assert names.key("stt", "hello", 2) != key
    assert names.key("stt", "hello") != key
    assert names.key("stt", "hello", 1, None) != key


def test_keys_differ_under_another_secret(keyring: Keyring, names: KeyBuilder) -> None:
    other = KeyBuilder(Keyring({1: b"o" * 32}).naming_secret())
    assert other.key("stt", "hello") != names.key("stt", "hello")
    assert KeyBuilder(b"a" * 32).key("stt", "x") != KeyBuilder(b"b" * 32).key("stt", "x")


def test_adding_a_master_key_keeps_every_name() -> None:
    old = Keyring({1: b"k" * 32})
    rotated = Keyring({1: b"k" * 32, 2: b"n" * 32})
    assert KeyBuilder(rotated.naming_secret()).key("stt", "x") == KeyBuilder(old.naming_secret()).key(
        "stt", "x"
    )


def test_short_secret_is_rejected() -> None:
    with pytest.raises(CacheError):
        KeyBuilder(b"s" * 31)


@pytest.mark.parametrize(
    "kind",
    ["", "STT", "Stt", "1stt", "_stt", "stt-x", "stt:x", "stt x", "a" * 33, "stté", "stt\n", "\nstt"],
)
def test_invalid_kinds_are_rejected(names: KeyBuilder, kind: str) -> None:
    with pytest.raises(CacheError):
        names.key(kind, "x")


def test_key_reveals_nothing_of_its_fields(names: KeyBuilder) -> None:
    prompt = "What is the weather in Lyon tomorrow?"
    key = names.key("gen", prompt)
    assert prompt not in key
    for word in ("weather", "Lyon", "tomorrow"):
        assert word not in key
    assert prompt.encode().hex() not in key


def test_key_is_not_a_plain_hash_of_its_fields(names: KeyBuilder) -> None:
    fields: tuple[Field, ...] = ("What is the weather in Lyon?", 3)
    digest = names.key("gen", *fields).rsplit(":", 1)[1]
    guesses = [
        encode_fields(("v1", "gen", *fields)),
        encode_fields(("gen", *fields)),
        encode_fields(fields),
        "".join(str(field) for field in fields).encode(),
        b"v1:gen:" + str(fields[0]).encode(),
    ]
    for guess in guesses:
        assert hashlib.sha256(guess).hexdigest() != digest
        assert hashlib.sha3_256(guess).hexdigest() != digest


# ---------------------------------------------------------------- GenerationKey


BASE = GenerationKey(
    backend="llama_cpp",
    model_id="qwen2.5-0.5b-instruct-q4_k_m.gguf",
    model_version="sha256:0a1b2c",
    tokenizer_version="tok-1",
    template_id="weather.today",
    template_version="sha256:9f8e7d",
    system_prompt="You are a helpful voice assistant.",
    prompt="What is the weather in Lyon?",
    temperature=0.0,
    top_p=1.0,
    top_k=40,
    max_tokens=64,
    seed=7,
    scope="shared",
)

CHANGED: dict[str, Any] = {
    "backend": "ollama",
    "model_id": "qwen2.5-1.5b-instruct-q4_k_m.gguf",
    "model_version": "sha256:0a1b2d",
    "tokenizer_version": "tok-2",
    "template_id": "weather.tomorrow",
    "template_version": "sha256:9f8e7e",
    "system_prompt": "You are a terse voice assistant.",
    "prompt": "What is the weather in Lille?",
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 41,
    "max_tokens": 65,
    "seed": 8,
    "scope": "user:alice",
}


def test_every_generation_field_has_a_changed_value() -> None:
    assert set(CHANGED) == {field.name for field in dataclasses.fields(GenerationKey)}


def test_each_generation_field_changes_the_key(names: KeyBuilder) -> None:
    base_key = names.generation_key(BASE)
    keys = {base_key}
    for field in dataclasses.fields(GenerationKey):
        changed = dataclasses.replace(BASE, **{field.name: CHANGED[field.name]})
        key = names.generation_key(changed)
        assert key != base_key, field.name
        assert KEY_FORMAT.match(key)
        keys.add(key)
    assert len(keys) == len(CHANGED) + 1


def test_generation_key_is_stable(names: KeyBuilder) -> None:
    assert names.generation_key(BASE) == names.generation_key(dataclasses.replace(BASE))
    assert names.generation_key(BASE).startswith("v1:gen:")


def test_generation_key_does_not_contain_the_prompt(names: KeyBuilder) -> None:
    key = names.generation_key(BASE)
    for text in (BASE.prompt, BASE.system_prompt, "Lyon", BASE.model_id, BASE.template_id):
        assert text not in key


def test_sampling_without_a_seed_is_refused(names: KeyBuilder) -> None:
    request = dataclasses.replace(BASE, temperature=0.7, seed=None)
    with pytest.raises(NonDeterministicError):
        names.generation_key(request)
    with pytest.raises(NonDeterministicError):
        request.check_deterministic()
    assert issubclass(NonDeterministicError, CacheError)


def test_greedy_without_a_seed_is_fine(names: KeyBuilder) -> None:
    request = dataclasses.replace(BASE, temperature=0.0, seed=None)
    request.check_deterministic()
    key = names.generation_key(request)
    assert KEY_FORMAT.match(key)
    assert key != names.generation_key(BASE)  # seed None and seed 7 are told apart


def test_sampling_with_a_seed_is_keyed_by_the_seed(names: KeyBuilder) -> None:
    keys = [names.generation_key(dataclasses.replace(BASE, temperature=0.8, seed=seed))
            for seed in (0, 1, 2, 42, 2**31)]
    assert all(KEY_FORMAT.match(key) for key in keys)
    assert len(set(keys)) == len(keys)
    for a, b in itertools.combinations(keys, 2):
        assert a != b


@pytest.mark.parametrize("scope", ["", "public", "users:1", "User:1", "SHARED", "shared ", "alice"])
def test_bad_scope_is_refused(names: KeyBuilder, scope: str) -> None:
    with pytest.raises(CacheError):
        names.generation_key(dataclasses.replace(BASE, scope=scope))


def test_user_scopes_are_keyed_apart(names: KeyBuilder) -> None:
    alice = names.generation_key(dataclasses.replace(BASE, scope="user:alice"))
    bob = names.generation_key(dataclasses.replace(BASE, scope="user:bob"))
    shared = names.generation_key(BASE)
    assert len({alice, bob, shared}) == 3


def test_subclasses_encode_as_their_base_value() -> None:
    import enum

    class Colour(str, enum.Enum):  # noqa: UP042 - its str() is "Colour.RED", the case tested
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 5

    class Loud(str):
        def __str__(self) -> str:
            return "always the same"

    assert encode_fields([Colour.RED]) == encode_fields(["red"])
    assert encode_fields([Level.HIGH]) == encode_fields([5])
    assert encode_fields([Loud("a")]) == encode_fields(["a"])
    assert encode_fields([Loud("a")]) != encode_fields([Loud("b")])
