"""One HTTP client for Google's own endpoints (IAP keys, Cloud Identity, OAuth tokens), and google-auth over it.

google-auth refreshes credentials synchronously, through the `google.auth.transport.Request` it is given. Its
async API (`google.auth.aio`) has static credentials only, not the service-account, user or metadata-server
credentials ADC finds, and the older `_default_async` is private and falls back to blocking calls on Cloud Run.
So a refresh runs in a worker thread (JWT signing is CPU work too), and each HTTP call it makes is sent on the event
loop through the shared httpx client by `ThreadRequest`, google-auth's transport interface in a few lines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio.from_thread
import anyio.to_thread
import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import httpx

logger = logging.getLogger("gateway.google")

# Google's endpoints answer within a second or so. A hung one must not hold a token refresh, and every request
# waiting for it, for long; IAP keys set a shorter total deadline of their own.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=10)


def google_client() -> httpx.AsyncClient:
    """The client for Google's endpoints: TLS checked against certifi's roots, no proxies from the environment,
    no redirects followed."""
    return httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, follow_redirects=False, trust_env=False)


class ThreadRequest(google.auth.transport.Request):
    """google-auth's blocking transport for a worker thread started by anyio: each call is sent on the event loop
    through `client`, so the thread waits and the loop does not."""

    # No `session` attribute, so google-auth's opt-in mTLS to the metadata server (GCE_METADATA_MTLS_MODE, which
    # mounts a requests adapter there) does not apply: Cloud Run has no such certificates.

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        try:
            response = anyio.from_thread.run(self._send, method, url, body, headers, timeout)
        except httpx.HTTPError as exc:
            # google-auth tells "no answer" (e.g. not on Compute Engine) from a refusal by this exception.
            message = f"{method} {url}: {exc or type(exc).__name__}"
            raise google.auth.exceptions.TransportError(message) from exc  # type: ignore[no-untyped-call]
        return _Response(response)

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None, timeout: float | None
    ) -> httpx.Response:
        return await self._client.request(
            method, url, content=body, headers=headers, timeout=TIMEOUT if timeout is None else timeout
        )


class _Response(google.auth.transport.Response):
    """An httpx response, read to the end, as google-auth expects one."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class GoogleCredentials:
    """Application Default Credentials for some scopes, found on first use and refreshed over the Google client
    when they near expiry (google-auth counts a token as expired a few minutes early), one refresh at a time.

    Raises google-auth's errors (`DefaultCredentialsError` when there are none, `RefreshError`, `TransportError`)."""

    def __init__(self, client: httpx.AsyncClient, scopes: Sequence[str]) -> None:
        self._request = ThreadRequest(client)
        self._scopes = list(scopes)
        self._credentials: google.auth.credentials.Credentials | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> str | None:
        """Find the credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or the metadata server) and
        return their project, if they name one."""
        default = functools.partial(google.auth.default, scopes=self._scopes, request=self._request)
        credentials, project = await anyio.to_thread.run_sync(default)
        self._credentials = credentials
        return project if isinstance(project, str) else None

    async def token(self, *, force: bool = False) -> str:
        """A valid access token; `force` replaces one the API refused (expired early or revoked)."""
        credentials = await self._valid(force)
        token = credentials.token
        if not isinstance(token, str):
            raise google.auth.exceptions.RefreshError("the credentials gave no access token")  # type: ignore[no-untyped-call]
        return token

    async def headers(self) -> dict[str, str]:
        """`authorization` (and `x-goog-user-project` for user credentials with a quota project)."""
        credentials = await self._valid(False)
        headers: dict[str, str] = {}
        credentials.apply(headers)  # type: ignore[no-untyped-call]
        return headers

    async def _valid(self, force: bool) -> google.auth.credentials.Credentials:
        credentials = self._credentials
        if credentials is not None and credentials.valid and not force:
            return credentials
        async with self._lock:
            if self._credentials is None:
                await self.load()
            credentials = self._credentials
            assert credentials is not None
            # Checked again under the lock: another caller may have refreshed them meanwhile.
            if force or not credentials.valid:
                await anyio.to_thread.run_sync(credentials.refresh, self._request)
                logger.info("Google access token refreshed, valid until %s", credentials.expiry)
            return credentials
