"""Google's OAuth token endpoint on loopback, and a service-account key (a real RSA key) whose `token_uri` points
at it: google-auth then does its real JWT-bearer grant, so the gateway's ADC code runs unpatched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.support.servers import lifespan, read_body, serve

SA_EMAIL = "claude-gateway@gw-project.iam.gserviceaccount.com"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class FakeGoogleOAuth:
    """`POST /token`: checks the signed assertion against the key's public half and hands out numbered tokens.

    `expires_in` sets the lifetime of the next tokens, `delay` slows the answer, `status` makes it fail."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.token_uri = ""
        self.expires_in = 3600
        self.delay = 0.0
        self.status = 200
        self.grants: list[dict[str, Any]] = []

    @property
    def issued(self) -> list[str]:
        return [f"ya29.fake-token-{n}" for n in range(1, len(self.grants) + 1)]

    def service_account_info(self, project: str | None = "gw-project") -> dict[str, Any]:
        info = {
            "type": "service_account",
            "client_email": SA_EMAIL,
            "client_id": "1234567890",
            "private_key_id": "test-key-id",
            "private_key": self.private_pem,
            "token_uri": self.token_uri,
        }
        if project:
            info["project_id"] = project
        return info

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if self.delay:
            await asyncio.sleep(self.delay)
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if scope["path"] != "/token" or form.get("grant_type") != JWT_BEARER:
            await _reply(send, 400, {"error": "invalid_grant", "error_description": "unexpected request"})
            return
        # google-auth addresses the assertion to Google's endpoint whatever `token_uri` says.
        claims = jwt.decode(form["assertion"], certs=self.public_pem, audience=GOOGLE_TOKEN_ENDPOINT)
        if self.status != 200:
            await _reply(send, self.status, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return
        self.grants.append(claims)
        token = f"ya29.fake-token-{len(self.grants)}"
        await _reply(send, 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})


async def _reply(send: Any, status: int, data: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": orjson.dumps(data)})


@contextmanager
def google_credentials(directory: Path, project: str | None = "gw-project") -> Iterator[tuple[FakeGoogleOAuth, Path]]:
    """A running token endpoint and a key file for GOOGLE_APPLICATION_CREDENTIALS (set it with monkeypatch)."""
    oauth = FakeGoogleOAuth()
    with serve(oauth) as url:
        oauth.token_uri = f"{url}/token"
        key_file = directory / "service-account.json"
        key_file.write_text(json.dumps(oauth.service_account_info(project)))
        yield oauth, key_file
