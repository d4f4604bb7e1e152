from __future__ import annotations

import pytest

from gateway.endpoints import PROTOCOL, Endpoint, Route, is_probe, match
from gateway.errors import GatewayError

VERTEX = "/projects/p/locations/europe-west1/publishers/anthropic/models/"


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v1/messages", Route(Endpoint.MESSAGES)),
        ("POST", "/v1/messages/count_tokens", Route(Endpoint.COUNT_TOKENS)),
        ("GET", "/v1/models", Route(Endpoint.MODELS)),
        ("GET", "/managed/settings", Route(Endpoint.MANAGED_SETTINGS)),
        ("GET", "/api/oauth/usage", Route(Endpoint.USAGE)),
        ("POST", "/v1/logs", Route(Endpoint.TELEMETRY_LOGS)),
        (
            "POST",
            "/v1" + VERTEX + "claude-sonnet-4-5@20250929:rawPredict",
            Route(Endpoint.VERTEX_PREDICT, "claude-sonnet-4-5@20250929"),
        ),
        ("POST", VERTEX + "claude-sonnet-4-5:streamRawPredict", Route(Endpoint.VERTEX_STREAM, "claude-sonnet-4-5")),
        ("POST", "/v1" + VERTEX + "count-tokens:rawPredict", Route(Endpoint.VERTEX_COUNT_TOKENS)),
    ],
)
def test_each_served_endpoint_is_matched_from_its_method_and_path(method: str, path: str, route: Route) -> None:
    assert match(method, path) == route


@pytest.mark.parametrize(
    "path",
    [
        "/v1/complete",
        "/v1/messages/",
        "/healthz",
        "/v1" + VERTEX + "count-tokens:streamRawPredict",
        "/v1" + VERTEX + "claude:predict",
        "/v1" + VERTEX + "a/b:rawPredict",
    ],
)
def test_an_unknown_path_is_a_404_naming_it(path: str) -> None:
    with pytest.raises(GatewayError) as caught:
        match("POST", path)
    assert (caught.value.status, caught.value.outcome, caught.value.message) == (
        404,
        "not_found",
        f"Not found: POST {path}",
    )


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/messages", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/managed/settings", "GET"),
        ("GET", "/v1/metrics", "POST"),
        ("GET", "/v1" + VERTEX + "claude:rawPredict", "POST"),
    ],
)
def test_a_known_path_taken_another_way_is_a_405_with_allow(method: str, path: str, allowed: str) -> None:
    with pytest.raises(GatewayError) as caught:
        match(method, path)
    assert (caught.value.status, caught.value.headers) == (405, {"allow": allowed})


def test_the_probes_are_answered_unaudited_only_for_get_and_head() -> None:
    assert is_probe("GET", "/healthz") and is_probe("HEAD", "/health") and is_probe("GET", "/metrics")
    assert not is_probe("POST", "/healthz") and not is_probe("GET", "/v1/messages")


def test_an_endpoint_compares_equal_to_its_path() -> None:
    assert Endpoint.MESSAGES == "/v1/messages" and "/v1/traces" in PROTOCOL
