"""The forged-assertion corpus: every bad assertion gets 401, a WARNING, an audit row, and never reaches upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import httpx
import orjson
import pytest

from gateway.dev.iap import AssertionSigner
from gateway.identity import fold_case
from tests.gateway.conftest import AUDIENCE, Stack, StackFactory
from tests.support.anthropic_sse import JSON_HEADERS, message_json
from tests.support.servers import Reply

BODY = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def good_claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "https://cloud.google.com/iap",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "sub": "accounts.google.com:1234",
        "email": "ada@example.com",
        "hd": "example.com",
    }
    claims.update(changes)
    return claims


def hs256(claims: dict[str, object], key: bytes) -> str:
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    forged = dict(good_claims(), email="mallory@example.com")
    return f"{header}.{b64(json.dumps(forged).encode())}.{signature}"


FORGERIES: dict[str, Callable[[AssertionSigner], str | None]] = {
    "missing": lambda s: None,
    "empty": lambda s: "",
    "garbage": lambda s: "not-a-jwt",
    "expired": lambda s: s.sign("ada@example.com", audience=AUDIENCE, issued_at=int(time.time()) - 3600, lifetime=600),
    "issued-in-future": lambda s: s.sign("ada@example.com", audience=AUDIENCE, issued_at=int(time.time()) + 3600),
    "wrong-audience": lambda s: s.sign("ada@example.com", audience="/projects/999/global/backendServices/1"),
    "wrong-issuer": lambda s: s.sign("ada@example.com", audience=AUDIENCE, issuer="https://accounts.google.com"),
    "signed-by-another-key": lambda s: AssertionSigner(kid=s.kid).sign("ada@example.com", audience=AUDIENCE),
    "unknown-key-id": lambda s: AssertionSigner(kid="rotated-away").sign("ada@example.com", audience=AUDIENCE),
    "tampered-claims": lambda s: tampered(s.sign("ada@example.com", audience=AUDIENCE)),
    "alg-none": lambda s: unsigned({"alg": "none", "typ": "JWT", "kid": s.kid}, good_claims()),
    "hs256-with-public-key": lambda s: hs256(good_claims(), s.public_key_map()[s.kid].encode()),
    "rs256-header": lambda s: unsigned({"alg": "RS256", "kid": s.kid}, good_claims(), b"x" * 256),
    "two-at-signs": lambda s: s.sign("ada@evil.com@example.com", audience=AUDIENCE),
    "no-email": lambda s: AssertionSigner.sign(s, "", audience=AUDIENCE),
    "email-with-newline": lambda s: s.sign("ada@example.com\nx-admin: 1", audience=AUDIENCE),
    "email-with-trailing-newline": lambda s: s.sign("ada@example.com\n", audience=AUDIENCE, hd="example.com"),
    # U+212A KELVIN SIGN: `str.lower` makes it `kate@`, someone else with rules of her own.
    "email-with-kelvin-sign": lambda s: s.sign("\u212aate@example.com", audience=AUDIENCE, hd="example.com"),
    "email-with-non-ascii-letters": lambda s: s.sign("ad\u00e4@example.com", audience=AUDIENCE, hd="example.com"),
    "string-exp": lambda s: s.sign("ada@example.com", audience=AUDIENCE, exp=str(int(time.time()) + 600)),
    "infinite-exp": lambda s: s.sign("ada@example.com", audience=AUDIENCE, exp=float("inf")),
    "boolean-iat": lambda s: s.sign("ada@example.com", audience=AUDIENCE, iat=True),
    "string-iat": lambda s: s.sign("ada@example.com", audience=AUDIENCE, iat=str(int(time.time()))),
    "not-valid-before-an-hour-from-now": lambda s: s.sign(
        "ada@example.com", audience=AUDIENCE, nbf=int(time.time()) + 3600
    ),
    "string-nbf": lambda s: s.sign("ada@example.com", audience=AUDIENCE, nbf=str(int(time.time()))),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_bad_assertion_is_refused_logged_audited_and_never_relayed(
    stack: Stack, forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="gateway.identity")
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("should not happen")])
    token = FORGERIES[forgery](stack.signer)
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["x-goog-iap-jwt-assertion"] = token

    response = httpx.post(stack.url + "/v1/messages", content=BODY, headers=headers)

    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert stack.upstream.requests == []
    row = stack.rows(1)[0]
    assert (row["status_code"], row["outcome"], row["user_email"]) == (401, "unauthenticated", None)
    if token:
        assert any(r.levelname == "WARNING" for r in caplog.records), caplog.text


def test_assertion_valid_from_a_moment_ago_is_accepted(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    token = stack.signer.sign("ada@example.com", audience=AUDIENCE, hd="example.com", nbf=int(time.time()) - 5)

    response = httpx.post(
        stack.url + "/v1/messages",
        content=BODY,
        headers={"content-type": "application/json", "x-goog-iap-jwt-assertion": token},
    )

    assert response.status_code == 200


def test_case_folding_touches_ascii_letters_only() -> None:
    assert fold_case("Ada.Lovelace@Example.COM") == "ada.lovelace@example.com"
    assert fold_case("\u212aATE@Example.com") == "\u212aate@example.com"  # not kate@example.com
    assert fold_case("\u00c4DA@example.com") == "\u00c4da@example.com"


def test_unsigned_identity_headers_alone_are_not_trusted(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/v1/messages",
        content=BODY,
        headers={
            "content-type": "application/json",
            "x-goog-authenticated-user-email": "accounts.google.com:ada@example.com",
            "x-goog-authenticated-user-id": "accounts.google.com:1234",
        },
    )

    assert response.status_code == 401
    assert stack.upstream.requests == []


def test_assertion_in_underscore_spelling_is_refused(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/v1/messages",
        content=BODY,
        headers={"content-type": "application/json", "x_goog_iap_jwt_assertion": stack.assertion()},
    )

    assert response.status_code == 401
    assert stack.upstream.requests == []


def test_valid_assertion_is_relayed_and_names_the_user(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])

    response = httpx.post(
        stack.url + "/v1/messages",
        content=BODY,
        headers={"content-type": "application/json", **stack.headers("Ada@Example.com")},
    )

    assert response.status_code == 200
    row = stack.rows(1)[0]
    assert (row["user_email"], row["user_domain"], row["outcome"]) == ("ada@example.com", "example.com", "ok")


def test_keys_are_fetched_once_not_per_request(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])

    for i in range(5):
        httpx.post(
            stack.url + "/v1/messages",
            content=BODY,
            headers={"content-type": "application/json", **stack.headers(f"user{i}@example.com")},
        )

    assert stack.upstream.key_fetches == 1


def test_rotated_key_is_fetched_when_an_unknown_kid_appears(stack: Stack) -> None:
    stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
    first = httpx.post(
        stack.url + "/v1/messages", content=BODY, headers={"content-type": "application/json", **stack.headers()}
    )
    assert first.status_code == 200
    rotated = AssertionSigner(kid="test-key-2")
    stack.upstream.keys = {**stack.signer.public_key_map(), **rotated.public_key_map()}

    response = httpx.post(
        stack.url + "/v1/messages",
        content=BODY,
        headers={
            "content-type": "application/json",
            "x-goog-iap-jwt-assertion": rotated.sign("ada@example.com", audience=AUDIENCE, hd="example.com"),
        },
    )

    assert response.status_code == 200
    assert stack.upstream.key_fetches == 2


def test_accounts_outside_allowed_domains_are_denied_by_hosted_domain(make_stack: StackFactory) -> None:
    with make_stack(allowed_domains="example.com") as stack:
        stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
        headers = {"content-type": "application/json"}
        # An unmanaged consumer account using a company address carries no `hd`.
        consumer = stack.signer.sign("bob@example.com", audience=AUDIENCE)
        outsider = stack.signer.sign("eve@other.org", audience=AUDIENCE, hd="other.org")

        refused = [
            httpx.post(stack.url + "/v1/messages", content=BODY, headers={**headers, "x-goog-iap-jwt-assertion": t})
            for t in (consumer, outsider)
        ]
        allowed = httpx.post(stack.url + "/v1/messages", content=BODY, headers={**headers, **stack.headers()})

        assert [r.status_code for r in refused] == [403, 403]
        assert refused[0].json()["error"]["type"] == "permission_error"
        assert allowed.status_code == 200
        rows = {r["user_email"]: r for r in stack.rows(3)}
        assert rows["eve@other.org"]["outcome"] == "denied"
        assert rows["bob@example.com"]["outcome"] == "denied"
        assert len(stack.upstream.requests) == 1


def test_any_of_several_configured_audiences_is_accepted(make_stack: StackFactory) -> None:
    other = "/projects/123456789/global/backendServices/42"
    with make_stack(iap_audience=f"{AUDIENCE}, {other}") as stack:
        stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("hi")])
        token = stack.signer.sign("ada@example.com", audience=other, hd="example.com")

        response = httpx.post(
            stack.url + "/v1/messages",
            content=BODY,
            headers={"content-type": "application/json", "x-goog-iap-jwt-assertion": token},
        )

        assert response.status_code == 200


def test_unreachable_key_endpoint_fails_closed_with_503(make_stack: StackFactory) -> None:
    with make_stack(iap_certs_url="http://127.0.0.1:9/keys") as stack:
        response = httpx.post(
            stack.url + "/v1/messages", content=BODY, headers={"content-type": "application/json", **stack.headers()}
        )

        assert response.status_code == 503
        assert stack.upstream.requests == []
        assert stack.rows(1)[0]["outcome"] == "gateway_error"


def test_made_up_key_ids_do_not_turn_into_a_flood_of_key_fetches(stack: Stack) -> None:
    for i in range(10):
        token = AssertionSigner(kid=f"made-up-{i}").sign("ada@example.com", audience=AUDIENCE)
        response = httpx.post(
            stack.url + "/v1/messages",
            content=BODY,
            headers={"content-type": "application/json", "x-goog-iap-jwt-assertion": token},
        )
        assert response.status_code == 401

    # The first request loads the keys; one more fetch is allowed for an unknown kid, then none for a while.
    assert stack.upstream.key_fetches == 2
