"""The blob codec (serialise, compress, encrypt, bind to a key) and the keyring it uses."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import BlobError, CacheError, Codec, Keyring, KeyringError, load_keyring
from cache.crypto import append_key, new_salt, parse_keyring

KEY = "v1:stt:" + "ab" * 32
OTHER_KEY = "v1:stt:" + "cd" * 32


class Salts:
    """Per-user salts as the service keeps them: created on first use, deleted to forget."""

    def __init__(self) -> None:
        self.by_user: dict[str, bytes] = {}

    def __call__(self, user: str) -> bytes:
        if user not in self.by_user:
            self.by_user[user] = new_salt()
        return self.by_user[user]


def encode(codec: Codec, key: str, value: Any, tags: Any, user: str | None) -> bytes:
    """A value and its tags sealed as the cache seals them."""
    return codec.seal(key, codec.plaintext(value, tags), user)


def make_codec(keys: dict[int, bytes] | None = None, salts: Salts | None = None, **kwargs: Any) -> Codec:
    ring = Keyring(keys or {1: b"k" * 32})
    return Codec(ring, salts or Salts(), **kwargs)


def b64key(raw: bytes | None = None) -> str:
    return base64.b64encode(raw if raw is not None else os.urandom(32)).decode()


@pytest.fixture
def codec(keyring: Keyring) -> Codec:
    return Codec(keyring, Salts())


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\x01\xff raw audio",
        os.urandom(3000),
        "",
        "bonjour, ça va ? 天気 🌦",
        "x" * 10_000,
        {"temperature": 21.5, "city": "Lyon", "hourly": [1, 2, 3], "ok": True, "none": None},
        [1, "two", 3.0, [4], {"five": 5}],
        [],
        {},
        0,
        -1.5,
        None,
        True,
    ],
)
@pytest.mark.parametrize("user", [None, "alice"])
def test_round_trip(codec: Codec, value: Any, user: str | None) -> None:
    blob = encode(codec, KEY, value, ("intent:weather",), user)
    decoded, tags, size = codec.decode(KEY, blob, user)
    assert decoded == value
    assert type(decoded) is type(value)
    assert tags == ("intent:weather",)
    assert size == len(codec.plaintext(value, ("intent:weather",)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("tags", [("",), ("a\x1fb",), ("x" * 70000,)])
def test_tags_that_cannot_be_stored_are_refused(tags: tuple[str, ...]) -> None:
    with pytest.raises(CacheError):
        encode(make_codec(), KEY, "v", tags, None)


@settings(deadline=None, max_examples=60)
@given(value=json_values,
       tags=st.lists(st.text(min_size=1, max_size=10).filter(lambda t: "\x1f" not in t), max_size=4))
def test_json_values_and_tags_round_trip(value: Any, tags: list[str]) -> None:
    codec = make_codec()
    decoded, decoded_tags, _ = codec.decode(KEY, encode(codec, KEY, value, tags, None), None)
    assert decoded == value
    assert decoded_tags == tuple(tags)


@pytest.mark.parametrize(
    "tags",
    [(), ("a",), ("intent:weather", "template:forecast", "user:alice"), ("ü", "ünïcode 🏷"), ("t",) * 300],
)
def test_tags_round_trip(codec: Codec, tags: tuple[str, ...]) -> None:
    _, decoded, _ = codec.decode(KEY, encode(codec, KEY, "v", tags, None), None)
    assert decoded == tags


def test_compression_shrinks_compressible_text(codec: Codec) -> None:
    text = ("The weather in Lyon tomorrow: sunny, 21 degrees, light wind from the south. " * 60)[:4096]
    assert len(text) == 4096
    blob = encode(codec, KEY, text, (), None)
    assert len(blob) < len(text) // 4
    assert codec.decode(KEY, blob, None)[0] == text


def test_incompressible_value_is_stored_as_is(codec: Codec) -> None:
    noise = os.urandom(4096)
    blob = encode(codec, KEY, noise, (), None)
    assert len(blob) <= len(noise) + 64  # never blown up by compressing noise
    assert codec.decode(KEY, blob, None)[0] == noise


def test_threads_share_compressors_and_each_blob_opens(codec: Codec) -> None:
    texts = [f"Answer number {n}: the kitchen light is on. " * 200 for n in range(8)]
    for text in texts[:4]:  # one thread after another: one context serves them all
        worker = threading.Thread(target=encode, args=(codec, KEY, text, (), None))
        worker.start()
        worker.join()
    assert codec._compressors.idle == 1

    start = threading.Barrier(len(texts))
    blobs: dict[int, bytes] = {}

    def seal_and_open(n: int) -> None:
        start.wait()
        for _ in range(20):
            blob = encode(codec, KEY, texts[n], (), None)
            assert codec.decode(KEY, blob, None)[0] == texts[n]
        blobs[n] = blob

    workers = [threading.Thread(target=seal_and_open, args=(n,)) for n in range(len(texts))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(blobs) == list(range(len(texts)))  # every thread got through
    assert 1 <= codec._compressors.idle <= len(texts)


def test_each_blob_has_a_fresh_nonce(codec: Codec) -> None:
    first = encode(codec, KEY, "same", (), None)
    second = encode(codec, KEY, "same", (), None)
    assert first != second
    assert codec.decode(KEY, first, None)[0] == codec.decode(KEY, second, None)[0] == "same"


def test_decompression_is_bounded_by_max_value_bytes() -> None:
    salts = Salts()
    blob = encode(make_codec(salts=salts), KEY, "a" * 5000, (), None)
    assert len(blob) < 1000  # compressed: the bound is on what it expands to
    limited = make_codec(salts=salts, max_value_bytes=1000)
    with pytest.raises(BlobError):
        limited.decode(KEY, blob, None)
    assert make_codec(salts=salts, max_value_bytes=6000).decode(KEY, blob, None)[0] == "a" * 5000


# ---------------------------------------------------------------- tampering


def test_blob_moved_to_another_key_does_not_open(codec: Codec) -> None:
    blob = encode(codec, KEY, "the answer for KEY", ("t",), None)
    with pytest.raises(BlobError):
        codec.decode(OTHER_KEY, blob, None)
    with pytest.raises(BlobError):
        codec.open(OTHER_KEY, blob, None)


@pytest.mark.parametrize(
    "value", ["hi", "compressible " * 100], ids=["small", "compressed"]
)
@pytest.mark.parametrize("user", [None, "alice"])
def test_every_single_byte_flip_is_detected(codec: Codec, value: str, user: str | None) -> None:
    blob = encode(codec, KEY, value, ("t",), user)
    assert codec.decode(KEY, blob, user)[0] == value
    for position in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(blob)
            damaged[position] ^= mask
            with pytest.raises(BlobError):
                codec.decode(KEY, bytes(damaged), user)


def test_truncated_and_extended_blobs_are_rejected(codec: Codec) -> None:
    blob = encode(codec, KEY, "compressible " * 50, ("t",), None)
    for length in range(len(blob)):
        with pytest.raises(BlobError):
            codec.decode(KEY, blob[:length], None)
    with pytest.raises(BlobError):
        codec.decode(KEY, blob + b"\x00", None)


@settings(deadline=None)
@given(garbage=st.binary(max_size=200), header=st.sampled_from([b"", b"\x01", b"\x01\x01", b"\x01\x02"]))
def test_garbage_is_a_blob_error(garbage: bytes, header: bytes) -> None:
    codec = make_codec()
    with pytest.raises(BlobError):
        codec.decode(KEY, header + garbage, None)


# ---------------------------------------------------------------- scopes and forgetting


def test_user_blob_opens_only_for_that_user(codec: Codec) -> None:
    blob = encode(codec, KEY, "alice's calendar", (), "alice")
    assert codec.decode(KEY, blob, "alice")[0] == "alice's calendar"
    with pytest.raises(BlobError):
        codec.decode(KEY, blob, None)
    with pytest.raises(BlobError):
        codec.decode(KEY, blob, "bob")


def test_shared_blob_does_not_open_as_a_user(codec: Codec) -> None:
    blob = encode(codec, KEY, "shared answer", (), None)
    with pytest.raises(BlobError):
        codec.decode(KEY, blob, "alice")


def test_new_salt_makes_old_blobs_unopenable() -> None:
    salts = Salts()
    codec = make_codec(salts=salts)
    blob = encode(codec, KEY, "private", (), "alice")
    assert codec.decode(KEY, blob, "alice")[0] == "private"
    del salts.by_user["alice"]  # forgetting deletes the salt; a new one is made on next use
    codec.keyring.forget("alice")
    with pytest.raises(BlobError):
        codec.decode(KEY, blob, "alice")


def test_salt_change_is_seen_even_without_forgetting_cached_ciphers() -> None:
    salts = Salts()
    codec = make_codec(salts=salts)
    blob = encode(codec, KEY, "private", (), "alice")
    salts.by_user["alice"] = new_salt()
    with pytest.raises(BlobError):
        codec.decode(KEY, blob, "alice")


def test_same_user_salt_in_another_codec_opens() -> None:
    salts = Salts()
    blob = encode(make_codec(salts=salts), KEY, "private", (), "alice")
    assert make_codec(salts=salts).decode(KEY, blob, "alice")[0] == "private"
    with pytest.raises(BlobError):
        make_codec(salts=Salts()).decode(KEY, blob, "alice")


# ---------------------------------------------------------------- rotation


@pytest.mark.parametrize("user", [None, "alice"])
def test_rotation_keeps_old_blobs_readable(user: str | None) -> None:
    first, second = os.urandom(32), os.urandom(32)
    salts = Salts()
    old = make_codec({1: first}, salts)
    old_blob = encode(old, KEY, "before rotation", ("t",), user)
    assert Codec.key_id(old_blob) == 1

    rotated = make_codec({1: first, 2: second}, salts)
    assert rotated.decode(KEY, old_blob, user)[0] == "before rotation"
    new_blob = encode(rotated, KEY, "after rotation", ("t",), user)
    assert Codec.key_id(new_blob) == 2
    assert rotated.decode(KEY, new_blob, user)[0] == "after rotation"

    resealed = rotated.seal(KEY, rotated.open(KEY, old_blob, user), user)
    assert Codec.key_id(resealed) == 2
    assert rotated.decode(KEY, resealed, user)[0] == "before rotation"

    with pytest.raises(BlobError):  # key id 2 is unknown to the old keyring
        old.decode(KEY, new_blob, user)
    retired = make_codec({2: second}, salts)
    assert retired.decode(KEY, new_blob, user)[0] == "after rotation"
    with pytest.raises(BlobError):  # key id 1 was retired
        retired.decode(KEY, old_blob, user)


def test_same_id_with_another_key_does_not_open() -> None:
    blob = encode(make_codec({1: os.urandom(32)}), KEY, "v", (), None)
    with pytest.raises(BlobError):
        make_codec({1: os.urandom(32)}).decode(KEY, blob, None)


def test_seal_under_an_explicit_key_id() -> None:
    codec = make_codec({1: os.urandom(32), 2: os.urandom(32)})
    blob = codec.seal(KEY, codec.plaintext("v", ()), None, key_id=1)
    assert Codec.key_id(blob) == 1
    assert codec.decode(KEY, blob, None)[0] == "v"


# ---------------------------------------------------------------- values that cannot be cached


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [object(), Opaque(), {"a": object()}, [1, object()], {1, 2}, {1: "a", "b": 2}, 1j],
    ids=["object", "instance", "nested", "in-list", "set", "mixed-keys", "complex"],
)
def test_non_serializable_value_is_a_cache_error(codec: Codec, value: Any) -> None:
    with pytest.raises(CacheError):
        encode(codec, KEY, value, (), None)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), [1.0, float("nan")], {"t": float("nan")}],
    ids=["nan", "inf", "-inf", "nan-in-list", "nan-in-dict"],
)
def test_non_finite_numbers_are_a_cache_error(codec: Codec, value: Any) -> None:
    with pytest.raises(CacheError):
        encode(codec, KEY, value, (), None)


# ---------------------------------------------------------------- parse_keyring


def test_lone_base64_line_is_key_id_1() -> None:
    raw = os.urandom(32)
    ring = parse_keyring(b64key(raw) + "\n", source="test")
    assert ring.ids == [1]
    assert ring.current_id == 1
    assert ring.naming_secret() == Keyring({1: raw}).naming_secret()


def test_id_lines_comments_and_blank_lines() -> None:
    raws = {1: os.urandom(32), 2: os.urandom(32), 7: os.urandom(32)}
    text = (
        "# master keys\n"
        "\n"
        f"1:{b64key(raws[1])}\n"
        "   # an indented comment\n"
        "   \n"
        f"  7:{b64key(raws[7])}  \n"
        f"2:{b64key(raws[2])}"
    )
    ring = parse_keyring(text, source="test")
    assert ring.ids == [1, 2, 7]
    assert ring.current_id == 7
    assert ring.naming_secret() == Keyring(raws).naming_secret()
    blob = encode(Codec(ring, Salts()), KEY, "v", (), None)
    assert Codec.key_id(blob) == 7
    assert Codec(Keyring({7: raws[7]}), Salts()).decode(KEY, blob, None)[0] == "v"


@pytest.mark.parametrize(
    ("bad_line", "line"),
    [("1:not base64!", 3), ("x:" + b64key(), 3), (":" + b64key(), 3), ("not-base64-at-all", 3)],
)
def test_parse_errors_name_the_source_and_line(bad_line: str, line: int) -> None:
    text = f"# keys\n1:{b64key()}\n{bad_line}\n"
    with pytest.raises(KeyringError) as error:
        parse_keyring(text, source="my.keys")
    assert "my.keys" in str(error.value)
    assert f"line {line}" in str(error.value)


@pytest.mark.parametrize(
    "text",
    [
        f"1:{b64key()}\n1:{b64key()}\n",
        f"{b64key()}\n1:{b64key()}\n",
        f"3:{b64key()}\n# comment\n3:{b64key()}\n",
    ],
    ids=["same-id", "lone-and-id-1", "after-comment"],
)
def test_duplicate_ids_are_rejected(text: str) -> None:
    with pytest.raises(KeyringError, match="twice") as error:
        parse_keyring(text, source="dup.keys")
    last_line = len(text.splitlines())
    assert f"line {last_line}" in str(error.value)
    assert "dup.keys" in str(error.value)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_key_length_is_rejected(length: int) -> None:
    with pytest.raises(KeyringError) as error:
        parse_keyring(f"1:{b64key(os.urandom(length))}\n", source="short.keys")
    assert "short.keys" in str(error.value)
    assert "32" in str(error.value)


@pytest.mark.parametrize("key_id", [0, 256, -1])
def test_key_id_out_of_range_is_rejected(key_id: int) -> None:
    with pytest.raises(KeyringError):
        parse_keyring(f"{key_id}:{b64key()}\n", source="test")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_keyring_is_rejected(text: str) -> None:
    with pytest.raises(KeyringError):
        parse_keyring(text, source="test")


# ---------------------------------------------------------------- load_keyring


def test_load_order_credential_then_env_then_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "assistant-master-key").write_text(f"3:{b64key()}\n")
    key_file = tmp_path / "master.key"
    key_file.write_text(f"7:{b64key()}\n")
    env_value = f"5:{b64key()}"

    def load(**kwargs: Any) -> Keyring:
        args: dict[str, Any] = {"file": key_file, "env_value": env_value,
                                "credentials_directory": str(credentials)}
        return load_keyring(**{**args, **kwargs})

    assert load().current_id == 3
    assert load(credentials_directory=None).current_id == 5
    assert load(credentials_directory=str(tmp_path / "empty")).current_id == 5  # no such credential
    assert load(credential_name="other-name").current_id == 5
    assert load(credentials_directory=None, env_value=None).current_id == 7
    assert load(credentials_directory=None, env_value="").current_id == 7
    assert load(env_value=None).current_id == 3


def test_load_with_no_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError):
        load_keyring(file=None, env_value=None, credentials_directory=None)
    missing = tmp_path / "master.key"
    with pytest.raises(KeyringError):
        load_keyring(file=missing, env_value=None, credentials_directory=None)
    assert not missing.exists()


def test_bad_credential_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "assistant-master-key").write_text("garbage!\n")
    with pytest.raises(KeyringError, match="assistant-master-key"):
        load_keyring(file=None, env_value=f"1:{b64key()}", credentials_directory=str(tmp_path))


def test_create_file_makes_a_private_working_key(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "master.key"
    ring = load_keyring(file=key_file, env_value=None, credentials_directory=None, create_file=True)
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ring.ids == [1]

    again = load_keyring(file=key_file, env_value=None, credentials_directory=None, create_file=True)
    assert again.naming_secret() == ring.naming_secret()  # created once, then read back
    blob = encode(Codec(ring, Salts()), KEY, "sealed", (), None)
    assert Codec(again, Salts()).decode(KEY, blob, None)[0] == "sealed"


def test_created_keys_are_random(tmp_path: Path) -> None:
    a = load_keyring(file=tmp_path / "a.key", env_value=None, credentials_directory=None, create_file=True)
    b = load_keyring(file=tmp_path / "b.key", env_value=None, credentials_directory=None, create_file=True)
    assert a.naming_secret() != b.naming_secret()


# ---------------------------------------------------------------- append_key


def test_append_key_adds_the_next_id_and_keeps_the_old(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    ring = load_keyring(file=key_file, env_value=None, credentials_directory=None, create_file=True)
    original_text = key_file.read_text()
    old_blob = encode(Codec(ring, Salts()), KEY, "old", (), None)

    assert append_key(key_file) == 2
    rotated = load_keyring(file=key_file, env_value=None, credentials_directory=None)
    assert rotated.ids == [1, 2]
    assert key_file.read_text().startswith(original_text)
    assert rotated.naming_secret() == ring.naming_secret()
    codec = Codec(rotated, Salts())
    assert codec.decode(KEY, old_blob, None)[0] == "old"
    assert Codec.key_id(encode(codec, KEY, "new", (), None)) == 2

    assert append_key(key_file) == 3
    assert load_keyring(file=key_file, env_value=None, credentials_directory=None).ids == [1, 2, 3]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


def test_append_key_to_a_lone_base64_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(b64key())  # no trailing newline
    assert append_key(key_file) == 2
    assert parse_keyring(key_file.read_text(), source="test").ids == [1, 2]


def test_append_key_beyond_255_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(f"255:{b64key()}\n")
    before = key_file.read_text()
    with pytest.raises(KeyringError):
        append_key(key_file)
    assert key_file.read_text() == before


def test_keyring_forgets_while_other_threads_derive_keys() -> None:
    import threading

    ring = Keyring({1: os.urandom(32)})
    errors: list[BaseException] = []

    def derive(seed: int) -> None:
        try:
            for i in range(300):
                ring.aead(1, f"user{seed}-{i % 7}", b"s" * 16)
        except BaseException as error:
            errors.append(error)

    def forget() -> None:
        try:
            for i in range(300):
                ring.forget(f"user0-{i % 7}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=derive, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=forget))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
