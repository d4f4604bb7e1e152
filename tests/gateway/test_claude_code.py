"""The real Claude Code CLI (from npm, at the pinned version) through the gateway: the reply, the audit row, and a
cost that agrees with the one Claude Code itself computes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.conftest import Stack, StackFactory
from tests.support import claude_code
from tests.support.anthropic_sse import SSE_HEADERS, event
from tests.support.audit import wait_for_rows
from tests.support.servers import Reply, Seen

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def claude() -> Path:
    return claude_code.install()


def run_claude(claude: Path, home: Path, base_url: str, *args: str, **env: str) -> dict[str, Any]:
    """`claude -p ... --output-format json`, in an empty working folder; its JSON result."""
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(claude), "-p", *args, "--output-format", "json"],
        cwd=work,
        env=claude_code.environment(home, base_url, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"claude exited {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def dev_gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`claude-gateway dev` (local IAP stand-in, mock upstream) as a real process, signing in as ada."""
    port, db = free_port(), tmp_path / "audit.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "dev",
            "--port",
            str(port),
            "--mock",
            "--no-demo",
            "--audit-db",
            str(db),
            "--user",
            "ada@example.com",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "claude-gateway dev did not start"
            time.sleep(0.1)
        yield base, db
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_claude_code_print_mode_is_served_and_audited_with_its_session_and_cost(
    claude: Path, dev_gateway: tuple[str, Path], tmp_path: Path
) -> None:
    base, db = dev_gateway

    result = run_claude(claude, tmp_path / "home", base, "say hello", ANTHROPIC_AUTH_TOKEN="dev")

    assert result["is_error"] is False
    assert "Hello from the mock upstream" in result["result"]
    [row] = [r for r in wait_for_rows(db, 1) if r["path"] == "/v1/messages"]
    assert row["user_email"] == "ada@example.com"
    assert row["session_id"] == result["session_id"]
    assert row["user_agent"].startswith(f"claude-cli/{claude_code.pinned_version()} ")
    assert row["requested_model"] == row["served_model"] == "claude-opus-5-5"  # Claude Code's default model
    assert (row["status_code"], row["outcome"], row["price_rule"]) == (200, "ok", "list")
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert row["cost_usd"] == pytest.approx(result["total_cost_usd"], abs=1e-9)


def usage_reply(usage: dict[str, Any]) -> Any:
    """A fake upstream that answers every Messages request as the model asked for, with `usage`."""

    def reply(seen: Seen) -> Reply:
        if not seen.path.startswith("/v1/messages") or seen.path.endswith("count_tokens"):
            return Reply(
                404,
                [("content-type", "application/json")],
                [b'{"type":"error","error":{"type":"not_found_error","message":"no"}}'],
            )
        model = orjson.loads(seen.body)["model"]
        start_usage = {key: value for key, value in usage.items() if key != "output_tokens"} | {"output_tokens": 1}
        events = [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_cost_01",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
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
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Priced."}},
            ),
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}),
            event("message_stop", {"type": "message_stop"}),
        ]
        return Reply(200, SSE_HEADERS, events)

    return reply


def cache(five_minute: int, one_hour: int) -> dict[str, Any]:
    return {
        "cache_creation_input_tokens": five_minute + one_hour,
        "cache_creation": {"ephemeral_5m_input_tokens": five_minute, "ephemeral_1h_input_tokens": one_hour},
    }


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        pytest.param(
            "claude-opus-5-5",
            {"input_tokens": 1200, **cache(1000, 2000), "cache_read_input_tokens": 50_000, "output_tokens": 321},
            id="opus-5-5-cache-writes-by-ttl",
        ),
        pytest.param(
            "claude-sonnet-5-5",
            {
                "input_tokens": 900,
                "cache_read_input_tokens": 0,
                **cache(0, 0),
                "output_tokens": 77,
                "inference_geo": "us",
                "server_tool_use": {"web_search_requests": 3},
            },
            id="sonnet-5-5-us-inference-and-web-search",
        ),
        pytest.param(
            "claude-haiku-5-5",
            {"input_tokens": 60_000, "cache_read_input_tokens": 40_000, **cache(1, 0), "output_tokens": 500},
            id="haiku-5-5-long-prompt-tier",
        ),
        pytest.param(
            "claude-haiku-5-5",
            {"input_tokens": 60_000, "cache_read_input_tokens": 40_000, **cache(0, 0), "output_tokens": 500},
            id="haiku-5-5-at-the-tier-boundary",
        ),
        pytest.param(
            "claude-fable-5-2",
            {"input_tokens": 3000, "cache_read_input_tokens": 10_000, **cache(500, 0), "output_tokens": 1000},
            id="fable-5-2",
        ),
        pytest.param(
            "claude-opus-4-6",
            {"input_tokens": 3000, "cache_read_input_tokens": 0, **cache(0, 4000), "output_tokens": 800},
            id="opus-4-6-from-the-gap-table",
        ),
        pytest.param(
            "claude-opus-5-5",
            {
                "input_tokens": 3000,
                "cache_read_input_tokens": 1000,
                **cache(200, 0),
                "output_tokens": 800,
                "speed": "fast",
            },
            id="opus-5-5-fast-mode",
        ),
        pytest.param(
            "claude-opus-4-6",
            {
                "input_tokens": 3000,
                "cache_read_input_tokens": 1000,
                **cache(0, 0),
                "output_tokens": 800,
                "speed": "fast",
            },
            id="opus-4-6-fast-mode-gap-table",
        ),
    ],
)
def test_gateway_and_claude_code_agree_on_what_a_request_cost(
    claude: Path, make_stack: StackFactory, tmp_path: Path, model: str, usage: dict[str, Any]
) -> None:
    with make_stack() as stack:
        stack.upstream.reply = usage_reply(usage)
        result = run_claude(
            claude,
            tmp_path / "home",
            stack.url,
            "price this",
            "--model",
            model,
            ANTHROPIC_AUTH_TOKEN="unused",
            ANTHROPIC_CUSTOM_HEADERS=assertion_header(stack),
        )
        rows = [r for r in stack.rows(1) if r["path"] == "/v1/messages"]

    assert result["is_error"] is False
    assert {row["requested_model"] for row in rows} == {model}
    assert all(row["price_rule"] == "list" for row in rows)
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(result["total_cost_usd"], abs=1e-9)


def assertion_header(stack: Stack) -> str:
    # Claude Code adds these headers to every request: here, a real ES256 assertion as IAP would sign it.
    return f"x-goog-iap-jwt-assertion: {stack.assertion('ada@example.com')}"
