"""Token usage read from responses as they pass: incremental SSE parsing and non-streaming JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """What the upstream reported about one response."""

    message_id: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    stop_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
