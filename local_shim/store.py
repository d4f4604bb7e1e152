"""What the shim keeps on disk: the refresh token (OS keyring, or a 0600 file) and the local secret."""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keyring
import keyring.errors

from local_shim.errors import ConfigError

logger = logging.getLogger("local_shim.store")

KEYRING_SERVICE = "claude-shim"
KEYRING_USERNAME = "google-sign-in"
CREDENTIALS_FILE = "credentials.json"
LOCAL_SECRET_FILE = "local-secret"

StoreMode = Literal["auto", "keyring", "file"]


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` so that only the current user can read it (0600), replacing the file atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def is_private(path: Path) -> bool:
    """True if no one but the owner can read or write the file (always true where modes don't apply)."""
    if os.name != "posix":
        return True
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def local_secret(directory: Path, *, create: bool = True) -> str:
    """The per-install secret Claude Code must present to the shim; made on first use."""
    path = directory / LOCAL_SECRET_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        if not is_private(path):
            raise ConfigError(f"{path} is readable by other users: run `chmod 600 {path}`.")
        return value
    if not create:
        raise ConfigError("No local secret yet: run `claude-shim configure` or `claude-shim serve` once.")
    value = secrets.token_urlsafe(32)
    write_private_file(path, value.encode() + b"\n")
    return value


@dataclass(frozen=True)
class StoredLogin:
    """A person's Google sign-in: the refresh token and which OAuth client it belongs to."""

    refresh_token: str = field(repr=False)
    client_id: str
    email: str | None = None

    def to_json(self) -> str:
        return json.dumps({"refresh_token": self.refresh_token, "client_id": self.client_id, "email": self.email})

    @classmethod
    def from_json(cls, text: str) -> StoredLogin:
        data = json.loads(text)
        return cls(refresh_token=data["refresh_token"], client_id=data["client_id"], email=data.get("email"))


class TokenStore:
    """The refresh token in the OS keyring, falling back to a file only the user can read."""

    def __init__(self, directory: Path, mode: StoreMode = "auto") -> None:
        self.directory = directory
        self.mode = mode

    @property
    def file(self) -> Path:
        return self.directory / CREDENTIALS_FILE

    def location(self) -> str:
        """Where the stored sign-in lives (or would be looked for)."""
        if self.mode != "file" and (self.mode == "keyring" or self._keyring_get()):
            return "the system keyring"
        return str(self.file)

    def load(self) -> StoredLogin | None:
        """The stored sign-in, or None when there is none."""
        if self.mode != "file":
            text = self._keyring_get()
            if text:
                return self._parse(text, "the system keyring")
            if self.mode == "keyring":
                return None
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return None
        if not is_private(self.file):
            raise ConfigError(f"{self.file} is readable by other users: run `chmod 600 {self.file}`.")
        return self._parse(text, str(self.file))

    def save(self, login: StoredLogin) -> str:
        """Store the sign-in and say where it went."""
        if self.mode != "file":
            if self._keyring_set(login.to_json()):
                self.file.unlink(missing_ok=True)
                return "the system keyring"
            if self.mode == "keyring":
                raise ConfigError("The system keyring is not available: use `--token-store file` or fix the keyring.")
        write_private_file(self.file, login.to_json().encode())
        return str(self.file)

    def delete(self) -> bool:
        """Remove the sign-in from everywhere it may be; True if there was one."""
        removed = False
        if self.mode != "file":
            try:
                keyring.delete_password(KEYRING_SERVICE, KEYRING_USERNAME)
                removed = True
            except keyring.errors.PasswordDeleteError:
                pass
            except Exception as error:  # any keyring backend failure means there is nothing to delete there
                logger.debug("keyring unavailable: %s", type(error).__name__)
        if self.file.exists():
            self.file.unlink()
            removed = True
        return removed

    @staticmethod
    def _parse(text: str, where: str) -> StoredLogin:
        try:
            return StoredLogin.from_json(text)
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"The sign-in stored in {where} is unreadable: run `claude-shim login`.") from None

    @staticmethod
    def _keyring_get() -> str | None:
        try:
            return keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME)
        except Exception as error:  # no backend, a locked keychain, D-Bus trouble: fall back to the file
            logger.debug("keyring unavailable: %s", type(error).__name__)
            return None

    @staticmethod
    def _keyring_set(value: str) -> bool:
        try:
            keyring.set_password(KEYRING_SERVICE, KEYRING_USERNAME, value)
            # Some backends (the null keyring) accept a value and keep nothing.
            return keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME) == value
        except Exception as error:
            logger.debug("keyring unavailable: %s", type(error).__name__)
            return False
