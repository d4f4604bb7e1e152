from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from gateway.config import Settings
from gateway.resources import Resources
from gateway.upstreams.vertex import vertex_base_url
from tests.gateway.conftest import API_KEY, AUDIENCE, Stack, StackFactory
from tests.support.anthropic_sse import JSON_HEADERS, SSE_HEADERS, message_json, stream_events
from tests.support.google_oauth import SA_EMAIL, FakeGoogleOAuth, google_credentials
from tests.support.servers import FakeUpstream, Reply, Seen, serve

PREFIX = "/v1/projects/gw-project/locations/europe-west1/publishers/anthropic/models/"
REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}


@dataclass
class VertexStack:
    gateway: Stack
    vertex: FakeUpstream
    google: FakeGoogleOAuth

    def post(self, body: object = REQUEST, *, path: str = "/v1/messages", **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        all_headers = {"content-type": "application/json", **self.gateway.headers(), **headers}
        return httpx.post(self.gateway.url + path, content=content, headers=all_headers, timeout=10)


@pytest.fixture
def google(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGoogleOAuth]:
    with google_credentials(tmp_path) as (oauth, key_file):
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        yield oauth


@pytest.fixture
def vertex() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def vstack(
    make_stack: StackFactory, google: FakeGoogleOAuth, vertex: tuple[FakeUpstream, str]
) -> Iterator[VertexStack]:
    fake, url = vertex
    with make_stack(upstream=["vertex"], vertex_base_url=url, vertex_region="europe-west1") as stack:
        yield VertexStack(stack, fake, google)


def test_streamed_message_goes_to_stream_raw_predict_with_model_in_url(vstack: VertexStack) -> None:
    events = stream_events(["Hel", "lo"], model="claude-sonnet-4-5-20250929")
    vstack.vertex.reply = lambda seen: Reply(200, [("content-type", "text/event-stream")], events)

    response = vstack.post()

    assert response.status_code == 200
    assert response.content == b"".join(events)
    seen = vstack.vertex.requests[-1]
    assert (seen.method, seen.path) == ("POST", PREFIX + "claude-sonnet-4-5@20250929:streamRawPredict")
    assert orjson.loads(seen.body) == {
        "max_tokens": 256,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
        "anthropic_version": "vertex-2023-10-16",
    }
    assert seen.header("authorization") == "Bearer ya29.fake-token-1"
    assert seen.header("x-api-key") is None and seen.header("anthropic-version") is None
    assert vstack.gateway.upstream.requests == []  # nothing reached Anthropic's API
    row = vstack.gateway.rows(1)[0]
    assert (row["upstream"], row["attempts"], row["upstream_failures"]) == ("vertex", 1, None)
    assert (row["requested_model"], row["served_model"]) == ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929")
    assert (row["outcome"], row["output_tokens"]) == ("ok", 2)


def test_unstreamed_message_goes_to_raw_predict_and_dated_ids_take_vertex_form(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    body = {**REQUEST, "model": "claude-opus-4-1-20250805", "stream": False}

    response = vstack.post(body)

    assert response.status_code == 200 and response.json()["content"][0]["text"] == "hi"
    seen = vstack.vertex.requests[-1]
    assert seen.path == PREFIX + "claude-opus-4-1@20250805:rawPredict"
    assert "model" not in orjson.loads(seen.body)
    assert vstack.gateway.rows(1)[0]["input_tokens"] == 12


def test_count_tokens_keeps_the_model_in_the_body_and_sends_no_betas(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [b'{"input_tokens": 9}'])
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}

    response = vstack.post(
        body,
        path="/v1/messages/count_tokens?beta=true",
        **{"anthropic-beta": "token-counting-2024-11-01,context-1m-2025-08-07"},
    )

    assert response.json() == {"input_tokens": 9}
    seen = vstack.vertex.requests[-1]
    assert seen.path == PREFIX + "count-tokens:rawPredict"
    assert seen.query == b""
    assert orjson.loads(seen.body) == {
        "model": "claude-haiku-4-5@20251001",
        "messages": [{"role": "user", "content": "hi"}],
        "anthropic_version": "vertex-2023-10-16",
    }
    assert seen.header("anthropic-beta") is None


def test_only_betas_vertex_accepts_are_passed(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    betas = (
        "claude-code-20250219,interleaved-thinking-2025-05-14,prompt-caching-scope-2026-01-05,"
        "context-management-2025-06-27"
    )

    vstack.post({**REQUEST, "stream": False}, **{"anthropic-beta": betas, "x-claude-code-session-id": "s-1"})

    seen = vstack.vertex.requests[-1]
    assert seen.header("anthropic-beta") == "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    assert seen.header("x-claude-code-session-id") is None
    assert vstack.gateway.rows(1)[0]["session_id"] == "s-1"


def test_vertex_betas_star_passes_every_beta(
    make_stack: StackFactory, google: FakeGoogleOAuth, vertex: tuple[FakeUpstream, str]
) -> None:
    fake, url = vertex
    fake.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    with make_stack(
        upstream=["vertex"], vertex_base_url=url, vertex_region="europe-west1", vertex_betas=["*"]
    ) as stack:
        VertexStack(stack, fake, google).post({**REQUEST, "stream": False}, **{"anthropic-beta": "a-1,b-2"})

    assert fake.requests[-1].header("anthropic-beta") == "a-1,b-2"


def test_access_token_is_fetched_once_and_reused(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])

    for _ in range(3):
        assert vstack.post({**REQUEST, "stream": False}).status_code == 200

    assert len(vstack.google.grants) == 1
    grant = vstack.google.grants[0]
    assert grant["iss"] == SA_EMAIL and grant["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert {r.header("authorization") for r in vstack.vertex.requests} == {"Bearer ya29.fake-token-1"}


def test_token_near_expiry_is_refreshed(vstack: VertexStack) -> None:
    """google-auth treats a token as expired some minutes early; one that lives 60 s is refreshed every time."""
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    vstack.google.expires_in = 60

    vstack.post({**REQUEST, "stream": False})
    vstack.google.expires_in = 3600
    vstack.post({**REQUEST, "stream": False})
    vstack.post({**REQUEST, "stream": False})

    assert len(vstack.google.grants) == 2
    assert [r.header("authorization") for r in vstack.vertex.requests] == [
        "Bearer ya29.fake-token-1",
        "Bearer ya29.fake-token-2",
        "Bearer ya29.fake-token-2",
    ]


def test_token_refresh_runs_off_the_event_loop_once_for_concurrent_requests(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    # A slow token endpoint: were the fetch on the event loop, /healthz would wait the whole 3 s for it.
    vstack.google.delay = 3.0
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(vstack.post({**REQUEST, "stream": False}).status_code))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)

    started = time.monotonic()
    health = httpx.get(vstack.gateway.url + "/healthz", timeout=5)
    health_seconds = time.monotonic() - started
    for thread in threads:
        thread.join()

    # The margin is wide on purpose: shared CI machines stall for hundreds of milliseconds at times.
    assert health.status_code == 200 and health_seconds < 2.0  # the loop was free while the token was fetched
    assert statuses == [200] * 4
    assert len(vstack.google.grants) == 1


def test_token_endpoint_refusal_is_a_502_naming_the_credentials(vstack: VertexStack) -> None:
    vstack.google.status = 400  # e.g. the key was deleted; a 5xx is retried by google-auth first

    response = vstack.post({**REQUEST, "stream": False})

    assert response.status_code == 502
    assert "Google credentials could not be refreshed" in response.json()["error"]["message"]
    assert vstack.vertex.requests == []
    row = vstack.gateway.rows(1)[0]
    assert (row["outcome"], row["upstream"], row["attempts"]) == ("upstream_error", "vertex", 1)


def test_google_shaped_errors_reach_the_client_in_anthropic_shape(vstack: VertexStack) -> None:
    google_error = [
        {"error": {"code": 404, "message": "Publisher Model `claude-nope@1` not found.", "status": "NOT_FOUND"}}
    ]
    vstack.vertex.reply = lambda seen: Reply(404, [("content-type", "application/json")], [orjson.dumps(google_error)])

    response = vstack.post({**REQUEST, "model": "claude-nope@1"})

    assert response.status_code == 404
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "Publisher Model `claude-nope@1` not found. (Vertex AI NOT_FOUND)",
        },
    }
    assert int(response.headers["content-length"]) == len(response.content)
    row = vstack.gateway.rows(1)[0]
    assert (row["outcome"], row["status_code"], row["attempts"]) == ("upstream_error", 404, 1)


