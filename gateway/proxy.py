"""The relay: authenticate, check policy, stream the upstream reply through unchanged, meter it, audit it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from gateway import endpoints, protocol_routes
from gateway.access_log import log_access
from gateway.audit.record import SHUTDOWN, AuditRecord
from gateway.client_response import ClientResponse
from gateway.endpoints import Endpoint
from gateway.errors import GatewayError
from gateway.headers import client_response_headers, upstream_request_headers
from gateway.identity import DomainNotAllowed
from gateway.intake import BodyLease, ParsedBody, iap_assertion, new_record, parse_body, read_body
from gateway.metering import ESTIMATE_BYTES_PER_INPUT_TOKEN, JSONMeter, SSEMeter, Usage
from gateway.models import models_listing
from gateway.policy.base import Admission, PolicyRefusal, RequestFacts
from gateway.pricing import PriceTable
from gateway.relay_errors import SHUTTING_DOWN, shutdown_error, sse_error, unavailable, unfinished, upstream_failure
from gateway.upstreams.base import UpstreamCall, UpstreamUnavailable
from gateway.upstreams.errors import UpstreamTimeout, UpstreamTransportError
from gateway.upstreams.transport import UpstreamResponse
from gateway.vertex_inbound import as_anthropic, with_anthropic_version

if TYPE_CHECKING:
    from gateway.resources import Resources

logger = logging.getLogger("gateway.proxy")

Scope = dict[str, Any]

# How long ending a cut response may take: a client that does not read must not hold up the shutdown.
_CUT_SEND_SECONDS = 1.0


class _Cut:
    """A relay under way, which the shutdown can cut: it cancels the relay's scope and says so."""

    __slots__ = ("scope", "done")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.done = False

    def __call__(self) -> None:
        self.done = True
        self.scope.cancel()


