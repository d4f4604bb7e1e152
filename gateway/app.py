"""The app factory: the gateway's own routes, the relay for everything else, and the lifespan of its resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.config import Settings
from gateway.endpoints import Endpoint, is_probe
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import prometheus_text
from gateway.proxy import GatewayEndpoint
from gateway.resources import Resources


class GatewayApp(FastAPI):
    """FastAPI for the gateway's own endpoints, with `/v1/...` relayed straight to the relay endpoint: FastAPI's
    middleware stack and router would cost more per request than the relay's own checks, and do nothing for it."""

    relay: GatewayEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every HTTP request but the probes, whatever its path or method, is the relay's: one audit row each.
        if self.relay is not None and scope["type"] == "http" and not is_probe(scope["method"], scope["path"]):
            await self.relay(cast(dict[str, Any], scope), receive, send)  # uvicorn's scopes are dicts
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A gateway app; settings are read from the environment when not given."""
    settings = settings or Settings()
    resources = Resources(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await resources.start()
        try:
            yield
        finally:
            await resources.aclose()

    app = GatewayApp(
        title="Claude SSO gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = resources

    @app.api_route(Endpoint.HEALTHZ, methods=["GET", "HEAD"], include_in_schema=False)
    @app.api_route(Endpoint.HEALTH, methods=["GET", "HEAD"], include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @app.api_route(Endpoint.METRICS, methods=["GET", "HEAD"], include_in_schema=False)
    async def metrics() -> Response:
        """Audit counters for Prometheus or Cloud Monitoring: counts only, no user data."""
        text = prometheus_text(resources.trail.writer, resources.trail.capture) + resources.prices.prometheus_text()
        text += resources.bodies.prometheus_text()
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    # Plain ASGI for the relay: FastAPI's request parsing would cost time and buffer nothing useful.
    app.relay = GatewayEndpoint(resources)
    return app
