"""Fakes for Google's edge (token endpoint, keyring backend) with real RS256 ID tokens, and a shim under uvicorn."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import keyring
import keyring.backend
import keyring.errors
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt
from google.auth import jwt as google_jwt
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app as create_gateway
from gateway.config import Settings as GatewaySettings
from gateway.dev.iap import AssertionSigner, Identity, LocalIAP
from gateway.dev.mock_upstream import create_mock_upstream
from local_shim.auth import TokenProvider
from local_shim.config import ShimSettings
from local_shim.server import bind_loopback, create_app, make_server
from local_shim.store import StoredLogin, TokenStore
from tests.support.anthropic_sse import SSE_HEADERS, stream_events
from tests.support.audit import wait_for_rows
from tests.support.servers import FakeUpstream, Reply, lifespan, run_in_thread, serve

CLIENT_ID = "1234-desktop.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-desktop-client-secret"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE_URL = "https://oauth2.googleapis.com/revoke"
GOOGLE_ISSUER = "https://accounts.google.com"


class GoogleKey:
    """An RSA key standing in for Google's: signs ID tokens, and verifies them as IAP would."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.private_pem = pem.decode()
        self.kid = "test-" + secrets.token_hex(4)
        self.signer = crypt.RSASigner.from_string(pem, key_id=self.kid)
        self.public_pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def id_token(self, email: str, *, audience: str = CLIENT_ID, lifetime: int = 3600, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": GOOGLE_ISSUER,
            "aud": audience,
            "azp": audience,
            "sub": str(abs(hash(email)) % 10**21),
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_hex(8),  # two tokens minted in the same second still differ
            **claims,
        }
        return google_jwt.encode(self.signer, payload).decode()

    def verify(self, token: str, *, audience: str) -> dict[str, Any]:
        """IAP's check of a bearer ID token: signature, expiry, audience, issuer. Raises ValueError."""
        claims: dict[str, Any] = google_jwt.decode(token, certs={self.kid: self.public_pem}, audience=audience)
        if claims.get("iss") not in {GOOGLE_ISSUER, "accounts.google.com"}:
            raise ValueError("wrong issuer")
        return claims


@pytest.fixture(scope="session")
def google_key() -> GoogleKey:
    return GoogleKey()


