"""The upstream interface the proxy relays through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import httpx


@dataclass(slots=True)
class UpstreamCall:
    """One incoming request, already authenticated, with identity and hop headers stripped."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    model: str | None = None
    stream: bool = False


@dataclass(slots=True)
class UpstreamResult:
    """An upstream response whose body has not been read yet, and how it was reached."""

    response: httpx.Response
    upstream: str
    attempts: int = 1
    failures: list[str] = field(default_factory=list)


class Upstream(Protocol):
    """Builds the HTTP request for one provider (Anthropic's API, Vertex AI, ...)."""

    name: str

    async def build_request(self, client: httpx.AsyncClient, call: UpstreamCall) -> httpx.Request: ...
