"""Bad input always gets an Anthropic-shaped error with the right status, and an audit row."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.conftest import Stack, StackFactory


def assert_anthropic_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{not json", "not valid JSON"), (b'["a", "list"]', "JSON object"), (b"\xff\xfe", "not valid JSON")],
)
def test_malformed_body_gets_400(stack: Stack, body: bytes, fragment: str) -> None:
    response = httpx.post(
        stack.url + "/v1/messages", content=body, headers={"content-type": "application/json", **stack.headers()}
    )

    assert_anthropic_error(response, 400, "invalid_request_error")
    assert fragment in response.json()["error"]["message"]
    row = stack.rows(1)[0]
    assert (row["outcome"], row["status_code"], row["user_email"]) == ("bad_request", 400, "ada@example.com")
    assert stack.upstream.requests == []


def test_wrong_content_type_gets_415(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/v1/messages",
        content=b"model=x",
        headers={"content-type": "application/x-www-form-urlencoded", **stack.headers()},
    )

    assert_anthropic_error(response, 415, "invalid_request_error")
    assert stack.rows(1)[0]["outcome"] == "bad_request"


def test_body_over_the_limit_gets_413_without_reading_it_all(make_stack: StackFactory) -> None:
    with make_stack(max_body_bytes=1024) as stack:
        big = b'{"model": "claude-sonnet-4-5", "messages": [], "pad": "' + b"x" * 4096 + b'"}'

        declared = httpx.post(
            stack.url + "/v1/messages", content=big, headers={"content-type": "application/json", **stack.headers()}
        )

        def chunks() -> Iterator[bytes]:
            yield big  # sent chunked, with no Content-Length to refuse early

        streamed = httpx.post(
            stack.url + "/v1/messages",
            content=chunks(),
            headers={"content-type": "application/json", **stack.headers()},
        )

        for response in (declared, streamed):
            assert_anthropic_error(response, 413, "request_too_large")
        assert [r["status_code"] for r in stack.rows(2)] == [413, 413]
        assert stack.upstream.requests == []


def test_unknown_path_gets_404(stack: Stack) -> None:
    response = httpx.get(stack.url + "/v1/complete", headers=stack.headers())

    assert_anthropic_error(response, 404, "not_found_error")
    row = stack.rows(1)[0]
    assert (row["outcome"], row["path"], row["user_email"]) == ("not_found", "/v1/complete", "ada@example.com")


def test_unknown_path_without_identity_gets_401_not_404(stack: Stack) -> None:
    response = httpx.get(stack.url + "/admin")

    assert_anthropic_error(response, 401, "authentication_error")
    assert stack.rows(1)[0]["outcome"] == "unauthenticated"


def test_wrong_method_gets_405_with_allow_header(stack: Stack) -> None:
    response = httpx.get(stack.url + "/v1/messages", headers=stack.headers())

    assert_anthropic_error(response, 405, "invalid_request_error")
    assert response.headers["allow"] == "POST"
    assert stack.rows(1)[0]["status_code"] == 405


def test_healthz_needs_no_identity(stack: Stack) -> None:
    response = httpx.get(stack.url + "/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_a_flood_of_bad_requests_leaves_the_worker_serving(stack: Stack) -> None:
    bodies = [b"", b"{", b"null", b'{"model": 5}', b'{"stream": "yes"}', b"\x00" * 100]
    for body in bodies:
        response = httpx.post(
            stack.url + "/v1/messages", content=body, headers={"content-type": "application/json", **stack.headers()}
        )
        assert response.status_code in (400, 200, 502)

    assert httpx.get(stack.url + "/healthz").status_code == 200
    assert len(stack.rows(len(bodies))) == len(bodies)


def test_lone_surrogate_escape_is_relayed_not_refused(stack: Stack) -> None:
    """A JavaScript client cutting a string mid-emoji sends `\\ud83d` alone: valid JSON, though orjson refuses it."""
    body = b'{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "cut \\ud83d"}]}'

    response = httpx.post(
        stack.url + "/v1/messages", content=body, headers={"content-type": "application/json", **stack.headers()}
    )

    assert response.status_code == 200
    assert stack.upstream.requests[-1].body == body
    assert stack.rows(1)[0]["requested_model"] == "claude-haiku-4-5"
