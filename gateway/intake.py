"""What a caller sent, read once: the request's facts for its audit row, the IAP assertion header, the body and the
few fields of its JSON the gateway needs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import jsonish
from gateway.audit.record import AuditRecord
from gateway.errors import GatewayError
from gateway.headers import canonical
from gateway.identity import IAP_ASSERTION_HEADER

logger = logging.getLogger("gateway.intake")

Scope = dict[str, Any]


@dataclass(slots=True)
class ParsedBody:
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    body: bytes = b""
    """What is relayed: the JSON as the gateway read it, so the upstream sees exactly what policy checked."""


# Retried by clients (Anthropic's SDKs and Claude Code back off on these), and short: the pressure is momentary.
_BUSY_RETRY_SECONDS = "5"


class BodyAllowance:
    """Request-body bytes held by requests in flight, per instance and per person: a stalled or huge upload cannot
    take the instance's memory, and one person cannot take everyone's share."""

    def __init__(self, instance_limit: int, person_limit: int) -> None:
        self.instance_limit = instance_limit
        self.person_limit = person_limit
        self.held = 0
        self._by_person: dict[str, int] = {}

    def take(self, person: str, size: int) -> None:
        """Hold `size` more bytes for `person`, or refuse (429 for the person, 503 for the instance)."""
        mine = self._by_person.get(person, 0)
        if mine + size > self.person_limit:
            raise GatewayError(
                429,
                "Too many request bytes in flight for you; retry shortly.",
                outcome="rate_limited",
                headers={"retry-after": _BUSY_RETRY_SECONDS},
            )
        if self.held + size > self.instance_limit:
            logger.warning("shedding a request: %d request-body bytes already in flight", self.held)
            raise GatewayError(
                503,
                "The gateway instance is busy receiving other requests; retry shortly.",
                outcome="gateway_busy",
                headers={"retry-after": _BUSY_RETRY_SECONDS},
            )
        self._by_person[person] = mine + size
        self.held += size

    def prometheus_text(self) -> str:
        """The bytes held now, for `GET /metrics`."""
        metric = "gateway_request_body_bytes_in_flight"
        return (
            f"# HELP {metric} Request-body bytes held by requests in flight (capped per instance and person).\n"
            f"# TYPE {metric} gauge\n{metric} {self.held}\n"
        )

    def give_back(self, person: str, size: int) -> None:
        if size <= 0:
            return
        left = self._by_person.get(person, 0) - size
        if left > 0:
            self._by_person[person] = left
        else:
            self._by_person.pop(person, None)
        self.held -= size


class BodyLease:
    """What one request holds of the allowance (for the verified `person`), given back when the request ends."""

    __slots__ = ("_allowance", "person", "size")

    def __init__(self, allowance: BodyAllowance) -> None:
        self._allowance = allowance
        self.person = ""
        self.size = 0

    def take(self, size: int) -> None:
        self._allowance.take(self.person, size)
        self.size += size

    def release(self) -> None:
        self._allowance.give_back(self.person, self.size)
        self.size = 0


def new_record(scope: Scope) -> AuditRecord:
    record = AuditRecord(
        request_id=str(uuid.uuid4()),
        timestamp=datetime.now(UTC),
        method=scope["method"],
        path=scope["path"],
    )
    forwarded_for = None
    for name, value in scope["headers"]:
        # ASGI servers give lower-case names; only the exact spellings are read.
        if name == b"user-agent":
            record.user_agent = value.decode("latin-1")
        elif name == b"x-claude-code-session-id":
            record.session_id = value.decode("latin-1")
        elif name == b"x-claude-code-agent-id":
            record.agent_id = value.decode("latin-1")
        elif name == b"x-claude-code-parent-agent-id":
            record.parent_agent_id = value.decode("latin-1")
        elif name == b"x-cloud-trace-context":
            record.trace_id = value.decode("latin-1").split("/", 1)[0] or None
        elif name == b"x-forwarded-for":
            forwarded_for = value.decode("latin-1")
    if forwarded_for:
        # The last entry is the one Google's front end appended; earlier ones are the caller's to invent.
        record.client_ip = forwarded_for.rsplit(",", 1)[-1].strip() or None
    elif scope.get("client"):
        record.client_ip = scope["client"][0]
    return record


def iap_assertion(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The one IAP assertion header; any other spelling, or a second copy, is refused."""
    found: list[bytes] = []
    for name, value in headers:
        if name == IAP_ASSERTION_HEADER:
            found.append(value)
        elif canonical(name) == "x-goog-iap-jwt-assertion":
            raise GatewayError(401, "Invalid IAP assertion (unexpected header spelling).", outcome="unauthenticated")
    if len(found) > 1:
        raise GatewayError(401, "Invalid IAP assertion (more than one).", outcome="unauthenticated")
    return found[0].decode("latin-1") if found else None


async def read_body(scope: Scope, receive: Any, limit: int, lease: BodyLease, deadline: float) -> bytes:
    """The whole body, within `limit` bytes and `deadline` seconds, its bytes held against `lease` as they come
    (a declared Content-Length up front)."""
    declared = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise GatewayError(400, "Invalid Content-Length header.", outcome="bad_request") from None
            if declared > limit:
                raise _too_large(limit)
    if declared:
        lease.take(declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise GatewayError(
                        499, "Client disconnected while sending the request.", outcome="client_disconnect"
                    )
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                if size > lease.size:
                    lease.take(size - lease.size)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        message = f"The request body did not arrive within {deadline:g} seconds."
        raise GatewayError(408, message, outcome="bad_request", headers={"connection": "close"}) from None


def _too_large(limit: int) -> GatewayError:
    message = f"Request body is larger than the gateway's limit of {limit} bytes."
    return GatewayError(413, message, outcome="bad_request")


def parse_body(scope: Scope, body: bytes) -> ParsedBody:
    """The fields policy reads, read as the upstream would read them (or refused), and the body to relay:
    re-serialised from what was parsed, so a duplicate key cannot mean one thing here and another upstream."""
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
    if content_type != b"application/json":
        shown = content_type.decode("latin-1") or "none"
        raise GatewayError(415, f"Content-Type must be application/json, not {shown}.", outcome="bad_request")
    try:
        # Leniently: what only the standard library reads (a lone surrogate escape) is JSON the upstream may take.
        data = jsonish.loads(body)
    except ValueError as exc:
        raise GatewayError(400, f"Request body is not valid JSON: {exc}", outcome="bad_request") from None
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object.", outcome="bad_request")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise GatewayError(400, "model: must be a string.", outcome="bad_request")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError(400, "stream: must be true or false.", outcome="bad_request")
    # What only the lenient reader took (a lone surrogate, an integer past 64 bits) goes back out the same way.
    body = jsonish.dumps(data, compact=False)
    return ParsedBody(model=model, stream=stream is True, max_tokens=_max_tokens(data), body=body)


def _max_tokens(data: dict[str, Any]) -> int | None:
    """max_tokens as a count: an integer, or a float with no fraction (64000.0, 6.4e4), which a JSON reader may
    take for one; anything else (a string, a fraction, true) is refused rather than left unchecked."""
    value = data.get("max_tokens")
    if value is None:
        return None
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise GatewayError(400, "max_tokens: must be an integer.", outcome="bad_request")
