"""Shim → local IAP (checking the shim's Google ID token) → the real gateway → mock Anthropic, all under uvicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.app import create_app as create_gateway
from gateway.config import Settings as GatewaySettings
from gateway.dev.iap import AssertionSigner, Identity, LocalIAP
from gateway.dev.mock_upstream import create_mock_upstream
from local_shim.store import StoredLogin, TokenStore
from tests.local_shim.conftest import CLIENT_ID, CLIENT_SECRET, FakeGoogle, GoogleKey, run_shim, shim_settings
from tests.support.audit import wait_for_rows
from tests.support.servers import serve

pytestmark = pytest.mark.slow

IAP_AUDIENCE = "/projects/123456789/locations/europe-west1/services/claude-gateway"
MODEL = "claude-opus-5-5"
SECRET = "e2e-local-secret"


@dataclass
class LocalStack:
    google: FakeGoogle
    google_url: str
    iap_url: str
    audit_db: Path
    identified: list[str]

    def rows(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Audit rows, once the gateway's background writer has flushed `count` of them."""
        return wait_for_rows(self.audit_db, count, timeout)


@pytest.fixture
def local_stack(google: FakeGoogle, google_key: GoogleKey, tmp_path: Path) -> Iterator[LocalStack]:
    signer = AssertionSigner()
    identified: list[str] = []

    async def identify(headers: Headers) -> Identity | None:
        # IAP's programmatic access: a Google ID token for the allowlisted desktop client, or nothing.
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            claims = google_key.verify(token, audience=CLIENT_ID)
        except ValueError:
            return None
        identified.append(claims["email"])
        return Identity(email=claims["email"], subject=f"accounts.google.com:{claims['sub']}")

    async def public_keys(request: Any) -> JSONResponse:
        return JSONResponse(signer.public_key_map())

    keys = Starlette(routes=[Route("/public_key", public_keys)])
    audit_db = tmp_path / "audit.db"
    with serve(create_mock_upstream(deltas=6)) as upstream_url, serve(keys) as keys_url:
        gateway = create_gateway(
            GatewaySettings(
                iap_audience=[IAP_AUDIENCE],
                iap_certs_url=f"{keys_url}/public_key",
                upstream_url=upstream_url,
                anthropic_api_key="sk-ant-test-key",
                audit_sink=f"sqlite:///{audit_db}",
            )
        )
        iap = LocalIAP(gateway, signer=signer, audience=IAP_AUDIENCE, identify=identify)
        with serve(google.asgi()) as google_url, serve(iap) as iap_url:
            yield LocalStack(google, google_url, iap_url, audit_db, identified)


def sign_in(google: FakeGoogle, directory: Path, email: str, mode: str = "auto") -> None:
    TokenStore(directory, mode).save(  # type: ignore[arg-type]
        StoredLogin(refresh_token=google.sign_in(email), client_id=CLIENT_ID, email=email)
    )


def test_sdk_streams_through_shim_iap_and_gateway_and_the_audit_names_the_user(
    local_stack: LocalStack, config_dir: Path
) -> None:
    sign_in(local_stack.google, config_dir, "ada@example.com")
    settings = shim_settings(gateway_url=local_stack.iap_url, token_endpoint=f"{local_stack.google_url}/token")

    with (
        run_shim(settings, secret=SECRET) as shim_url,
        anthropic.Anthropic(base_url=shim_url, auth_token=SECRET, max_retries=0) as client,
        client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=[{"role": "user", "content": "through the shim"}],
            extra_headers={"x-claude-code-session-id": "shim-session"},
        ) as stream,
    ):
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(pieces).startswith("Hello from the mock upstream")
    assert len(pieces) == 6 and final.usage.output_tokens == 6
    assert local_stack.identified == ["ada@example.com"]
    [row] = local_stack.rows(1)
    assert row["user_email"] == "ada@example.com"
    assert row["outcome"] == "ok"
    assert row["session_id"] == "shim-session"


def test_claude_shim_run_carries_a_python_sdk_child_through_the_stack(local_stack: LocalStack, tmp_path: Path) -> None:
    """The issue's "done when": `claude-shim run -- python -c '<anthropic SDK streaming call>'`."""
    config = tmp_path / "shim-config"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps(
            {
                "gateway_url": local_stack.iap_url,
                "oauth_client_id": CLIENT_ID,
                "oauth_client_secret": CLIENT_SECRET,
                "token_endpoint": f"{local_stack.google_url}/token",
                "token_store": "file",
            }
        )
    )
    sign_in(local_stack.google, config, "grace@example.com", mode="file")
    child = textwrap.dedent(
        f"""
        import anthropic
        client = anthropic.Anthropic(max_retries=0)  # ANTHROPIC_BASE_URL and ANTHROPIC_AUTH_TOKEN from the shim
        with client.messages.stream(
            model={MODEL!r}, max_tokens=64, messages=[{{"role": "user", "content": "from a child"}}]
        ) as stream:
            for text in stream.text_stream:
                print(text, end="", flush=True)
        """
    )
    env = {
        **os.environ,
        "CLAUDE_SHIM_CONFIG_DIR": str(config),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",  # never a developer's real keychain
    }
    shim = Path(sys.executable).with_name("claude-shim")

    done = subprocess.run(
        [str(shim), "run", "--", sys.executable, "-c", child],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from the mock upstream, relayed "  # six streamed pieces, nothing else
    assert done.stderr == ""
    [row] = local_stack.rows(1)
    assert row["user_email"] == "grace@example.com"
    assert "ANTHROPIC_AUTH_TOKEN" not in (config / "claude-shim.log").read_text()
