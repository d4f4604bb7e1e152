"""Which headers cross the gateway: identity and credentials never go upstream, hop-by-hop never go anywhere."""

from __future__ import annotations

# Compared after lower-casing and turning `_` into `-`, so `X_Goog_Iap_Jwt_Assertion` is caught too
# (frameworks that treat the two spellings alike made identity-header smuggling possible elsewhere).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-serverless-authorization",
    "forwarded",
    "x-real-ip",
    "x-cloud-trace-context",
    "traceparent",
    "tracestate",
    "cookie",
}
_REQUEST_DROP_PREFIXES = ("x-goog-", "x-forwarded-", "x-envoy-", "x-gateway-")
_RESPONSE_DROP = _HOP_BY_HOP | {"set-cookie", "alt-svc", "server", "date", "x-gateway-request-id"}

# The upstream is asked not to compress, so the meter can read the bytes it relays unchanged.
_IDENTITY_ENCODING = (b"accept-encoding", b"identity")


def canonical(name: bytes) -> str:
    """Lower case, `_` read as `-`: the spelling every comparison here uses."""
    return name.decode("latin-1").lower().replace("_", "-")


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if canonical(name) == "connection":
            tokens.update(t.strip().lower().replace("_", "-") for t in value.decode("latin-1").split(","))
    return tokens


def upstream_request_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The caller's headers with credentials, identity, forwarding and hop-by-hop headers removed."""
    extra = _connection_tokens(headers)
    kept = []
    for name, value in headers:
        key = canonical(name)
        if key in _REQUEST_DROP or key in extra or key.startswith(_REQUEST_DROP_PREFIXES):
            continue
        kept.append((name, value))
    kept.append(_IDENTITY_ENCODING)
    return kept


def client_response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop and cookies (`request-id`, rate limits and
    `retry-after` pass unchanged)."""
    extra = _connection_tokens(headers)
    return [(n, v) for n, v in headers if (key := canonical(n)) not in _RESPONSE_DROP and key not in extra]
