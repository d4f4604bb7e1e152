"""What a caller sent, read once: the request's facts for its audit row, the IAP assertion header, the body and the
few fields of its JSON the gateway needs."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.audit.record import AuditRecord
from gateway.errors import GatewayError
from gateway.headers import canonical
from gateway.identity import IAP_ASSERTION_HEADER

Scope = dict[str, Any]


@dataclass(slots=True)
class ParsedBody:
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None


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


async def read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise GatewayError(400, "Invalid Content-Length header.", outcome="bad_request") from None
            if declared > limit:
                raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "Client disconnected while sending the request.", outcome="client_disconnect")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    message = f"Request body is larger than the gateway's limit of {limit} bytes."
    return GatewayError(413, message, outcome="bad_request")


def parse_body(scope: Scope, body: bytes) -> ParsedBody:
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
    if content_type != b"application/json":
        shown = content_type.decode("latin-1") or "none"
        raise GatewayError(415, f"Content-Type must be application/json, not {shown}.", outcome="bad_request")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        data = _loads_lenient(body, exc)
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object.", outcome="bad_request")
    model = data.get("model")
    max_tokens = data.get("max_tokens")
    return ParsedBody(
        model=model if isinstance(model, str) else None,
        stream=data.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
    )


def _loads_lenient(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """JSON orjson refuses only for a lone surrogate escape (`"\\ud83d"`, a string cut mid-emoji by a JavaScript
    client) is still JSON the upstream may accept: the standard library reads it."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise GatewayError(400, f"Request body is not valid JSON: {error}", outcome="bad_request") from None

