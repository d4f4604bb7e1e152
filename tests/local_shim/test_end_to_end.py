"""Shim → local IAP (checking the shim's Google ID token) → the real gateway → mock Anthropic, all under uvicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anthropic
import pytest

from tests.local_shim.conftest import CLIENT_ID, CLIENT_SECRET, MODEL, LocalStack, run_shim, shim_settings, sign_in

pytestmark = pytest.mark.slow

SECRET = "e2e-local-secret"


def test_sdk_streams_through_shim_iap_and_gateway_and_the_audit_names_the_user(
    local_stack: LocalStack, config_dir: Path
) -> None:
    sign_in(local_stack.google, config_dir, "ada@example.com")
    settings = shim_settings(gateway_url=local_stack.iap_url, token_endpoint=f"{local_stack.google_url}/token")

    with (
        run_shim(settings, secret=SECRET) as shim_url,
        anthropic.Anthropic(base_url=shim_url, auth_token=SECRET, max_retries=0) as client,
        client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=[{"role": "user", "content": "through the shim"}],
            extra_headers={"x-claude-code-session-id": "shim-session"},
        ) as stream,
    ):
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(pieces).startswith("Hello from the mock upstream")
    assert len(pieces) == 6 and final.usage.output_tokens == 6
    assert local_stack.identified == ["ada@example.com"]
    [row] = local_stack.rows(1)
    assert row["user_email"] == "ada@example.com"
    assert row["outcome"] == "ok"
    assert row["session_id"] == "shim-session"


def test_claude_shim_run_carries_a_python_sdk_child_through_the_stack(local_stack: LocalStack, tmp_path: Path) -> None:
    """The issue's "done when": `claude-shim run -- python -c '<anthropic SDK streaming call>'`."""
    config = tmp_path / "shim-config"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps(
            {
                "gateway_url": local_stack.iap_url,
                "oauth_client_id": CLIENT_ID,
                "oauth_client_secret": CLIENT_SECRET,
                "token_endpoint": f"{local_stack.google_url}/token",
                "token_store": "file",
            }
        )
    )
    sign_in(local_stack.google, config, "grace@example.com", mode="file")
    child = textwrap.dedent(
        f"""
        import anthropic
        client = anthropic.Anthropic(max_retries=0)  # ANTHROPIC_BASE_URL and ANTHROPIC_AUTH_TOKEN from the shim
        with client.messages.stream(
            model={MODEL!r}, max_tokens=64, messages=[{{"role": "user", "content": "from a child"}}]
        ) as stream:
            for text in stream.text_stream:
                print(text, end="", flush=True)
        """
    )
    env = {
        **os.environ,
        "CLAUDE_SHIM_CONFIG_DIR": str(config),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",  # never a developer's real keychain
    }
    shim = Path(sys.executable).with_name("claude-shim")

    done = subprocess.run(
        [str(shim), "run", "--", sys.executable, "-c", child],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from the mock upstream, relayed "  # six streamed pieces, nothing else
    assert done.stderr == ""
    [row] = local_stack.rows(1)
    assert row["user_email"] == "grace@example.com"
    assert "ANTHROPIC_AUTH_TOKEN" not in (config / "claude-shim.log").read_text()
