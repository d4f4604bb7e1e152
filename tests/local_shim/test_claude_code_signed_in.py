"""The real Claude Code, signed in to `claude-shim serve` with its own gateway sign-in, against the real gateway
behind the local IAP stand-in: it takes its group's managed settings from the gateway (the model allow-list takes
effect), shows the 75 % budget notice in its terminal, then the gateway's billing_error message at the cap; and
`claude-shim usage` shows the same figures."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.app import create_app as create_gateway
from gateway.config import Settings as GatewaySettings
from gateway.dev.iap import AssertionSigner, LocalIAP
from tests.local_shim.conftest import IAP_AUDIENCE, FakeGoogle, GoogleKey, LocalStack, id_token_identity
from tests.local_shim.test_claude_code import (
    SHIM,
    Terminal,
    claude_env,
    claude_home_for_gateway_sign_in,
    free_port,
    play_the_browser,
    running_shim,
    shim_config,
)
from tests.support import claude_code
from tests.support.anthropic_sse import SSE_HEADERS, event
from tests.support.servers import FakeUpstream, Reply, Seen, serve

pytestmark = pytest.mark.slow

ADA = "ada@example.com"
ALLOWED = "claude-sonnet-5-5"
# A daily budget of 10 cents; a prompt with SPEND in it costs 8 (Sonnet 5.5 at list price: 10,000 input tokens at
# $2 per million and 6,000 output tokens at $10 per million), anything else a few hundredths of a cent.
POLICY = textwrap.dedent(f"""\
    version: 1
    budget_help: "ask in #claude-admins"
    groups:
      contractors@example.com:
        models: [claude-sonnet-5-5]
        daily_budget_usd: 0.10
        managed_settings:
          enforceAvailableModels: true
      staff@example.com:
        requests_per_minute: 100
    members:
      contractors@example.com: [{ADA}]
      staff@example.com: [grace@example.com]
    """)
SPEND = {"input_tokens": 10_000, "output_tokens": 6_000}
SMALL = {"input_tokens": 20, "output_tokens": 5}


def priced_reply(seen: Seen) -> Reply:
    """Anthropic's API as the fake edge: every Messages request answered in the model asked for, with SPEND's usage
    when the person's latest prompt says SPEND."""
    if seen.path.endswith("/count_tokens"):
        return Reply(200, [("content-type", "application/json")], [b'{"input_tokens": 10}'])
    if not seen.path.startswith("/v1/messages"):
        error = b'{"type":"error","error":{"type":"not_found_error","message":"no such path here"}}'
        return Reply(404, [("content-type", "application/json")], [error])
    body = orjson.loads(seen.body)
    usage = SPEND if "SPEND" in _last_prompt(body) else SMALL
    start_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    events = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_budget",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        ),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Priced reply."}},
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return Reply(200, SSE_HEADERS, events)


