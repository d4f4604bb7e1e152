"""Builds the upstream router the settings describe (GATEWAY_UPSTREAM and the per-upstream settings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from gateway.upstreams.anthropic import AnthropicUpstream
from gateway.upstreams.base import Upstream
from gateway.upstreams.google_auth import GoogleToken
from gateway.upstreams.models import ModelTable
from gateway.upstreams.router import UpstreamRouter
from gateway.upstreams.vertex import VertexUpstream

if TYPE_CHECKING:
    from gateway.config import Settings


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
