from __future__ import annotations

import socket
import threading
import time

import httpx
import orjson
import pytest

from tests.gateway.conftest import API_KEY, Stack, StackFactory
from tests.support.anthropic_sse import JSON_HEADERS, SSE_HEADERS, message_json, stream_events
from tests.support.servers import Reply, Seen

REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}


def post(stack: Stack, body: bytes | None = None, *, path: str = "/v1/messages", **headers: str) -> httpx.Response:
    content = body if body is not None else orjson.dumps(REQUEST)
    all_headers = {"content-type": "application/json", **stack.headers(), **headers}
    return httpx.post(stack.url + path, content=content, headers=all_headers, timeout=10)


def test_streamed_reply_is_relayed_byte_for_byte_with_upstream_headers(stack: Stack) -> None:
    events = stream_events(["Hel", "lo", "!"])
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, events)

    response = post(stack)

    assert response.status_code == 200
    assert response.content == b"".join(events)
    assert response.headers["request-id"] == "req_upstream_123"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert response.headers["x-gateway-request-id"]


def test_request_body_query_and_anthropic_headers_reach_upstream_unchanged(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    body = (
        b'{"model": "claude-sonnet-4-5",   "max_tokens": 5, "messages": [{"role":"user","content":"x \\u00e9"}],'
        b' "future_field": {"n": 1.5, "big": 123456789012345678}}'
    )

    post(
        stack,
        body,
        path="/v1/messages?beta=true",
        **{
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
            "x-claude-code-session-id": "1b8d825e-377f-48de-95c4-660152f56dca",
            "user-agent": "claude-cli/2.1.328 (external, sdk-cli)",
        },
    )

    seen = stack.upstream.requests[-1]
    # The JSON the gateway read, written back compactly: the same fields, values and order, unknown ones included.
    assert seen.body == orjson.dumps(orjson.loads(body))
    assert list(orjson.loads(seen.body)) == ["model", "max_tokens", "messages", "future_field"]
    assert seen.query == b"beta=true"
    assert seen.header("anthropic-version") == "2023-06-01"
    assert seen.header("anthropic-beta") == "claude-code-20250219,interleaved-thinking-2025-05-14"
    assert seen.header("x-api-key") == API_KEY


def test_caller_credentials_and_identity_headers_never_reach_upstream(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    smuggled = {
        "authorization": "Bearer caller-token",
        "proxy-authorization": "Bearer caller-proxy-token",
        "x-api-key": "sk-ant-caller-own-key",
        "x-goog-authenticated-user-email": "accounts.google.com:mallory@example.com",
        "X_Goog_Authenticated_User_Id": "forged",
        "x-serverless-authorization": "Bearer internal",
        "x-forwarded-for": "203.0.113.9",
        "x_forwarded_host": "evil.example",
        "cookie": "GCP_IAP_UID=abc",
    }

    response = post(stack, **smuggled)

    assert response.status_code == 200
    seen = stack.upstream.requests[-1]
    names = {name.decode().lower().replace("_", "-") for name, _ in seen.headers}
    assert not {n for n in names if n.startswith(("x-goog-", "x-forwarded-"))}
    assert {"authorization", "proxy-authorization", "x-serverless-authorization", "cookie"}.isdisjoint(names)
    assert seen.header("x-api-key") == API_KEY
    assert seen.header("accept-encoding") == "identity"


def test_stream_reaches_client_before_upstream_finishes(stack: Stack) -> None:
    events = stream_events([f"word{i} " for i in range(6)])
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, events, delay=0.4)

    started = time.monotonic()
    first_chunk_at = None
    with httpx.stream(
        "POST",
        stack.url + "/v1/messages",
        content=orjson.dumps(REQUEST),
        headers={"content-type": "application/json", **stack.headers()},
        timeout=20,
    ) as response:
        for chunk in response.iter_raw():
            if chunk and first_chunk_at is None:
                first_chunk_at = time.monotonic()
                upstream_done_then = stack.upstream.finished.is_set()
    total = time.monotonic() - started

    assert first_chunk_at is not None
    assert upstream_done_then is False
    # The first event arrives one delay in; the whole stream takes len(events) delays.
    assert first_chunk_at - started < total / 2


def test_client_disconnect_closes_upstream_and_is_audited_with_tokens_so_far(stack: Stack) -> None:
    events = stream_events([f"w{i}" for i in range(50)], input_tokens=40)
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, events, delay=0.1)

    raw = orjson.dumps(REQUEST)
    host, port = stack.url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(raw)}\r\nx-goog-iap-jwt-assertion: {stack.assertion()}\r\n\r\n"
    ).encode() + raw
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        received = b""
        while b"content_block_delta" not in received:
            received += sock.recv(65536)
    hung_up_at = time.monotonic()

    assert stack.upstream.closed_early.wait(5)
    assert time.monotonic() - hung_up_at < 1.5
    row = stack.rows(1)[0]
    assert row["outcome"] == "client_disconnect"
    assert row["input_tokens"] == 40
    assert row["user_email"] == "ada@example.com"


