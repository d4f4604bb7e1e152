"""Admission and metering that cannot be dodged or stalled: hang-ups are charged, policy reads the body as the
upstream does and relays what it read, and slow or huge uploads cannot take the instance's memory."""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.conftest import Stack, StackFactory
from tests.gateway.policy.test_enforcement import ADA, error_of, policy_file
from tests.support.anthropic_sse import SSE_HEADERS, message_json, stream_events
from tests.support.servers import Reply

HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-1"


def request(stack: Stack, body: bytes, email: str = ADA, timeout: float = 10) -> httpx.Response:
    headers = {"content-type": "application/json", **stack.headers(email)}
    return httpx.post(stack.url + "/v1/messages", content=body, headers=headers, timeout=timeout)


@pytest.fixture
def capped(make_stack: StackFactory, tmp_path: Path) -> Any:
    path = policy_file(tmp_path, {"models": ["claude-haiku-*"], "max_tokens": 4096})
    with make_stack(policy_file=path, group_resolver="static") as stack:
        stack.upstream.reply = lambda seen: Reply(200, [("content-type", "application/json")], [message_json("ok")])
        yield stack


@pytest.mark.parametrize("max_tokens", [b"64000.0", b"6.4e4", b"64000"])
def test_max_tokens_over_the_cap_is_refused_however_it_is_spelled(capped: Stack, max_tokens: bytes) -> None:
    body = b'{"model":"claude-haiku-4-5","max_tokens":' + max_tokens + b',"messages":[{"role":"user","content":"x"}]}'

    response = request(capped, body)

    assert response.status_code == 403
    assert "max_tokens 64000 is more than the 4096 allowed" in error_of(response)["message"]
    assert capped.upstream.requests == []


@pytest.mark.parametrize(
    ("max_tokens", "reason"),
    [
        (b'"64000"', "max_tokens: must be an integer."),
        (b"4000.5", "max_tokens: must be an integer."),
        (b"true", "max_tokens: must be an integer."),
    ],
)
def test_max_tokens_that_is_not_a_count_is_a_400(capped: Stack, max_tokens: bytes, reason: str) -> None:
    body = b'{"model":"claude-haiku-4-5","max_tokens":' + max_tokens + b',"messages":[]}'

    response = request(capped, body)

    assert response.status_code == 400
    assert error_of(response) == {"type": "invalid_request_error", "message": reason}
    assert capped.upstream.requests == []
    row = capped.rows(1)[0]
    assert (row["status_code"], row["outcome"]) == (400, "bad_request")


@pytest.mark.parametrize("model", [b'["claude-haiku-4-5"]', b'{"id":"claude-opus-4-1"}', b"7"])
def test_a_model_that_is_not_a_string_is_a_400(capped: Stack, model: bytes) -> None:
    response = request(capped, b'{"model":' + model + b',"max_tokens":5,"messages":[]}')

    assert response.status_code == 400
    assert error_of(response)["message"] == "model: must be a string."
    assert capped.upstream.requests == []


def test_duplicate_model_keys_cannot_pass_the_allow_list_in_either_order(capped: Stack) -> None:
    opus_last = b'{"model":"claude-haiku-4-5","model":"claude-opus-4-1","max_tokens":5,"messages":[]}'
    haiku_last = b'{"model":"claude-opus-4-1","model":"claude-haiku-4-5","max_tokens":5,"messages":[]}'

    refused = request(capped, opus_last)
    served = request(capped, haiku_last)

    assert refused.status_code == 400  # a denied model: invalid_request_error, as the gateway protocol asks
    assert error_of(refused)["type"] == "invalid_request_error"
    assert served.status_code == 200
    # What was checked is what was relayed: the upstream sees one model, the one the allow-list passed.
    [seen] = capped.upstream.requests
    assert b"claude-opus" not in seen.body
    assert orjson.loads(seen.body)["model"] == HAIKU


def test_duplicate_max_tokens_cannot_pass_the_cap(capped: Stack) -> None:
    body = b'{"model":"claude-haiku-4-5","max_tokens":64000,"max_tokens":100,"messages":[]}'

    assert request(capped, body).status_code == 200
    [seen] = capped.upstream.requests
    assert orjson.loads(seen.body)["max_tokens"] == 100 and b"64000" not in seen.body


def long_reply(seen: Any) -> Reply:
    """A streamed reply of 200 text deltas, sent slowly: a client can hang up half way."""
    pieces = [f"word{i:03d} " for i in range(200)]
    events = stream_events(pieces, model=HAIKU, input_tokens=1000, cache_creation=0, cache_read=0)
    return Reply(200, SSE_HEADERS, events, delay=0.005)


