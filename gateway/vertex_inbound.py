"""Clients that speak the Vertex protocol to the gateway (Claude Code with CLAUDE_CODE_USE_VERTEX=1): the Anthropic
Messages request each one is, so every upstream and the meter see one shape."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.endpoints import Endpoint, Route
from gateway.jsonish import dumps
from gateway.models import ModelTable
from gateway.upstreams.body import loads_object

ANTHROPIC_VERSION = (b"anthropic-version", b"2023-06-01")


@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    """A Vertex-protocol request in Anthropic's shape."""

    endpoint: Endpoint
    body: bytes
    model: str | None
    stream: bool


def as_anthropic(route: Route, body: bytes, models: ModelTable) -> AnthropicRequest:
    """The request as Anthropic's API takes it: the model in the body (as Anthropic names it), no `anthropic_version`,
    and streaming as the URL's method says, as it does on Vertex."""
    data = loads_object(body)
    data.pop("anthropic_version", None)
    if route.endpoint is Endpoint.VERTEX_COUNT_TOKENS:
        model = data.get("model")
        if isinstance(model, str):
            model = data["model"] = models.to_anthropic(model)
        else:
            model = None
        return AnthropicRequest(Endpoint.COUNT_TOKENS, dumps(data), model, stream=False)
    assert route.model is not None  # the matcher takes it from the URL
    model = models.to_anthropic(route.model)
    data.pop("model", None)
    data.pop("stream", None)
    stream = route.endpoint is Endpoint.VERTEX_STREAM
    shaped = {"model": model, **data, **({"stream": True} if stream else {})}
    return AnthropicRequest(Endpoint.MESSAGES, dumps(shaped), model, stream)


def with_anthropic_version(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Vertex clients put the version in the body; Anthropic's API wants the header."""
    if any(name.lower() == ANTHROPIC_VERSION[0] for name, _ in headers):
        return headers
    return [*headers, ANTHROPIC_VERSION]