def test_anthropic_shaped_vertex_errors_pass_unchanged(vstack: VertexStack) -> None:
    body = (
        b'{"type":"error","error":{"type":"invalid_request_error","message":"Unexpected value(s)"},'
        b'"request_id":"req_vrtx_1"}'
    )
    vstack.vertex.reply = lambda seen: Reply(400, [("content-type", "application/json")], [body])

    response = vstack.post()

    assert (response.status_code, response.content) == (400, body)


@pytest.mark.parametrize("model", ["../../../locations/x", "claude:predict", "a/b", ".hidden"])
def test_model_that_would_leave_its_url_segment_is_refused(vstack: VertexStack, model: str) -> None:
    response = vstack.post({**REQUEST, "model": model})

    assert response.status_code == 400
    assert vstack.vertex.requests == []
    assert vstack.gateway.rows(1)[0]["outcome"] == "bad_request"


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("global", "https://aiplatform.googleapis.com"),
        ("us-east5", "https://us-east5-aiplatform.googleapis.com"),
        ("europe-west1", "https://europe-west1-aiplatform.googleapis.com"),
        ("us", "https://aiplatform.us.rep.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ],
)
def test_regional_hosts(region: str, host: str) -> None:
    assert vertex_base_url(region) == host


def test_global_region_url_shape(
    make_stack: StackFactory, google: FakeGoogleOAuth, vertex: tuple[FakeUpstream, str]
) -> None:
    fake, url = vertex
    fake.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    with make_stack(upstream=["vertex"], vertex_base_url=url, vertex_project="billing-project") as stack:
        VertexStack(stack, fake, google).post({**REQUEST, "stream": False})

    assert fake.requests[-1].path == (
        "/v1/projects/billing-project/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    )


# Vertex-protocol clients (Claude Code with CLAUDE_CODE_USE_VERTEX=1) talking to the gateway.

CLIENT_PREFIX = "/v1/projects/client-project/locations/us-east5/publishers/anthropic/models/"
VERTEX_BODY = {
    "anthropic_version": "vertex-2023-10-16",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello"}],
    "stream": True,
}


def _post_vertex(stack: Stack, path: str, body: object) -> httpx.Response:
    headers = {"content-type": "application/json", **stack.headers(), "authorization": "Bearer skipped-auth"}
    headers.pop("anthropic-version")
    return httpx.post(stack.url + path, content=orjson.dumps(body), headers=headers, timeout=10)


def test_vertex_protocol_request_is_served_by_anthropic_as_the_same_message(stack: Stack) -> None:
    events = stream_events(["hi"])
    stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, events)

    response = _post_vertex(stack, CLIENT_PREFIX + "claude-sonnet-4-5@20250929:streamRawPredict", VERTEX_BODY)

    assert response.status_code == 200 and response.content == b"".join(events)
    seen = stack.upstream.requests[-1]
    assert (seen.path, seen.query) == ("/v1/messages", b"")
    assert orjson.loads(seen.body) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
    }
    assert seen.header("anthropic-version") == "2023-06-01"
    assert seen.header("x-api-key") == API_KEY and seen.header("authorization") is None
    row = stack.rows(1)[0]
    assert row["path"] == CLIENT_PREFIX + "claude-sonnet-4-5@20250929:streamRawPredict"
    assert (row["requested_model"], row["stream"], row["upstream"], row["outcome"]) == (
        "claude-sonnet-4-5",
        1,
        "anthropic",
        "ok",
    )
    assert row["output_tokens"] == 1


