"""Opens the upstream response for a call."""

from __future__ import annotations

import httpx

from gateway.upstreams.base import Upstream, UpstreamCall, UpstreamResult


class UpstreamRouter:
    """Sends each call to the configured upstream and returns the response with its body unread."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def open(self, client: httpx.AsyncClient, call: UpstreamCall) -> UpstreamResult:
        request = await self.upstream.build_request(client, call)
        response = await client.send(request, stream=True)
        return UpstreamResult(response=response, upstream=self.upstream.name)

    async def aclose(self) -> None:
        return None
