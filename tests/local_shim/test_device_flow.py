"""Claude Code's gateway sign-in against the shim under uvicorn: discovery, device flow, the approval page, tokens,
refresh, revocation, sign-out; with a fake IAP checking the person's real Google ID tokens behind it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_shim.bearer import Bearers
from local_shim.cli import main
from local_shim.store import StoredLogin, TokenStore
from tests.local_shim.conftest import CLIENT_ID, GoogleKey, Stack, json_of, page_fields
from tests.support.anthropic_sse import SSE_HEADERS, stream_events
from tests.support.servers import Reply

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# What Claude Code 2.1.332 sends on every sign-in request (read from the binary), plus a field it may add one day.
CLIENT_HEADERS = {"user-agent": "claude-code/2.1.332", "content-type": "application/x-www-form-urlencoded"}


class Client:
    """Claude Code's side of the sign-in, and the person's browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=10)

    def start(self) -> dict[str, Any]:
        reply = self.http.post(
            "/oauth/device_authorization", content="surface=claude_code&future_field=1", headers=CLIENT_HEADERS
        )
        assert reply.status_code == 200, reply.text
        return json_of(reply)

    def poll(self, device_code: str) -> httpx.Response:
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code, "unknown": "ignored"}
        return self.http.post("/oauth/token", data=form, headers={"user-agent": CLIENT_HEADERS["user-agent"]})

    def open_page(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def answer(self, fields: dict[str, str], decision: str = "approve", **headers: str) -> httpx.Response:
        headers = {"origin": self.base, "sec-fetch-site": "same-origin"} | headers
        return self.http.post("/device", data={**fields, "decision": decision}, headers=headers)

    def sign_in(self) -> dict[str, Any]:
        """The whole flow, approved in the browser; the token endpoint's reply."""
        started = self.start()
        page = self.open_page(started["verification_uri_complete"])
        assert self.answer(page_fields(page.text)).status_code == 200
        reply = self.poll(started["device_code"])
        assert reply.status_code == 200, reply.text
        return json_of(reply)

    def messages(self, bearer: str) -> httpx.Response:
        return self.http.post("/v1/messages", headers={"authorization": f"Bearer {bearer}"}, content=b'{"stream":true}')

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def gateway_streams(stack: Stack) -> Stack:
    stack.gateway.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["Hello", " signed-in"]))
    return stack


def signed_in_shim(stack: Stack, **overrides: Any) -> Any:
    return stack.shim(sign_in_poll_seconds=0, **overrides)


def test_discovery_names_the_sign_in_endpoints_on_the_shims_own_origin(stack: Stack) -> None:
    with stack.shim() as shim_url:
        reply = httpx.get(f"{shim_url}/.well-known/oauth-authorization-server")

    metadata = json_of(reply)
    assert metadata["device_authorization_endpoint"] == f"{shim_url}/oauth/device_authorization"
    assert metadata["token_endpoint"] == f"{shim_url}/oauth/token"
    assert metadata["revocation_endpoint"] == f"{shim_url}/oauth/revoke"
    assert "authorization_endpoint" not in metadata
    assert reply.headers["cache-control"] == "no-store"
    assert stack.iap.seen == []  # answered by the shim, nothing went to the gateway


