"""The gateway's own Google credentials (Application Default Credentials) for calling Vertex AI."""

from __future__ import annotations

import functools
import logging
from typing import Any

import anyio
import anyio.to_thread
import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import requests

from gateway.upstreams.base import UpstreamError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]

logger = logging.getLogger("gateway.upstreams")


class GoogleToken:
    """An OAuth access token from ADC, shared by every request and refreshed in a worker thread when it nears
    expiry (google-auth counts a token as expired a few minutes early), one refresh at a time."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._session = requests.Session()
        self._request = google.auth.transport.requests.Request(self._session)
        self._lock = anyio.Lock()

    @classmethod
    async def from_environment(cls) -> tuple[GoogleToken, str | None]:
        """ADC (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or the metadata server) and its project, if any."""
        default = functools.partial(google.auth.default, scopes=SCOPES)
        try:
            credentials, project = await anyio.to_thread.run_sync(default)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise ValueError(f"Vertex AI upstream: no Google credentials found: {exc}") from exc
        return cls(credentials), project

    async def headers(self) -> dict[str, str]:
        """`authorization` (and `x-goog-user-project` for user credentials with a quota project)."""
        if not self._credentials.valid:
            async with self._lock:
                if not self._credentials.valid:  # another request may have refreshed it meanwhile
                    await self._refresh()
        headers: dict[str, str] = {}
        self._credentials.apply(headers)
        return headers

    async def _refresh(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._credentials.refresh, self._request)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise UpstreamError(f"Google credentials could not be refreshed: {exc}") from exc
        logger.info("Google access token refreshed, valid until %s", self._credentials.expiry)

    async def aclose(self) -> None:
        self._session.close()
