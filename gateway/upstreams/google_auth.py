"""The gateway's own Google credentials (Application Default Credentials) for calling Vertex AI."""

from __future__ import annotations

import logging

import google.auth.exceptions
import httpx

from gateway.google_http import GoogleCredentials
from gateway.upstreams.base import UpstreamError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]

logger = logging.getLogger("gateway.upstreams")


class GoogleToken:
    """An OAuth access token from ADC, shared by every request and refreshed off the event loop when it nears
    expiry, one refresh at a time."""

    def __init__(self, credentials: GoogleCredentials) -> None:
        self._credentials = credentials

    @classmethod
    async def from_environment(cls, client: httpx.AsyncClient) -> tuple[GoogleToken, str | None]:
        """ADC (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or the metadata server) and its project, if any;
        `client` is the lifespan's client for Google's endpoints."""
        credentials = GoogleCredentials(client, SCOPES)
        try:
            project = await credentials.load()
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise ValueError(f"Vertex AI upstream: no Google credentials found: {exc}") from exc
        return cls(credentials), project

    async def headers(self) -> dict[str, str]:
        """`authorization` (and `x-goog-user-project` for user credentials with a quota project)."""
        try:
            return await self._credentials.headers()
        except google.auth.exceptions.GoogleAuthError as exc:
            raise UpstreamError(f"Google credentials could not be refreshed: {exc}") from exc

    async def aclose(self) -> None:
        """Nothing to close: the client belongs to the lifespan."""
