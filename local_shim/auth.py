"""Google ID tokens for IAP: minted from the person's sign-in or a service account, cached, refreshed once."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import httpx
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from google.auth import exceptions as google_exceptions
from google.auth import jwt as google_jwt

from local_shim.config import ShimSettings, config_dir
from local_shim.errors import AuthError, GoogleUnavailableError, ShimError
from local_shim.store import StoredLogin, TokenStore

logger = logging.getLogger("local_shim.auth")

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
LOGIN_HINT = "run `claude-shim login`"
# A token this close to expiry is not handed out even when refreshing it failed.
_LAST_RESORT_SECONDS = 30.0


@dataclass(frozen=True)
class IdToken:
    """An OpenID Connect ID token and the claims the shim relies on."""

    value: str = field(repr=False)
    audience: str
    expires_at: float
    email: str | None = None

    def seconds_left(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


def parse_id_token(token: str, *, audience: str, nonce: str | None = None, now: float | None = None) -> IdToken:
    """Read an ID token straight from Google and check issuer, audience and expiry.

    The token came from Google over TLS, so its signature is not checked here (OpenID Connect Core 3.1.3.7);
    IAP checks it on every request.
    """
    try:
        claims: dict[str, Any] = google_jwt.decode(token, verify=False)  # type: ignore[no-untyped-call]
    except (ValueError, google_exceptions.GoogleAuthError):
        raise AuthError("Google returned something that is not an ID token.") from None
    issuer = claims.get("iss")
    if issuer not in GOOGLE_ISSUERS:
        raise AuthError(f"The ID token's issuer is {issuer!r}, not Google.")
    token_audience = claims.get("aud")
    audiences = token_audience if isinstance(token_audience, list) else [token_audience]
    if audience not in audiences:
        raise AuthError(
            f"The ID token is for audience {token_audience!r} but IAP expects {audience!r}: "
            "check --oauth-client-id / --audience with `claude-shim configure`."
        )
    if nonce is not None and claims.get("nonce") != nonce:
        raise AuthError(f"The ID token does not answer this sign-in (nonce mismatch): {LOGIN_HINT} again.")
    expires_at = claims.get("exp")
    if not isinstance(expires_at, int | float) or expires_at <= (time.time() if now is None else now):
        raise AuthError(
            f"Google returned an ID token that has already expired: check this computer's clock, then {LOGIN_HINT}."
        )
    email = claims.get("email")
    return IdToken(
        value=token, audience=audience, expires_at=float(expires_at), email=email if isinstance(email, str) else None
    )


async def token_request(http: httpx.AsyncClient, url: str, form: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """POST a form to Google's token endpoint and return the JSON, or raise a ShimError that says what to do."""
    try:
        response = await http.post(
            url,
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            timeout=timeout,
        )
    except httpx.HTTPError as error:
        raise GoogleUnavailableError(f"Cannot reach Google's token service at {url}: {type(error).__name__}.") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise GoogleUnavailableError(f"Google's token service answered HTTP {response.status_code} without JSON.")
    if response.is_success and "error" not in data:
        return data
    code = str(data.get("error", response.status_code))
    if code == "invalid_grant":
        raise AuthError(f"Your Google sign-in has expired or was revoked (invalid_grant): {LOGIN_HINT}.")
    if code in {"invalid_client", "unauthorized_client"}:
        raise AuthError(
            f"Google rejected the OAuth client ({code}): its id or secret is wrong or was rotated; "
            "ask your admin for the current `claude-shim configure` command."
        )
    if response.status_code >= 500:
        raise GoogleUnavailableError(f"Google's token service failed (HTTP {response.status_code}); try again shortly.")
    description = data.get("error_description")
    raise AuthError(f"Google refused the token request ({code}{': ' + str(description) if description else ''}).")