def read_until_then_hang_up(stack: Stack, marker: bytes) -> int:
    """Stream a reply and close the connection as soon as `marker` has arrived; the bytes read."""
    body = orjson.dumps(
        {"model": HAIKU, "max_tokens": 1000, "stream": True, "messages": [{"role": "user", "content": "count"}]}
    )
    headers = {"content-type": "application/json", **stack.headers()}
    seen = b""
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", stack.url + "/v1/messages", content=body, headers=headers) as response,
    ):
        for chunk in response.iter_raw():
            seen += chunk
            if marker in seen:
                break
    return len(seen)


def test_a_streaming_client_that_hangs_up_is_charged_for_the_text_it_received(make_stack: StackFactory) -> None:
    with make_stack() as stack:
        stack.upstream.reply = long_reply
        read_until_then_hang_up(stack, b"word099")
        row = stack.rows(1)[0]

    assert row["outcome"] == "client_disconnect"
    assert row["usage_estimated"] in (True, 1)
    # About 100 deltas of "wordNNN " (2-3 tokens each) were relayed; the estimate errs high, never to nothing.
    assert 150 <= row["output_tokens"] <= 600
    assert row["cost_usd"] > (1000 * 1 + 150 * 5) / 1e6


def test_a_hang_up_user_is_stopped_by_a_budget_no_later_than_an_honest_one(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    # Each full reply costs $0.001 input + $0.001 output (200 tokens at $5/M), $0.002 in all; the budget holds 5.
    def replies(seen: Any) -> Reply:
        pieces = [f"word{i:03d} " for i in range(200)]
        events = stream_events(
            pieces, model=HAIKU, input_tokens=1000, cache_creation=0, cache_read=0, output_tokens=200
        )
        return Reply(200, SSE_HEADERS, events, delay=0.002)

    path = policy_file(tmp_path, {"daily_budget_usd": 0.01})
    with make_stack(policy_file=path, group_resolver="static") as stack:
        stack.upstream.reply = replies
        honest = served_until_refused(stack, hang_up=False)
    with make_stack(policy_file=path, group_resolver="static", redis_key_prefix="other") as stack:
        stack.upstream.reply = replies
        hang_up = served_until_refused(stack, hang_up=True)

    assert 4 <= honest <= 6
    assert hang_up <= honest


def served_until_refused(stack: Stack, *, hang_up: bool) -> int:
    body = orjson.dumps(
        {"model": HAIKU, "max_tokens": 1000, "stream": True, "messages": [{"role": "user", "content": "count"}]}
    )
    for served in range(50):
        headers = {"content-type": "application/json", **stack.headers()}
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", stack.url + "/v1/messages", content=body, headers=headers) as response,
        ):
            if response.status_code == 429:
                return served
            seen = b""
            for chunk in response.iter_raw():
                seen += chunk
                if hang_up and b"word199" in seen:
                    break  # the whole answer is here; leave before the final usage arrives
        stack.rows(served + 1)  # the settlement follows the row
        time.sleep(0.05)
    raise AssertionError("the budget never refused")


