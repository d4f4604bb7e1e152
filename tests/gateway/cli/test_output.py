"""What `claude-gateway` prints is safe whatever callers sent: a model string or path holding line breaks and
terminal escapes shows escaped, on one line, in `audit tail`, `summary` and `export` of a real audit file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.logs import configure_logging
from gateway.terminal import escape, escape_text, field
from tests.gateway.conftest import Stack
from tests.support.anthropic_sse import JSON_HEADERS
from tests.support.servers import Reply

CLI = [sys.executable, "-m", "gateway.cli"]
FORGED = "2026-01-01T00:00:00Z  admin@example.com        POST /v1/messages  200 ok"
# A model string that, printed raw, would clear the admin's screen and draw a line of its own.
EVIL_MODEL = "claude-x\x1b[2J\x1b[31m\u202e\r\n" + FORGED
SHOWN = "claude-x\\u001b[2J\\u001b[31m\\u202e\\r\\n2026-01-01T00:00:00Z"


def claude_gateway(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def audit_a_hostile_request(stack: Stack) -> dict[str, object]:
    # Anthropic refuses a model it does not know; the row keeps what the caller asked for.
    error = {"type": "error", "error": {"type": "not_found_error", "message": "model: not found"}}
    stack.upstream.reply = lambda seen: Reply(404, JSON_HEADERS, [orjson.dumps(error)])
    body = {"model": EVIL_MODEL, "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"content-type": "application/json", **stack.headers("ada@example.com")}
    httpx.post(stack.url + "/v1/messages", content=orjson.dumps(body), headers=headers, timeout=20)
    (row,) = stack.rows()
    return row


def assert_safe(output: str) -> None:
    assert "\x1b" not in output and "\r" not in output and "\u202e" not in output
    assert not any(line.startswith(FORGED) for line in output.splitlines())


def test_audit_tail_shows_a_hostile_model_string_escaped_on_one_line(stack: Stack) -> None:
    row = audit_a_hostile_request(stack)
    assert row["requested_model"] == EVIL_MODEL  # stored as sent: the audit keeps the truth

    tail = claude_gateway("audit", "tail", "--db", str(stack.audit_db))
    assert tail.returncode == 0, tail.stderr
    assert_safe(tail.stdout)
    (line,) = tail.stdout.splitlines()
    assert SHOWN in line
    assert line.endswith(str(row["request_id"]))


def test_audit_summary_by_model_shows_it_escaped_and_cut(stack: Stack) -> None:
    audit_a_hostile_request(stack)

    summary = claude_gateway("audit", "summary", "--by", "model", "--db", str(stack.audit_db))
    assert summary.returncode == 0, summary.stderr
    assert_safe(summary.stdout)
    header, line = summary.stdout.splitlines()
    assert header.startswith("model") and line.startswith(SHOWN)
    assert "..." in line  # cut: a caller's string cannot fill the admin's screen


def test_json_outputs_stay_json_and_mean_the_same(stack: Stack, tmp_path: Path) -> None:
    row = audit_a_hostile_request(stack)

    tail = claude_gateway("audit", "tail", "--json", "--db", str(stack.audit_db))
    assert_safe(tail.stdout)
    assert json.loads(tail.stdout)["requested_model"] == EVIL_MODEL

    day = str(row["timestamp"])[:10]
    export_args = f"audit export --user ada@example.com --from {day} --to {day}".split()
    export_args += ["--sink", f"sqlite:///{stack.audit_db}"]
    export = claude_gateway(*export_args)
    assert export.returncode == 0, export.stderr
    assert_safe(export.stdout)
    (line,) = export.stdout.splitlines()
    assert json.loads(line)["requested_model"] == EVIL_MODEL  # escaped for the terminal, lossless as JSON

    out = tmp_path / "ada.jsonl"
    assert claude_gateway(*export_args, "--out", str(out)).returncode == 0
    assert_safe(out.read_text(encoding="utf-8"))
    assert json.loads(out.read_text(encoding="utf-8"))["requested_model"] == EVIL_MODEL


def test_cli_errors_are_escaped_too(tmp_path: Path) -> None:
    missing = tmp_path / "no\x1b[2Jsuch\n.db"
    result = claude_gateway("audit", "tail", "--db", str(missing))
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_escape_covers_c0_c1_del_bidi_and_invisible_characters() -> None:
    hostile = "a\x00b\x07c\x1b[2Jd\x7fe\x85f\x9bg\u200bh\u202ei\u2066j\u2028k\ufeffl\n\r\t"
    assert escape(hostile) == (
        "a\\u0000b\\u0007c\\u001b[2Jd\\u007fe\\u0085f\\u009bg\\u200bh\\u202ei\\u2066j\\u2028k\\ufeffl\\n\\r\\t"
    )
    assert escape_text("two\nlines\x1b") == "two\nlines\\u001b"
    assert escape("plain ASCII, accents é and emoji 🙂 stay") == "plain ASCII, accents é and emoji 🙂 stay"
    assert json.loads('"' + escape("\u202e\x85") + '"') == "\u202e\x85"


def test_field_cuts_long_values_and_shows_none_as_a_dash() -> None:
    assert field("m" * 500, 20) == "m" * 17 + "..."
    assert field("short", 20) == "short"
    assert field(None) == "-" and field(42) == "42"
    assert field("x\ny", 20) == "x\\ny"


def test_plain_logs_on_a_laptop_escape_what_callers_chose(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("INFO", structured=False)
        logging.getLogger("gateway.access").info("%s %s %s", "POST", "/v1/x\n12:00:00 INFO forged\x1b[2J", 404)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("POST /v1/x\\n12:00:00 INFO forged\\u001b[2J 404")
