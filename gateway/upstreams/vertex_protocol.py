"""Clients that speak the Vertex protocol to the gateway (Claude Code with CLAUDE_CODE_USE_VERTEX=1): their paths,
and the Anthropic Messages request each one is, so every upstream and the meter see one shape."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.jsonish import dumps
from gateway.upstreams.body import loads_object
from gateway.upstreams.models import ModelTable

# `ANTHROPIC_VERTEX_BASE_URL` normally ends in `/v1`, as Google's does; without it the paths still match.
_PATH = re.compile(
    r"^(?:/v1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/"
    r"(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)$"
)
COUNT_TOKENS = "count-tokens"
ANTHROPIC_VERSION = (b"anthropic-version", b"2023-06-01")


@dataclass(frozen=True, slots=True)
class VertexPath:
    """A Vertex-protocol request: the model from the URL (None for count tokens) and whether it streams.

    The project and region in the URL are the client's idea; the gateway calls its own."""

    model: str | None
    stream: bool

    @property
    def anthropic_path(self) -> str:
        return "/v1/messages/count_tokens" if self.model is None else "/v1/messages"

    def anthropic_body(self, body: bytes, models: ModelTable) -> tuple[bytes, str | None]:
        """The body as Anthropic's API takes it (model in it, no `anthropic_version`), and the Anthropic model id."""
        data = loads_object(body)
        data.pop("anthropic_version", None)
        if self.model is None:
            model = data.get("model")
            if isinstance(model, str):
                model = data["model"] = models.to_anthropic(model)
            else:
                model = None
            return dumps(data), model
        model = models.to_anthropic(self.model)
        data.pop("model", None)
        # The URL's method decides streaming, as it does on Vertex.
        data.pop("stream", None)
        shaped = {"model": model, **data, **({"stream": True} if self.stream else {})}
        return dumps(shaped), model


def match_vertex_path(path: str) -> VertexPath | None:
    """The Vertex request a path names, or None when it is not a Vertex-protocol path."""
    found = _PATH.match(path)
    if found is None:
        return None
    model, method = found["model"], found["method"]
    if model == COUNT_TOKENS:
        if method != "rawPredict":
            return None
        return VertexPath(model=None, stream=False)
    return VertexPath(model=model, stream=method == "streamRawPredict")


def with_anthropic_version(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Vertex clients put the version in the body; Anthropic's API wants the header."""
    if any(name.lower() == ANTHROPIC_VERSION[0] for name, _ in headers):
        return headers
    return [*headers, ANTHROPIC_VERSION]
