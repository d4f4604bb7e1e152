"""`claude-shim claude-settings`, `claude-shim token` (the apiKeyHelper) and what `doctor` says about both set-ups."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from local_shim import claude_settings
from local_shim.cli import main
from local_shim.store import TokenStore
from tests.local_shim.conftest import CLIENT_ID, CLIENT_SECRET, GoogleKey, Stack, run_shim, shim_settings


@pytest.fixture
def claude_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "claude-config"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(directory))
    return directory


@pytest.fixture
def env_settings(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The shim configured through its environment against the fake Google and IAP; Ada signed in."""
    for name, value in {
        "GATEWAY_URL": stack.iap_url,
        "OAUTH_CLIENT_ID": CLIENT_ID,
        "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        "TOKEN_ENDPOINT": f"{stack.google_url}/token",
    }.items():
        monkeypatch.setenv(f"CLAUDE_SHIM_{name}", value)
    return stack


def settings_file(directory: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((directory / "settings.json").read_text())
    return data


def test_gateway_settings_name_the_shims_port_and_keep_the_persons_other_settings(
    env_settings: Stack, claude_dir: Path
) -> None:
    claude_dir.mkdir()
    (claude_dir / "settings.json").write_text(json.dumps({"model": "opus", "env": {"FOO": "1"}}))

    assert main(["claude-settings", "gateway", "--port", "9123"]) == 0

    assert settings_file(claude_dir) == {
        "model": "opus",
        "env": {"FOO": "1"},
        "forceLoginMethod": "gateway",
        "forceLoginGatewayUrl": "http://127.0.0.1:9123",
    }


def test_switching_modes_removes_what_the_other_mode_wrote(env_settings: Stack, claude_dir: Path) -> None:
    assert main(["claude-settings", "helper"]) == 0
    helper = settings_file(claude_dir)
    assert main(["claude-settings", "gateway"]) == 0
    gateway = settings_file(claude_dir)
    assert main(["claude-settings", "helper"]) == 0

    assert helper["env"] == {"ANTHROPIC_BASE_URL": env_settings.iap_url, "CLAUDE_CODE_API_KEY_HELPER_TTL_MS": "1800000"}
    assert str(helper["apiKeyHelper"]).endswith("claude-shim token")
    assert gateway == {"forceLoginMethod": "gateway", "forceLoginGatewayUrl": "http://127.0.0.1:8787"}
    assert settings_file(claude_dir) == helper


def test_a_settings_file_that_is_not_json_is_one_readable_error(
    env_settings: Stack, claude_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claude_dir.mkdir()
    (claude_dir / "settings.json").write_text("{not json")

    assert main(["claude-settings", "gateway"]) == 1

    err = capsys.readouterr().err
    assert err.startswith("claude-shim: error: Cannot read Claude Code's settings") and err.count("\n") == 1
    assert (claude_dir / "settings.json").read_text() == "{not json"


def test_token_prints_one_fresh_id_token_and_nothing_else(
    env_settings: Stack, google_key: GoogleKey, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token"]) == 0

    out, err = capsys.readouterr()
    token = out.removesuffix("\n")
    assert "\n" not in token and err == ""
    claims = google_key.verify(token, audience=CLIENT_ID)
    assert claims["email"] == "ada@example.com" and claims["exp"] - claims["iat"] == 3600


def test_token_without_a_sign_in_prints_nothing_on_stdout_and_one_line_on_stderr(
    env_settings: Stack, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    TokenStore(config_dir).delete()

    assert main(["token"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err == "claude-shim: error: Not signed in: run `claude-shim login`.\n"


def test_doctor_says_when_nothing_answers_on_the_gateway_sign_in_port(env_settings: Stack, claude_dir: Path) -> None:
    settings = shim_settings(gateway_url=env_settings.iap_url, port=1)
    claude_settings.write("gateway", settings)

    [mode, shim] = claude_settings.check(settings)

    assert mode.ok and "http://127.0.0.1:1" in mode.detail
    assert not shim.ok and shim.fix is not None and "claude-shim serve --port 1" in shim.fix


def test_doctor_finds_the_running_shim_for_the_gateway_sign_in(env_settings: Stack, claude_dir: Path) -> None:
    with run_shim(shim_settings(gateway_url=env_settings.iap_url)) as shim_url:
        settings = shim_settings(gateway_url=env_settings.iap_url, port=httpx.URL(shim_url).port)
        claude_settings.write("gateway", settings)
        checks = claude_settings.check(settings)

    assert [check.ok for check in checks] == [True, True]


def test_doctor_flags_a_sign_in_to_another_port_and_a_helper_aimed_elsewhere(
    env_settings: Stack, claude_dir: Path
) -> None:
    claude_settings.write("gateway", shim_settings(gateway_url=env_settings.iap_url, port=9000))
    [other_port] = claude_settings.check(shim_settings(gateway_url=env_settings.iap_url, port=9001))
    claude_settings.write("helper", shim_settings(gateway_url="https://old-gateway.example.com"))
    [other_gateway] = claude_settings.check(shim_settings(gateway_url=env_settings.iap_url))

    assert not other_port.ok and "9000" in other_port.detail and "9001" in other_port.detail
    assert not other_gateway.ok and "old-gateway" in other_gateway.detail
    assert other_gateway.fix == "run `claude-shim claude-settings helper`"


def test_doctor_reports_a_helper_that_cannot_mint_a_token(
    env_settings: Stack, claude_dir: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")  # the helper runs as a process
    settings = shim_settings(gateway_url=env_settings.iap_url)
    claude_settings.write("helper", settings)
    TokenStore(config_dir).delete()

    [mode, helper] = claude_settings.check(settings)

    assert mode.ok
    assert not helper.ok and "Not signed in" in helper.detail
