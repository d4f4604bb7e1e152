"""Shim settings: flags, then `CLAUDE_SHIM_*` environment variables, then the config file, then defaults."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from local_shim.errors import ConfigError
from local_shim.store import write_private_file

GOOGLE_AUTHORIZATION_ENDPOINT = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
GOOGLE_REVOCATION_ENDPOINT = "https://oauth2.googleapis.com/revoke"
DEFAULT_PORT = 8787
CONFIG_FILE = "config.json"
CONFIGURE_HINT = "run the `claude-shim configure ...` command your admin gave you"


def config_dir() -> Path:
    """Where the config file, the local secret and the fallback credentials file live."""
    override = os.environ.get("CLAUDE_SHIM_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "claude-shim"


def is_loopback_host(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _https_or_loopback(url: str) -> str:
    # An ID token or refresh token sent over plain HTTP to anything but this machine could be read on the way.
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url.rstrip("/")
    raise ValueError(f"{url!r} must be an https:// URL (plain http is allowed only for 127.0.0.1 or localhost)")


class ShimSettings(BaseSettings):
    """Everything the shim reads from flags, the environment and the config file, validated once."""

    model_config = SettingsConfigDict(env_prefix="CLAUDE_SHIM_", extra="ignore")

    gateway_url: str | None = None
    """The gateway behind IAP, e.g. https://claude-gateway-abc-uc.a.run.app."""
    oauth_client_id: str | None = None
    """The Desktop OAuth client listed in IAP's programmatic clients."""
    oauth_client_secret: SecretStr | None = None
    audience: str | None = None
    """ID token audience for service-account credentials; defaults to the OAuth client id."""

    credentials: Literal["user", "adc", "impersonate"] = "user"
    impersonate_service_account: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    token_header: Literal["authorization", "proxy-authorization", "both"] = "authorization"
    token_store: Literal["auto", "keyring", "file"] = "auto"
    health_path: str = "/health"

    authorization_endpoint: str = GOOGLE_AUTHORIZATION_ENDPOINT
    token_endpoint: str = GOOGLE_TOKEN_ENDPOINT
    revocation_endpoint: str = GOOGLE_REVOCATION_ENDPOINT

    refresh_margin_seconds: float = Field(default=300.0, ge=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0)
    write_timeout: float = Field(default=60.0, gt=0)
    google_timeout: float = Field(default=30.0, gt=0)
    login_timeout_seconds: float = Field(default=300.0, gt=0)
    sign_in_code_seconds: float = Field(default=600.0, gt=0)
    """How long a Claude Code sign-in code waits for approval in the browser."""
    sign_in_poll_seconds: float = Field(default=5.0, ge=0)
    """The polling interval Claude Code is asked to keep; faster polls are answered `slow_down`."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            JsonConfigSettingsSource(settings_cls, json_file=config_dir() / CONFIG_FILE),
        )

    @field_validator("gateway_url", "authorization_endpoint", "token_endpoint", "revocation_endpoint")
    @classmethod
    def _secure_url(cls, value: str | None) -> str | None:
        return None if value is None else _https_or_loopback(value)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if not is_loopback_host(value):
            raise ValueError(
                f"refusing to listen on {value}: the shim adds your identity to every request it forwards, "
                "so it listens on loopback (127.0.0.1) only"
            )
        return value

    @field_validator("health_path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        return value if value.startswith("/") else "/" + value

    @model_validator(mode="after")
    def _impersonation_target(self) -> ShimSettings:
        if self.credentials == "impersonate" and not self.impersonate_service_account:
            raise ValueError("credentials=impersonate needs --impersonate-service-account EMAIL")
        return self

    @property
    def id_token_audience(self) -> str:
        """The `aud` IAP must see: the desktop client id for a person, the configured audience otherwise."""
        if self.credentials != "user" and self.audience:
            return self.audience
        if not self.oauth_client_id:
            raise ConfigError(f"No OAuth client id (or --audience) is configured: {CONFIGURE_HINT}.")
        return self.oauth_client_id

    def require_gateway(self) -> str:
        """The gateway URL, or a ConfigError that says how to set it."""
        if not self.gateway_url:
            raise ConfigError(f"No gateway URL is configured: {CONFIGURE_HINT}.")
        return self.gateway_url

    def require_oauth_client(self) -> tuple[str, str]:
        """The OAuth client id and secret, or a ConfigError that says how to set them."""
        if not self.oauth_client_id or not self.oauth_client_secret:
            raise ConfigError(f"No OAuth client id and secret are configured: {CONFIGURE_HINT}.")
        return self.oauth_client_id, self.oauth_client_secret.get_secret_value()


def _one_line(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def load_settings(**overrides: Any) -> ShimSettings:
    """Settings from flags (`overrides`, None meaning not given), environment and config file."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return ShimSettings(**given)
    except ValidationError as error:
        raise ConfigError(f"Invalid configuration: {_one_line(error)}") from None
    except (ValueError, OSError) as error:  # an unreadable or malformed config file
        raise ConfigError(f"Cannot read {config_dir() / CONFIG_FILE}: {error}") from None


def read_config_file() -> dict[str, Any]:
    """The config file's contents, or an empty dict when there is none."""
    path = config_dir() / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Cannot read {path}: expected a JSON object")
    return data


def write_config_file(updates: dict[str, Any]) -> Path:
    """Merge `updates` into the config file (validated first) and return its path."""
    merged = {**read_config_file(), **{key: value for key, value in updates.items() if value is not None}}
    try:
        # Validate what will be written on its own, without the environment's values mixed in.
        ShimSettings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(f"Invalid configuration: {_one_line(error)}") from None
    path = config_dir() / CONFIG_FILE
    write_private_file(path, (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode())
    return path
