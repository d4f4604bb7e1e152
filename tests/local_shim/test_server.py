"""The shim under real uvicorn, in front of a fake IAP (checking real ID tokens) and a scripted gateway."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from local_shim.cli import main
from local_shim.errors import ConfigError
from local_shim.server import bind_loopback
from local_shim.store import TokenStore
from tests.local_shim.conftest import (
    CLIENT_ID,
    SECRET,
    GoogleKey,
    Stack,
    json_of,
)
from tests.support.anthropic_sse import SSE_HEADERS
from tests.support.servers import Reply

_sdk_clients: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    """SDK clients hold pooled sockets; left to the garbage collector they surface as ResourceWarnings."""
    yield
    while _sdk_clients:
        _sdk_clients.pop().close()


def sdk(base_url: str, secret: str = SECRET) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=base_url, auth_token=secret, max_retries=0)
    _sdk_clients.append(client)
    return client


def test_sdk_streams_through_the_shim_with_the_persons_id_token(stack: Stack, google_key: GoogleKey) -> None:
    with stack.shim() as shim_url:
        with sdk(shim_url).beta.messages.stream(
            model="claude-opus-5-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            betas=["claude-code-20250219"],
            extra_query={"beta": "true"},  # as Claude Code sends it
            extra_headers={"x-claude-code-session-id": "session-1", "x-app": "cli", "anthropic-version": "2023-06-01"},
        ) as stream:
            text = "".join(stream.text_stream)
            request_id = stream.response.headers.get("request-id")

    assert text == "Hello from the gateway"
    assert request_id == "req_upstream_123"
    [seen] = stack.gateway.requests
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/messages", b"beta=true")
    assert google_key.verify(stack.iap.tokens[0], audience=CLIENT_ID)["email"] == "ada@example.com"
    assert seen.header("anthropic-beta") == "claude-code-20250219"
    assert seen.header("anthropic-version") == "2023-06-01"
    assert seen.header("x-claude-code-session-id") == "session-1"
    assert seen.header("x-app") == "cli"
    assert seen.header("x-api-key") is None
    assert all(SECRET.encode() not in value for _, value in seen.headers)
    assert b'"stream":true' in seen.body.replace(b" ", b"")


def test_response_bytes_arrive_chunk_by_chunk_and_unchanged(stack: Stack) -> None:
    chunks = [gzip.compress(b"x" * 10)[:8], b"part-2", b"part-3", b"part-4"]
    headers = [("content-type", "application/octet-stream"), ("content-encoding", "gzip")]
    stack.gateway.reply = lambda seen: Reply(200, headers, chunks, delay=0.15)

    with stack.shim() as shim_url, httpx.Client() as client:
        started = time.monotonic()
        with client.stream("GET", f"{shim_url}/anything?x=1", headers={"authorization": f"Bearer {SECRET}"}) as reply:
            arrivals = []
            received = b""
            for chunk in reply.iter_raw():
                arrivals.append(time.monotonic() - started)
                received += chunk
            encoding = reply.headers["content-encoding"]

    assert received == b"".join(chunks)
    assert encoding == "gzip"
    assert arrivals[0] < 0.45 < arrivals[-1]  # the first piece did not wait for the last
    assert stack.gateway.requests[0].header("accept-encoding") == "gzip, deflate"  # the client's, unchanged


def test_client_disconnect_closes_the_gateway_stream(stack: Stack) -> None:
    stack.gateway.reply = lambda seen: Reply(200, SSE_HEADERS, [b"event: ping\ndata: {}\n\n"] * 50, delay=0.1)

    with stack.shim() as shim_url, httpx.Client() as client:
        with client.stream("POST", f"{shim_url}/v1/messages", headers={"x-api-key": SECRET}, content=b"{}") as reply:
            next(reply.iter_raw())

        assert stack.gateway.closed_early.wait(5)
    assert not stack.gateway.finished.is_set()


# -- refusals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-secret"}, {"x-api-key": "wrong-secret"}, {"authorization": SECRET}],
    ids=["none", "wrong-bearer", "wrong-api-key", "not-bearer"],
)
def test_request_without_the_local_secret_is_refused_with_a_fix(stack: Stack, headers: dict[str, str]) -> None:
    with stack.shim() as shim_url:
        reply = httpx.post(f"{shim_url}/v1/messages", headers=headers, content=b"{}")

    assert reply.status_code == 401
    error = json_of(reply)
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    assert "claude-shim run -- claude" in error["error"]["message"]
    assert stack.iap.seen == [] and stack.google.token_calls == 0


def test_sdk_with_wrong_secret_sees_the_reason(stack: Stack) -> None:
    with stack.shim() as shim_url, pytest.raises(anthropic.AuthenticationError, match="local secret"):
        sdk(shim_url, secret="not-it").messages.create(
            model="claude-opus-5-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "attacker.test", ""])
def test_request_with_a_foreign_host_header_is_refused(stack: Stack, host: str) -> None:
    with stack.shim() as shim_url:
        port = httpx.URL(shim_url).port
        reply = httpx.get(
            f"{shim_url}/v1/models", headers={"host": host.format(port=port), "authorization": f"Bearer {SECRET}"}
        )

    assert reply.status_code == 403
    assert json_of(reply)["error"]["type"] == "permission_error"
    assert stack.iap.seen == []


def test_localhost_host_header_is_accepted(stack: Stack) -> None:
    stack.gateway.reply = lambda seen: Reply(200, [("content-type", "application/json")], [b'{"data":[]}'])
    with stack.shim() as shim_url:
        port = httpx.URL(shim_url).port
        reply = httpx.get(f"http://localhost:{port}/v1/models", headers={"x-api-key": SECRET})
    assert reply.status_code == 200 and reply.json() == {"data": []}


def test_non_loopback_bind_is_refused(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="Refusing to listen on 0.0.0.0"):
        bind_loopback("0.0.0.0", 0)

    assert main(["serve", "--gateway-url", "https://gw.example.com", "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "loopback" in err and err.count("\n") == 1


# -- tokens: expiry, IAP's 401, IAP's 403 --------------------------------------------------------------------------


def test_token_near_expiry_is_refreshed_before_the_next_request(stack: Stack) -> None:
    stack.google.lifetime = 200  # inside the 300 s margin: each request needs a fresh one
    stack.gateway.reply = lambda seen: Reply(200, [("content-type", "application/json")], [b"{}"])

    with stack.shim() as shim_url:
        for _ in range(2):
            assert httpx.get(f"{shim_url}/v1/models", headers={"x-api-key": SECRET}).status_code == 200

    assert stack.google.token_calls == 2
    assert len(set(stack.iap.tokens)) == 2


def test_iap_401_refreshes_the_token_and_retries_once(stack: Stack) -> None:
    stack.iap.reject_next = 1

    with stack.shim() as shim_url:
        with sdk(shim_url).messages.stream(
            model="claude-opus-5-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join(stream.text_stream)

    assert text == "Hello from the gateway"
    assert stack.google.token_calls == 2
    assert len(stack.iap.tokens) == 2 and stack.iap.tokens[0] != stack.iap.tokens[1]
    assert len(stack.gateway.requests) == 1
    assert stack.gateway.requests[0].body == stack.gateway.requests[0].body  # buffered body sent again intact
    assert b'"messages"' in stack.gateway.requests[0].body


def test_iap_401_twice_is_reported_with_the_fix(stack: Stack) -> None:
    stack.iap.reject_next = 2

    with stack.shim() as shim_url:
        reply = httpx.post(f"{shim_url}/v1/messages", headers={"x-api-key": SECRET}, content=b"{}")

    assert reply.status_code == 401
    message = json_of(reply)["error"]["message"]
    assert "IAP rejected the ID token for ada@example.com" in message
    assert f"list OAuth client {CLIENT_ID} in IAP's programmatic clients" in message
    assert len(stack.iap.tokens) == 2


def test_iap_403_says_who_was_denied_and_what_to_ask_for(stack: Stack) -> None:
    stack.iap.denied.add("ada@example.com")

    with stack.shim() as shim_url, pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk(shim_url).messages.create(
            model="claude-opus-5-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )

    assert "IAP denied ada@example.com" in str(caught.value)
    assert "roles/iap.httpsResourceAccessor" in str(caught.value)
    assert len(stack.iap.tokens) == 1  # a 403 is not retried


def test_gateways_own_refusal_passes_through_unchanged(stack: Stack) -> None:
    body = b'{"type":"error","error":{"type":"authentication_error","message":"no IAP assertion"}}'
    stack.gateway.reply = lambda seen: Reply(401, [("content-type", "application/json")], [body])

    with stack.shim() as shim_url:
        reply = httpx.post(f"{shim_url}/v1/messages", headers={"x-api-key": SECRET}, content=b"{}")

    assert (reply.status_code, reply.content) == (401, body)
    assert stack.google.token_calls == 1  # not IAP's 401: no refresh, no retry


def test_token_goes_in_proxy_authorization_when_configured(stack: Stack) -> None:
    stack.gateway.reply = lambda seen: Reply(200, [("content-type", "application/json")], [b"{}"])
    with stack.shim(token_header="proxy-authorization") as shim_url:
        assert httpx.get(f"{shim_url}/v1/models", headers={"authorization": f"Bearer {SECRET}"}).status_code == 200

    [seen] = stack.iap.seen
    assert seen.get("proxy-authorization", "").startswith("Bearer ey")
    assert "authorization" not in seen


# -- bad input: one clear message for Claude Code ------------------------------------------------------------------


def test_not_signed_in_tells_claude_code_to_log_in(stack: Stack, config_dir: Path) -> None:
    TokenStore(config_dir).delete()

    with stack.shim() as shim_url, pytest.raises(anthropic.AuthenticationError) as caught:
        sdk(shim_url).messages.create(
            model="claude-opus-5-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Not signed in: run `claude-shim login`."},
    }


def test_revoked_sign_in_tells_claude_code_to_log_in_again(stack: Stack) -> None:
    stack.google.refresh_tokens.clear()
    with stack.shim() as shim_url:
        reply = httpx.post(f"{shim_url}/v1/messages", headers={"x-api-key": SECRET}, content=b"{}")
    assert reply.status_code == 401
    assert "expired or was revoked" in json_of(reply)["error"]["message"]


def test_unreachable_gateway_is_a_502_with_the_url(stack: Stack) -> None:
    closed = bind_loopback("127.0.0.1", 0)
    port = closed.getsockname()[1]
    closed.close()

    with stack.shim(gateway_url=f"http://127.0.0.1:{port}") as shim_url:
        reply = httpx.post(f"{shim_url}/v1/messages", headers={"x-api-key": SECRET}, content=b"{}")

    assert reply.status_code == 502
    error = json_of(reply)["error"]
    assert error["type"] == "api_error"
    assert f"Cannot reach the gateway at http://127.0.0.1:{port}" in error["message"]
