from __future__ import annotations

import os
import stat
from pathlib import Path

import keyring
import keyring.backends.fail
import keyring.backends.null
import pytest

from local_shim.errors import ConfigError
from local_shim.store import StoredLogin, TokenStore, local_secret
from tests.local_shim.conftest import CLIENT_ID, MemoryKeyring

LOGIN = StoredLogin(refresh_token="1//secret-refresh-token", client_id=CLIENT_ID, email="ada@example.com")


def test_sign_in_goes_to_the_keyring_when_there_is_one(tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    store = TokenStore(tmp_path)

    assert store.save(LOGIN) == "the system keyring"

    assert store.load() == LOGIN
    assert not store.file.exists()
    assert store.location() == "the system keyring"
    assert store.delete() is True
    assert store.load() is None
    assert memory_keyring.values == {}


@pytest.mark.parametrize("backend", [keyring.backends.fail.Keyring, keyring.backends.null.Keyring])
def test_sign_in_falls_back_to_a_file_only_the_user_can_read(tmp_path: Path, backend: type) -> None:
    keyring.set_keyring(backend())
    store = TokenStore(tmp_path / "claude-shim")

    assert store.save(LOGIN) == str(store.file)

    assert stat.S_IMODE(store.file.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert store.load() == LOGIN
    assert store.location() == str(store.file)
    assert store.delete() is True
    assert not store.file.exists()


def test_file_store_is_used_when_asked_even_with_a_keyring(tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    store = TokenStore(tmp_path, "file")
    store.save(LOGIN)
    assert memory_keyring.values == {}
    assert store.load() == LOGIN


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    keyring.set_keyring(keyring.backends.fail.Keyring())
    store = TokenStore(tmp_path)
    store.save(LOGIN)
    os.chmod(store.file, 0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        store.load()


def test_refresh_token_never_appears_in_repr() -> None:
    assert "secret-refresh-token" not in repr(LOGIN)


def test_local_secret_is_random_per_install_and_private(tmp_path: Path) -> None:
    first = local_secret(tmp_path / "a")
    assert local_secret(tmp_path / "a") == first
    assert local_secret(tmp_path / "b") != first
    assert stat.S_IMODE((tmp_path / "a" / "local-secret").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="claude-shim configure"):
        local_secret(tmp_path / "c", create=False)
