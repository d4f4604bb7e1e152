"""Errors the shim reports: one readable line for the terminal, an Anthropic-shaped body for Claude Code."""

from __future__ import annotations

import json

# Anthropic's error `type` for each HTTP status the shim produces itself.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


def error_body(status: int, message: str) -> bytes:
    """`{"type":"error","error":{"type":...,"message":...}}` as bytes."""
    error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


class ShimError(Exception):
    """A failure with a message that says how to fix it, and the HTTP status Claude Code should see."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ConfigError(ShimError):
    """The shim is not configured, or configured wrongly."""

    status = 500


class AuthError(ShimError):
    """No usable Google credentials: not signed in, sign-in revoked, client rejected."""

    status = 401


class GoogleUnavailableError(ShimError):
    """Google's token service could not be reached or failed; worth retrying."""

    status = 503


class LoginError(ShimError):
    """The browser sign-in did not complete."""

    status = 401
