from __future__ import annotations

import pytest

from gateway.headers import client_response_headers, upstream_request_headers


def names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [name.decode().lower() for name, _ in headers]


@pytest.mark.parametrize(
    "name",
    [
        b"authorization",
        b"Authorization",
        b"proxy-authorization",
        b"x-api-key",
        b"X-Api-Key",
        b"x_api_key",
        b"x-goog-iap-jwt-assertion",
        b"X-Goog-Authenticated-User-Email",
        b"x_goog_authenticated_user_email",
        b"X_GOOG_IAP_JWT_ASSERTION",
        b"x-serverless-authorization",
        b"X_Serverless_Authorization",
        b"x-forwarded-for",
        b"x_forwarded_proto",
        b"forwarded",
        b"x-real-ip",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"host",
        b"content-length",
        b"cookie",
        b"x-cloud-trace-context",
    ],
)
def test_identity_credential_and_hop_headers_are_stripped_in_any_spelling(name: bytes) -> None:
    kept = upstream_request_headers([(name, b"value"), (b"anthropic-version", b"2023-06-01")])

    assert names(kept) == ["anthropic-version", "accept-encoding"]


def test_headers_named_in_connection_are_stripped() -> None:
    kept = upstream_request_headers(
        [(b"connection", b"close, X-Custom-Hop"), (b"x-custom-hop", b"1"), (b"x-stainless-os", b"Linux")]
    )

    assert names(kept) == ["x-stainless-os", "accept-encoding"]


def test_claude_code_headers_pass_unchanged() -> None:
    headers = [
        (b"anthropic-version", b"2023-06-01"),
        (b"anthropic-beta", b"claude-code-20250219,interleaved-thinking-2025-05-14"),
        (b"x-app", b"cli"),
        (b"user-agent", b"claude-cli/2.1.328 (external, sdk-cli)"),
        (b"x-claude-code-session-id", b"1b8d825e"),
        (b"anthropic-dangerous-direct-browser-access", b"true"),
        (b"content-type", b"application/json"),
    ]

    assert upstream_request_headers(headers) == [*headers, (b"accept-encoding", b"identity")]


def test_upstream_compression_is_not_requested() -> None:
    kept = upstream_request_headers([(b"accept-encoding", b"gzip, deflate, br, zstd")])

    assert kept == [(b"accept-encoding", b"identity")]


def test_response_keeps_request_id_and_rate_limits_but_not_cookies_or_hop_headers() -> None:
    headers = [
        (b"request-id", b"req_1"),
        (b"anthropic-ratelimit-tokens-remaining", b"10"),
        (b"retry-after", b"3"),
        (b"set-cookie", b"__cf_bm=x"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive"),
        (b"content-type", b"text/event-stream"),
    ]

    assert names(client_response_headers(headers)) == [
        "request-id",
        "anthropic-ratelimit-tokens-remaining",
        "retry-after",
        "content-type",
    ]
