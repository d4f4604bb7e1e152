"""Claude on Vertex AI as an upstream: same Messages API, model in the URL, the gateway's own Google credentials."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Protocol

import orjson

from gateway.config import VERTEX_BETAS
from gateway.endpoints import Endpoint
from gateway.errors import GatewayError, error_body
from gateway.jsonish import dumps
from gateway.models import ModelTable
from gateway.upstreams.base import UpstreamCall, UpstreamError
from gateway.upstreams.body import loads_object
from gateway.upstreams.transport import UpstreamRequest

logger = logging.getLogger("gateway.upstreams")

VERTEX_VERSION = "vertex-2023-10-16"

# Request headers Vertex is given; everything else the client sent (x-stainless-*, Claude Code's session ids,
# anthropic-version, which Vertex takes in the body) stays at the gateway.
_FORWARDED = frozenset({b"content-type", b"accept", b"accept-encoding", b"user-agent"})

# The model becomes a URL path segment sent with the gateway's credentials: nothing that could leave it.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class TokenSource(Protocol):
    async def headers(self) -> dict[str, str]: ...

    async def aclose(self) -> None: ...


def vertex_base_url(region: str) -> str:
    """Google's endpoint for a region: `global`, the `us`/`eu` multi-regions, or `{region}-aiplatform`."""
    if region == "global":
        return "https://aiplatform.googleapis.com"
    if region in ("us", "eu"):
        return f"https://aiplatform.{region}.rep.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


class VertexUpstream:
    """Turns an Anthropic Messages call into Vertex's `rawPredict` / `streamRawPredict` call."""

    def __init__(
        self,
        *,
        name: str,
        project: str,
        region: str,
        models: ModelTable,
        token: TokenSource,
        base_url: str | None = None,
        betas: Iterable[str] | None = VERTEX_BETAS,
    ) -> None:
        self.name = name
        self.region = region
        self._models = models
        self._token = token
        base = (base_url or vertex_base_url(region)).rstrip("/")
        self._prefix = f"{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/"
        # None passes every beta through unchanged.
        self._betas = None if betas is None else frozenset(betas)

    async def build_request(self, call: UpstreamCall) -> UpstreamRequest:
        data = loads_object(call.body)
        data.pop("anthropic_version", None)
        if call.path == Endpoint.MESSAGES:
            model = data.pop("model", None) or call.model
            if not isinstance(model, str) or not model:
                raise UpstreamError("the request names no model")
            url = self._prefix + _segment(self._models.to_vertex(model))
            url += ":streamRawPredict" if call.stream else ":rawPredict"
            betas = True
        elif call.path == Endpoint.COUNT_TOKENS:
            # Count tokens is one endpoint for every model, so the model stays in the body.
            if isinstance(data.get("model"), str):
                data["model"] = self._models.to_vertex(data["model"])
            url = self._prefix + "count-tokens:rawPredict"
            # Vertex's count-tokens has refused every beta it has been sent, even ones messages accepts.
            betas = False
        else:
            raise UpstreamError(f"Vertex AI has no equivalent of {call.method} {call.path}")
        data["anthropic_version"] = VERTEX_VERSION
        headers = self._headers(call.headers, betas) + [
            (k.encode(), v.encode()) for k, v in (await self._token.headers()).items()
        ]
        return UpstreamRequest("POST", url, headers, dumps(data))

    def _headers(self, incoming: list[tuple[bytes, bytes]], with_betas: bool) -> list[tuple[bytes, bytes]]:
        kept: list[tuple[bytes, bytes]] = []
        betas: list[str] = []
        for name, value in incoming:
            key = name.lower()
            if key in _FORWARDED:
                kept.append((name, value))
            elif key == b"anthropic-beta":
                betas += [b.strip() for b in value.decode("latin-1").split(",") if b.strip()]
        if betas:
            passed = [b for b in betas if with_betas and (self._betas is None or b in self._betas)]
            dropped = [b for b in betas if b not in passed]
            if dropped:
                logger.debug("anthropic-beta values not sent to Vertex AI: %s", ", ".join(dropped))
            if passed:
                kept.append((b"anthropic-beta", ",".join(passed).encode("latin-1")))
        return kept

    def anthropic_error(self, status: int, body: bytes) -> bytes | None:
        """Google's `{"error": {"code", "message", "status"}}` (sometimes in a list) as Anthropic's error."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict) or data.get("type") == "error":
            return None
        error = data.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return None
        message = error["message"]
        if isinstance(error.get("status"), str):
            message = f"{message} (Vertex AI {error['status']})"
        return error_body(status, message)

    async def aclose(self) -> None:
        await self._token.aclose()


def _segment(model: str) -> str:
    if not _MODEL_NAME.match(model):
        raise GatewayError(400, f"model: {model[:200]!r} is not a valid model id.", outcome="bad_request")
    return model
