"""One audit row per request."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

# Limits on free-text fields, so an odd value is truncated instead of failing the row.
MAX_TEXT = {"error_message": 4096, "user_agent": 512, "path": 2048}
MAX_DEFAULT_TEXT = 1024

# The outcomes the gateway's own lifecycle adds to those of a request's result (ok, denied, upstream_error, ...).
STARTED = "started"
"""A request under way: its admission row, written once it has run past a flush; its final row supersedes it."""
SHUTDOWN = "shutdown"
"""A request the gateway cut short because the instance was stopping (the client got an overloaded_error)."""

# What an admission row records: who asked for what, known before the upstream is called.
ADMISSION_FIELDS = (
    "request_id",
    "timestamp",
    "method",
    "path",
    "user_email",
    "user_subject",
    "user_domain",
    "groups",
    "policy_rule",
    "session_id",
    "agent_id",
    "parent_agent_id",
    "user_agent",
    "client_ip",
    "requested_model",
    "stream",
    "request_bytes",
    "trace_id",
    "capture_level",
)


@dataclass(slots=True)
class AuditRecord:
    """Everything the audit table records about one request; field names are the column names."""

    request_id: str
    timestamp: datetime
    method: str
    path: str
    status_code: int = 0
    outcome: str = "ok"
    duration_ms: float | None = None
    ttfb_ms: float | None = None
    user_email: str | None = None
    user_subject: str | None = None
    user_domain: str | None = None
    groups: list[str] = field(default_factory=list)
    policy_rule: str | None = None
    session_id: str | None = None
    agent_id: str | None = None
    parent_agent_id: str | None = None
    user_agent: str | None = None
    client_ip: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    upstream: str | None = None
    attempts: int = 0
    upstream_failures: str | None = None
    stream: bool | None = None
    error_type: str | None = None
    error_message: str | None = None
    upstream_request_id: str | None = None
    message_id: str | None = None
    stop_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cost_usd: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    trace_id: str | None = None
    capture_level: str | None = None
    capture_error: str | None = None
    redaction_count: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    web_search_requests: int | None = None
    inference_geo: str | None = None
    speed: str | None = None
    priced_as: str | None = None
    price_rule: str | None = None
    price_source: str | None = None
    usage_estimated: bool | None = None

    def to_row(self) -> dict[str, Any]:
        """A JSON-ready row: RFC 3339 UTC timestamp, free text truncated to documented limits."""
        # Not `dataclasses.asdict`: it deep-copies every value, and this runs for every request.
        return self._row(_FIELD_NAMES)

    def admission_row(self) -> dict[str, Any]:
        """The `started` row of a request under way: its admission fields only, none of its (partial) result."""
        row = self._row(ADMISSION_FIELDS)
        row["status_code"] = 0
        row["outcome"] = STARTED
        return row

    def _row(self, names: tuple[str, ...]) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in names}
        row["groups"] = list(self.groups)
        row["timestamp"] = rfc3339(self.timestamp)
        for key, value in row.items():
            if isinstance(value, str):
                limit = MAX_TEXT.get(key, MAX_DEFAULT_TEXT)
                if len(value) > limit:
                    row[key] = value[: limit - 1] + "…"
        return row


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(AuditRecord))


def insert_id(row: dict[str, Any], key: str = "request_id") -> str:
    """The row's de-duplication key: the request id, and apart from it the request's started row."""
    request_id = str(row[key])
    return f"{request_id}/{STARTED}" if row.get("outcome") == STARTED else request_id


def rfc3339(moment: datetime) -> str:
    """`2026-11-22T20:28:34.123456Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
