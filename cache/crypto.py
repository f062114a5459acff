"""Master keys, key rotation and per-user data keys.

A keyring holds master keys by a one-byte id. New blobs are sealed under the
highest id; older ids stay readable until they are retired, so ``rotate-key``
can re-encrypt stored blobs while the service runs.

Data keys are derived per scope with HKDF-SHA256: the shared scope from the
master key alone, each user's from the master key and a random per-user salt.
Forgetting a user deletes the salt, so any of their ciphertext left behind (in
a WAL file, in free pages, in a backup) can no longer be decrypted.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cache.errors import KeyringError

KEY_BYTES = 32
SALT_BYTES = 16
_INFO = b"edge-assistant/cache/v1/"


def _hkdf(master: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_INFO + info).derive(
        master
    )


class Keyring:
    """Master keys by id (1..255); the highest id seals new blobs."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        """``keys``: id -> 32 random bytes; at least one."""
        if not keys:
            raise KeyringError("the keyring is empty: at least one master key is needed")
        for key_id, key in keys.items():
            if not 1 <= key_id <= 255:
                raise KeyringError(f"master key id {key_id} is out of range 1..255")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"master key {key_id} must be {KEY_BYTES} bytes, not {len(key)}")
        self._keys = dict(keys)
        self._aead: dict[tuple[int, str | None, bytes], AESGCM] = {}
        self._lock = threading.Lock()

    @property
    def current_id(self) -> int:
        """The id that seals new blobs."""
        return max(self._keys)

    @property
    def ids(self) -> list[int]:
        """All ids that can still open blobs, ascending."""
        return sorted(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def naming_secret(self) -> bytes:
        """The secret cache key names are HMAC'd under.

        Derived from the oldest key, so adding a key (rotation) keeps every name;
        retiring the oldest key renames everything, which empties the cache.
        """
        return _hkdf(self._keys[min(self._keys)], b"names")

    def aead(self, key_id: int, user: str | None, salt: bytes = b"") -> AESGCM:
        """The AES-256-GCM cipher for ``user`` (``None``: shared) under master key ``key_id``."""
        cache_key = (key_id, user, salt)
        aead = self._aead.get(cache_key)
        if aead is None:
            aead = self._derive(key_id, user, salt)
            with self._lock:
                self._aead[cache_key] = aead
        return aead

    def _derive(self, key_id: int, user: str | None, salt: bytes) -> AESGCM:
        try:
            master = self._keys[key_id]
        except KeyError:
            raise KeyringError(f"master key id {key_id} is not in the keyring") from None
        if user is None:
            return AESGCM(_hkdf(master, b"data/shared"))
        return AESGCM(_hkdf(master, b"data/user/" + user.encode("utf-8"), salt=salt))

    def forget(self, user: str) -> None:
        """Drop the derived ciphers of ``user`` held in memory."""
        with self._lock:
            for cache_key in [k for k in self._aead if k[1] == user]:
                del self._aead[cache_key]


def new_salt() -> bytes:
    """A fresh random per-user salt."""
    return secrets.token_bytes(SALT_BYTES)


def generate_key_line(key_id: int) -> str:
    """A new master key as one keyring line: ``<id>:<base64 of 32 random bytes>``."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def parse_keyring(text: str, *, source: str) -> Keyring:
    """Parse keyring text: one ``<id>:<base64>`` per line; a lone base64 line is id 1.

    ``source`` names where the text came from, for error messages. Blank lines and
    ``#`` comments are ignored.
    """
    keys: dict[int, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        id_text, sep, b64 = line.partition(":")
        if not sep:
            id_text, b64 = "1", line
        try:
            key_id = int(id_text)
            key = base64.b64decode(b64, validate=True)
        except ValueError:
            raise KeyringError(
                f"{source}, line {number}: expected '<id>:<base64 key>' or a base64 key"
            ) from None
        if key_id in keys:
            raise KeyringError(f"{source}, line {number}: key id {key_id} appears twice")
        keys[key_id] = key
    try:
        return Keyring(keys)
    except KeyringError as error:
        raise KeyringError(f"{source}: {error}") from None


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the master keys come from."""

    kind: str
    """``credential`` (systemd), ``environment`` or ``file``."""
    path: Path | None = None
    """The credential's or the key file's path."""
    text: str | None = None
    """The keyring text of the environment variable."""


def find_key_source(*, file: Path | None, env_value: str | None,
                    credentials_directory: str | None,
                    credential_name: str = "assistant-master-key") -> KeySource:
    """The first source that is set, in the one order there is: the systemd credential, the
    environment variable, the key file.

    Args:
        file: the keyring file.
        env_value: the keyring text from an environment variable, if set.
        credentials_directory: systemd's ``$CREDENTIALS_DIRECTORY``, if set.
        credential_name: the credential's file name inside that directory.
    """
    if credentials_directory:
        path = Path(credentials_directory) / credential_name
        if path.exists():
            return KeySource("credential", path=path)
    if env_value:
        return KeySource("environment", text=env_value)
    if file is None:
        raise KeyringError("no master key: set a key file, the environment variable or a credential")
    return KeySource("file", path=file)


def load_keyring(
    *,
    file: Path | None,
    env_value: str | None,
    credentials_directory: str | None,
    credential_name: str = "assistant-master-key",
    create_file: bool = False,
) -> Keyring:
    """The master keys from the first source that is set (see :func:`find_key_source`, whose
    arguments these are); a missing key file is created with one fresh key (mode 0600) when
    ``create_file`` is true."""
    return read_keyring(find_key_source(file=file, env_value=env_value,
                                        credentials_directory=credentials_directory,
                                        credential_name=credential_name),
                        create_file=create_file)


def read_keyring(source: KeySource, *, create_file: bool = False) -> Keyring:
    """The master keys in ``source``; a missing key file is created when ``create_file``."""
    if source.kind == "environment":
        assert source.text is not None
        return parse_keyring(source.text, source="environment variable")
    assert source.path is not None
    if source.kind == "credential":
        return parse_keyring(source.path.read_text(), source=f"credential {source.path.name}")
    file = source.path
    if not file.exists():
        if not create_file:
            raise KeyringError(f"master key file {file} does not exist")
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_key_line(1) + "\n")
    return parse_keyring(file.read_text(), source=str(file))


def append_key(file: Path) -> int:
    """Add a new master key (the next id) to a keyring file atomically; return its id."""
    ring = parse_keyring(file.read_text(), source=str(file))
    new_id = ring.current_id + 1
    if new_id > 255:
        raise KeyringError("all 255 key ids are used: retire old keys first")
    text = file.read_text().rstrip("\n") + "\n" + generate_key_line(new_id) + "\n"
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(file)
    return new_id

