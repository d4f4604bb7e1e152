"""Rows tell the truth: an upstream 200 that never started or never finished is an upstream_error with the reason,
every request on any path and method gets exactly one row (the probes aside), and a stream the server cancels at
the end of its graceful shutdown is still audited with its tokens."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.dev.iap import AssertionSigner
from tests.gateway.conftest import Stack, gateway_settings
from tests.support.anthropic_sse import JSON_HEADERS, SSE_HEADERS, event, stream_events
from tests.support.audit import wait_for_rows
from tests.support.servers import FakeUpstream, Reply, serve

SONNET = "claude-sonnet-4-5-20250929"
BODY = {"model": SONNET, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def complete_stream() -> list[bytes]:
    return stream_events(["Hel", "lo"], model=SONNET)


@pytest.mark.parametrize(
    ("headers", "chunks", "reason"),
    [
        (SSE_HEADERS, [b"<html>upstream proxy error page</html>"], "never started (no message_start)"),
        (SSE_HEADERS, [b"event: ping\ndata: {}\n\n"], "never started (no message_start)"),
        (SSE_HEADERS, complete_stream()[:-1], "ended before message_stop"),
        (SSE_HEADERS, complete_stream()[:3], "ended before message_stop"),
        (JSON_HEADERS, [b'{"id": "msg_1", "type": "mess'], "reply is not a JSON object"),
        (JSON_HEADERS, [b""], "reply is not a JSON object"),
    ],
    ids=["garbage", "no-message-start", "no-message-stop", "cut-after-start", "truncated-json", "empty-json"],
)
def test_an_upstream_200_that_never_started_or_never_finished_is_an_upstream_error(
    stack: Stack, headers: list[tuple[str, str]], chunks: list[bytes], reason: str
) -> None:
    stack.upstream.reply = lambda seen: Reply(200, headers, chunks)
    stream = headers is SSE_HEADERS
    response = httpx.post(
        f"{stack.url}/v1/messages", json={**BODY, "stream": stream}, headers=stack.headers(), timeout=10
    )
    row = stack.rows(1)[0]

    assert response.status_code == 200  # already sent when the trouble shows
    assert (row["outcome"], row["status_code"], row["error_type"]) == ("upstream_error", 200, "api_error")
    assert reason in row["error_message"]


def test_a_complete_stream_and_a_complete_json_reply_stay_ok(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, complete_stream())
    httpx.post(f"{stack.url}/v1/messages", json=BODY, headers=stack.headers(), timeout=10)
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [b'{"input_tokens": 12}'])
    httpx.post(
        f"{stack.url}/v1/messages/count_tokens", json={**BODY, "stream": False}, headers=stack.headers(), timeout=10
    )

    assert [row["outcome"] for row in stack.rows(2)] == ["ok", "ok"]


def raw_request(url: str, request_line: str, headers: str = "") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"{request_line}\r\nHost: gateway\r\n{headers}Connection: close\r\n\r\n".encode("latin-1"))
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


REQUESTS = [
    ("PROPFIND", "/v1/messages"),
    ("TRACE", "/"),
    ("CONNECT", "/v1/messages"),
    ("PATCH", "/v1/models"),
    ("GET", "/a%0Ab"),
    ("GET", "/v1/messages%0A"),
    ("GET", "/%0D%0Aset-cookie:x"),
    ("OPTIONS", "*"),
    ("DELETE", "/healthz"),
    ("POST", "/metrics"),
    ("GET", "/admin"),
    ("OPTIONS", "/v1/messages"),
    ("GET", "/v1/messages/../../etc/passwd"),
    ("GET", "http://elsewhere.example/other"),
]


def test_every_method_and_path_gets_one_row_and_the_probes_none(stack: Stack) -> None:
    assertion = f"x-goog-iap-jwt-assertion: {stack.assertion()}\r\n"
    for method, target in REQUESTS:
        reply = raw_request(stack.url, f"{method} {target} HTTP/1.1", assertion)
        assert reply.startswith(b"HTTP/1.1 4"), (method, target, reply[:200])
        assert b"x-gateway-request-id" in reply
    for method, path in [("GET", "/healthz"), ("GET", "/health"), ("HEAD", "/healthz"), ("GET", "/metrics")]:
        assert raw_request(stack.url, f"{method} {path} HTTP/1.1").startswith(b"HTTP/1.1 200")
    raw_request(stack.url, "GET /v1/models HTTP/1.1", assertion)  # the last row, so the others are all written

    rows = wait_for_rows(stack.audit_db, len(REQUESTS) + 1)
    seen = Counter((row["method"], row["path"]) for row in rows)
    assert all(count == 1 for count in seen.values()), seen
    assert {method for method, _ in seen} == {method for method, _ in REQUESTS} | {"GET"}
    assert len(rows) == len(REQUESTS) + 1
    assert {("GET", "/a\nb"), ("GET", "/v1/messages\n")} <= set(seen)  # decoded, as the request asked
    assert not {("GET", "/healthz"), ("GET", "/health"), ("HEAD", "/healthz"), ("GET", "/metrics")} & set(seen)
    assert all(row["user_email"] == "ada@example.com" and row["outcome"] != "ok" for row in rows[:-1])


def test_a_stream_the_server_cancels_at_its_graceful_timeout_is_audited_with_its_tokens(
    upstream: tuple[FakeUpstream, str], signer: AssertionSigner, tmp_path: Path
) -> None:
    """Under a server that knows nothing of the gateway's own shutdown cut (uvicorn alone, 5 s graceful timeout),
    the stream is cancelled: the relay's bookkeeping still runs and the row says what happened."""
    fake, fake_url = upstream
    start = event(
        "message_start",
        {
            "type": "message_start",
            "message": {"id": "msg_slow", "model": SONNET, "usage": {"input_tokens": 4000, "output_tokens": 1}},
        },
    )
    delta = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}},
    )
    fake.reply = lambda seen: Reply(200, SSE_HEADERS, [start] + [delta] * 200, delay=0.1)
    audit_db = tmp_path / "audit.db"
    body = b""
    flowing = threading.Event()

    def read(url: str, headers: dict[str, str]) -> None:
        nonlocal body
        try:
            with httpx.stream("POST", f"{url}/v1/messages", json=BODY, headers=headers, timeout=30) as reply:
                for chunk in reply.iter_raw():
                    body += chunk
                    flowing.set()
        except httpx.HTTPError:
            pass

    stack = Stack(url="", upstream=fake, signer=signer, audit_db=audit_db)
    with serve(create_app(gateway_settings(fake_url, audit_db, upstream_read_timeout=30))) as url:
        reader = threading.Thread(target=read, args=(url, {**stack.headers()}), daemon=True)
        reader.start()
        assert flowing.wait(10)
    reader.join(10)

    row = wait_for_rows(audit_db, 1)[0]
    assert (row["outcome"], row["status_code"], row["error_type"]) == ("shutdown", 200, "overloaded_error")
    assert row["input_tokens"] == 4000 and row["cost_usd"] > 0
    last_event = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last_event.startswith(b"event: error")
    assert orjson.loads(last_event.split(b"data: ", 1)[1])["error"]["type"] == "overloaded_error"