class TokenProvider(abc.ABC):
    """Hands out a valid ID token, minting a new one ahead of expiry, once for all concurrent callers."""

    def __init__(self, *, audience: str, refresh_margin: float) -> None:
        self.audience = audience
        self._margin = refresh_margin
        self._token: IdToken | None = None
        self._lock = asyncio.Lock()

    def _usable(self, token: IdToken | None, rejected: str | None, margin: float) -> bool:
        return token is not None and token.value != rejected and token.seconds_left() > margin

    async def get(self, *, rejected: str | None = None) -> IdToken:
        """A token good for a while; `rejected` names a token the gateway refused, which is never returned."""
        if self._usable(self._token, rejected, self._margin):
            assert self._token is not None
            return self._token
        async with self._lock:
            # Whoever held the lock may have refreshed already: then their token is ours too.
            if self._usable(self._token, rejected, self._margin):
                assert self._token is not None
                return self._token
            try:
                self._token = await self._mint()
            except ShimError as error:
                # Google being briefly unreachable should not cut off a token that still works.
                if isinstance(error, GoogleUnavailableError) and self._usable(
                    self._token, rejected, _LAST_RESORT_SECONDS
                ):
                    logger.warning("refreshing the ID token failed, using the current one: %s", error.message)
                    assert self._token is not None
                    return self._token
                raise
            logger.info("minted an ID token for %s, valid %d s", self._token.email or "?", self._token.seconds_left())
            return self._token

    @abc.abstractmethod
    async def _mint(self) -> IdToken:
        """A fresh ID token from Google."""

    async def aclose(self) -> None:
        """Release network resources; a provider that holds none has nothing to do."""
        return None

    async def __aenter__(self) -> TokenProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class UserTokenProvider(TokenProvider):
    """ID tokens for the signed-in person, from the refresh token `claude-shim login` stored."""

    def __init__(self, settings: ShimSettings, store: TokenStore, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(audience=settings.id_token_audience, refresh_margin=settings.refresh_margin_seconds)
        self._settings = settings
        self._store = store
        self._http = http or httpx.AsyncClient(timeout=settings.google_timeout)
        self._owns_http = http is None

    async def _mint(self) -> IdToken:
        client_id, client_secret = self._settings.require_oauth_client()
        login = await anyio.to_thread.run_sync(self._store.load)
        if login is None:
            raise AuthError(f"Not signed in: {LOGIN_HINT}.")
        if login.client_id != client_id:
            raise AuthError(f"You signed in with a different OAuth client than the one configured: {LOGIN_HINT}.")
        form = prepare_token_request(
            "refresh_token", refresh_token=login.refresh_token, client_id=client_id, client_secret=client_secret
        )
        data = await token_request(
            self._http, self._settings.token_endpoint, form, timeout=self._settings.google_timeout
        )
        if not isinstance(data.get("id_token"), str):
            raise AuthError(f"Google returned no ID token: the sign-in lacks the `openid` scope; {LOGIN_HINT}.")
        token = parse_id_token(data["id_token"], audience=self.audience)
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated != login.refresh_token:
            updated = StoredLogin(refresh_token=rotated, client_id=client_id, email=token.email or login.email)
            await anyio.to_thread.run_sync(self._store.save, updated)
        return token

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


class GoogleAuthProvider(TokenProvider):
    """ID tokens for a service account: Application Default Credentials, or impersonation of another account."""

    def __init__(self, settings: ShimSettings) -> None:
        super().__init__(audience=settings.id_token_audience, refresh_margin=settings.refresh_margin_seconds)
        self._settings = settings
        self._credentials: Any = None

    async def _mint(self) -> IdToken:
        value = await anyio.to_thread.run_sync(self._fetch)
        return parse_id_token(value, audience=self.audience)

    def _fetch(self) -> str:
        import google.auth
        import google.auth.transport.requests
        import google.oauth2.id_token
        from google.auth import impersonated_credentials

        request = google.auth.transport.requests.Request()
        try:
            if self._settings.credentials == "adc":
                token: str = google.oauth2.id_token.fetch_id_token(request, self.audience)  # type: ignore[no-untyped-call]
                return token
            if self._credentials is None:
                source, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
                target = impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
                    source_credentials=source,
                    target_principal=self._settings.impersonate_service_account,
                    target_scopes=[CLOUD_PLATFORM_SCOPE],
                )
                self._credentials = impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
                    target, target_audience=self.audience, include_email=True
                )
            self._credentials.refresh(request)
            return str(self._credentials.token)
        except google_exceptions.DefaultCredentialsError:
            raise AuthError(
                "No service-account credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
                "key file or run on Google Cloud (a gcloud user login cannot mint ID tokens; use --credentials user "
                "or --credentials impersonate)."
            ) from None
        except google_exceptions.TransportError as error:
            raise GoogleUnavailableError(f"Cannot reach Google to mint an ID token: {_first_line(error)}") from None
        except google_exceptions.GoogleAuthError as error:
            raise AuthError(f"Google refused to mint an ID token: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def build_provider(settings: ShimSettings, *, http: httpx.AsyncClient | None = None) -> TokenProvider:
    """The token provider the settings ask for."""
    if settings.credentials == "user":
        return UserTokenProvider(settings, TokenStore(config_dir(), settings.token_store), http)
    return GoogleAuthProvider(settings)
