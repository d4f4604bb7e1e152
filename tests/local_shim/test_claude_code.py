"""The real Claude Code CLI in both set-ups: its own gateway sign-in to `claude-shim serve` (driven in tmux), and
`claude-shim token` as its apiKeyHelper straight to the local IAP stand-in, with no shim process."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.local_shim.conftest import CLIENT_ID, CLIENT_SECRET, MODEL, LocalStack, page_fields, sign_in
from tests.support import claude_code

pytestmark = pytest.mark.slow

SHIM = Path(sys.executable).with_name("claude-shim")
REPLY = "Hello from the mock upstream, relayed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shim_config(stack: LocalStack, directory: Path, email: str, **extra: Any) -> dict[str, str]:
    """A claude-shim config dir signed in as `email`, and the environment its commands run with."""
    directory.mkdir()
    config = {
        "gateway_url": stack.iap_url,
        "oauth_client_id": CLIENT_ID,
        "oauth_client_secret": CLIENT_SECRET,
        "token_endpoint": f"{stack.google_url}/token",
        "token_store": "file",
        **extra,
    }
    (directory / "config.json").write_text(json.dumps(config))
    sign_in(stack.google, directory, email, mode="file")
    return {
        **os.environ,
        "CLAUDE_SHIM_CONFIG_DIR": str(directory),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",  # never a developer's real keychain
    }


def claude_env(home: Path, **extra: str) -> dict[str, str]:
    """Claude Code's clean environment, with no base URL: the settings file says where to go."""
    env = claude_code.environment(home, "unused", **extra)
    del env["ANTHROPIC_BASE_URL"]
    return env


def claude_p(binary: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "-p", "say hello", "--model", MODEL],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def shim_process(local_stack: LocalStack, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`claude-shim serve` as a real process on a free port, signed in as ada."""
    port = free_port()
    env = shim_config(
        local_stack,
        tmp_path / "shim-config",
        "ada@example.com",
        port=str(port),
        revocation_endpoint=f"{local_stack.google_url}/revoke",
        sign_in_poll_seconds="1",
    )
    with running_shim(env, port, tmp_path / "shim.log") as url:
        yield url, env


@contextmanager
def running_shim(env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """`claude-shim serve` with `env` as a real process, once it answers Claude Code's sign-in discovery; its URL.
    Stopped with SIGTERM at the end."""
    log = log_path.open("w")
    process = subprocess.Popen([str(SHIM), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/.well-known/oauth-authorization-server", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        log.close()


class Terminal:
    """An interactive Claude Code in its own tmux server: keys in, screen text out."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.socket = f"claude-shim-test-{secrets.token_hex(4)}"
        line = "cd {} && env -i {} {}; sleep 600".format(
            shlex.quote(str(cwd)),
            " ".join(shlex.quote(f"{key}={value}") for key, value in env.items()),
            " ".join(shlex.quote(part) for part in command),
        )
        self._tmux("new-session", "-d", "-s", "claude", "-x", "160", "-y", "50", line)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return done.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "claude")

    def wait_for(self, *texts: str, timeout: float = 90) -> str:
        """The first of `texts` to appear on screen; fails with the screen after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            for text in texts:
                if text in screen:
                    return text
            time.sleep(0.25)
        raise AssertionError(f"none of {texts} appeared; the screen shows:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self._tmux("send-keys", "-t", "claude", key)
            time.sleep(0.5)  # a menu redraws between keys

    def choose(self, option: str) -> None:
        """Move the menu's cursor to `option` (pressing Up, then Down, until the screen shows it chosen), then Enter."""
        for key in ["Up"] * 6 + ["Down"] * 12:
            if f"❯ {option}" in self.screen():
                self.keys("Enter")
                return
            self.keys(key)
        raise AssertionError(f"cannot choose {option!r}; the screen shows:\n{self.screen()}")

    def close(self) -> None:
        self._tmux("kill-server")


