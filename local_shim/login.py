"""`claude-shim login`: Google's desktop-app sign-in (authorization code, PKCE S256, loopback redirect, state)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread
import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from local_shim.auth import IdToken, parse_id_token, token_request
from local_shim.config import ShimSettings
from local_shim.errors import LoginError, ShimError
from local_shim.store import StoredLogin, TokenStore

logger = logging.getLogger("local_shim.login")

SCOPES = "openid email"


@dataclass(frozen=True)
class LoginResult:
    """Who signed in, where the refresh token went, and the first ID token."""

    email: str | None
    stored_in: str
    id_token: IdToken


class _Redirect:
    """The loopback listener the browser is sent back to; it accepts only the redirect that carries our state."""

    def __init__(self, state: str) -> None:
        self._state = state
        self.code: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=10)
            while (await asyncio.wait_for(reader.readline(), timeout=10)).strip():
                pass  # headers carry nothing we need
            parts = request_line.decode("latin-1").split()
            status, message = self._answer(parts[1] if len(parts) >= 2 else "/")
            page = f"<!doctype html><title>claude-shim</title><p>{html.escape(message)}</p>".encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Length: {len(page)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n".encode()
                + page
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, target: str) -> tuple[str, str]:
        url = urlsplit(target)
        if url.path != "/":
            return "404 Not Found", "Not found."
        params = dict(parse_qsl(url.query))
        if params.get("state") != self._state:
            # Not the redirect of this login: maybe another tab, maybe a page trying to plant its own code.
            logger.warning("refused a sign-in redirect whose state does not match this login")
            return "400 Bad Request", "This sign-in response does not belong to the login in progress."
        if self.code.done():
            return "400 Bad Request", "This sign-in has already completed."
        if "error" in params:
            self.code.set_exception(LoginError(f"Sign-in was not completed in the browser ({params['error']})."))
            return "400 Bad Request", "Sign-in was not completed. You can close this tab."
        if not params.get("code"):
            return "400 Bad Request", "The sign-in response has no authorization code."
        self.code.set_result(params["code"])
        return "200 OK", "Signed in. You can close this tab and return to the terminal."


async def login(
    settings: ShimSettings,
    store: TokenStore,
    *,
    open_browser: Callable[[str], object],
    http: httpx.AsyncClient | None = None,
) -> LoginResult:
    """Sign the person in through their browser and store the refresh token."""
    client_id, client_secret = settings.require_oauth_client()
    verifier = generate_token(64)
    state = generate_token(32)
    nonce = generate_token(32)
    redirect = _Redirect(state)
    server = await asyncio.start_server(redirect.handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        redirect_uri = f"http://127.0.0.1:{port}/"
        url = prepare_grant_uri(
            settings.authorization_endpoint,
            client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=SCOPES,
            state=state,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
            nonce=nonce,
            access_type="offline",
            # Google returns a refresh token only with fresh consent.
            prompt="consent",
        )
        open_browser(url)
        try:
            code = await asyncio.wait_for(redirect.code, timeout=settings.login_timeout_seconds)
        except TimeoutError:
            raise LoginError("Timed out waiting for the browser sign-in: run `claude-shim login` again.") from None

    form = prepare_token_request(
        "authorization_code",
        code=code,
        redirect_uri=redirect_uri,
        code_verifier=verifier,
        client_id=client_id,
        client_secret=client_secret,
    )
    async with _client(settings, http) as client:
        data = await token_request(client, settings.token_endpoint, form, timeout=settings.google_timeout)
    if not isinstance(data.get("id_token"), str):
        raise LoginError("Google returned no ID token: the OAuth client must allow the `openid email` scopes.")
    id_token = parse_id_token(data["id_token"], audience=client_id, nonce=nonce)
    refresh_token = data.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise LoginError(
            "Google returned no refresh token: remove claude-shim's access at https://myaccount.google.com/permissions "
            "and run `claude-shim login` again."
        )
    login_record = StoredLogin(refresh_token=refresh_token, client_id=client_id, email=id_token.email)
    stored_in = await anyio.to_thread.run_sync(store.save, login_record)
    return LoginResult(email=id_token.email, stored_in=stored_in, id_token=id_token)


async def logout(
    settings: ShimSettings, store: TokenStore, *, http: httpx.AsyncClient | None = None
) -> tuple[bool, bool]:
    """Forget the stored sign-in and ask Google to revoke it; returns (was signed in, revoked at Google)."""
    try:
        login_record = await anyio.to_thread.run_sync(store.load)
    except ShimError:
        login_record = None
    revoked = False
    if login_record is not None:
        async with _client(settings, http) as client:
            try:
                response = await client.post(settings.revocation_endpoint, data={"token": login_record.refresh_token})
                revoked = response.is_success
            except httpx.HTTPError as error:
                logger.info("revoking the refresh token failed: %s", type(error).__name__)
    removed = await anyio.to_thread.run_sync(store.delete)
    return removed or login_record is not None, revoked


@contextlib.asynccontextmanager
async def _client(settings: ShimSettings, http: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's HTTP client, or a short-lived one of our own."""
    if http is not None:
        yield http
        return
    async with httpx.AsyncClient(timeout=settings.google_timeout) as client:
        yield client
