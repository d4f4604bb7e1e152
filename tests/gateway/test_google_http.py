from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qs

import google.auth.exceptions
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.google_http import GoogleCredentials

pytestmark = pytest.mark.anyio

TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class TokenEndpoint:
    """Google's token endpoint at the network edge: counts grants and hands out numbered tokens."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.grants: list[dict[str, str]] = []
        self.delay = delay

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, str(request.url)) == ("POST", TOKEN_URI)
        self.grants.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        await asyncio.sleep(self.delay)
        token = f"ya29.token-{len(self.grants)}"
        return httpx.Response(200, json={"access_token": token, "expires_in": 3600, "token_type": "Bearer"})


def _service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "gateway-test",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": "claude-gateway@gateway-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": TOKEN_URI,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))


async def test_service_account_token_is_granted_through_the_given_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _service_account(tmp_path, monkeypatch)
    endpoint = TokenEndpoint()
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as client:
        credentials = GoogleCredentials(client, [SCOPE])

        assert await credentials.load() == "gateway-test"
        assert await credentials.headers() == {"authorization": "Bearer ya29.token-1"}
        assert await credentials.token() == "ya29.token-1"  # still valid: no second grant
        assert await credentials.token(force=True) == "ya29.token-2"

    assert [g["grant_type"] for g in endpoint.grants] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"] * 2


async def test_concurrent_callers_wait_for_one_refresh_while_the_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _service_account(tmp_path, monkeypatch)
    endpoint = TokenEndpoint(delay=0.5)
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as client:
        credentials = GoogleCredentials(client, [SCOPE])
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            tokens = await asyncio.gather(*(credentials.token() for _ in range(5)))
        finally:
            ticker.cancel()

    assert tokens == ["ya29.token-1"] * 5
    assert len(endpoint.grants) == 1
    assert ticks >= 10  # the event loop kept running while the token was fetched


async def test_an_unreachable_token_endpoint_is_google_auths_transport_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _service_account(tmp_path, monkeypatch)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(google.auth.exceptions.TransportError, match="connection refused"):
            await GoogleCredentials(client, [SCOPE]).token()


async def test_no_credentials_is_default_credentials_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(TokenEndpoint())) as client:
        with pytest.raises(google.auth.exceptions.DefaultCredentialsError):
            await GoogleCredentials(client, [SCOPE]).headers()
