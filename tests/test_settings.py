"""Settings: defaults, the TOML file, environment overrides, strictness, privacy policies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from assistant.settings import CONFIG_ENV, Settings, load_settings
from cache import PolicyBook

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ASSISTANT_* variable from the outside, and a working directory without configs/."""
    for name in list(os.environ):
        if name.startswith("ASSISTANT_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def write_config(tmp_path: Path, text: str, name: str = "assistant.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.cache.memory_bytes == 64 * 1024 * 1024
    assert settings.cache.default_ttl == 24 * 3600
    assert settings.cache.zstd_level == 3
    assert settings.redis.enabled is True
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.redis.timeout == 0.2
    assert settings.sqlite.path == Path("var/cache.db")
    assert settings.sqlite.max_bytes == 1024**3
    assert settings.keys.file == Path("var/master.key")
    assert settings.keys.env_var == "ASSISTANT_MASTER_KEY"
    assert settings.keys.credential == "assistant-master-key"
    assert settings.privacy.users == {}
    book = settings.privacy.book()
    assert book.ttl(10**9, "anyone") == 7 * 24 * 3600
    assert book.ttl(10**9, None) == 7 * 24 * 3600
    assert settings.model_dump() == Settings().model_dump()


def test_file_sets_values(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
[cache]
memory_bytes = 1048576
zstd_level = 9

[redis]
url = "redis://10.0.0.2:6379/1"
timeout = 0.5

[sqlite]
enabled = false
path = "/srv/assistant/cache.db"

[keys]
file = "/etc/assistant/master.key"
create = false
""")
    settings = load_settings(path)
    assert settings.cache.memory_bytes == 1048576
    assert settings.cache.zstd_level == 9
    assert settings.cache.default_ttl == 24 * 3600  # not in the file: the default
    assert settings.redis.url == "redis://10.0.0.2:6379/1"
    assert settings.redis.timeout == 0.5
    assert settings.redis.breaker_threshold == 3
    assert settings.sqlite.enabled is False
    assert settings.sqlite.path == Path("/srv/assistant/cache.db")
    assert settings.keys.file == Path("/etc/assistant/master.key")
    assert settings.keys.create is False


def test_config_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, '[redis]\nurl = "redis://from-env-file:6379/0"\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_settings().redis.url == "redis://from-env-file:6379/0"


def test_default_file_in_the_working_directory_is_read(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    (tmp_path / "cwd" / "configs").mkdir()
    (tmp_path / "cwd" / "configs" / "assistant.toml").write_text("[cache]\nzstd_level = 7\n")
    assert load_settings().cache.zstd_level == 7


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, '[redis]\nurl = "redis://file:6379/0"\ntimeout = 0.5\n')
    monkeypatch.setenv("ASSISTANT_REDIS__URL", "redis://env:6379/0")
    monkeypatch.setenv("ASSISTANT_CACHE__ZSTD_LEVEL", "5")
    settings = load_settings(path)
    assert settings.redis.url == "redis://env:6379/0"
    assert settings.redis.timeout == 0.5  # the rest of the section still comes from the file
    assert settings.cache.zstd_level == 5


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path)  # a directory is not a settings file


def test_missing_file_named_by_the_environment_is_an_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError):
        load_settings()


@pytest.mark.parametrize(
    "text",
    [
        'colour = "blue"\n',
        "[cahce]\nmemory_bytes = 1024\n",
        '[redis]\nurll = "redis://typo:6379/0"\n',
        "[cache]\nmemory_byte = 1024\n",
        "[privacy.default]\nmax_tll = 60\n",
        "[privacy.users.guest]\nmax_tll = 60\npersist = false\n",
    ],
    ids=["top-level", "section-name", "redis-field", "cache-field", "policy-field", "user-policy-field"],
)
def test_unknown_keys_are_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(write_config(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    ["[cache]\nzstd_level = 99\n", "[cache]\nmemory_bytes = 0\n", "[redis]\ntimeout = -1\n",
     "[privacy.users.guest]\nmax_ttl = -5\n", '[cache]\nmemory_bytes = "lots"\n'],
)
def test_out_of_range_values_are_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(write_config(tmp_path, text))


def test_shipped_config_file_loads() -> None:
    settings = load_settings(REPO / "configs" / "assistant.toml")
    assert settings.redis.url.startswith("redis://")
    assert settings.cache.memory_bytes > 0


def test_privacy_users_become_a_policy_book(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
[privacy.default]
max_ttl = 86400

[privacy.shared]
max_ttl = 604800

[privacy.users.guest]
max_ttl = 3600
persist = false
private = true

[privacy.users.kid]
max_ttl = 60
""")
    book = load_settings(path).privacy.book()
    assert isinstance(book, PolicyBook)
    assert set(book.users) == {"guest", "kid"}

    assert book.ttl(7200, "guest") == 3600  # capped by the user's policy
    assert book.ttl(100, "guest") == 100  # shorter than the cap: unchanged
    assert book.ttl(7200, "kid") == 60
    assert book.ttl(10**6, "somebody") == 86400  # the default policy
    assert book.ttl(10**7, None) == 604800  # the shared policy
    assert book.ttl(30, None) == 30

    assert book.for_user("guest").persist is False
    assert book.for_user("kid").persist is True
    assert book.for_user("somebody").persist is True

    assert book.scope("shared", "guest") == "user:guest"  # private: even shareable answers
    assert book.scope("user", "guest") == "user:guest"
    assert book.scope("shared", "kid") == "shared"
    assert book.scope("user", "kid") == "user:kid"
    assert book.scope("shared", "somebody") == "shared"
    assert book.scope("user", None) == "shared"
    assert book.scope("shared", None) == "shared"


def test_private_default_scopes_every_user(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "[privacy.default]\nprivate = true\n\n[privacy.users.host]\nprivate = false\n"
    )
    book = load_settings(path).privacy.book()
    assert book.scope("shared", "somebody") == "user:somebody"
    assert book.scope("shared", "host") == "shared"