# A string a JavaScript client cut mid-emoji: valid JSON to the standard library, not to orjson.
LONE_SURROGATE = (
    b'{"anthropic_version":"vertex-2023-10-16","max_tokens":64,"messages":[{"role":"user","content":"cut \\ud83d"}]}'
)


def test_vertex_protocol_body_with_a_lone_surrogate_is_relayed_not_a_500(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    headers = {"content-type": "application/json", **stack.headers()}

    response = httpx.post(
        stack.url + CLIENT_PREFIX + "claude-haiku-4-5@20251001:rawPredict",
        content=LONE_SURROGATE,
        headers=headers,
        timeout=10,
    )

    assert response.status_code == 200
    seen = stack.upstream.requests[-1].body
    assert b'"cut \\ud83d"' in seen  # the same escape reaches the upstream
    assert seen.startswith(b'{"model":"claude-haiku-4-5"')
    assert stack.rows(1)[0]["outcome"] == "ok"


def test_body_with_a_lone_surrogate_reaches_vertex_ai_not_a_502(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    body = b'{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"cut \\ud83d"}]}'

    response = vstack.post(body)

    assert response.status_code == 200
    assert b'"cut \\ud83d"' in vstack.vertex.requests[-1].body


@pytest.mark.parametrize(
    "body", [b'{"max_tokens": 64,', b"[1, 2]", b'"text"', b'{"messages": [' * 5000 + b"]" * 5000 + b"}"]
)
def test_vertex_protocol_body_that_is_not_a_json_object_is_a_400(stack: Stack, body: bytes) -> None:
    headers = {"content-type": "application/json", **stack.headers()}

    response = httpx.post(
        stack.url + CLIENT_PREFIX + "claude-haiku-4-5@20251001:rawPredict", content=body, headers=headers, timeout=10
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert stack.upstream.requests == []
    assert stack.rows(1)[0]["outcome"] == "bad_request"


def test_raw_predict_is_unstreamed_whatever_the_body_says(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])

    _post_vertex(stack, CLIENT_PREFIX.removeprefix("/v1") + "claude-haiku-4-5@20251001:rawPredict", VERTEX_BODY)

    body = orjson.loads(stack.upstream.requests[-1].body)
    assert body["model"] == "claude-haiku-4-5" and "stream" not in body
    assert stack.rows(1)[0]["stream"] == 0


def test_vertex_protocol_count_tokens_becomes_count_tokens(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [b'{"input_tokens": 4}'])
    body = {
        "anthropic_version": "vertex-2023-10-16",
        "model": "claude-opus-4-5@20251101",
        "messages": [{"role": "user", "content": "x"}],
    }

    response = _post_vertex(stack, CLIENT_PREFIX + "count-tokens:rawPredict", body)

    assert response.json() == {"input_tokens": 4}
    seen = stack.upstream.requests[-1]
    assert seen.path == "/v1/messages/count_tokens"
    assert orjson.loads(seen.body) == {"model": "claude-opus-4-5", "messages": [{"role": "user", "content": "x"}]}


def test_vertex_protocol_to_vertex_uses_the_gateways_project_and_region(vstack: VertexStack) -> None:
    vstack.vertex.reply = lambda seen: Reply(200, [("content-type", "text/event-stream")], stream_events(["a"]))

    response = _post_vertex(vstack.gateway, CLIENT_PREFIX + "claude-sonnet-4-5@20250929:streamRawPredict", VERTEX_BODY)

    assert response.status_code == 200
    seen = vstack.vertex.requests[-1]
    assert seen.path == PREFIX + "claude-sonnet-4-5@20250929:streamRawPredict"
    assert orjson.loads(seen.body) == {
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "anthropic_version": "vertex-2023-10-16",
    }
    assert seen.header("authorization") == "Bearer ya29.fake-token-1"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", CLIENT_PREFIX + "count-tokens:streamRawPredict", 404),
        ("POST", CLIENT_PREFIX + "claude-sonnet-4-5@20250929:predict", 404),
        ("POST", "/v1/projects/p/locations/r/publishers/google/models/gemini:rawPredict", 404),
        ("GET", CLIENT_PREFIX + "claude-sonnet-4-5@20250929:rawPredict", 405),
    ],
)
def test_other_vertex_shaped_paths_are_refused(stack: Stack, method: str, path: str, status: int) -> None:
    response = httpx.request(method, stack.url + path, headers=stack.headers(), timeout=10)

    assert response.status_code == status
    assert stack.upstream.requests == []


