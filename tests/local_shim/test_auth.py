from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import requests
import responses
import respx
from google.auth import jwt as google_jwt

from local_shim.auth import GoogleAuthProvider, UserTokenProvider, build_provider, parse_id_token
from local_shim.errors import AuthError, GoogleUnavailableError
from local_shim.store import StoredLogin, TokenStore
from tests.local_shim.conftest import (
    CLIENT_ID,
    GOOGLE_TOKEN_URL,
    FakeGoogle,
    GoogleKey,
    shim_settings,
)

pytestmark = pytest.mark.anyio

IAP_AUDIENCE = "iap-oauth-client.apps.googleusercontent.com"
ROBOT = "ci-bot@example-project.iam.gserviceaccount.com"
TARGET = "claude-user@example-project.iam.gserviceaccount.com"
METADATA_URL = re.compile(r"http://(metadata\.google\.internal|169\.254\.169\.254)(/.*)?$")
IAM_ID_TOKEN_URL = f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{TARGET}:generateIdToken"


def signed_in(google: FakeGoogle, config_dir: Path, email: str = "ada@example.com") -> TokenStore:
    store = TokenStore(config_dir)
    store.save(StoredLogin(refresh_token=google.sign_in(email), client_id=CLIENT_ID, email=email))
    return store


@pytest.fixture
def token_endpoint(google: FakeGoogle) -> Any:
    with respx.mock(assert_all_called=False) as mock:
        yield mock.post(GOOGLE_TOKEN_URL).mock(side_effect=google.respx_token)


# -- the ID token itself -------------------------------------------------------------------------------------------


def test_parse_id_token_reads_email_audience_and_expiry(google_key: GoogleKey) -> None:
    token = parse_id_token(google_key.id_token("ada@example.com", lifetime=600), audience=CLIENT_ID)
    assert token.email == "ada@example.com"
    assert token.audience == CLIENT_ID
    assert 590 < token.seconds_left() <= 600
    assert token.value not in repr(token)


def test_parse_id_token_refuses_wrong_audience_expired_and_foreign_issuer(google_key: GoogleKey) -> None:
    with pytest.raises(AuthError, match="audience"):
        parse_id_token(google_key.id_token("ada@example.com", audience="someone-else"), audience=CLIENT_ID)
    with pytest.raises(AuthError, match="expired"):
        parse_id_token(google_key.id_token("ada@example.com", lifetime=-5), audience=CLIENT_ID)
    with pytest.raises(AuthError, match="issuer"):
        parse_id_token(google_key.id_token("ada@example.com", iss="https://evil.example"), audience=CLIENT_ID)
    with pytest.raises(AuthError, match="not an ID token"):
        parse_id_token("not-a-jwt", audience=CLIENT_ID)


# -- the signed-in person ------------------------------------------------------------------------------------------