def _last_prompt(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return " ".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return ""


@dataclass
class BudgetStack:
    local: LocalStack
    upstream: FakeUpstream


@pytest.fixture
def budget_stack(google: FakeGoogle, google_key: GoogleKey, tmp_path: Path) -> Iterator[BudgetStack]:
    """The real gateway under uvicorn with a group policy, behind the local IAP stand-in (which admits the shim's
    Google ID tokens), in front of the fake Anthropic API."""
    signer = AssertionSigner()
    identified: list[str] = []
    identify = id_token_identity(google_key, identified)

    async def public_keys(request: Any) -> JSONResponse:
        return JSONResponse(signer.public_key_map())

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    upstream = FakeUpstream()
    upstream.reply = priced_reply
    audit_db = tmp_path / "audit.db"
    keys = Starlette(routes=[Route("/public_key", public_keys)])
    with serve(upstream) as upstream_url, serve(keys) as keys_url:
        gateway = create_gateway(
            GatewaySettings(
                iap_audience=[IAP_AUDIENCE],
                iap_certs_url=f"{keys_url}/public_key",
                upstream_url=upstream_url,
                anthropic_api_key="sk-ant-test-key",
                audit_sink=f"sqlite:///{audit_db}",
                audit_spill_dir=str(tmp_path / "spill"),
                policy_file=str(policy),
                group_resolver="static",
            )
        )
        iap = LocalIAP(gateway, signer=signer, audience=IAP_AUDIENCE, identify=identify)
        with serve(google.asgi()) as google_url, serve(iap) as iap_url:
            yield BudgetStack(LocalStack(google, google_url, iap_url, audit_db, identified), upstream)


@pytest.fixture
def shim(budget_stack: BudgetStack, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`claude-shim serve` as a real process, signed in to Google as ada."""
    port = free_port()
    env = shim_config(budget_stack.local, tmp_path / "shim-config", ADA, port=str(port), sign_in_poll_seconds="1")
    with running_shim(env, port, tmp_path / "shim.log") as url:
        yield url, env


def sign_in_with_login(binary: Path, shim_url: str, home: Path, work: Path, tmp_path: Path) -> None:
    """Claude Code's own `/login` to the shim's gateway sign-in, approved in the (scripted) browser."""
    opened = tmp_path / "opened-urls"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> "{opened}"\n')
    browser.chmod(0o755)
    terminal = Terminal([str(binary)], claude_env(home, BROWSER=str(browser), TERM="xterm-256color"), work)
    try:
        if terminal.wait_for("Accessing workspace", "shift+tab") == "Accessing workspace":
            terminal.choose("Yes, I trust this folder")
            terminal.wait_for("shift+tab")
        terminal.keys("/login", "Enter")
        terminal.wait_for(f"Gateway:  {shim_url}")
        terminal.keys("Enter")
        terminal.choose("Yes, trust this gateway")
        play_the_browser(opened)
        terminal.wait_for(f"Signed in to Cloud gateway as {ADA}")
        terminal.choose("Yes, continue")
        terminal.wait_for("Connected to Cloud gateway")
    finally:
        terminal.close()


def prompt(terminal: Terminal, text: str, *expected: str, timeout: float = 90) -> str:
    """Type `text`, press Enter, and wait for the first of `expected` on the screen."""
    terminal.keys(text, "Enter")
    return terminal.wait_for(*expected, timeout=timeout)


def turn(terminal: Terminal, text: str, timeout: float = 90) -> str:
    """One prompt and its finished reply (or refusal); the screen after it."""
    replies = terminal.screen().count("● ")
    terminal.keys(text, "Enter")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = terminal.screen()
        if screen.count("● ") > replies and "esc to interrupt" not in screen:
            return screen
        time.sleep(0.25)
    raise AssertionError(f"no reply to {text!r}; the screen shows:\n{terminal.screen()}")


def audit_rows_until(stack: LocalStack, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The audit rows, once one is `wanted` (the writer flushes in the background)."""
    deadline = time.monotonic() + 10
    while True:
        rows = stack.rows(1)
        if any(wanted(row) for row in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def shim_usage(env: dict[str, str]) -> str:
    done = subprocess.run([str(SHIM), "usage"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_signed_in_claude_code_takes_group_settings_shows_the_budget_notice_and_the_billing_error(
    budget_stack: BudgetStack, shim: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the interactive session cannot be driven")
    binary = claude_code.install()
    shim_url, shim_env = shim
    home, work = claude_home_for_gateway_sign_in(tmp_path, shim_env)
    sign_in_with_login(binary, shim_url, home, work, tmp_path)
    upstream = budget_stack.upstream
    notice = re.compile(r"You've used (\d+)% of your usage credits · resets")

    # A new session, as the person starts one after signing in: it reads the group's settings from the gateway.
    terminal = Terminal([str(binary)], claude_env(home, TERM="xterm-256color"), work)
    try:
        terminal.wait_for("shift+tab")
        # enforceAvailableModels: the default is the allowed model, not Claude Code's own default (Opus 5.5).
        terminal.wait_for("Sonnet 5.5 · Cloud gateway", timeout=30)
        refused_model = prompt(terminal, "/model opus", "restricted", "not available", "allowed", timeout=30)
        refused_model_screen = terminal.screen()

        first = turn(terminal, "SPEND on this one")
        usage_after_first = shim_usage(shim_env)
        second = turn(terminal, "a small one")
        third = turn(terminal, "SPEND again")
        upstream_calls = len(upstream.requests)
        at_cap = turn(terminal, "one more")
        refused_calls = len(upstream.requests) - upstream_calls
        usage_at_cap = shim_usage(shim_env)
    finally:
        terminal.close()

    # (a) The group's managed settings came from the gateway and took effect.
    rows = audit_rows_until(budget_stack.local, lambda row: row["status_code"] == 429)
    settings_rows = [row for row in rows if row["path"] == "/managed/settings"]
    assert settings_rows and {(row["user_email"], row["status_code"]) for row in settings_rows} == {(ADA, 200)}
    assert refused_model == "not available", refused_model_screen
    assert "Model 'opus' is not available. Your organization restricts model selection." in refused_model_screen
    messages = [row for row in rows if row["path"] == "/v1/messages"]
    assert messages and {row["requested_model"] for row in messages} == {ALLOWED}
    assert {row["user_email"] for row in rows} == {ADA}

    # (b) The 75 % notice: the first SPEND's reply left before it was charged; the next reply carries 80 %.
    assert not notice.search(first), first
    shown = notice.search(second)
    assert shown and shown.group(1) == "80", second
    assert re.search(r"^daily +80% +\$0\.08 +\$0\.10 +\$0\.02 ", usage_after_first, re.M), usage_after_first
    assert "Priced reply." in third

    # (c) At the cap: the gateway's billing_error message, and the upstream never asked.
    flat = " ".join(at_cap.split())
    assert f"Daily budget of $0.10 used up for {ADA} (rule group:contractors@example.com)" in flat, at_cap
    assert "to raise it, ask in #claude-admins." in flat
    assert refused_calls == 0
    [refusal] = [row for row in rows if row["status_code"] == 429]
    assert refusal["error_type"] == "billing_error" and refusal["outcome"] == "rate_limited"
    assert re.search(r"^daily +160% +\$0\.16 +\$0\.10 +\$0\.00 ", usage_at_cap, re.M), usage_at_cap
    assert "The daily budget is used up" in usage_at_cap