def test_anthropic_vertex_sdk_talks_to_the_gateway(vstack: VertexStack) -> None:
    anthropic = pytest.importorskip("anthropic")
    events = stream_events(["Hi", " there"], model="claude-sonnet-4-5-20250929")

    def reply(seen: Seen) -> Reply:
        path = seen.path
        if path.endswith(":streamRawPredict"):
            return Reply(200, [("content-type", "text/event-stream")], events)
        if path.endswith("count-tokens:rawPredict"):
            return Reply(200, JSON_HEADERS, [b'{"input_tokens": 11}'])
        return Reply(200, JSON_HEADERS, [message_json("hello from vertex")])

    vstack.vertex.reply = reply
    headers = vstack.gateway.headers()
    headers.pop("anthropic-version")
    messages = [{"role": "user", "content": "hello"}]

    with anthropic.AnthropicVertex(
        region="us-east5",
        project_id="client-project",
        access_token="skipped",
        base_url=vstack.gateway.url + "/v1",
        default_headers=headers,
        max_retries=0,
    ) as client:
        message = client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=32, messages=messages)
        with client.messages.stream(model="claude-sonnet-4-5@20250929", max_tokens=32, messages=messages) as stream:
            streamed = stream.get_final_text()
        counted = client.messages.count_tokens(model="claude-sonnet-4-5@20250929", messages=messages)

    assert message.content[0].text == "hello from vertex"
    assert streamed == "Hi there"
    assert counted.input_tokens == 11
    assert [r.path.removeprefix(PREFIX) for r in vstack.vertex.requests] == [
        "claude-sonnet-4-5@20250929:rawPredict",
        "claude-sonnet-4-5@20250929:streamRawPredict",
        "count-tokens:rawPredict",
    ]
    assert all(orjson.loads(r.body)["anthropic_version"] == "vertex-2023-10-16" for r in vstack.vertex.requests)
    rows = vstack.gateway.rows(3)
    assert [(r["requested_model"], r["upstream"], r["outcome"]) for r in rows] == [
        ("claude-sonnet-4-5", "vertex", "ok")
    ] * 3


def test_vertex_without_credentials_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No key file, no gcloud configuration, and a metadata server that is not there.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    settings = Settings(iap_audience=[AUDIENCE], upstream=["vertex"], audit_sink=f"sqlite:///{tmp_path}/a.db")

    with pytest.raises(ValueError, match="no Google credentials"):
        anyio.run(Resources(settings).start)


def test_vertex_without_a_project_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with google_credentials(tmp_path, project=None) as (_, key_file):
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        settings = Settings(iap_audience=[AUDIENCE], upstream=["vertex"], audit_sink=f"sqlite:///{tmp_path}/a.db")

        with pytest.raises(ValueError, match="GATEWAY_VERTEX_PROJECT"):
            anyio.run(Resources(settings).start)
