from __future__ import annotations

import io
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import respx

from local_shim.cli import main
from local_shim.run import child_environment
from local_shim.store import StoredLogin, TokenStore, local_secret
from tests.local_shim.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    GOOGLE_TOKEN_URL,
    FakeGoogle,
    FakeIAP,
    GoogleKey,
    Servers,
)
from tests.support.servers import FakeUpstream, Reply


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`serve` and `run` set up logging for the process; put it back (and close their files) after each test."""
    names = ("local_shim", "uvicorn", "uvicorn.access")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers, logger.propagate = handlers, propagate


@dataclass
class Gateway:
    google: FakeGoogle
    iap: FakeIAP
    upstream: FakeUpstream


@pytest.fixture
def configured(google: FakeGoogle, google_key: GoogleKey, config_dir: Path, servers: Servers) -> Gateway:
    """`claude-shim configure` done against a fake Google and a fake IAP + gateway, and Ada signed in."""
    upstream = FakeUpstream()
    upstream.reply = lambda seen: Reply(200, [("content-type", "application/json")], [b'{"status":"ok"}'])
    iap = FakeIAP(upstream, google_key)
    servers.google.app = google.asgi()
    servers.gateway.app = iap
    command = ["configure", "--gateway-url", servers.gateway_url]
    assert main([*command, "--oauth-client-id", CLIENT_ID, "--oauth-client-secret", CLIENT_SECRET]) == 0
    # Google's endpoints are settings so that tests (and only tests) point them at fakes.
    config = config_dir / "config.json"
    config.write_text(config.read_text().replace("{", f'{{"token_endpoint": "{servers.google_url}/token",', 1))
    TokenStore(config_dir).save(
        StoredLogin(refresh_token=google.sign_in("ada@example.com"), client_id=CLIENT_ID, email="ada@example.com")
    )
    return Gateway(google, iap, upstream)


def test_env_prints_export_lines_a_shell_can_eval(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "--port", "9123"]) == 0

    out = capsys.readouterr().out
    exports = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines())
    assert exports == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9123",
        "ANTHROPIC_AUTH_TOKEN": local_secret(config_dir),
    }


def test_run_gives_the_child_the_shim_and_returns_its_exit_code(
    configured: Gateway, config_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-personal-key")
    child = textwrap.dedent(
        """
        import os, sys, urllib.request
        request = urllib.request.Request(
            os.environ["ANTHROPIC_BASE_URL"] + "/healthz",
            headers={"Authorization": "Bearer " + os.environ["ANTHROPIC_AUTH_TOKEN"]},
        )
        print(urllib.request.urlopen(request).read().decode(), "ANTHROPIC_API_KEY" in os.environ)
        sys.exit(3)
        """
    )

    status = main(["run", "--", sys.executable, "-c", child])

    assert status == 3
    assert capfd.readouterr().out == '{"status":"ok"} False\n'
    assert [seen.path for seen in configured.upstream.requests] == ["/healthz"]
    assert (config_dir / "claude-shim.log").exists()


def test_run_refuses_to_start_when_not_signed_in(
    configured: Gateway, config_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    TokenStore(config_dir).delete()

    status = main(["run", "--", sys.executable, "-c", "print('the child ran')"])

    assert status == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert err == "claude-shim: error: Not signed in: run `claude-shim login`.\n"


def test_run_reports_a_missing_command(configured: Gateway, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--", "no-such-command-claude-shim-test"]) == 127
    assert "command not found: no-such-command-claude-shim-test" in capfd.readouterr().err
    assert main(["run"]) == 1
    assert "claude-shim run -- claude" in capfd.readouterr().err


def test_status_shows_who_is_signed_in_and_that_the_gateway_answers(
    configured: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 0

    out = capsys.readouterr().out
    assert "ok  ] sign-in: ada@example.com (stored in the system keyring)" in out
    assert f"ID token: for ada@example.com, audience {CLIENT_ID}, valid until" in out
    assert "/health answered HTTP 200" in out
    assert [seen.path for seen in configured.upstream.requests] == ["/health"]


def test_doctor_reports_an_iap_denial_with_its_fix(configured: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    configured.iap.denied.add("ada@example.com")

    assert main(["doctor"]) == 1

    out = capsys.readouterr().out
    assert "[ok  ] gateway URL" in out and "[ok  ] OAuth client" in out and "[ok  ] local secret" in out
    assert "[FAIL] gateway: IAP denied ada@example.com access (HTTP 403" in out
    assert "fix: ask your admin to grant you roles/iap.httpsResourceAccessor on the gateway" in out


def test_doctor_reports_a_token_iap_does_not_accept(configured: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    configured.iap.reject_next = 1

    assert main(["doctor"]) == 1

    out = capsys.readouterr().out
    assert "[FAIL] gateway: IAP rejected the ID token (HTTP 401" in out
    assert f"list OAuth client {CLIENT_ID} in IAP's programmatic clients" in out


def test_doctor_on_a_fresh_install_says_to_configure(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 1

    out = capsys.readouterr().out
    assert "[FAIL] gateway URL: not set" in out
    assert "fix: run the `claude-shim configure ...` command your admin gave you" in out


def test_status_after_revocation_says_to_log_in_again(configured: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    configured.google.refresh_tokens.clear()

    assert main(["status"]) == 1

    out = capsys.readouterr().out
    assert "[FAIL] ID token: Your Google sign-in has expired or was revoked (invalid_grant)" in out


def test_logout_when_not_signed_in(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logout"]) == 0
    assert capsys.readouterr().out == "Not signed in.\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "configure" in capsys.readouterr().err


def test_child_environment_points_anthropic_clients_at_the_shim() -> None:
    env = child_environment(
        4321, "s3cret", {"ANTHROPIC_API_KEY": "sk-ant-x", "NO_PROXY": "corp.internal", "PATH": "/bin"}
    )
    assert env == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4321",
        "ANTHROPIC_AUTH_TOKEN": "s3cret",
        "NO_PROXY": "corp.internal,127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PATH": "/bin",
    }


class PastingTerminal(io.StringIO):
    """A person at a terminal whose browser is on another machine: they sign in there, then paste the address
    the browser could not load (the loopback redirect) back into the terminal."""

    def __init__(self, google: FakeGoogle, screen: io.StringIO, *, state: str | None = None) -> None:
        super().__init__()
        self._google = google
        self._screen = screen
        self._state = state
        self.pasted: list[str] = []

    def __iter__(self) -> Iterator[str]:
        url = next(word for word in self._screen.getvalue().split() if "code_challenge=" in word)
        redirect = self._google.consent(url, "ada@example.com")
        if self._state is not None:
            redirect = redirect.replace("state=", f"state={self._state}&ignored=", 1)
        self.pasted.append(redirect)
        yield redirect + "\n"


def login_cli(google: FakeGoogle, monkeypatch: pytest.MonkeyPatch, *, state: str | None = None) -> tuple[int, str]:
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stdin", PastingTerminal(google, screen, state=state))
    with respx.mock(assert_all_called=False) as mock:
        mock.post(GOOGLE_TOKEN_URL).mock(side_effect=google.respx_token)
        status = main(["login", "--no-browser", "--gateway-url", "https://gw.example.com"])
    return status, screen.getvalue()


def test_login_on_a_headless_machine_accepts_the_pasted_redirect(
    google: FakeGoogle, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main(["configure", "--oauth-client-id", CLIENT_ID, "--oauth-client-secret", CLIENT_SECRET])

    status, screen = login_cli(google, monkeypatch)

    assert status == 0
    assert "Signed in as ada@example.com; the sign-in is stored in the system keyring." in screen
    stored = TokenStore(config_dir).load()
    assert stored is not None and stored.refresh_token in google.refresh_tokens
    assert stored.refresh_token not in screen and CLIENT_SECRET not in screen


def test_pasted_redirect_with_a_wrong_state_is_refused(
    google: FakeGoogle, config_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["configure", "--oauth-client-id", CLIENT_ID, "--oauth-client-secret", CLIENT_SECRET])
    config = config_dir / "config.json"
    config.write_text(config.read_text().replace("{", '{"login_timeout_seconds": 1,', 1))

    status, screen = login_cli(google, monkeypatch, state="forged")

    assert status == 1
    assert "refused (HTTP 400)" in capsys.readouterr().err
    assert google.token_calls == 0
    assert TokenStore(config_dir).load() is None


def test_serve_runs_until_ctrl_c_and_stops_cleanly(configured: Gateway, config_dir: Path) -> None:
    # The subprocess has no keyring, so its sign-in is in the 0600 file.
    refresh_token = configured.google.sign_in("ada@example.com")
    TokenStore(config_dir, "file").save(StoredLogin(refresh_token=refresh_token, client_id=CLIENT_ID))
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    shim = Path(sys.executable).with_name("claude-shim")
    process = subprocess.Popen(
        [str(shim), "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.split("http://127.0.0.1:")[1].split()[0])
        secret = local_secret(config_dir)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"x-api-key": secret})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)

    assert process.returncode == 0
    assert "claude-shim: stopped" in out
    assert "Traceback" not in err