class FakeGoogle:
    """Google's OAuth endpoints for a desktop client: consent (issuing codes), token exchange, refresh, revoke."""

    def __init__(self, key: GoogleKey) -> None:
        self.key = key
        self.lifetime = 3600
        self.refresh_tokens: dict[str, str] = {}
        self.codes: dict[str, dict[str, str]] = {}
        self.token_calls = 0
        self.grants: list[str] = []
        self.revoked: list[str] = []
        self.failure: tuple[int, dict[str, Any]] | None = None
        self.rotate_refresh_tokens = False
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def sign_in(self, email: str) -> str:
        """A refresh token for `email`, as a completed consent would have produced."""
        token = f"1//refresh-{next(self._counter)}-{secrets.token_hex(8)}"
        self.refresh_tokens[token] = email
        return token

    def consent(self, authorization_url: str, email: str) -> str:
        """The person approves in the browser: Google redirects to the loopback URL with a code and the state."""
        params = dict(parse_qsl(urlsplit(authorization_url).query))
        assert params["client_id"] == CLIENT_ID
        assert params["response_type"] == "code"
        assert params["code_challenge_method"] == "S256"
        assert set(params["scope"].split()) >= {"openid", "email"}
        redirect_uri = params["redirect_uri"]
        assert redirect_uri.startswith("http://127.0.0.1:")
        code = f"4/code-{secrets.token_hex(8)}"
        self.codes[code] = {
            "email": email,
            "challenge": params["code_challenge"],
            "redirect_uri": redirect_uri,
            "nonce": params.get("nonce", ""),
        }
        return f"{redirect_uri}?{urlencode({'state': params['state'], 'code': code, 'scope': 'openid email'})}"

    def handle(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint."""
        with self._lock:
            self.token_calls += 1
            self.grants.append(form.get("grant_type", ""))
        if self.failure is not None:
            return self.failure
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code", ""), None)
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if challenge != grant["challenge"]:
                return 400, {"error": "invalid_grant", "error_description": "Invalid code verifier."}
            return 200, self._tokens(grant["email"], self.sign_in(grant["email"]), nonce=grant["nonce"])
        if form.get("grant_type") == "refresh_token":
            email = self.refresh_tokens.get(form.get("refresh_token", ""))
            if email is None:
                return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            reply = self._tokens(email, None)
            if self.rotate_refresh_tokens:
                del self.refresh_tokens[form["refresh_token"]]
                reply["refresh_token"] = self.sign_in(email)
            return 200, reply
        return 400, {"error": "unsupported_grant_type"}

    def _tokens(self, email: str, refresh_token: str | None, *, nonce: str = "") -> dict[str, Any]:
        claims = {"nonce": nonce} if nonce else {}
        reply: dict[str, Any] = {
            "access_token": "ya29.access-" + secrets.token_hex(8),
            "expires_in": self.lifetime,
            "token_type": "Bearer",
            "scope": "openid https://www.googleapis.com/auth/userinfo.email",
            "id_token": self.key.id_token(email, lifetime=self.lifetime, **claims),
        }
        if refresh_token:
            reply["refresh_token"] = refresh_token
        return reply

    def respx_token(self, request: httpx.Request) -> httpx.Response:
        status, body = self.handle(dict(parse_qsl(request.content.decode())))
        return httpx.Response(status, json=body)

    def respx_revoke(self, request: httpx.Request) -> httpx.Response:
        token = dict(parse_qsl(request.content.decode())).get("token", "")
        self.revoked.append(token)
        self.refresh_tokens.pop(token, None)
        return httpx.Response(200, json={})

    def asgi(self) -> Starlette:
        """The same endpoints as a real server, for the shim in a subprocess."""

        async def token(request: Request) -> Response:
            form = dict(parse_qsl((await request.body()).decode()))
            status, body = self.handle(form)
            return JSONResponse(body, status_code=status)

        async def revoke(request: Request) -> Response:
            token = dict(parse_qsl((await request.body()).decode())).get("token", "")
            self.revoked.append(token)
            self.refresh_tokens.pop(token, None)
            return JSONResponse({})

        return Starlette(routes=[Route("/token", token, methods=["POST"]), Route("/revoke", revoke, methods=["POST"])])


@pytest.fixture
def google(google_key: GoogleKey) -> FakeGoogle:
    return FakeGoogle(google_key)


class FakeIAP:
    """IAP's programmatic access: a bearer ID token from an allowed client, or 401; a person not allowed, 403."""

    def __init__(self, app: Any, key: GoogleKey) -> None:
        self.app = app
        self.key = key
        self.seen: list[Headers] = []
        self.tokens: list[str] = []
        self.reject_next = 0
        self.denied: set[str] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        self.seen.append(headers)
        credential = headers.get("proxy-authorization") or headers.get("authorization") or ""
        token = credential.removeprefix("Bearer ")
        self.tokens.append(token)
        try:
            claims = self.key.verify(token, audience=CLIENT_ID)
            if self.reject_next:
                self.reject_next -= 1
                raise ValueError("Token has been revoked")
        except ValueError as error:
            await _plain(send, 401, f"Invalid IAP credentials: {error}")
            return
        if claims["email"] in self.denied:
            await _plain(send, 403, "You don't have access. Please contact your administrator.")
            return
        await self.app(scope, receive, send)


async def _plain(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": body})


class MemoryKeyring(keyring.backend.KeyringBackend):
    """The OS keyring's edge, in memory, so no test touches a developer's real keychain."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.values.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.values[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.values.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not found")


@pytest.fixture(autouse=True)
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "claude-shim"
    monkeypatch.setenv("CLAUDE_SHIM_CONFIG_DIR", str(directory))
    return directory


def shim_settings(**overrides: Any) -> ShimSettings:
    values: dict[str, Any] = {
        "gateway_url": "https://gateway.example.com",
        "oauth_client_id": CLIENT_ID,
        "oauth_client_secret": CLIENT_SECRET,
    }
    values.update(overrides)
    return ShimSettings(**values)


class Switch:
    """An ASGI app that passes each request to whichever app the current test plugged in: one server, many tests."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await self.app(scope, receive, send)


@dataclass
class Servers:
    """Loopback servers for Google's token endpoint and for IAP + gateway, started once per test session."""

    google: Switch
    google_url: str
    gateway: Switch
    gateway_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    google, gateway = Switch(), Switch()
    with serve(google) as google_url, serve(gateway) as gateway_url:
        yield Servers(google, google_url, gateway, gateway_url)


SECRET = "local-secret-for-tests"


@dataclass
class Stack:
    google: FakeGoogle
    iap: FakeIAP
    gateway: FakeUpstream
    google_url: str
    iap_url: str

    def settings(self, **overrides: Any) -> ShimSettings:
        values = {"gateway_url": self.iap_url, "token_endpoint": f"{self.google_url}/token"} | overrides
        return shim_settings(**values)

    def shim(self, **overrides: Any) -> AbstractContextManager[str]:
        return run_shim(self.settings(**overrides), secret=SECRET)


@pytest.fixture
def stack(google: FakeGoogle, google_key: GoogleKey, config_dir: Path, servers: Servers) -> Stack:
    TokenStore(config_dir).save(
        StoredLogin(refresh_token=google.sign_in("ada@example.com"), client_id=CLIENT_ID, email="ada@example.com")
    )
    gateway = FakeUpstream()
    gateway.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["Hello", " from", " the gateway"]))
    iap = FakeIAP(gateway, google_key)
    servers.google.app = google.asgi()
    servers.gateway.app = iap
    return Stack(google, iap, gateway, servers.google_url, servers.gateway_url)


IAP_AUDIENCE = "/projects/123456789/locations/europe-west1/services/claude-gateway"
MODEL = "claude-opus-5-5"


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


def id_token_identity(google_key: GoogleKey, identified: list[str]) -> Callable[[Headers], Awaitable[Identity | None]]:
    """The local IAP stand-in's `identify` for programmatic access: a Google ID token for the allowlisted desktop
    client (whose email is noted in `identified`), or nobody."""

    async def identify(headers: Headers) -> Identity | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            claims = google_key.verify(token, audience=CLIENT_ID)
        except ValueError:
            return None
        identified.append(claims["email"])
        return Identity(email=claims["email"], subject=f"accounts.google.com:{claims['sub']}")

    return identify


@pytest.fixture
def local_stack(google: FakeGoogle, google_key: GoogleKey, tmp_path: Path) -> Iterator[LocalStack]:
    signer = AssertionSigner()
    identified: list[str] = []
    identify = id_token_identity(google_key, identified)

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


@contextmanager
def run_shim(
    settings: ShimSettings, *, secret: str = "local-secret-for-tests", provider: TokenProvider | None = None
) -> Iterator[str]:
    """The shim app under real uvicorn on a free loopback port, as `claude-shim serve` runs it."""
    sock = bind_loopback("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        server = make_server(create_app(settings, port=port, secret=secret, provider=provider), access_log=False)
        with run_in_thread(server, sock):
            yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()


class _Fields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


def page_fields(page: str) -> dict[str, str]:
    parser = _Fields()
    parser.feed(page)
    return parser.fields


def json_of(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.content)
    return data
