from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from local_shim.cli import main
from local_shim.config import DEFAULT_PORT, GOOGLE_TOKEN_ENDPOINT, config_dir, load_settings
from local_shim.errors import ConfigError
from tests.local_shim.conftest import CLIENT_ID, CLIENT_SECRET


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_configure_accepts_the_admin_command_and_writes_private_files(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "configure",
            "--gateway-url",
            "https://claude-gateway-abc-ew.a.run.app/",
            "--oauth-client-id",
            CLIENT_ID,
            "--oauth-client-secret",
            CLIENT_SECRET,
            "--audience",
            "iap-client.apps.googleusercontent.com",
            "--port",
            "9911",
        ]
    )

    assert status == 0
    saved = json.loads((config_dir / "config.json").read_text())
    assert saved == {
        "gateway_url": "https://claude-gateway-abc-ew.a.run.app/",
        "oauth_client_id": CLIENT_ID,
        "oauth_client_secret": CLIENT_SECRET,
        "audience": "iap-client.apps.googleusercontent.com",
        "port": 9911,
    }
    assert mode(config_dir / "config.json") == 0o600
    assert mode(config_dir / "local-secret") == 0o600
    assert len((config_dir / "local-secret").read_text().strip()) >= 40
    out = capsys.readouterr().out
    assert CLIENT_SECRET not in out and "claude-shim login" in out
    settings = load_settings()
    assert settings.gateway_url == "https://claude-gateway-abc-ew.a.run.app"
    assert settings.port == 9911
    assert settings.oauth_client_secret is not None
    assert settings.oauth_client_secret.get_secret_value() == CLIENT_SECRET


def test_configure_merges_with_earlier_settings_and_shows_them_without_the_secret(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["configure", "--gateway-url", "https://gw.example.com", "--oauth-client-secret", CLIENT_SECRET])
    main(["configure", "--port", "9000"])
    capsys.readouterr()

    assert main(["configure"]) == 0

    out = capsys.readouterr().out
    assert "gateway_url = https://gw.example.com" in out
    assert "port = 9000" in out
    assert "oauth_client_secret = (set)" in out
    assert CLIENT_SECRET not in out


def test_flags_beat_environment_beat_config_file_beat_defaults(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"gateway_url": "https://file.example.com", "port": 1111}))
    assert load_settings().gateway_url == "https://file.example.com"
    assert load_settings().token_endpoint == GOOGLE_TOKEN_ENDPOINT

    monkeypatch.setenv("CLAUDE_SHIM_GATEWAY_URL", "https://env.example.com")
    assert load_settings().gateway_url == "https://env.example.com"
    assert load_settings().port == 1111

    assert load_settings(gateway_url="https://flag.example.com", port=None).gateway_url == "https://flag.example.com"


def test_config_dir_defaults_to_the_users_config_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr("sys.platform", "linux")
    assert config_dir() == tmp_path / "claude-shim"
    assert load_settings().port == DEFAULT_PORT


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_non_loopback_listen_address_is_refused(config_dir: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        load_settings(host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_listen_addresses_are_accepted(config_dir: Path, host: str) -> None:
    assert load_settings(host=host).host == host


def test_plain_http_gateway_is_refused_unless_it_is_on_this_machine(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match="https"):
        load_settings(gateway_url="http://gateway.example.com")
    assert load_settings(gateway_url="http://127.0.0.1:8080/").gateway_url == "http://127.0.0.1:8080"


def test_impersonation_needs_a_target(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match="impersonate-service-account"):
        load_settings(credentials="impersonate")


def test_configure_refuses_an_invalid_value_and_writes_nothing(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "--gateway-url", "http://gateway.example.com"]) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be an https:// URL" in err
    assert not (config_dir / "config.json").exists()


def test_malformed_config_file_is_one_readable_error(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_dir.mkdir()
    (config_dir / "config.json").write_text("{not json")

    assert main(["status"]) == 1

    err = capsys.readouterr().err
    assert err.startswith("claude-shim: error:") and err.count("\n") == 1
    assert "Traceback" not in err
