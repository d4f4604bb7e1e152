"""The browser sign-in driven end to end: the test plays the browser by following Google's redirect."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import respx

from local_shim.errors import AuthError, LoginError
from local_shim.login import login, logout
from local_shim.store import StoredLogin, TokenStore
from tests.local_shim.conftest import CLIENT_ID, GOOGLE_REVOKE_URL, GOOGLE_TOKEN_URL, FakeGoogle, shim_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def google_endpoints(google: FakeGoogle) -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        mock.post(GOOGLE_TOKEN_URL, name="token").mock(side_effect=google.respx_token)
        mock.post(GOOGLE_REVOKE_URL, name="revoke").mock(side_effect=google.respx_revoke)
        yield mock


class Browser:
    """Follows redirects like a browser would, in its own thread; records what the loopback page answered."""

    def __init__(self, visit: Callable[[str], list[str]]) -> None:
        self._visit = visit
        self.answers: list[int] = []
        self.authorization_urls: list[str] = []
        self._thread: threading.Thread | None = None

    def open(self, url: str) -> None:
        self.authorization_urls.append(url)
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        for target in self._visit(url):
            try:
                with urllib.request.urlopen(target, timeout=5) as response:
                    self.answers.append(response.status)
            except urllib.error.HTTPError as error:
                self.answers.append(error.code)

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(5)


def with_state(url: str, state: str) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query)) | {"state": state}
    return parts._replace(query=urlencode(params)).geturl()


async def test_login_signs_in_with_pkce_and_stores_the_refresh_token_in_the_keyring(
    google: FakeGoogle, config_dir: Path, google_endpoints: respx.MockRouter
) -> None:
    browser = Browser(lambda url: [google.consent(url, "ada@example.com")])
    store = TokenStore(config_dir)

    result = await login(shim_settings(), store, open_browser=browser.open)
    browser.join()

    assert result.email == "ada@example.com"
    assert result.stored_in == "the system keyring"
    assert result.id_token.audience == CLIENT_ID
    stored = store.load()
    assert stored is not None and stored.refresh_token in google.refresh_tokens
    assert stored.client_id == CLIENT_ID
    assert browser.answers == [200]
    authorization = dict(parse_qsl(urlsplit(browser.authorization_urls[0]).query))
    assert authorization["scope"] == "openid email"
    assert authorization["code_challenge_method"] == "S256"
    assert "code_verifier" not in authorization
    assert google.grants == ["authorization_code"]  # the fake checked the verifier against the challenge


async def test_redirect_with_wrong_state_is_refused_and_its_code_never_exchanged(
    google: FakeGoogle, config_dir: Path, google_endpoints: respx.MockRouter
) -> None:
    def visit(url: str) -> list[str]:
        planted = google.consent(url, "mallory@example.com")
        return [with_state(planted, "forged-state"), google.consent(url, "ada@example.com")]

    browser = Browser(visit)

    result = await login(shim_settings(), TokenStore(config_dir), open_browser=browser.open)
    browser.join()

    assert browser.answers == [400, 200]
    assert result.email == "ada@example.com"
    assert google.grants == ["authorization_code"]
    assert [grant["email"] for grant in google.codes.values()] == ["mallory@example.com"]


async def test_denied_consent_ends_the_login_with_a_clear_message(
    google: FakeGoogle, config_dir: Path, google_endpoints: respx.MockRouter
) -> None:
    def visit(url: str) -> list[str]:
        params = dict(parse_qsl(urlsplit(url).query))
        return [f"{params['redirect_uri']}?{urlencode({'error': 'access_denied', 'state': params['state']})}"]

    browser = Browser(visit)
    with pytest.raises(LoginError, match=r"not completed in the browser \(access_denied\)"):
        await login(shim_settings(), TokenStore(config_dir), open_browser=browser.open)
    browser.join()
    assert google.token_calls == 0


async def test_login_gives_up_when_the_browser_never_comes_back(config_dir: Path) -> None:
    with pytest.raises(LoginError, match="Timed out"):
        await login(shim_settings(login_timeout_seconds=0.2), TokenStore(config_dir), open_browser=lambda url: None)


async def test_id_token_for_another_login_attempt_is_refused(
    google: FakeGoogle, config_dir: Path, google_endpoints: respx.MockRouter
) -> None:
    def visit(url: str) -> list[str]:
        redirect = google.consent(url, "ada@example.com")
        code = dict(parse_qsl(urlsplit(redirect).query))["code"]
        google.codes[code]["nonce"] = "some-other-login"
        return [redirect]

    browser = Browser(visit)
    store = TokenStore(config_dir)
    with pytest.raises(AuthError, match="nonce"):
        await login(shim_settings(), store, open_browser=browser.open)
    browser.join()
    assert store.load() is None


async def test_wrong_client_secret_at_login_says_to_ask_the_admin(
    google: FakeGoogle, config_dir: Path, google_endpoints: respx.MockRouter
) -> None:
    browser = Browser(lambda url: [google.consent(url, "ada@example.com")])
    with pytest.raises(AuthError, match="invalid_client"):
        await login(shim_settings(oauth_client_secret="wrong"), TokenStore(config_dir), open_browser=browser.open)
    browser.join()


async def test_logout_revokes_at_google_and_forgets_the_sign_in(
    google: FakeGoogle, config_dir: Path, google_endpoints: respx.MockRouter
) -> None:
    store = TokenStore(config_dir)
    refresh_token = google.sign_in("ada@example.com")
    store.save(StoredLogin(refresh_token=refresh_token, client_id=CLIENT_ID, email="ada@example.com"))

    assert await logout(shim_settings(), store) == (True, True)

    assert google.revoked == [refresh_token]
    assert store.load() is None
    assert await logout(shim_settings(), store) == (False, False)
