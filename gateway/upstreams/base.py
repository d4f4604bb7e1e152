"""The upstream interface the proxy relays through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.upstreams.transport import UpstreamRequest, UpstreamResponse


@dataclass(slots=True)
class UpstreamCall:
    """One incoming request in Anthropic's shape, authenticated, with identity and hop headers stripped.

    Requests that arrived in the Vertex protocol have already been turned into this shape by the proxy."""

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

    response: UpstreamResponse
    upstream: str
    attempts: int = 1
    failures: list[str] = field(default_factory=list)


class UpstreamError(Exception):
    """This upstream cannot take the call right now for a reason of its own (credentials, ...): try the next."""


class UpstreamUnavailable(Exception):
    """No upstream answered: every attempt failed before a response, or every circuit was open."""

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        failures: list[str],
        upstream: str | None,
        timed_out: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts
        self.failures = failures
        self.upstream = upstream
        self.timed_out = timed_out
        self.retry_after = retry_after


class Upstream(Protocol):
    """Builds the HTTP request for one provider (Anthropic's API, Vertex AI, ...)."""

    name: str

    async def build_request(self, call: UpstreamCall) -> UpstreamRequest: ...

    def anthropic_error(self, status: int, body: bytes) -> bytes | None:
        """An error body in Anthropic's shape when the provider used its own, else None (keep it as it is)."""
        ...

    async def aclose(self) -> None: ...