def claude_home_for_gateway_sign_in(tmp_path: Path, shim_env: dict[str, str]) -> tuple[Path, Path]:
    """A HOME past Claude Code's first-run screens whose settings `claude-shim claude-settings gateway` wrote, and
    an empty working folder."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True, "theme": "dark"}))
    written = subprocess.run(
        [str(SHIM), "claude-settings", "gateway"], env={**shim_env, "HOME": str(home)}, capture_output=True, text=True
    )
    assert written.returncode == 0, written.stderr
    return home, work


def play_the_browser(opened: Path, timeout: float = 60) -> str:
    """What the person does: read the page Claude Code opened, check it names them, approve. Returns the page."""
    deadline = time.monotonic() + timeout
    while not opened.exists() or not opened.read_text().strip():
        assert time.monotonic() < deadline, "Claude Code opened no browser page"
        time.sleep(0.2)
    url = opened.read_text().split()[-1]
    origin = "/".join(url.split("/")[:3])
    with httpx.Client(timeout=10) as browser:
        page = browser.get(url)
        approved = browser.post(
            f"{origin}/device",
            data={**page_fields(page.text), "decision": "approve"},
            headers={"origin": origin, "sec-fetch-site": "same-origin"},
        )
    assert approved.status_code == 200, approved.text
    return page.text


def test_claude_code_signs_in_to_the_shim_streams_a_reply_and_a_revoked_sign_in_stops_it(
    local_stack: LocalStack, shim_process: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the interactive sign-in cannot be driven")
    binary = claude_code.install()
    shim_url, shim_env = shim_process
    home, work = claude_home_for_gateway_sign_in(tmp_path, shim_env)
    opened = tmp_path / "opened-urls"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {shlex.quote(str(opened))}\n')
    browser.chmod(0o755)

    terminal = Terminal([str(binary)], claude_env(home, BROWSER=str(browser), TERM="xterm-256color"), work)
    try:
        if terminal.wait_for("Accessing workspace", "shift+tab") == "Accessing workspace":
            terminal.choose("Yes, I trust this folder")
            terminal.wait_for("shift+tab")
        terminal.keys("/login")
        terminal.keys("Enter")
        terminal.wait_for(f"Gateway:  {shim_url}")
        terminal.keys("Enter")
        terminal.wait_for("Yes, trust this gateway")
        terminal.choose("Yes, trust this gateway")
        page = play_the_browser(opened)
        terminal.wait_for("Signed in to Cloud gateway as ada@example.com")
        terminal.choose("Yes, continue")
        terminal.wait_for("Connected to Cloud gateway")
    finally:
        terminal.close()

    assert "ada@example.com" in page
    streamed = claude_p(binary, claude_env(home), work)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == REPLY
    rows = [row for row in local_stack.rows(2) if row["path"] == "/v1/messages"]
    assert rows and {row["user_email"] for row in rows} == {"ada@example.com"}
    assert "ada@example.com" in local_stack.identified

    # Claude Code's own sign-out revokes through the revocation endpoint; do what it sends.
    stored = json.loads((home / ".claude" / ".credentials.json").read_text())["enterpriseGateway"]
    assert stored["email"] == "ada@example.com" and stored["url"] == shim_url
    assert httpx.post(stored["revocationEndpoint"], data={"token": stored["jwt"]}).status_code == 200
    refused = httpx.post(f"{shim_url}/v1/messages", headers={"authorization": f"Bearer {stored['jwt']}"}, content=b"{}")
    assert refused.status_code == 401 and refused.headers["x-should-retry"] == "false"
    stopped = claude_p(binary, claude_env(home), work)  # within the timeout: no three minutes of retries
    assert stopped.returncode != 0
    assert "/login" in stopped.stdout + stopped.stderr


def test_api_key_helper_mode_runs_claude_p_straight_through_iap_without_a_shim(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    binary = claude_code.install()
    shim_env = shim_config(local_stack, tmp_path / "shim-config", "grace@example.com")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    written = subprocess.run(
        [str(SHIM), "claude-settings", "helper"], env={**shim_env, "HOME": str(home)}, capture_output=True, text=True
    )
    assert written.returncode == 0, written.stderr
    settings = json.loads((home / ".claude" / "settings.json").read_text())
    assert settings["env"]["ANTHROPIC_BASE_URL"] == local_stack.iap_url
    assert settings["apiKeyHelper"].endswith("claude-shim token")

    done = claude_p(binary, claude_env(home), work)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == REPLY
    [row] = [row for row in local_stack.rows(1) if row["path"] == "/v1/messages"]
    assert row["user_email"] == "grace@example.com"
    assert set(local_stack.identified) == {"grace@example.com"}  # IAP verified the helper's Google ID token
    doctor = subprocess.run([str(SHIM), "doctor"], env={**shim_env, "HOME": str(home)}, capture_output=True, text=True)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "[ok  ] apiKeyHelper" in doctor.stdout
