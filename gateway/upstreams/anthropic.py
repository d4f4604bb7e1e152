"""Anthropic's Messages API as an upstream."""

from __future__ import annotations

from pydantic import SecretStr

from gateway.upstreams.base import UpstreamCall
from gateway.upstreams.transport import UpstreamRequest


class AnthropicUpstream:
    """Forwards the request unchanged apart from credentials: the gateway's key replaces the caller's."""

    name = "anthropic"

    def __init__(self, base_url: str, api_key: SecretStr | None) -> None:
        self._base_url = base_url.rstrip("/")
        self._key_header = [(b"x-api-key", api_key.get_secret_value().encode())] if api_key else []

    async def build_request(self, call: UpstreamCall) -> UpstreamRequest:
        url = self._base_url + call.path
        if call.query:
            url += "?" + call.query.decode("latin-1")
        return UpstreamRequest(call.method, url, call.headers + self._key_header, call.body or None)

    def anthropic_error(self, status: int, body: bytes) -> bytes | None:
        return None

    async def aclose(self) -> None:
        return None
