"""Anthropic-shaped error bodies, so Claude Code shows the gateway's reasons to the person."""

from __future__ import annotations

import orjson

# Anthropic's error `type` for each HTTP status the gateway produces itself.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """The Anthropic error type for an HTTP status."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str, error_type: str | None = None) -> bytes:
    """`{"type":"error","error":{"type":...,"message":...}}` as bytes."""
    return orjson.dumps({"type": "error", "error": {"type": error_type or error_type_for(status), "message": message}})


class GatewayError(Exception):
    """A refusal the gateway answers itself, with an HTTP status and an audit outcome."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        outcome: str,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.error_type = error_type or error_type_for(status)
        self.headers = headers or {}