@pytest.mark.parametrize("status", [400, 429, 500, 529])
def test_upstream_error_status_and_body_are_relayed_and_audited(stack: Stack, status: int) -> None:
    kind = {400: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}[status]
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": "upstream says no"}})
    headers = [*JSON_HEADERS, ("retry-after", "7")]
    stack.upstream.reply = lambda seen: Reply(status, headers, [body])

    response = post(stack)

    assert response.status_code == status
    assert response.content == body
    assert response.headers["retry-after"] == "7"
    row = stack.rows(1)[0]
    assert (row["status_code"], row["outcome"], row["error_type"]) == (status, "upstream_error", kind)
    assert row["upstream_request_id"] == "req_upstream_456"


def test_error_event_after_200_is_relayed_and_audited_as_upstream_error(stack: Stack) -> None:
    events = stream_events(["partial"], error={"type": "overloaded_error", "message": "Overloaded"})
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, events)

    response = post(stack)

    assert response.status_code == 200
    assert b"event: error" in response.content
    row = stack.rows(1)[0]
    assert (row["outcome"], row["error_type"], row["error_message"]) == (
        "upstream_error",
        "overloaded_error",
        "Overloaded",
    )


def test_streamed_reply_is_metered_and_priced(stack: Stack) -> None:
    events = stream_events(["a", "b", "c"], input_tokens=1000, cache_creation=2000, cache_read=3000, output_tokens=500)
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, events)

    post(
        stack,
        **{
            "x-claude-code-session-id": "sess-1",
            "x-claude-code-agent-id": "agent-7",
            "user-agent": "claude-cli/2.1.328",
        },
    )

    row = stack.rows(1)[0]
    assert row["served_model"] == "claude-sonnet-4-5-20250929"
    assert row["requested_model"] == "claude-sonnet-4-5"
    assert (
        row["input_tokens"],
        row["cache_creation_input_tokens"],
        row["cache_read_input_tokens"],
        row["output_tokens"],
    ) == (1000, 2000, 3000, 500)
    # Sonnet 4.5 list prices per million: input 3, cache write 3.75, cache read 0.30, output 15.
    assert row["cost_usd"] == pytest.approx((1000 * 3 + 2000 * 3.75 + 3000 * 0.30 + 500 * 15) / 1e6)
    assert (row["session_id"], row["agent_id"], row["user_agent"]) == ("sess-1", "agent-7", "claude-cli/2.1.328")
    assert (row["stream"], row["stop_reason"], row["message_id"]) == (1, "end_turn", "msg_test_01")
    assert row["outcome"] == "ok" and row["status_code"] == 200
    assert row["ttfb_ms"] is not None and row["duration_ms"] >= row["ttfb_ms"]
    assert row["response_bytes"] == sum(len(e) for e in events)


def test_upstream_down_gives_502_and_an_audit_row(make_stack: StackFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with make_stack(upstream_url=dead) as stack:
        response = post(stack)

        assert response.status_code == 502
        assert response.json()["type"] == "error"
        assert "could not be reached" in response.json()["error"]["message"]
        assert stack.rows(1)[0]["outcome"] == "upstream_error"


def test_slow_upstream_gives_504(make_stack: StackFactory) -> None:
    with make_stack(upstream_read_timeout=0.3) as stack:
        stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("late")], hold=2.0)

        response = post(stack)

        assert response.status_code == 504
        assert response.json()["error"]["type"] == "timeout_error"
        row = stack.rows(1)[0]
        assert (row["outcome"], row["status_code"]) == ("upstream_error", 504)


def test_upstream_key_never_appears_in_responses_or_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    stack.upstream.reply = lambda seen: Reply(
        401,
        JSON_HEADERS,
        [orjson.dumps({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})],
    )

    response = post(stack)

    assert API_KEY not in response.text and API_KEY not in str(response.headers)
    assert API_KEY not in caplog.text
    assert API_KEY not in str(stack.rows(1))


def test_concurrent_streams_each_get_their_own_reply(stack: Stack) -> None:
    def reply(seen: Seen) -> Reply:
        tag = orjson.loads(seen.body)["messages"][0]["content"]
        return Reply(200, SSE_HEADERS, stream_events([tag, "-", tag]), delay=0.02)

    stack.upstream.reply = reply
    results: dict[str, bytes] = {}

    def call(tag: str) -> None:
        body = orjson.dumps({**REQUEST, "messages": [{"role": "user", "content": tag}]})
        results[tag] = post(stack, body).content

    threads = [threading.Thread(target=call, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for tag, content in results.items():
        assert content == b"".join(stream_events([tag, "-", tag]))
    assert len(stack.rows(8)) == 8
