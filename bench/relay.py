"""The baseline: a bare streaming relay (Starlette route, shared httpx client, no identity, audit or policy).

It has the gateway's shape (uvicorn, a Starlette route to a raw ASGI endpoint, one shared `httpx.AsyncClient`,
`send(stream=True)` and `aiter_raw()`), so the gap between it and the gateway is what identity, metering,
audit and logging cost. With `--meter` each relayed chunk also goes through the gateway's `SSEMeter`, so
`relay+meter` minus `relay` is what SSE metering alone costs.

Run: python -m bench.relay --port 9100 --upstream http://127.0.0.1:9000 [--meter]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

_DROP_REQUEST = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding", b"accept-encoding"})
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


class Relay:
    """Forwards every request to one upstream and streams the reply back unchanged."""

    def __init__(self, upstream: str, *, meter: bool, client: str = "httpx") -> None:
        self.upstream = upstream.rstrip("/")
        self.meter = meter
        self.client_module = client
        self.client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # httpx2 (pydantic's fork, which the anthropic SDK depends on) has the same API and a pool whose
        # bookkeeping is linear rather than quadratic in the number of connections.
        module: Any = httpx if self.client_module == "httpx" else __import__(self.client_module)
        limits = module.Limits(max_connections=512, max_keepalive_connections=512)
        async with module.AsyncClient(limits=limits, timeout=60.0, trust_env=False) as client:
            self.client = client
            yield

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert self.client is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k not in _DROP_REQUEST]
        headers.append((b"accept-encoding", b"identity"))
        url = self.upstream + scope["path"]
        request = self.client.build_request(scope["method"], url, headers=headers, content=b"".join(chunks))
        response = await self.client.send(request, stream=True)
        meter = None
        if self.meter:
            from gateway.metering import SSEMeter

            meter = SSEMeter()
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _DROP_RESPONSE],
                }
            )
            async for chunk in response.aiter_raw():
                if meter is not None:
                    meter.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
            if meter is not None:
                meter.finish()


def create_app(upstream: str, *, meter: bool = False, client: str = "httpx") -> Starlette:
    relay = Relay(upstream, meter=meter, client=client)
    return Starlette(routes=[Route("/{path:path}", relay, methods=["GET", "POST"])], lifespan=relay.lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--meter", action="store_true", help="feed every chunk to the gateway's SSEMeter")
    parser.add_argument("--client", choices=["httpx", "httpx2"], default="httpx", help="the upstream HTTP client")
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(args.upstream, meter=args.meter, client=args.client),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
