"""The gateway's shared resources: each built from the settings when the app starts, and closed when it stops."""

from __future__ import annotations

import asyncio
import logging

import httpx

from gateway import __version__
from gateway.audit.sink_base import SinkConfigError
from gateway.audit.writer import AuditWriter
from gateway.capture.pipeline import CapturePipeline
from gateway.config import Settings
from gateway.endpoints import Endpoint
from gateway.google_http import google_client
from gateway.identity import IAPKeys, IAPVerifier
from gateway.intake import BodyAllowance
from gateway.models import ModelTable
from gateway.policy.base import AccessPolicy, AllowAll, RequestFacts
from gateway.policy.budget import BudgetHeaders
from gateway.policy.engine import GroupPolicy
from gateway.policy.factory import counters, group_resolver
from gateway.policy.loader import load_policy
from gateway.policy.model import Policy
from gateway.price_sources import load_prices
from gateway.pricing import PriceTable
from gateway.telemetry.sink import telemetry_writer
from gateway.trail import AuditTrail
from gateway.upstreams.anthropic import AnthropicUpstream
from gateway.upstreams.base import Upstream
from gateway.upstreams.google_auth import GoogleToken
from gateway.upstreams.router import UpstreamRouter
from gateway.upstreams.transport import UpstreamTransport
from gateway.upstreams.vertex import VertexUpstream

logger = logging.getLogger("gateway")
policy_logger = logging.getLogger("gateway.policy")


class Resources:
    """Shared resources, created when the app starts and closed when it stops."""

    client: httpx.AsyncClient
    """For Google's endpoints (IAP keys, OAuth tokens, Cloud Identity); relayed requests go through `transport`."""
    transport: UpstreamTransport
    verifier: IAPVerifier
    trail: AuditTrail
    """The writers of audit rows, content and telemetry; it also orders the shutdown."""
    upstreams: UpstreamRouter
    models: ModelTable
    policy: AccessPolicy
    group_policy: GroupPolicy | None
    """The policy file's rules, when there is one: budgets and managed settings come from it."""
    prices: PriceTable
    bodies: BodyAllowance
    """Request-body bytes held by requests in flight, per instance and per person."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bodies = BodyAllowance(settings.max_inflight_body_bytes, settings.max_inflight_body_bytes_per_user)
        self.group_policy = None

    def begin_shutdown(self, signalled_at: float | None = None) -> None:
        """SIGTERM came (at `signalled_at`): the trail cuts the streams in time to write every row."""
        self.trail.begin_shutdown(signalled_at)

    def budget_headers(self, facts: RequestFacts) -> BudgetHeaders | None:
        """For a Messages request by a person with a dollar budget: their standing, read while the upstream is
        called, for the `anthropic-ratelimit-unified-*` headers Claude Code shows as a notice."""
        policy = self.group_policy
        if facts.path != Endpoint.MESSAGES or policy is None or not policy.has_budget(facts.principal.email):
            return None
        return BudgetHeaders(asyncio.create_task(policy.budget_caps(facts.principal.email), name="budget-headers"))

    async def start(self) -> None:
        settings = self.settings
        # Fail at start-up, not at the first request: a bad sink or price file is a configuration error.
        self.prices = load_prices(settings.pricing_file)
        rules = load_policy(settings.policy_file) if settings.policy_file else None
        self.models = ModelTable.load(settings.models)
        writer = AuditWriter.from_settings(settings)
        telemetry = telemetry_writer(settings)
        capture = None
        if rules is not None and rules.capturing_rules:
            capture = CapturePipeline.from_settings(settings, writer)
        self.client = google_client()
        try:
            self.group_policy = await open_policy(settings, rules, self.client)
            self.policy = self.group_policy if self.group_policy is not None else AllowAll()
            audiences = settings.iap_audience or ["/projects/dev/locations/local/services/claude-gateway"]
            self.verifier = IAPVerifier(
                IAPKeys(self.client, settings.iap_certs_url),
                audiences,
                allowed_domains=settings.allowed_domains,
                clock_skew=settings.iap_clock_skew_seconds,
            )
            self.upstreams = await open_upstreams(settings, self.models, self.client)
        except BaseException:
            await self.client.aclose()  # finding credentials may have left a connection open (the metadata server)
            raise
        await writer.start()
        started_telemetry = await _start_telemetry(telemetry)
        if capture is not None:
            await capture.start()
        self.trail = AuditTrail(settings, writer, capture, started_telemetry)
        self.transport = UpstreamTransport.from_settings(settings)
        logger.info(
            "gateway %s started: upstreams %s, audit sink %s%s",
            __version__,
            ", ".join(self.upstreams.names),
            writer.sink.name,
            f", prompt capture to {capture.content.sink.name} (at most {settings.capture_max_bytes} bytes "
            "of each request and response)"
            if capture is not None
            else "",
        )

    async def aclose(self) -> None:
        trail = self.trail
        deadline = trail.deadline()
        await trail.settle(deadline)
        await self.policy.aclose()
        await self.upstreams.aclose()
        await trail.aclose(deadline)
        await self.transport.aclose()
        await self.client.aclose()
        logger.info("gateway stopped: %s", trail.writer.counters)


async def _start_telemetry(writer: AuditWriter) -> AuditWriter | None:
    """The telemetry writer, started; None (and logged) while its table is unusable."""
    try:
        await writer.start()
    except SinkConfigError as exc:
        logger.error(
            "telemetry table unusable, so Claude Code's telemetry is answered and dropped (create the "
            "table with `claude-gateway bq init` or Terraform, then restart): %s",
            exc,
        )
        return None
    return writer


async def open_policy(
    settings: Settings, policy: Policy | None, google: httpx.AsyncClient | None = None
) -> GroupPolicy | None:
    """The started policy for the file's rules, or None without `GATEWAY_POLICY_FILE` (everyone may use all);
    Cloud Identity is asked over `google`, the client for Google's endpoints."""
    if policy is None:
        policy_logger.info(
            "policy: no GATEWAY_POLICY_FILE; everyone IAP lets through may use every model without limits"
        )
        return None
    engine = GroupPolicy(
        policy,
        group_resolver(policy, settings, google),
        counters(settings),
        fail_open=settings.policy_fail_mode == "open",
    )
    await engine.start()
    policy_logger.info(
        "policy: %s loaded: %d group rules, %d user overrides, %s; membership from %s; counters %s, fail-%s",
        policy.source,
        len(policy.groups),
        len(policy.users),
        "a default rule" if policy.default else "no default rule (people in no group are refused)",
        engine.groups.source,
        engine.counters.name,
        settings.policy_fail_mode,
    )
    if settings.redis_url is None:
        policy_logger.warning(
            "policy: limits are counted in this instance only; with more than one instance each allows the full "
            "limits. Set GATEWAY_REDIS_URL to share them."
        )
    return engine


