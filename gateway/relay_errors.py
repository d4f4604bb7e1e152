"""How what goes wrong on the way to and from an upstream reaches the client: Anthropic-shaped errors, one table."""

from __future__ import annotations

from gateway.audit.record import SHUTDOWN
from gateway.errors import GatewayError, error_body
from gateway.metering import JSONMeter, SSEMeter, Usage
from gateway.upstreams.base import UpstreamUnavailable

SHUTTING_DOWN = "The gateway instance is shutting down; retry the request."


def shutdown_error() -> GatewayError:
    """The instance is going away: an overloaded_error, which clients retry (elsewhere)."""
    return GatewayError(529, SHUTTING_DOWN, outcome=SHUTDOWN, error_type="overloaded_error")


def upstream_failure(status: int, what: str, exc: Exception) -> GatewayError:
    """The transport failed (`what` says how): 502, or 504 for a timeout."""
    detail = str(exc) or type(exc).__name__
    return GatewayError(status, f"The upstream {what}: {detail}", outcome="upstream_error")


def unavailable(exc: UpstreamUnavailable) -> GatewayError:
    """No upstream took the call: 503 with retry-after when every circuit is open, else 502 or 504."""
    if exc.attempts == 0:  # every circuit open: fail fast, and say when to come back
        retry_after = {"retry-after": str(int(exc.retry_after or 1))}
        return GatewayError(503, exc.message, outcome="upstream_error", headers=retry_after)
    return GatewayError(504 if exc.timed_out else 502, exc.message, outcome="upstream_error")


def sse_error(error: GatewayError) -> bytes:
    """The error as an `event: error`, for a stream whose status line has already gone."""
    return b"event: error\ndata: " + error_body(error.status, error.message, error.error_type) + b"\n\n"


def unfinished(usage: Usage, meter: SSEMeter | JSONMeter) -> str:
    """Why a successful-looking reply is not one."""
    if isinstance(meter, JSONMeter):
        return "the upstream's reply is not a JSON object"
    if not usage.started:
        return "the upstream's event stream never started (no message_start)"
    return "the upstream's event stream ended before message_stop"
