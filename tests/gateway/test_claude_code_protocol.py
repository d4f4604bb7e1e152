"""The real Claude Code CLI through a real gateway: its OpenTelemetry lands in the telemetry table with the verified
email (OTLP over http/protobuf and http/json), and a spent budget shows the gateway's billing_error message."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gateway.conftest import Stack, StackFactory
from tests.gateway.test_claude_code import assertion_header, claude, usage_reply
from tests.support import claude_code
from tests.support.anthropic_sse import SSE_HEADERS, event
from tests.support.servers import Reply, Seen

pytestmark = pytest.mark.slow
__all__ = ["claude"]  # the fixture, shared with the other Claude Code tests

ADA = "ada@example.com"


def run(
    claude: Path, home: Path, stack: Stack, prompt: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(claude), "-p", prompt, *args, "--output-format", "json"],
        cwd=work,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=claude_code.environment(
            home, stack.url, ANTHROPIC_AUTH_TOKEN="unused", ANTHROPIC_CUSTOM_HEADERS=assertion_header(stack), **env
        ),
    )


def telemetry_rows(db: Path, *, want: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = []
        if db.exists():
            with sqlite3.connect(db) as connection:
                connection.row_factory = sqlite3.Row
                try:
                    rows = [dict(row) for row in connection.execute("SELECT * FROM telemetry")]
                except sqlite3.OperationalError:
                    rows = []
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_claude_code_telemetry_lands_in_the_telemetry_table_with_the_verified_email(
    claude: Path, make_stack: StackFactory, tmp_path: Path, protocol: str
) -> None:
    with make_stack() as stack:
        stack.upstream.reply = usage_reply(
            {"input_tokens": 1200, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 20}
        )
        assertion = stack.assertion(ADA)
        done = run(
            claude,
            tmp_path / "home",
            stack,
            "say hello",
            CLAUDE_CODE_ENABLE_TELEMETRY="1",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_LOGS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_ENDPOINT=stack.url,
            # The exporter's own headers: the same signed IAP assertion the requests carry.
            OTEL_EXPORTER_OTLP_HEADERS=f"x-goog-iap-jwt-assertion={assertion}",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            OTEL_LOGS_EXPORT_INTERVAL="200",
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        session = json.loads(done.stdout)["session_id"]
        wanted = {"claude_code.cost.usage", "claude_code.token.usage", "api_request"}
        rows = telemetry_rows(stack.audit_db, want=2)
        deadline = time.monotonic() + 15  # the exports arrived before claude exited; the writer flushes after
        while time.monotonic() < deadline and not wanted <= {row["name"] for row in rows}:
            time.sleep(0.2)
            rows = telemetry_rows(stack.audit_db)
        exports = {row["request_id"] for row in rows}
        # An export's audit row is queued when its response ends, which can be after its telemetry rows landed.
        audit = stack.rows(1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not exports <= {row["request_id"] for row in audit}:
            time.sleep(0.2)
            audit = stack.rows(1)

    assert rows, f"no telemetry arrived; audit paths: {sorted({r['path'] for r in audit})}"
    assert {row["user_email"] for row in rows} == {ADA}
    assert {row["signal"] for row in rows} <= {"metrics", "logs"}
    assert wanted <= {row["name"] for row in rows}
    cost = [row for row in rows if row["name"] == "claude_code.cost.usage"]
    assert cost and all(row["unit"] == "USD" and row["value"] > 0 for row in cost)
    assert {row["session_id"] for row in rows if row["session_id"]} == {session}
    by_id = {row["request_id"]: row for row in audit}
    assert exports <= by_id.keys(), "every telemetry export has its own audit row"
    assert all(by_id[request_id]["path"] in ("/v1/metrics", "/v1/logs") for request_id in exports)
    assert all(json.loads(row["attributes"]) is not None for row in rows)


def test_spent_budget_shows_the_gateways_billing_message_in_claude_code(
    claude: Path, make_stack: StackFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent("""\
        version: 1
        budget_help: "ask in #claude-admins"
        default:
          daily_budget_usd: 0.0001
        members: {}
        """)
    )
    with make_stack(policy_file=str(policy), group_resolver="static") as stack:
        stack.upstream.reply = usage_reply(
            {"input_tokens": 1200, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 20}
        )
        first = run(claude, tmp_path / "home", stack, "say hello")
        stack.rows(1)
        served = len(stack.upstream.requests)
        second = run(claude, tmp_path / "home", stack, "say hello again")
        refused_calls = len(stack.upstream.requests) - served

    assert first.returncode == 0, first.stdout[-2000:]
    assert second.returncode != 0 or json.loads(second.stdout)["is_error"] is True
    shown = second.stdout + second.stderr
    assert f"Daily budget of $0.0001 used up for {ADA}" in shown
    assert "to raise it, ask in #claude-admins" in shown
    assert refused_calls == 0  # refused before proxying


def bash_then_done(seen: Seen) -> Reply:
    """The model asks to run `echo gateway-telemetry` with Bash, then, given the tool's result, says it is done."""
    body = orjson.loads(seen.body)
    ran = any(
        isinstance(m.get("content"), list) and any(c.get("type") == "tool_result" for c in m["content"])
        for m in body["messages"]
    )
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_tool",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 1},
        },
    }
    if ran:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": "Done."}
        stop = "end_turn"
    else:
        block = {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {}}
        command = {"command": "echo gateway-telemetry", "description": "Print a word"}
        delta = {"type": "input_json_delta", "partial_json": orjson.dumps(command).decode()}
        stop = "tool_use"
    events = [
        event("message_start", start),
        event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 20}}
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return Reply(200, SSE_HEADERS, events)


def test_claude_code_tool_decision_and_command_land_per_verified_person(
    claude: Path, make_stack: StackFactory, tmp_path: Path
) -> None:
    with make_stack() as stack:
        stack.upstream.reply = bash_then_done
        done = run(
            claude,
            tmp_path / "home",
            stack,
            "run echo",
            "--allowedTools",
            "Bash(echo:*)",
            CLAUDE_CODE_ENABLE_TELEMETRY="1",
            OTEL_LOGS_EXPORTER="otlp",
            OTEL_LOG_TOOL_DETAILS="1",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_ENDPOINT=stack.url,
            OTEL_EXPORTER_OTLP_HEADERS=f"x-goog-iap-jwt-assertion={stack.assertion(ADA)}",
            OTEL_LOGS_EXPORT_INTERVAL="200",
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert json.loads(done.stdout)["result"] == "Done."
        rows = telemetry_rows(stack.audit_db, want=1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not {"tool_decision", "tool_result"} <= {r["name"] for r in rows}:
            time.sleep(0.2)
            rows = telemetry_rows(stack.audit_db)

    tools = {row["name"]: row for row in rows if row["name"] in ("tool_decision", "tool_result")}
    assert set(tools) == {"tool_decision", "tool_result"}
    decision = json.loads(tools["tool_decision"]["attributes"])
    assert (decision["tool_name"], decision["decision"], decision["source"]) == ("Bash", "accept", "config")
    assert json.loads(decision["tool_parameters"])["full_command"] == "echo gateway-telemetry"
    assert {row["user_email"] for row in tools.values()} == {ADA}
