"""A local Identity-Aware Proxy stand-in: it signs real ES256 assertions, so the real verification runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import crypt
from google.auth import jwt as google_jwt
from starlette.datastructures import Headers

from gateway.identity import IAP_ISSUER

PUBLIC_KEY_PATH = "/_iap/public_key"

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the stand-in says is calling."""

    email: str
    subject: str
    hd: str | None = None


class AssertionSigner:
    """An ES256 key pair that signs IAP-shaped assertions, and its public key map (kid -> PEM)."""

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or f"local-{uuid.uuid4().hex[:8]}"
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._signer = crypt.ES256Signer.from_string(pem, key_id=self.kid)
        self._public_pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def public_key_map(self) -> dict[str, str]:
        return {self.kid: self._public_pem}

    def sign(
        self,
        email: str,
        *,
        audience: str,
        subject: str | None = None,
        hd: str | None = None,
        lifetime: int = 600,
        issuer: str = IAP_ISSUER,
        issued_at: int | None = None,
        **claims: Any,
    ) -> str:
        """An assertion as IAP would sign it for this person."""
        now = int(time.time()) if issued_at is None else issued_at
        payload: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "sub": subject or f"accounts.google.com:{abs(hash(email)) % 10**21}",
            "email": email,
            **claims,
        }
        if hd:
            payload["hd"] = hd
        token: bytes = google_jwt.encode(  # type: ignore[no-untyped-call]
            self._signer, payload, header={"alg": "ES256"}
        )
        return token.decode()


def fixed_identity(identity: Identity) -> Callable[[Headers], Awaitable[Identity | None]]:
    """An `identify` that vouches for one person whatever the request (the `dev` command's)."""

    async def identify(headers: Headers) -> Identity | None:
        return identity

    return identify


class LocalIAP:
    """ASGI middleware standing in for IAP: strips forged identity headers, asks `identify` who is calling,
    and forwards with a signed `x-goog-iap-jwt-assertion`. Serves its key map at `/_iap/public_key`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        signer: AssertionSigner,
        audience: str,
        identify: Callable[[Headers], Awaitable[Identity | None]],
    ) -> None:
        self.app = app
        self.signer = signer
        self.audience = audience
        self.identify = identify
        self._key_map = orjson.dumps(signer.public_key_map())
        # Like IAP, reuse a person's assertion while it has time left rather than signing every request.
        self._assertions: dict[Identity, tuple[str, float]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == PUBLIC_KEY_PATH:
            await _respond(send, 200, self._key_map)
            return
        identity = await self.identify(Headers(scope=scope))
        if identity is None:
            await _respond(send, 401, b'{"error":"Invalid IAP credentials: missing or invalid bearer token"}')
            return
        assertion = self._assertion_for(identity)
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if not name.lower().replace(b"_", b"-").startswith(b"x-goog-")
        ]
        headers.append((b"x-goog-iap-jwt-assertion", assertion.encode()))
        headers.append((b"x-goog-authenticated-user-email", f"accounts.google.com:{identity.email}".encode()))
        await self.app({**scope, "headers": headers}, receive, send)

    def _assertion_for(self, identity: Identity) -> str:
        cached = self._assertions.get(identity)
        if cached is not None and cached[1] - time.time() > 60:
            return cached[0]
        lifetime = 600
        assertion = self.signer.sign(
            identity.email, audience=self.audience, subject=identity.subject, hd=identity.hd, lifetime=lifetime
        )
        if len(self._assertions) > 1000:
            self._assertions.clear()
        self._assertions[identity] = (assertion, time.time() + lifetime)
        return assertion


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
