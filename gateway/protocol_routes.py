"""The gateway-protocol endpoints Claude Code calls beside inference: its managed settings, its budget in dollars,
and its OpenTelemetry. Each is answered by the gateway itself, after IAP and the policy's rule check, with an audit
row like every other request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from gateway.audit.record import AuditRecord
from gateway.endpoints import Endpoint
from gateway.errors import GatewayError, error_body
from gateway.identity import Principal
from gateway.intake import BodyLease, read_body
from gateway.managed_settings import settings_for
from gateway.policy.base import PolicyRefusal, RequestFacts
from gateway.policy.budget import usage_body
from gateway.policy.counters import CountersUnavailable
from gateway.telemetry import otlp

if TYPE_CHECKING:
    from gateway.resources import Resources

logger = logging.getLogger("gateway.protocol")

# An OTLP export is small (Claude Code batches at most 512 records, ~350 KB as JSON); beyond this, compressed or
# not, it is refused (413). It also bounds the decoding: protobuf's JSON reader is pure Python (~0.3 s per MiB).
MAX_TELEMETRY_BYTES = 2 * 1024 * 1024
_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


async def answer(
    gateway: Resources,
    endpoint: Endpoint,
    scope: dict[str, Any],
    receive: Any,
    record: AuditRecord,
    principal: Principal,
    lease: BodyLease,
) -> Reply:
    """The reply to a gateway-protocol request; GatewayError for a refusal or bad input."""
    facts = RequestFacts(principal=principal, path=endpoint, model=None, max_tokens=None, stream=False)
    try:
        admission = await gateway.policy.admit(facts)
    except PolicyRefusal as refusal:
        record.groups, record.policy_rule = list(refusal.groups), refusal.rule
        raise
    record.groups, record.policy_rule, record.cost_usd = list(admission.groups), admission.rule, 0.0
    if endpoint is Endpoint.MANAGED_SETTINGS:
        return _managed_settings(gateway, principal, _header(scope, b"if-none-match"))
    if endpoint is Endpoint.USAGE:
        return await _usage(gateway, principal)
    return await _telemetry(gateway, scope, receive, record, tuple(admission.groups), lease)


def _managed_settings(gateway: Resources, principal: Principal, if_none_match: str | None) -> Reply:
    policy = gateway.group_policy
    settings = None if policy is None else settings_for(policy.policy, policy.decide(principal.email))
    if settings is None:
        message = f"No managed settings for {principal.email}: the access policy sets none."
        return Reply(404, [(b"content-type", _JSON)], error_body(404, message))
    headers = [(b"etag", settings.etag.encode()), (b"cache-control", b"private, no-cache")]
    if settings.matches(if_none_match):
        return Reply(304, headers)
    return Reply(200, [(b"content-type", _JSON), *headers], settings.body())


async def _usage(gateway: Resources, principal: Principal) -> Reply:
    caps = []
    if gateway.group_policy is not None:
        try:
            caps = await gateway.group_policy.budget_caps(principal.email)
        except CountersUnavailable as exc:
            raise GatewayError(503, f"Spend cannot be read right now: {exc}", outcome="upstream_error") from None
    body = orjson.dumps(usage_body(caps))
    return Reply(200, [(b"content-type", _JSON), (b"cache-control", b"no-store")], body)


async def _telemetry(
    gateway: Resources,
    scope: dict[str, Any],
    receive: Any,
    record: AuditRecord,
    groups: tuple[str, ...],
    lease: BodyLease,
) -> Reply:
    limit = min(gateway.settings.max_body_bytes, MAX_TELEMETRY_BYTES)
    body = await read_body(scope, receive, limit, lease, gateway.settings.body_read_timeout_seconds)
    record.request_bytes = len(body)
    content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    encoding = (_header(scope, b"content-encoding") or "").strip().lower()
    sender = otlp.Sender(record.user_email or "", groups, record.request_id, record.user_agent)
    received_at = datetime.now(UTC)

    def decode() -> list[dict[str, Any]]:
        message = otlp.decode(record.path, content_type, encoding, body, limit)
        return otlp.rows(record.path, message, sender, received_at)

    try:
        # Off the event loop: a large export must not hold up the streams other requests are relaying.
        rows = await anyio.to_thread.run_sync(decode)
    except otlp.OTLPError as exc:
        raise GatewayError(400, f"Malformed OTLP export: {exc}", outcome="bad_request") from None
    writer = gateway.trail.telemetry
    if writer is not None:  # None: the table is missing (logged at start-up); the protocol still wants a 200
        for row in rows:
            writer.submit(row)
    if content_type == otlp.PROTOBUF:
        # An empty Export*ServiceResponse: full success, nothing rejected.
        return Reply(200, [(b"content-type", otlp.PROTOBUF.encode()), (b"content-length", b"0")])
    return Reply(200, [(b"content-type", _JSON), (b"content-length", b"2")], b"{}")


def _header(scope: dict[str, Any], wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None
