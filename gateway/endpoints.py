"""The endpoints the gateway serves, named once, and the one place a request's method and path are matched."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.errors import GatewayError

_VERTEX_MODELS = "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/"


class Endpoint(StrEnum):
    """An endpoint, by its path (a Vertex-protocol endpoint by its path's pattern): compares equal to the path."""

    # Anthropic's API, relayed to an upstream (`/v1/models` is answered from the model table).
    MESSAGES = "/v1/messages"
    COUNT_TOKENS = "/v1/messages/count_tokens"
    MODELS = "/v1/models"
    # Vertex AI's protocol (Claude Code with CLAUDE_CODE_USE_VERTEX=1), turned into the Anthropic requests above.
    VERTEX_PREDICT = _VERTEX_MODELS + "{model}:rawPredict"
    VERTEX_STREAM = _VERTEX_MODELS + "{model}:streamRawPredict"
    VERTEX_COUNT_TOKENS = _VERTEX_MODELS + "count-tokens:rawPredict"
    # Claude Code's gateway protocol, answered by the gateway itself.
    MANAGED_SETTINGS = "/managed/settings"
    USAGE = "/api/oauth/usage"
    TELEMETRY_METRICS = "/v1/metrics"
    TELEMETRY_LOGS = "/v1/logs"
    TELEMETRY_TRACES = "/v1/traces"
    # Answered by the app without an audit row (GET or HEAD only): Cloud Run's probe, `/health` for checks over the
    # service URL (Google's front end reserves some paths ending in `z`), and the metrics scrape.
    HEALTHZ = "/healthz"
    HEALTH = "/health"
    METRICS = "/metrics"


TELEMETRY = frozenset((Endpoint.TELEMETRY_METRICS, Endpoint.TELEMETRY_LOGS, Endpoint.TELEMETRY_TRACES))
PROTOCOL = frozenset((Endpoint.MANAGED_SETTINGS, Endpoint.USAGE, *TELEMETRY))
"""Claude Code's gateway protocol: answered by the gateway, not an upstream."""
VERTEX = frozenset((Endpoint.VERTEX_PREDICT, Endpoint.VERTEX_STREAM, Endpoint.VERTEX_COUNT_TOKENS))
PROBES = frozenset((Endpoint.HEALTHZ, Endpoint.HEALTH, Endpoint.METRICS))
_PROBE_METHODS = frozenset(("GET", "HEAD"))

# Each endpoint the relay answers (all but the probes), with the method it takes.
_METHODS: dict[str, str] = {
    Endpoint.MESSAGES: "POST",
    Endpoint.COUNT_TOKENS: "POST",
    Endpoint.MODELS: "GET",
    Endpoint.MANAGED_SETTINGS: "GET",
    Endpoint.USAGE: "GET",
    **dict.fromkeys(TELEMETRY, "POST"),
}
_VERTEX_METHOD = "POST"
# `ANTHROPIC_VERTEX_BASE_URL` normally ends in `/v1`, as Google's does; without it the paths still match. The
# project and region in the URL are the client's idea; the gateway calls its own.
_VERTEX_PATH = re.compile(
    r"^(?:/v1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/"
    r"(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)$"
)
_VERTEX_COUNT_TOKENS = "count-tokens"


@dataclass(frozen=True, slots=True)
class Route:
    """A matched request: its endpoint, and for a Vertex-protocol request the model its URL names."""

    endpoint: Endpoint
    model: str | None = None


# Built once: matching a fixed path is one dictionary look-up.
_FIXED = {path: Route(Endpoint(path)) for path in _METHODS}


def is_probe(method: str, path: str) -> bool:
    """A probe or the metrics scrape, which the app answers itself without an audit row."""
    return path in PROBES and method in _PROBE_METHODS


def match(method: str, path: str) -> Route:
    """The endpoint a request is for; GatewayError 404 for an unknown path, 405 for a path taken another way."""
    route = _FIXED.get(path)
    if route is not None:
        expected = _METHODS[path]
    else:
        route, expected = _match_vertex(path), _VERTEX_METHOD
    if route is None:
        raise GatewayError(404, f"Not found: {method} {path}", outcome="not_found")
    if method != expected:
        raise GatewayError(
            405,
            f"Method {method} not allowed on {path}; use {expected}.",
            outcome="bad_request",
            headers={"allow": expected},
        )
    return route


def _match_vertex(path: str) -> Route | None:
    found = _VERTEX_PATH.match(path)
    if found is None:
        return None
    model, method = found["model"], found["method"]
    if model == _VERTEX_COUNT_TOKENS:
        return Route(Endpoint.VERTEX_COUNT_TOKENS) if method == "rawPredict" else None
    return Route(Endpoint.VERTEX_STREAM if method == "streamRawPredict" else Endpoint.VERTEX_PREDICT, model)