async def open_upstreams(settings: Settings, models: ModelTable, google: httpx.AsyncClient) -> UpstreamRouter:
    """The router, with Google credentials loaded once (over `google`, the client for Google's endpoints) when a
    Vertex upstream is configured.

    Raises ValueError for a configuration that cannot work (no credentials, no project)."""
    token: GoogleToken | None = None
    project: str | None = None
    upstreams: list[Upstream] = []
    for name in settings.upstream:
        if name == "anthropic":
            upstreams.append(AnthropicUpstream(settings.upstream_url, settings.anthropic_api_key))
            continue
        if token is None:
            token, adc_project = await GoogleToken.from_environment(google)
            project = settings.vertex_project or settings.google_cloud_project or adc_project
            if not project:
                await token.aclose()
                raise ValueError(
                    "Vertex AI upstream: no project. Set GATEWAY_VERTEX_PROJECT (or GOOGLE_CLOUD_PROJECT)."
                )
        assert project is not None
        _, _, region = name.partition(":")
        upstreams.append(
            VertexUpstream(
                name=name,
                project=project,
                region=region or settings.vertex_region,
                models=models,
                token=token,
                base_url=settings.vertex_base_url,
                betas=None if "*" in settings.vertex_betas else settings.vertex_betas,
            )
        )
    return UpstreamRouter(
        upstreams,
        breaker_failures=settings.breaker_failures,
        breaker_cooldown=settings.breaker_cooldown_seconds,
        retry_after_max=settings.retry_after_max_seconds,
    )
