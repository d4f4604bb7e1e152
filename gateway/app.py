"""The app factory and the lifespan that owns the gateway's shared resources."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.audit import AuditWriter
from gateway.audit.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.audit.metrics import prometheus_text
from gateway.audit.sinks import SinkConfigError
from gateway.budget import BudgetHeaders
from gateway.capture.pipeline import CapturePipeline
from gateway.config import Settings
from gateway.google_http import google_client
from gateway.identity import IAPKeys, IAPVerifier
from gateway.intake import BodyAllowance
from gateway.policy import AccessPolicy, RequestFacts
from gateway.policy.engine import GroupPolicy
from gateway.policy.factory import open_policy
from gateway.pricing import PriceTable
from gateway.proxy import GatewayEndpoint
from gateway.telemetry.sink import telemetry_writer
from gateway.upstreams.configure import open_upstreams
from gateway.upstreams.models import ModelTable
from gateway.upstreams.router import UpstreamRouter
from gateway.upstreams.transport import UpstreamTransport

logger = logging.getLogger("gateway")

# The shutdown budget (GATEWAY_SHUTDOWN_SECONDS from SIGTERM) in its parts: streams run until STREAM_RESERVE
# seconds before its end and are then cut; the requests cut finish their bookkeeping; captures under way get
# CAPTURE_DRAIN_SECONDS; audit rows are in the sink or the audit_fallback log AUDIT_RESERVE seconds before the end.
STREAM_RESERVE = 2.5
AUDIT_RESERVE = 1.0
CAPTURE_DRAIN_SECONDS = 0.5
# Shutting down without a SIGTERM noted (the lifespan ends, e.g. under another server): time for the writers.
CLOSE_SECONDS = 2.0
# Answered by the app itself, without an audit row: probes and the metrics scrape (GET or HEAD only).
UNAUDITED_PATHS = frozenset(("/healthz", "/health", "/metrics"))
_UNAUDITED_METHODS = frozenset(("GET", "HEAD"))


class Gateway:
    """Shared resources, created when the app starts and closed when it stops."""

    client: httpx.AsyncClient
    """For Google's endpoints (IAP keys, OAuth tokens); relayed requests go through `transport`."""
    transport: UpstreamTransport
    verifier: IAPVerifier
    writer: AuditWriter
    telemetry: AuditWriter | None
    """Claude Code's OpenTelemetry, stamped with the verified sender, to the telemetry table; None while that
    table is missing (exports are then answered and dropped: inference never depends on it)."""
    upstreams: UpstreamRouter
    models: ModelTable
    policy: AccessPolicy
    prices: PriceTable
    capture: CapturePipeline | None
    """Prompt capture, when a policy rule asks for it; None otherwise (and the relay does no capture work)."""

    relays: set[Any]
    """Relays under way (their cut handles), for the shutdown to cut."""
    in_flight: int
    """Requests being answered, until their audit row is submitted."""
    stopping_at: float | None
    """`time.monotonic()` of the SIGTERM, once one came."""
    cutting: bool
    """The streams' share of the shutdown budget is spent: relays are cut, new ones refused."""
    bodies: BodyAllowance
    """Request-body bytes held by requests in flight, per instance and per person."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bodies = BodyAllowance(settings.max_inflight_body_bytes, settings.max_inflight_body_bytes_per_user)
        self.capture = None
        self.telemetry = None
        self.relays = set()
        self.in_flight = 0
        self.stopping_at = None
        self.cutting = False

    def begin_shutdown(self, signalled_at: float | None = None) -> None:
        """SIGTERM came (at `signalled_at`): streams may run until STREAM_RESERVE seconds before the budget ends."""
        if self.stopping_at is not None:
            return
        self.stopping_at = signalled_at if signalled_at is not None else time.monotonic()
        cut_in = max(self.stopping_at + self.settings.shutdown_seconds - STREAM_RESERVE - time.monotonic(), 0.0)
        asyncio.get_running_loop().call_later(cut_in, self.cut_relays)
        logger.info("shutting down: %d request(s) under way; streams still running in %.1fs are cut",
                    self.in_flight, cut_in)

    def cut_relays(self) -> None:
        """End every relay under way with an overloaded_error (the client retries elsewhere); refuse new ones."""
        self.cutting = True
        if self.relays:
            logger.warning("shutdown budget: cutting %d relay(s) still under way", len(self.relays))
        for cut in list(self.relays):
            cut()

    def _telemetry_close(self, deadline: float) -> list[Coroutine[Any, Any, None]]:
        return [] if self.telemetry is None else [self.telemetry.aclose(deadline)]

    def budget_headers(self, facts: RequestFacts) -> BudgetHeaders | None:
        """For a Messages request by a person with a dollar budget: their standing, read while the upstream is
        called, for the `anthropic-ratelimit-unified-*` headers Claude Code shows as a notice."""
        policy = self.policy
        if facts.path != "/v1/messages" or not isinstance(policy, GroupPolicy):
            return None
        if not policy.has_budget(facts.principal.email):
            return None
        return BudgetHeaders(asyncio.create_task(policy.budget_caps(facts.principal.email), name="budget-headers"))

    def _audit_deadline(self) -> float:
        if self.stopping_at is None:
            return time.monotonic() + CLOSE_SECONDS
        return self.stopping_at + self.settings.shutdown_seconds - AUDIT_RESERVE

    async def start(self) -> None:
        settings = self.settings
        # Fail at start-up, not at the first request: a bad sink or price file is a configuration error.
        self.prices = PriceTable.load(settings.pricing_file)
        self.policy = await open_policy(settings)
        self.models = ModelTable.load(settings.models)
        self.writer = AuditWriter.from_settings(settings)
        telemetry = telemetry_writer(settings)
        if isinstance(self.policy, GroupPolicy) and self.policy.policy.capturing_rules:
            self.capture = CapturePipeline.from_settings(settings, self.writer)
        self.client = google_client()
        audiences = settings.iap_audience or ["/projects/dev/locations/local/services/claude-gateway"]
        self.verifier = IAPVerifier(
            IAPKeys(self.client, settings.iap_certs_url),
            audiences,
            allowed_domains=settings.allowed_domains,
            clock_skew=settings.iap_clock_skew_seconds,
        )
        try:
            self.upstreams = await open_upstreams(settings, self.models, self.client)
        except BaseException:
            await self.client.aclose()  # finding credentials may have left a connection open (the metadata server)
            raise
        await self.writer.start()
        try:
            await telemetry.start()
            self.telemetry = telemetry
        except SinkConfigError as exc:
            self.telemetry = None
            logger.error("telemetry table unusable, so Claude Code's telemetry is answered and dropped (create the "
                         "table with `claude-gateway bq init` or Terraform, then restart): %s", exc)
        if self.capture is not None:
            await self.capture.start()
        # Last, so a start-up that fails earlier leaves no aiohttp session unclosed.
        self.transport = UpstreamTransport.from_settings(settings)
        logger.info(
            "gateway %s started: upstreams %s, audit sink %s%s",
            __version__,
            ", ".join(self.upstreams.names),
            self.writer.sink.name,
            f", prompt capture to {self.capture.content.sink.name} (at most {settings.capture_max_bytes} bytes "
            "of each request and response)" if self.capture is not None else "",
        )

    async def aclose(self) -> None:
        deadline = self._audit_deadline()
        # Requests the server cancelled still settle their spend and submit their rows: give them a moment.
        settle_by = min(deadline - CAPTURE_DRAIN_SECONDS - 0.5, time.monotonic() + 1.0)
        while self.in_flight and time.monotonic() < settle_by:
            await asyncio.sleep(0.02)
        await self.policy.aclose()
        await self.upstreams.aclose()
        # Rows first: they must reach the sink before the process goes away. Captures under way submit their
        # requests' metadata rows, so they finish before the writers drain, and both writers drain at once.
        if self.capture is not None:
            await self.capture.drain(max(min(CAPTURE_DRAIN_SECONDS, deadline - time.monotonic() - 0.5), 0.05))
            await asyncio.gather(self.writer.aclose(deadline), self.capture.content.aclose(deadline),
                                 *self._telemetry_close(deadline))
        else:
            await asyncio.gather(self.writer.aclose(deadline), *self._telemetry_close(deadline))
        await self.transport.aclose()
        await self.client.aclose()
        logger.info("gateway stopped: %s", self.writer.counters)


class GatewayApp(FastAPI):
    """FastAPI for the gateway's own endpoints, with `/v1/...` relayed straight to the relay endpoint: FastAPI's
    middleware stack and router would cost more per request than the relay's own checks, and do nothing for it."""

    relay: GatewayEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every HTTP request but the probes, whatever its path or method, is the relay's: one audit row each.
        if (
            self.relay is not None
            and scope["type"] == "http"
            and (scope["path"] not in UNAUDITED_PATHS or scope["method"] not in _UNAUDITED_METHODS)
        ):
            await self.relay(cast(dict[str, Any], scope), receive, send)  # uvicorn's scopes are dicts
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A gateway app; settings are read from the environment when not given."""
    settings = settings or Settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.aclose()

    app = GatewayApp(
        title="Claude SSO gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = gateway

    # `/healthz` for Cloud Run's probes; `/health` for checks over the service URL, where Google's front end
    # reserves some paths ending in `z`.
    @app.api_route("/healthz", methods=["GET", "HEAD"], include_in_schema=False)
    @app.api_route("/health", methods=["GET", "HEAD"], include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @app.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
    async def metrics() -> Response:
        """Audit counters for Prometheus or Cloud Monitoring: counts only, no user data."""
        text = prometheus_text(gateway.writer, gateway.capture) + gateway.prices.prometheus_text()
        text += gateway.bodies.prometheus_text()
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    # Plain ASGI for the relay: FastAPI's request parsing would cost time and buffer nothing useful.
    app.relay = GatewayEndpoint(gateway)
    return app