async def test_user_token_is_minted_from_the_refresh_token_and_cached(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    provider = UserTokenProvider(shim_settings(), signed_in(google, config_dir))
    async with provider:
        first = await provider.get()
        second = await provider.get()

    assert first is second
    assert first.email == "ada@example.com" and first.audience == CLIENT_ID
    assert token_endpoint.call_count == 1
    form = dict(parse_qsl(token_endpoint.calls[0].request.content.decode()))
    assert form["grant_type"] == "refresh_token"
    assert form["client_id"] == CLIENT_ID


async def test_token_is_refreshed_ahead_of_expiry(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    google.lifetime = 200  # inside the 300 s refresh margin: every use mints anew
    provider = UserTokenProvider(shim_settings(), signed_in(google, config_dir))
    async with provider:
        first = await provider.get()
        second = await provider.get()

    assert token_endpoint.call_count == 2
    assert first.value != second.value or first.expires_at <= second.expires_at


async def test_concurrent_requests_share_one_refresh(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    provider = UserTokenProvider(shim_settings(), signed_in(google, config_dir))
    async with provider:
        tokens = await asyncio.gather(*(provider.get() for _ in range(25)))

    assert token_endpoint.call_count == 1
    assert len({token.value for token in tokens}) == 1


async def test_a_rejected_token_is_replaced_once_for_all_who_saw_it_rejected(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    provider = UserTokenProvider(shim_settings(), signed_in(google, config_dir))
    async with provider:
        rejected = await provider.get()
        replacements = await asyncio.gather(*(provider.get(rejected=rejected.value) for _ in range(5)))

    assert token_endpoint.call_count == 2
    assert {token.value for token in replacements} == {replacements[0].value}
    assert replacements[0].value != rejected.value


async def test_not_signed_in_says_to_log_in(google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route) -> None:
    provider = UserTokenProvider(shim_settings(), TokenStore(config_dir))
    with pytest.raises(AuthError, match=r"Not signed in: run `claude-shim login`"):
        await provider.get()
    assert token_endpoint.call_count == 0


async def test_revoked_refresh_token_says_to_log_in_again(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    store = signed_in(google, config_dir)
    google.refresh_tokens.clear()  # revoked at https://myaccount.google.com/permissions

    with pytest.raises(AuthError, match=r"expired or was revoked .*claude-shim login") as caught:
        await UserTokenProvider(shim_settings(), store).get()
    assert caught.value.status == 401


async def test_wrong_or_rotated_client_secret_says_to_ask_the_admin(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    store = signed_in(google, config_dir)
    with pytest.raises(AuthError, match="invalid_client.*ask your admin"):
        await UserTokenProvider(shim_settings(oauth_client_secret="old-secret"), store).get()


async def test_google_outage_keeps_a_still_valid_token_and_fails_clearly_without_one(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    google.lifetime = 200
    provider = UserTokenProvider(shim_settings(), signed_in(google, config_dir))
    current = await provider.get()
    google.failure = (503, {"error": "backend_error"})

    assert await provider.get() is current  # still 200 s left: better than refusing the request

    fresh = UserTokenProvider(shim_settings(), TokenStore(config_dir))
    with pytest.raises(GoogleUnavailableError, match="HTTP 503"):
        await fresh.get()


async def test_unreachable_google_is_a_retryable_error(google: FakeGoogle, config_dir: Path) -> None:
    with respx.mock() as mock:
        mock.post(GOOGLE_TOKEN_URL).mock(side_effect=httpx.ConnectError("no route"))
        with pytest.raises(GoogleUnavailableError, match="Cannot reach Google") as caught:
            await UserTokenProvider(shim_settings(), signed_in(google, config_dir)).get()
    assert caught.value.status == 503


async def test_rotated_refresh_token_is_stored(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    store = signed_in(google, config_dir)
    old = store.load()
    google.rotate_refresh_tokens = True

    await UserTokenProvider(shim_settings(), store).get()

    new = store.load()
    assert new is not None and old is not None
    assert new.refresh_token != old.refresh_token and new.refresh_token in google.refresh_tokens


async def test_sign_in_for_another_oauth_client_is_not_used(
    google: FakeGoogle, config_dir: Path, token_endpoint: respx.Route
) -> None:
    store = signed_in(google, config_dir)
    with pytest.raises(AuthError, match="different OAuth client"):
        await UserTokenProvider(shim_settings(oauth_client_id="other.apps.googleusercontent.com"), store).get()
    assert token_endpoint.call_count == 0


# -- service accounts (google-auth talks through `requests`, so `responses` fakes Google there) --------------------


def service_account_file(tmp_path: Path, key: GoogleKey, email: str = ROBOT) -> Path:
    path = tmp_path / "sa.json"
    info = {
        "type": "service_account",
        "project_id": "example-project",
        "private_key_id": key.kid,
        "private_key": key.private_pem,
        "client_email": email,
        "client_id": "1000001",
        "token_uri": GOOGLE_TOKEN_URL,
    }
    path.write_text(json.dumps(info))
    return path


def jwt_bearer_grant(request: requests.PreparedRequest, key: GoogleKey) -> dict[str, Any]:
    """Google's check of a service account's signed grant."""
    assert isinstance(request.body, str | bytes)
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    form = dict(parse_qsl(body))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims: dict[str, Any] = google_jwt.decode(form["assertion"], certs={key.kid: key.public_pem})
    return claims


async def test_adc_service_account_key_mints_an_id_token_for_the_iap_audience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, google_key: GoogleKey
) -> None:
    robot_key = GoogleKey()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path, robot_key)))

    def token(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        claims = jwt_bearer_grant(request, robot_key)
        audience = claims["target_audience"]
        return 200, {}, json.dumps({"id_token": google_key.id_token(claims["iss"], audience=audience)})

    with responses.RequestsMock() as google_api:
        google_api.add_callback(responses.POST, GOOGLE_TOKEN_URL, callback=token)
        provider = build_provider(shim_settings(credentials="adc", audience=IAP_AUDIENCE))
        assert isinstance(provider, GoogleAuthProvider)
        minted = await provider.get()

    assert minted.email == ROBOT
    assert minted.audience == IAP_AUDIENCE


async def test_adc_on_google_cloud_uses_the_metadata_server(google_key: GoogleKey) -> None:
    def metadata_server(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        flavor = {"Metadata-Flavor": "Google"}
        assert request.headers["Metadata-Flavor"] == "Google"
        url = urlsplit(request.url or "")
        if url.path in {"", "/"}:
            return 200, flavor, ""
        if url.path.endswith("/service-accounts/default/"):
            return 200, flavor | {"Content-Type": "application/json"}, json.dumps({"email": ROBOT, "aliases": []})
        if url.path.endswith("/service-accounts/default/identity"):
            audience = dict(parse_qsl(url.query))["audience"]
            return 200, flavor, google_key.id_token(ROBOT, audience=audience)
        return 404, flavor, "not found"

    with responses.RequestsMock(assert_all_requests_are_fired=False) as metadata:
        for method in (responses.GET, responses.POST):
            metadata.add_callback(method, METADATA_URL, callback=metadata_server)
        minted = await build_provider(shim_settings(credentials="adc", audience=IAP_AUDIENCE)).get()

    assert minted.email == ROBOT and minted.audience == IAP_AUDIENCE


async def test_adc_without_credentials_says_what_to_set() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as metadata:
        metadata.add(responses.GET, METADATA_URL, status=404)  # not on Google Cloud
        with pytest.raises(AuthError, match="GOOGLE_APPLICATION_CREDENTIALS"):
            await build_provider(shim_settings(credentials="adc", audience=IAP_AUDIENCE)).get()


async def test_impersonation_mints_the_target_accounts_id_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, google_key: GoogleKey
) -> None:
    robot_key = GoogleKey()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path, robot_key)))
    access_token = "ya29.source-access-token"

    def token(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        jwt_bearer_grant(request, robot_key)  # signed by the service account's key
        return 200, {}, json.dumps({"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"})

    def generate_id_token(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        assert request.headers["Authorization"] == f"Bearer {access_token}"
        assert isinstance(request.body, bytes | str)
        body = json.loads(request.body)
        assert body["includeEmail"] is True
        return 200, {}, json.dumps({"token": google_key.id_token(TARGET, audience=body["audience"])})

    with responses.RequestsMock() as google_api:
        google_api.add_callback(responses.POST, GOOGLE_TOKEN_URL, callback=token)
        google_api.add_callback(responses.POST, IAM_ID_TOKEN_URL, callback=generate_id_token)
        settings = shim_settings(credentials="impersonate", impersonate_service_account=TARGET, audience=IAP_AUDIENCE)
        minted = await build_provider(settings).get()

    assert minted.email == TARGET and minted.audience == IAP_AUDIENCE


async def test_impersonation_without_token_creator_role_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    robot_key = GoogleKey()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path, robot_key)))
    denied = {"error": {"code": 403, "message": "Permission 'iam.serviceAccounts.getOpenIdToken' denied"}}

    with responses.RequestsMock() as google_api:
        google_api.add(responses.POST, GOOGLE_TOKEN_URL, json={"access_token": "ya29.x", "expires_in": 3600})
        google_api.add(responses.POST, IAM_ID_TOKEN_URL, status=403, json=denied)
        settings = shim_settings(credentials="impersonate", impersonate_service_account=TARGET)
        with pytest.raises(AuthError, match="getOpenIdToken") as caught:
            await build_provider(settings).get()
    assert "\n" not in caught.value.message


def test_service_account_audience_defaults_to_the_oauth_client_id() -> None:
    assert shim_settings(credentials="adc").id_token_audience == CLIENT_ID
    assert shim_settings(credentials="adc", audience=IAP_AUDIENCE).id_token_audience == IAP_AUDIENCE
    # A person's token is always for the desktop client they signed in with.
    assert shim_settings(audience=IAP_AUDIENCE).id_token_audience == CLIENT_ID
