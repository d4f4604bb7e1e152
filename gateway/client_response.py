"""The response to the client, as the relay sends it: what the audit row needs is noted on the way (status, time
to first byte, size), and the request's prompt capture and budget headers travel with it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.audit.record import AuditRecord
from gateway.errors import GatewayError, error_body

if TYPE_CHECKING:
    from gateway.capture.pipeline import RequestCapture
    from gateway.policy.budget import BudgetHeaders

JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientResponse:
    """Sends the response to the client, noting what the audit row needs (status, first byte, size) and carrying
    the request's prompt capture, if the policy asks for one."""

    __slots__ = ("_send", "_record", "_started_at", "started", "finished", "capture", "budget")

    def __init__(self, send: Any, record: AuditRecord, started_at: float) -> None:
        self._send = send
        self._record = record
        self._started_at = started_at
        self.started = False
        self.finished = False
        self.capture: RequestCapture | None = None
        self.budget: BudgetHeaders | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self._record.status_code = status
        headers.append((b"x-gateway-request-id", self._record.request_id.encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes) -> None:
        if self._record.ttfb_ms is None:
            self._record.ttfb_ms = round((time.perf_counter() - self._started_at) * 1000, 3)
        self._record.response_bytes += len(chunk)
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self) -> None:
        self.finished = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def error(self, error: GatewayError) -> None:
        """A complete Anthropic-shaped error response."""
        body = error_body(error.status, error.message, error.error_type)
        headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await self.start(error.status, headers)
        await self.body(body)
        await self.end()

    async def json(self, body: bytes) -> None:
        """A complete 200 response with a JSON body the gateway made."""
        await self.start(200, [*JSON_HEADERS, (b"content-length", str(len(body)).encode())])
        await self.body(body)
        await self.end()
