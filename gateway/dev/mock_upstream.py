"""A stand-in for Anthropic's API that answers like it: realistic SSE streams, JSON replies, count_tokens."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import orjson

from gateway.endpoints import Endpoint

MODELS = [
    ("claude-opus-5-5", "Claude Opus 5.5"),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5"),
    ("claude-haiku-5-5", "Claude Haiku 5.5"),
]


class MockAnthropic:
    """ASGI app faking `POST /v1/messages` (streamed or not), `/v1/messages/count_tokens` and `GET /v1/models`.

    The reply is `deltas` text pieces; `delay` seconds pass between them so streaming is visible."""

    def __init__(self, *, deltas: int = 12, delay: float = 0.0, cache_read_tokens: int = 0) -> None:
        self.deltas = deltas
        self.delay = delay
        self.cache_read_tokens = cache_read_tokens
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"].rstrip("/"), scope["method"]
        if method == "GET" and path == Endpoint.MODELS:
            await _json(send, 200, _models())
            return
        if method != "POST" or path not in (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS):
            await _json(send, 404, _error("not_found_error", f"Not found: {method} {path}"))
            return
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _json(send, 400, _error("invalid_request_error", "Body is not valid JSON."))
            return
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            await _json(send, 400, _error("invalid_request_error", "model: Field required"))
            return
        input_tokens = max(1, len(body) // 4)
        if path.endswith("count_tokens"):
            await _json(send, 200, {"input_tokens": input_tokens})
            return
        words = _reply_words(request, self.deltas)
        if request.get("stream") is True:
            await self._stream(send, request["model"], input_tokens, words)
        else:
            await _json(send, 200, self._message(request["model"], input_tokens, words), self._headers())

    def _headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"request-id", f"req_mock_{next(self._ids):06d}".encode()),
            (b"anthropic-ratelimit-requests-limit", b"4000"),
            (b"anthropic-ratelimit-requests-remaining", b"3999"),
            (b"anthropic-ratelimit-tokens-limit", b"400000"),
            (b"anthropic-ratelimit-tokens-remaining", b"399000"),
        ]

    def _message(self, model: str, input_tokens: int, words: list[str]) -> dict[str, Any]:
        return {
            "id": f"msg_mock_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(words)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            # Shaped as today's API reports usage: cache writes split by TTL, server tools, tier and region.
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self.cache_read_tokens,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": len(words),
                "server_tool_use": {"web_search_requests": 0},
                "service_tier": "standard",
                "inference_geo": "global",
            },
        }

    async def _stream(self, send: Any, model: str, input_tokens: int, words: list[str]) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers + self._headers()})
        start = self._message(model, input_tokens, [])
        start["usage"]["output_tokens"] = 1
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            ("ping", {"type": "ping"}),
        ]
        await _send_events(send, events)
        for word in words:
            if self.delay:
                await asyncio.sleep(self.delay)
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
            await _send_events(send, [("content_block_delta", delta)])
        await _send_events(
            send,
            [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": len(words)},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ],
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _reply_words(request: dict[str, Any], count: int) -> list[str]:
    prompt = ""
    messages = request.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, str):
            prompt = content
        elif isinstance(content, list):
            prompt = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    text = f"Hello from the mock upstream, relayed through the gateway. You said: {prompt[:200]}"
    words = [w + " " for w in text.split()]
    # Exactly `count` pieces, so benchmarks control the size of a reply.
    return [words[i % len(words)] for i in range(count)] if count > 0 else []


def _models() -> dict[str, Any]:
    data = [
        {"type": "model", "id": mid, "display_name": name, "created_at": "2025-01-01T00:00:00Z"} for mid, name in MODELS
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def _send_events(send: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
    chunk = b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in events)
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _json(
    send: Any, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_mock_upstream(**options: Any) -> MockAnthropic:
    """The mock Anthropic API as an ASGI app."""
    return MockAnthropic(**options)
