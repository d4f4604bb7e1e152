"""Realistic Anthropic replies for tests: SSE event streams and JSON messages."""

from __future__ import annotations

from typing import Any

import orjson

SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("request-id", "req_upstream_123"),
    ("anthropic-ratelimit-requests-remaining", "99"),
    ("anthropic-ratelimit-tokens-limit", "400000"),
]
JSON_HEADERS = [("content-type", "application/json"), ("request-id", "req_upstream_456")]


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_events(
    text_pieces: list[str],
    *,
    model: str = "claude-sonnet-4-5-20250929",
    input_tokens: int = 25,
    cache_creation: int = 100,
    cache_read: int = 2000,
    output_tokens: int | None = None,
    error: dict[str, str] | None = None,
) -> list[bytes]:
    """One SSE event per list item, as Anthropic sends a text reply (with a ping), or an error mid-way."""
    out = output_tokens if output_tokens is not None else len(text_pieces)
    events = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_test_01",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "cache_creation_input_tokens": cache_creation,
                        "cache_read_input_tokens": cache_read,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        event("ping", {"type": "ping"}),
    ]
    for piece in text_pieces:
        events.append(
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        )
    if error is not None:
        events.append(event("error", {"type": "error", "error": error}))
        return events
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": out},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return events


def message_json(
    text: str, *, model: str = "claude-sonnet-4-5-20250929", input_tokens: int = 12, output_tokens: int = 7
) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_test_02",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
            },
        }
    )