def test_a_non_streaming_client_that_hangs_up_is_charged_its_input(make_stack: StackFactory) -> None:
    with make_stack() as stack:
        stack.upstream.reply = lambda seen: Reply(
            200, [("content-type", "application/json")], [message_json("late", model=HAIKU)], hold=3.0
        )
        body = orjson.dumps({"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": "x" * 4000}]})
        with pytest.raises(httpx.ReadTimeout):
            request(stack, body, timeout=0.5)
        row = stack.rows(1)[0]

    assert row["outcome"] == "client_disconnect"
    assert row["usage_estimated"] in (True, 1)
    assert row["input_tokens"] == -(-len(body) // 4)
    assert row["cost_usd"] == pytest.approx(row["input_tokens"] * 1 / 1e6)


def raw_post(stack: Stack, declared: int, sent: bytes) -> socket.socket:
    """A POST that declares `declared` body bytes and sends only `sent`, left open."""
    host, port = stack.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {declared}\r\nx-goog-iap-jwt-assertion: {stack.assertion()}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def test_a_body_that_stalls_is_refused_with_408_and_audited(make_stack: StackFactory) -> None:
    with make_stack(body_read_timeout_seconds=0.5) as stack:
        sock = raw_post(stack, 1000, b'{"model":')
        started = time.monotonic()
        answer = sock.recv(65536)
        waited = time.monotonic() - started
        sock.close()
        row = stack.rows(1)[0]

    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 0.5 seconds" in answer
    assert 0.4 <= waited <= 3.0
    assert (row["status_code"], row["outcome"]) == (408, "bad_request")


def test_in_flight_body_bytes_are_capped_per_person_and_per_instance(make_stack: StackFactory) -> None:
    with make_stack(max_inflight_body_bytes_per_user=3000, max_inflight_body_bytes=5000) as stack:
        first = raw_post(stack, 2000, b"{")  # held, still arriving
        wait_until_held(stack, 2000)
        second = raw_post(stack, 2000, b"{")  # over ada's 3000: refused at once
        person = second.recv(65536)
        grace = stack.headers("grace@example.com")
        other = raw_post_as(stack, grace, 2000)  # 4000 in all: fits the instance
        wait_until_held(stack, 4000)
        third = raw_post_as(stack, stack.headers("margaret@example.com"), 2000)  # 6000: over the instance's 5000
        instance = third.recv(65536)
        for sock in (first, second, other, third):
            sock.close()
        healthy = httpx.get(stack.url + "/healthz", timeout=5)

    assert person.startswith(b"HTTP/1.1 429") and b"retry-after: 5" in person.lower()
    assert instance.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in instance.lower()
    assert healthy.status_code == 200


def wait_until_held(stack: Stack, size: int) -> None:
    """Until the gateway says it holds `size` request-body bytes (its /metrics gauge)."""
    deadline = time.monotonic() + 10
    line = f"gateway_request_body_bytes_in_flight {size}"
    while line not in httpx.get(stack.url + "/metrics", timeout=5).text:
        assert time.monotonic() < deadline, f"the gateway never held {size} body bytes"
        time.sleep(0.02)


def raw_post_as(stack: Stack, headers: dict[str, str], declared: int) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {declared}\r\nx-goog-iap-jwt-assertion: {headers['x-goog-iap-jwt-assertion']}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"{")
    return sock


@pytest.mark.parametrize("counters", ["in-process", "redis"])
def test_requests_in_flight_hold_their_most_so_parallel_ones_cannot_overshoot_a_budget(
    make_stack: StackFactory, tmp_path: Path, counters: str
) -> None:
    # Each request may cost at most 25 input tokens ($1/M) + 800 output tokens ($5/M): about $0.004.
    path = policy_file(tmp_path, {"daily_budget_usd": 0.01})
    shared = {"redis_url": "redis://127.0.0.1:6379/0", "redis_key_prefix": f"hold-{uuid.uuid4().hex[:8]}"}
    options = shared if counters == "redis" else {}
    with make_stack(policy_file=path, group_resolver="static", **options) as stack:
        stack.upstream.reply = lambda seen: Reply(
            200,
            SSE_HEADERS,
            stream_events(
                ["slow"] * 20, model=HAIKU, input_tokens=25, cache_creation=0, cache_read=0, output_tokens=20
            ),
            delay=0.1,
        )
        body = orjson.dumps(
            {"model": HAIKU, "max_tokens": 800, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        results: list[httpx.Response] = []
        with ThreadPoolExecutor(4) as pool:
            futures = []
            for _ in range(4):
                futures.append(pool.submit(request, stack, body))
                time.sleep(0.15)  # in order, each admitted (or not) before the next arrives
            results = [future.result() for future in futures]

    statuses = [response.status_code for response in results]
    assert statuses == [200, 200, 200, 429]
    refused = error_of(results[3])
    assert refused["type"] == "rate_limit_error"
    assert "requests still running may use the rest" in refused["message"]
    assert results[3].headers["retry-after"] == "2"
    assert "x-should-retry" not in results[3].headers  # retrying after one finishes can succeed


def test_a_person_no_rule_lets_in_is_refused_before_their_body_is_read(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    path = policy_file(tmp_path, {"models": ["claude-haiku-*"]})  # engineering only; no default rule
    with make_stack(policy_file=path, group_resolver="static") as stack:
        sock = raw_post_as(stack, stack.headers("mallory@example.com"), 30 * 1024 * 1024)  # and sends 1 byte
        started = time.monotonic()
        answer = sock.recv(65536)
        waited = time.monotonic() - started
        sock.close()
        row = stack.rows(1)[0]

    assert answer.startswith(b"HTTP/1.1 403") and b"has no access to Claude" in answer
    assert waited < 2.0  # not after a body-read deadline
    assert (row["user_email"], row["outcome"], row["request_bytes"]) == ("mallory@example.com", "denied", 0)