def test_approved_sign_in_gives_a_bearer_that_carries_requests_with_the_persons_id_token(
    gateway_streams: Stack, google_key: GoogleKey
) -> None:
    with signed_in_shim(gateway_streams) as shim_url:
        client = Client(shim_url)
        started = client.start()
        pending = client.poll(started["device_code"])
        page = client.open_page(started["verification_uri_complete"])
        approved = client.answer(page_fields(page.text))
        tokens = json_of(client.poll(started["device_code"]))
        reply = client.messages(tokens["access_token"])
        client.close()

    assert started["verification_uri"] == f"{shim_url}/device"
    assert len(started["user_code"]) == 9 and started["expires_in"] == 600
    assert len(started["device_code"]) >= 43  # 256 bits, URL-safe
    assert (pending.status_code, json_of(pending)["error"]) == (400, "authorization_pending")
    assert "ada@example.com" in page.text and started["user_code"] in page.text
    assert (
        page.headers["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )
    assert approved.status_code == 200 and "ada@example.com" in approved.text
    assert tokens["token_type"] == "Bearer" and tokens["email"] == "ada@example.com"
    assert tokens["expires_in"] == 3600 and tokens["refresh_token"]
    assert reply.status_code == 200 and b"signed-in" in reply.content
    [seen] = gateway_streams.gateway.requests
    assert google_key.verify(gateway_streams.iap.tokens[0], audience=CLIENT_ID)["email"] == "ada@example.com"
    assert all(tokens["access_token"].encode() not in value for _, value in seen.headers)


def test_the_page_does_not_approve_without_the_persons_click_on_the_shims_own_page(stack: Stack) -> None:
    with signed_in_shim(stack) as shim_url:
        client = Client(shim_url)
        started = client.start()
        # A web page that guessed nothing can only post blind: no page secret, or from its own origin.
        unseen = client.answer({"user_code": started["user_code"], "page_secret": "guess"})
        fields = page_fields(client.open_page(started["verification_uri_complete"]).text)
        foreign_origin = client.answer(fields, origin="http://evil.example")
        no_origin = client.http.post("/device", data={**fields, "decision": "approve"})
        cross_site = client.answer(fields, **{"sec-fetch-site": "cross-site"})
        wrong_secret = client.answer({**fields, "page_secret": "x" * 43})
        still_pending = client.poll(started["device_code"])
        client.close()

    assert [r.status_code for r in (unseen, foreign_origin, no_origin, cross_site, wrong_secret)] == [403] * 5
    assert json_of(still_pending)["error"] == "authorization_pending"


def test_denied_sign_in_is_answered_access_denied(stack: Stack) -> None:
    with signed_in_shim(stack) as shim_url:
        client = Client(shim_url)
        started = client.start()
        fields = page_fields(client.open_page(started["verification_uri_complete"]).text)
        client.answer(fields, decision="deny")
        denied = client.poll(started["device_code"])
        again = client.poll(started["device_code"])
        client.close()

    assert (denied.status_code, json_of(denied)["error"]) == (400, "access_denied")
    assert json_of(again)["error"] == "expired_token"  # the code is gone


def test_forged_used_and_stale_device_codes_get_oauth_errors(stack: Stack) -> None:
    with signed_in_shim(stack, sign_in_code_seconds=1) as shim_url:
        client = Client(shim_url)
        forged = client.poll("forged-" + "a" * 40)
        stale = client.start()
        time.sleep(1.2)
        expired = client.poll(stale["device_code"])
        stale_page = client.open_page(stale["verification_uri_complete"])
        client.close()
    with signed_in_shim(stack) as shim_url:
        client = Client(shim_url)
        started = client.start()
        fields = page_fields(client.open_page(started["verification_uri_complete"]).text)
        client.answer(fields)
        first = client.poll(started["device_code"])
        replayed = client.poll(started["device_code"])
        client.close()

    # Anthropic's gateway (claude gateway, 2.1.332) answers an unknown code `expired_token` too.
    assert (forged.status_code, json_of(forged)["error"]) == (400, "expired_token")
    assert (expired.status_code, json_of(expired)["error"]) == (400, "expired_token")
    assert stale_page.status_code == 404
    assert first.status_code == 200
    assert (replayed.status_code, json_of(replayed)["error"]) == (400, "expired_token")


def test_polling_faster_than_the_interval_is_answered_slow_down(stack: Stack) -> None:
    with stack.shim() as shim_url:
        client = Client(shim_url)
        started = client.start()
        first, second = client.poll(started["device_code"]), client.poll(started["device_code"])
        client.close()

    assert started["interval"] == 5
    assert json_of(first)["error"] == "authorization_pending"
    assert json_of(second)["error"] == "slow_down"


def test_refresh_gives_fresh_tokens_for_the_same_person(gateway_streams: Stack) -> None:
    with signed_in_shim(gateway_streams) as shim_url:
        client = Client(shim_url)
        tokens = client.sign_in()
        refreshed = client.refresh(tokens["refresh_token"])
        reply = client.messages(json_of(refreshed)["access_token"])
        client.close()

    assert refreshed.status_code == 200
    assert json_of(refreshed)["access_token"] != tokens["access_token"]
    assert json_of(refreshed)["email"] == "ada@example.com"
    assert reply.status_code == 200


def test_tokens_from_another_install_are_refused(stack: Stack, tmp_path: Path) -> None:
    other = Bearers("another-installs-local-secret", tmp_path).issue("ada@example.com")

    with signed_in_shim(stack) as shim_url:
        client = Client(shim_url)
        refreshed = client.refresh(other["refresh_token"])
        reply = client.messages(other["access_token"])
        client.close()

    assert (refreshed.status_code, json_of(refreshed)["error"]) == (401, "invalid_grant")
    assert reply.status_code == 401 and reply.headers["x-should-retry"] == "false"
    assert json_of(reply)["error"]["type"] == "authentication_error"
    assert "/login" in json_of(reply)["error"]["message"]
    assert stack.iap.seen == []


def test_revoked_sign_in_gets_401_without_retry_even_after_a_restart(gateway_streams: Stack) -> None:
    with signed_in_shim(gateway_streams) as shim_url:
        client = Client(shim_url)
        tokens = client.sign_in()
        before = client.messages(tokens["access_token"])
        revoked = client.http.post("/oauth/revoke", data={"token": tokens["access_token"]})
        after = client.messages(tokens["access_token"])
        refresh = client.refresh(tokens["refresh_token"])
        unknown = client.http.post("/oauth/revoke", data={"token": "not-a-token"})
        client.close()
    with signed_in_shim(gateway_streams) as shim_url:
        client = Client(shim_url)
        after_restart = client.messages(tokens["access_token"])
        client.close()

    assert before.status_code == 200
    assert revoked.status_code == 200 and unknown.status_code == 200  # RFC 7009: the same answer for any token
    for reply in (after, after_restart):
        assert reply.status_code == 401 and reply.headers["x-should-retry"] == "false"
        assert "revoked" in json_of(reply)["error"]["message"]
    assert (refresh.status_code, json_of(refresh)["error"]) == (401, "invalid_grant")
    assert len(gateway_streams.gateway.requests) == 1


def test_signing_out_of_the_shim_ends_claude_codes_sign_in(
    gateway_streams: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_SHIM_REVOCATION_ENDPOINT", f"{gateway_streams.google_url}/revoke")
    with signed_in_shim(gateway_streams) as shim_url:
        client = Client(shim_url)
        tokens = client.sign_in()
        assert main(["logout"]) == 0
        reply = client.messages(tokens["access_token"])
        refresh = client.refresh(tokens["refresh_token"])
        started = client.start()
        page = client.open_page(started["verification_uri_complete"])
        client.close()

    assert reply.status_code == 401 and reply.headers["x-should-retry"] == "false"
    assert (refresh.status_code, json_of(refresh)["error"]) == (401, "invalid_grant")
    assert page.status_code == 409 and "claude-shim login" in page.text
    assert gateway_streams.gateway.requests == []


def test_a_different_google_account_on_the_shim_invalidates_the_old_bearer(
    gateway_streams: Stack, google: Any, config_dir: Path
) -> None:
    with signed_in_shim(gateway_streams) as shim_url:
        client = Client(shim_url)
        tokens = client.sign_in()
        TokenStore(config_dir).save(
            StoredLogin(
                refresh_token=google.sign_in("grace@example.com"), client_id=CLIENT_ID, email="grace@example.com"
            )
        )
        refresh = client.refresh(tokens["refresh_token"])
        client.close()

    assert (refresh.status_code, json_of(refresh)["error"]) == (401, "invalid_grant")
    assert "grace@example.com" in json_of(refresh)["error_description"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/messages/count_tokens", b'{"model":"claude-opus-5-5"}'),
        ("GET", "/v1/models?limit=1000", b""),
        ("GET", "/managed/settings", b""),
        ("GET", "/api/oauth/usage", b""),
        ("POST", "/v1/metrics", b"\x0a\x00"),
        ("POST", "/v1/logs", b"{}"),
        ("POST", "/v1/traces", b"{}"),
    ],
)
def test_every_path_claude_code_calls_after_sign_in_is_relayed_with_the_persons_id_token(
    stack: Stack, google_key: GoogleKey, method: str, path: str, body: bytes
) -> None:
    with signed_in_shim(stack) as shim_url:
        client = Client(shim_url)
        bearer = client.sign_in()["access_token"]
        reply = client.http.request(method, path, content=body, headers={"authorization": f"Bearer {bearer}"})
        client.close()

    assert reply.status_code == 200
    [seen] = stack.gateway.requests
    assert (seen.method, seen.path, seen.body) == (method, path.partition("?")[0], body)
    assert google_key.verify(stack.iap.tokens[0], audience=CLIENT_ID)["email"] == "ada@example.com"
    assert all(bearer.encode() not in value for _, value in seen.headers)


@pytest.mark.parametrize("path", ["/oauth/device_authorization", "/oauth/token", "/oauth/revoke"])
def test_a_web_page_cannot_start_poll_or_revoke_a_sign_in(stack: Stack, path: str) -> None:
    with stack.shim() as shim_url:
        reply = httpx.post(
            f"{shim_url}{path}",
            content=b"surface=claude_code",
            headers={**CLIENT_HEADERS, "origin": "https://evil.example"},
        )
        client = Client(shim_url)
        started = client.start()  # Claude Code itself, with no Origin, is unaffected
        client.close()

    assert reply.status_code == 403 and json_of(reply)["error"] == "invalid_request"
    assert started["device_code"]


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/device?user_code=BCDF-GHJK"])
def test_sign_in_endpoints_refuse_a_foreign_host(stack: Stack, path: str) -> None:
    with stack.shim() as shim_url:
        reply = httpx.get(f"{shim_url}{path}", headers={"host": "rebound.example:80"})

    assert reply.status_code == 403


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "invalid_request"),
        (b"\xff\xfe not a form", "invalid_request"),
        (b"grant_type=password&username=a", "unsupported_grant_type"),
        (b"grant_type=refresh_token", "invalid_request"),
        (b"grant_type=refresh_token&refresh_token=eyJhbGciOiJub25lIn0.e30.", "invalid_grant"),
    ],
)
def test_bad_token_requests_get_oauth_errors(stack: Stack, body: bytes, error: str) -> None:
    with stack.shim() as shim_url:
        reply = httpx.post(f"{shim_url}/oauth/token", content=body, headers=CLIENT_HEADERS)

    assert reply.status_code in {400, 401}
    assert json_of(reply)["error"] == error