class GatewayEndpoint:
    """The ASGI app behind every request but the probes: one audit row per request, whatever happens."""

    def __init__(self, gateway: Resources) -> None:
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        gateway = self._gateway
        started_at = time.perf_counter()
        record = new_record(scope)
        response = ClientResponse(send, record, started_at)
        gateway.trail.begin()
        lease = BodyLease(gateway.bodies)
        try:
            await self._handle(gateway, scope, receive, response, record, lease)
        except GatewayError as exc:
            _note_error(record, exc.status, exc.outcome, exc.error_type, exc.message)
            if not response.started:
                await response.error(exc)
        except Exception as exc:  # nothing may take the worker down or leave a request unaudited
            logger.exception("unexpected error handling %s %s", record.method, record.path)
            _note_error(record, 500, "gateway_error", "api_error", f"internal gateway error: {type(exc).__name__}")
            if not response.started:
                await response.error(GatewayError(500, "Internal gateway error.", outcome="gateway_error"))
        except asyncio.CancelledError:
            # The server cancels what still runs when its graceful shutdown ends (the relay itself notes that
            # and carries on): outside the relay, say so and end. The row below is written either way.
            if not response.finished:
                _note_error(record, record.status_code or 529, SHUTDOWN, "overloaded_error", SHUTTING_DOWN)
                with anyio.move_on_after(_CUT_SEND_SECONDS):
                    if not response.started:
                        await response.error(shutdown_error())
            raise
        finally:
            lease.release()
            record.duration_ms = round((time.perf_counter() - started_at) * 1000, 3)
            gateway.trail.finish(record, response.capture)
            if gateway.settings.access_log:
                log_access(record, gateway.settings.google_cloud_project)

    async def _handle(
        self,
        gateway: Resources,
        scope: Scope,
        receive: Any,
        response: ClientResponse,
        record: AuditRecord,
        lease: BodyLease,
    ) -> None:
        try:
            principal = await gateway.verifier.verify(iap_assertion(scope["headers"]))
        except DomainNotAllowed as exc:
            _note_principal(record, exc.principal)
            raise
        _note_principal(record, principal)
        lease.person = principal.email

        method = record.method
        route = endpoints.match(method, record.path)
        if route.endpoint in endpoints.PROTOCOL:  # managed settings, usage, telemetry: answered here
            reply = await protocol_routes.answer(gateway, route.endpoint, scope, receive, record, principal, lease)
            await response.start(reply.status, reply.headers)
            await response.body(reply.body)
            await response.end()
            return

        try:
            gateway.policy.precheck(principal)  # someone no rule lets in is refused before their body is read
        except PolicyRefusal as refusal:
            record.groups = list(refusal.groups)
            raise
        settings = gateway.settings
        body = await read_body(scope, receive, settings.max_body_bytes, lease, settings.body_read_timeout_seconds)
        record.request_bytes = len(body)
        parsed = parse_body(scope, body) if method == "POST" else ParsedBody(body=body)
        body = parsed.body
        endpoint, query = route.endpoint, scope.get("query_string", b"")
        headers = upstream_request_headers(scope["headers"])
        if endpoint in endpoints.VERTEX:
            # A Vertex-protocol request becomes the same Anthropic request: any upstream serves it, one meter reads it.
            anthropic = as_anthropic(route, body, gateway.models)
            body, parsed.model, parsed.stream = anthropic.body, anthropic.model, anthropic.stream
            endpoint, query, headers = anthropic.endpoint, b"", with_anthropic_version(headers)
        record.requested_model = parsed.model
        record.stream = parsed.stream

        reserve_tokens = reserve_micros = 0
        if endpoint is Endpoint.MESSAGES:
            # Held against the person's limits while the request runs: the input (from its size) and max_tokens.
            input_estimate, output_most = -(-len(body) // ESTIMATE_BYTES_PER_INPUT_TOKEN), parsed.max_tokens or 0
            reserve_tokens = input_estimate + output_most
            reserve_micros = gateway.prices.most_micros(parsed.model, input_estimate, output_most)
        facts = RequestFacts(
            principal=principal,
            path=endpoint,
            model=parsed.model,
            max_tokens=parsed.max_tokens,
            stream=parsed.stream,
            reserve_tokens=reserve_tokens,
            reserve_micros=reserve_micros,
        )
        try:
            admission = await gateway.policy.admit(facts)
        except PolicyRefusal as refusal:
            record.groups, record.policy_rule = list(refusal.groups), refusal.rule
            raise
        record.groups = list(admission.groups)
        record.policy_rule = admission.rule
        response.capture = gateway.trail.capture_for(admission.capture, endpoint, body, record)
        response.budget = gateway.budget_headers(facts)

        call = UpstreamCall(
            method=method,
            path=endpoint,
            query=query,
            headers=headers,
            body=body,
            model=parsed.model,
            stream=parsed.stream,
        )
        usage = Usage()
        try:
            if endpoint is Endpoint.MODELS:
                # Answered from the model table: Vertex has no such endpoint, and the list is per caller.
                await response.json(await models_listing(gateway.models, gateway.policy, principal))
            else:
                gateway.trail.admit(record)
                usage = await self._relay(gateway, call, receive, response, record)
        finally:
            _note_cost(record, gateway.prices, usage, parsed.model)
            await _settle(gateway, facts, admission, usage, record.cost_usd)

    async def _relay(
        self, gateway: Resources, call: UpstreamCall, receive: Any, response: ClientResponse, record: AuditRecord
    ) -> Usage:
        if gateway.trail.cutting:
            raise shutdown_error()
        disconnected = False
        scope = anyio.CancelScope()
        cut = _Cut(scope)

        async def watch_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            scope.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        upstream_response: UpstreamResponse | None = None
        meter: SSEMeter | JSONMeter = JSONMeter()
        failure: GatewayError | None = None
        feed = None
        gateway.trail.relays.add(cut)
        try:
            with scope:
                try:
                    result = await gateway.upstreams.open(gateway.transport, call)
                except UpstreamUnavailable as exc:
                    record.upstream, record.attempts = exc.upstream, exc.attempts
                    record.upstream_failures = "; ".join(exc.failures) or None
                    raise unavailable(exc) from None
                except UpstreamTimeout as exc:
                    raise upstream_failure(504, "timed out", exc) from None
                except UpstreamTransportError as exc:
                    raise upstream_failure(502, "could not be reached", exc) from None
                upstream_response = result.response
                record.upstream = result.upstream
                record.attempts = result.attempts
                record.upstream_failures = "; ".join(result.failures) or None
                record.upstream_request_id = upstream_response.header(b"request-id")
                event_stream = (upstream_response.header(b"content-type") or "").startswith("text/event-stream")
                if event_stream:
                    meter = SSEMeter()
                capture = response.capture
                if capture is not None and capture.wants_response:
                    capture.start(event_stream)
                    feed = capture.feed
                headers = client_response_headers(upstream_response.raw_headers)
                if response.budget is not None:  # Claude Code's budget notice, for a person with a dollar budget
                    headers = await response.budget.apply(upstream_response.status_code, headers)
                await response.start(upstream_response.status_code, headers)
                try:
                    async for chunk in upstream_response.aiter_raw():
                        meter.feed(chunk)
                        if feed is not None:
                            feed(chunk)
                        await response.body(chunk)
                except UpstreamTransportError as exc:
                    # Too late for a status code: tell a streaming client in its own protocol.
                    failure = upstream_failure(502, "failed mid-response", exc)
                    if isinstance(meter, SSEMeter):
                        error_event = sse_error(failure)
                        if feed is not None:
                            feed(error_event)
                        await response.body(error_event)
        except asyncio.CancelledError:
            # The server's graceful shutdown ran out and it cancels what still runs: the bookkeeping below (tokens,
            # cost, the budget's settlement, the row) must still happen, so the cancellation ends here.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            cut.done = True
        finally:
            gateway.trail.relays.discard(cut)
            watcher.cancel()
            if upstream_response is not None:
                with anyio.CancelScope(shield=True):
                    await upstream_response.aclose()
            meter.finish()

        usage = meter.usage
        if (disconnected or cut.done) and usage.input_tokens is None and call.path == Endpoint.MESSAGES:
            # The upstream had the request and bills its input, reply or not: charge an estimate from its size.
            usage.input_tokens = -(-len(call.body) // ESTIMATE_BYTES_PER_INPUT_TOKEN)
            usage.output_tokens = usage.output_tokens or 0
            usage.estimated = True
        _note_usage(record, usage)
        if disconnected:
            record.outcome = "client_disconnect"
            record.error_message = "client went away before the response was complete"
            if not response.started:
                record.status_code = 499
        elif cut.done:
            await _end_cut(response, record, isinstance(meter, SSEMeter), feed)
        elif failure is not None:
            _note_error(record, record.status_code, "upstream_error", failure.error_type, failure.message)
            await response.end()
        else:
            if record.status_code >= 400 or usage.error_type:
                record.outcome = "upstream_error"
                record.error_type = usage.error_type
                record.error_message = usage.error_message
            elif not usage.finished:
                _note_error(record, record.status_code, "upstream_error", "api_error", unfinished(usage, meter))
            await response.end()
        return usage


async def _end_cut(response: ClientResponse, record: AuditRecord, event_stream: bool, feed: Any) -> None:
    """End a response the shutdown cut: an overloaded_error the client retries (an `event: error` once a stream
    has started), and a row that says so, with the tokens the upstream reported so far."""
    error = shutdown_error()
    status = record.status_code if response.started else error.status
    _note_error(record, status, SHUTDOWN, error.error_type, "cut short by the gateway's shutdown; " + error.message)
    with anyio.move_on_after(_CUT_SEND_SECONDS):
        if not response.started:
            await response.error(error)
        else:
            if event_stream:
                event = sse_error(error)
                if feed is not None:
                    feed(event)
                await response.body(event)
            await response.end()


async def _settle(
    gateway: Resources, facts: RequestFacts, admission: Admission, usage: Usage, cost: float | None
) -> None:
    try:
        await gateway.policy.settle(facts, admission, usage, cost)
    except Exception:  # accounting trouble must not turn a served request into an error
        logger.exception("policy settle failed")


def _note_principal(record: AuditRecord, principal: Any) -> None:
    record.user_email = principal.email
    record.user_subject = principal.subject
    record.user_domain = principal.domain


def _note_error(record: AuditRecord, status: int, outcome: str, error_type: str | None, message: str) -> None:
    record.status_code = status
    record.outcome = outcome
    record.error_type = error_type
    record.error_message = message


def _note_cost(record: AuditRecord, prices: PriceTable, usage: Usage, requested: str | None) -> None:
    """Price a Messages response; anything else the upstream answers (count_tokens, models, errors) is free."""
    if usage.message_id is None and usage.output_tokens is None:
        record.cost_usd = 0.0
        return
    priced = prices.cost(usage.model or requested, usage)
    record.cost_usd = priced.cost_usd
    record.priced_as, record.price_rule, record.price_source = priced.priced_as, priced.rule, priced.source


def _note_usage(record: AuditRecord, usage: Usage) -> None:
    record.served_model = usage.model
    record.message_id = usage.message_id
    record.stop_reason = usage.stop_reason
    record.input_tokens = usage.input_tokens
    record.output_tokens = usage.output_tokens
    record.cache_creation_input_tokens = usage.cache_creation_input_tokens
    record.cache_read_input_tokens = usage.cache_read_input_tokens
    record.cache_creation_1h_input_tokens = usage.cache_creation_1h_input_tokens
    record.web_search_requests = usage.web_search_requests
    record.inference_geo = usage.inference_geo
    record.speed = usage.speed
    record.usage_estimated = usage.estimated or None
