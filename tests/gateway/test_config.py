from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import Settings


def test_missing_iap_audience_refuses_to_start_outside_dev_mode() -> None:
    with pytest.raises(ValidationError, match="GATEWAY_IAP_AUDIENCE is not set"):
        Settings()


def test_dev_mode_may_run_without_an_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DEV_MODE", "1")

    assert Settings().iap_audience == []


def test_settings_come_from_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    audiences = "/projects/1/locations/r/services/s, /projects/1/global/backendServices/2"
    monkeypatch.setenv("GATEWAY_IAP_AUDIENCE", audiences)
    monkeypatch.setenv("GATEWAY_ALLOWED_DOMAINS", "Example.com,corp.example")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("GATEWAY_UPSTREAM_URL", "https://api.anthropic.com/")

    settings = Settings()

    assert settings.iap_audience == ["/projects/1/locations/r/services/s", "/projects/1/global/backendServices/2"]
    assert settings.allowed_domains == ["example.com", "corp.example"]
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-from-env"
    assert settings.port == 9999
    assert settings.upstream_url == "https://api.anthropic.com"


def test_gateway_prefixed_key_is_accepted_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DEV_MODE", "true")
    monkeypatch.setenv("GATEWAY_ANTHROPIC_API_KEY", "sk-ant-secret-value")

    settings = Settings()

    assert settings.anthropic_api_key is not None
    assert "sk-ant-secret-value" not in repr(settings)
    assert "sk-ant-secret-value" not in str(settings.model_dump())
