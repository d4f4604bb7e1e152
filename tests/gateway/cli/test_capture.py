"""The command line around prompt capture: `audit export`, `audit replay --content`, `bq schema --content`,
`policy explain` and `policy validate` with the `capture` key, and start-up refusals."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit.schema import AUDIT_COLUMNS
from gateway.capture.schema import content_schema_json
from gateway.cli import main
from gateway.policy.loader import PolicyFileError, parse_policy
from tests.gateway.capture.test_pipeline import (
    AWS_KEY_ID,
    BOTH_USER,
    FULL_USER,
    META_USER,
    NONE_USER,
    PROMPT,
    content_rows,
    messages_body,
    mixed_stream,
    post,
    table_rows,
    write_policy,
)
from tests.gateway.conftest import StackFactory
from tests.support.anthropic_sse import SSE_HEADERS, stream_events
from tests.support.servers import Reply

TODAY = datetime.now(UTC).date()


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["audit", "export", *args])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_export_gives_a_persons_rows_and_content_as_json_lines(
    make_stack: StackFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with make_stack(policy_file=write_policy(tmp_path), group_resolver="static", audit_flush_ms=20) as stack:
        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, mixed_stream())
        ids = [
            post(stack, email, messages_body()).headers["x-gateway-request-id"]
            for email in (FULL_USER, META_USER, FULL_USER, NONE_USER)
        ]
        content_rows(stack, 3)
        stack.rows(4)
    sink = f"sqlite:///{stack.audit_db}"
    day = TODAY.isoformat()

    code, lines, note = export(
        capsys, "--user", FULL_USER.upper(), "--from", day, "--to", day, "--sink", sink, "--content"
    )
    out = tmp_path / "ada.jsonl"
    plain_code = main(
        ["audit", "export", "--user", FULL_USER, "--from", day, "--to", day, "--sink", sink, "--out", str(out)]
    )
    plain = [json.loads(line) for line in out.read_text().splitlines()]
    _, yesterday, _ = export(
        capsys,
        "--user",
        FULL_USER,
        "--from",
        "2020-01-01",
        "--to",
        (TODAY - timedelta(days=1)).isoformat(),
        "--sink",
        sink,
        "--content",
    )
    _, unseen, _ = export(capsys, "--user", NONE_USER, "--from", day, "--to", day, "--sink", sink, "--content")

    assert code == 0 and plain_code == 0
    assert [line["request_id"] for line in lines] == [ids[0], ids[2]]
    assert all(line["user_email"] == FULL_USER and line["groups"] == ["compliance@example.com"] for line in lines)
    first = lines[0]["content"]
    assert first["capture_level"] == "full" and first["request_id"] == ids[0]
    assert first["request"]["messages"][0]["content"] == PROMPT.replace(AWS_KEY_ID, "[REDACTED:aws_access_key_id]")
    assert first["response"]["content"][2]["input"] == {"command": "ls ledger/"}
    assert first["redactions"] == {"anthropic_api_key": 1, "aws_access_key_id": 1}
    assert first["tools_offered"] == [] and first["has_images"] is False  # lists and booleans, as from BigQuery
    assert f"{FULL_USER}: 2 requests from {day} to {day} (UTC), 2 with captured content" in note
    assert [line["request_id"] for line in plain] == [ids[0], ids[2]] and "content" not in plain[0]
    assert yesterday == []
    assert [line["request_id"] for line in unseen] == [ids[3]] and unseen[0]["content"] is None


def test_export_refuses_bad_dates_and_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sink = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["audit", "export", "--user", "ada", "--from", "2026-01-01", "--to", "2026-01-02"]) == 2
    assert main(["audit", "export", "--user", FULL_USER, "--from", "2026-13-01", "--to", "2026-01-02"]) == 2
    assert main(["audit", "export", "--user", FULL_USER, "--from", "2026-01-02", "--to", "2026-01-01"]) == 2
    assert (
        main(["audit", "export", "--user", FULL_USER, "--from", "2026-01-01", "--to", "2026-01-01", "--sink", sink])
        == 2
    )
    errors = capsys.readouterr().err
    assert "'ada' is not an email address" in errors
    assert "--from and --to take dates as YYYY-MM-DD" in errors
    assert "--to 2026-01-01 is before --from 2026-01-02" in errors
    assert "no audit file at" in errors


def old_audit_file(path: Path) -> None:
    """An audit file as the gateway wrote it before capture existed: no capture columns, no content table."""
    old = [
        column for column in AUDIT_COLUMNS if column.name not in ("capture_level", "capture_error", "redaction_count")
    ]
    types = {"STRING": "TEXT", "TIMESTAMP": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "BOOL": "INTEGER"}
    columns = ", ".join(f"{c.name} {'TEXT' if c.mode == 'REPEATED' else types[c.type]}" for c in old)
    with sqlite3.connect(path) as connection:
        connection.execute(f"CREATE TABLE audit_log ({columns})")
        connection.execute(
            "INSERT INTO audit_log (request_id, timestamp, method, path, status_code, outcome, user_email, groups) "
            "VALUES ('old-1', '2026-01-05T10:00:00.000000Z', 'POST', '/v1/messages', 200, 'ok', ?, '[]')",
            (FULL_USER,),
        )


def test_an_audit_file_from_before_capture_gains_the_columns(
    make_stack: StackFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_audit_file(tmp_path / "audit.db")  # the file make_stack's gateway writes to

    with make_stack(policy_file=write_policy(tmp_path), group_resolver="static", audit_flush_ms=20) as stack:
        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["ok"]))
        assert post(stack, FULL_USER, messages_body()).status_code == 200
        rows = stack.rows(2)
        content_rows(stack)

    old, new = rows
    assert old["request_id"] == "old-1" and old["capture_level"] is None
    assert new["capture_level"] == "full" and new["redaction_count"] == 1
    assert main(["audit", "tail", "--db", str(stack.audit_db)]) == 0
    assert "old-1" in capsys.readouterr().out


def test_an_old_audit_file_exports_without_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "old.db"
    old_audit_file(db)

    code, lines, _ = export(
        capsys,
        "--user",
        FULL_USER,
        "--from",
        "2026-01-05",
        "--to",
        "2026-01-05",
        "--sink",
        f"sqlite:///{db}",
        "--content",
    )

    assert code == 0 and [line["request_id"] for line in lines] == ["old-1"] and lines[0]["content"] is None


def test_replay_content_sends_fallback_entries_to_the_content_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "audit.db"
    row = {
        "request_id": "req-c1",
        "timestamp": "2026-01-05T10:00:00.000000Z",
        "user_email": FULL_USER,
        "capture_level": "full",
        "request": '{"messages": []}',
        "tools_offered": ["Bash"],
        "message_count": 1.0,
        "redaction_count": 0.0,
    }
    log = tmp_path / "fallback.json"  # as `gcloud logging read --format=json` prints it
    log.write_bytes(
        orjson.dumps(
            [
                {"jsonPayload": {"message": "audit_content_fallback", "audit_content_fallback": row, "reason": "x"}},
                {"jsonPayload": {"message": "audit_fallback", "audit_fallback": {"request_id": "meta-only"}}},
            ]
        )
    )

    code = main(["audit", "replay", str(log), "--content", "--sink", f"sqlite:///{db}"])

    assert code == 0
    assert "1 rows, 1 requests (1 other lines); 1 written" in capsys.readouterr().out  # the metadata entry is not
    (stored,) = table_rows(db, "audit_content")
    assert stored["request_id"] == "req-c1" and stored["message_count"] == 1  # a whole number again
    assert json.loads(stored["tools_offered"]) == ["Bash"]


def test_bq_schema_prints_the_content_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bq", "schema", "--content"]) == 0
    assert json.loads(capsys.readouterr().out) == content_schema_json()


def test_policy_explain_shows_the_capture_level_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, users={"barbara@example.com": {"capture": "metadata+"}})

    def explain(email: str) -> str:
        assert main(["policy", "explain", email, "--policy", policy, "--resolver", "static"]) == 0
        return capsys.readouterr().out

    assert "capture: full (prompts and responses are kept, redacted, in the content table)" in explain(FULL_USER)
    assert "capture: none (no prompt or response text is kept)" in explain(NONE_USER)
    assert "no rule asks for capture" in explain(NONE_USER)
    override = explain(BOTH_USER)
    assert "capture: metadata+" in override and "user:barbara@example.com override" in override
    assert main(["policy", "validate", policy]) == 0
    assert "prompt capture in 3 rules" in capsys.readouterr().out


def test_the_most_capture_wins_and_policy_explain_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path)

    assert main(["policy", "explain", BOTH_USER, "--policy", policy, "--resolver", "static"]) == 0

    out = capsys.readouterr().out
    assert "capture: full" in out
    assert (
        "group:compliance@example.com, the most capture of full from group:compliance@example.com, "
        "none from group:eng@example.com"
    ) in out


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "off",
            "capture in the rule for group eng@example.com must be one of none, metadata+, full, not off "
            "(YAML reads 'off' as False; write none)",
        ),
        ("everything", "must be one of none, metadata+, full, not 'everything'"),
        ("", "must be one of none, metadata+, full, not nothing"),
        ("[full]", "must be one of none, metadata+, full, not a list"),
        ("FULL", "not 'FULL'"),
    ],
)
def test_a_bad_capture_value_is_refused_with_its_line(value: str, reason: str) -> None:
    text = f"groups:\n  eng@example.com:\n    models: [claude-*]\n    capture: {value}\n"

    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, "policy.yaml")

    (error,) = caught.value.errors
    assert error.startswith("policy.yaml:4:") and reason in error


def test_a_typo_in_the_capture_key_is_refused_with_a_suggestion() -> None:
    with pytest.raises(PolicyFileError, match=r"policy.yaml:3:5: unknown key 'captur'.*did you mean 'capture'"):
        parse_policy("groups:\n  eng@example.com:\n    captur: full\n", "policy.yaml")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"employee": "EMP-("}', "redaction pattern 'employee' is not a valid regular expression"),
        ('{"every": ".*"}', "redaction pattern 'every' matches the empty string"),
        ("{not json", "GATEWAY_REDACTION_PATTERNS is not valid JSON"),
        ("/nowhere/patterns.yaml", "GATEWAY_REDACTION_PATTERNS: cannot read /nowhere/patterns.yaml"),
    ],
)
def test_a_bad_redaction_pattern_stops_the_gateway_at_start_up(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_DEV_MODE", "1")
    monkeypatch.setenv("GATEWAY_REDACTION_PATTERNS", value)

    assert main(["serve", "--port", "1"]) == 2

    assert message in capsys.readouterr().err


def test_capture_settings_are_bounded(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_DEV_MODE", "1")
    monkeypatch.setenv("GATEWAY_CAPTURE_MAX_BYTES", str(64 * 1024 * 1024))
    monkeypatch.setenv("GATEWAY_CONTENT_SINK", "bigquery://p/d")

    assert main(["serve", "--port", "1"]) == 2

    errors = capsys.readouterr().err
    assert "capture_max_bytes" in errors and "GATEWAY_CONTENT_SINK='bigquery://p/d'" in errors


def test_operator_patterns_from_a_file_redact_captures(make_stack: StackFactory, tmp_path: Path) -> None:
    patterns = tmp_path / "patterns.yaml"
    patterns.write_text("- name: employee_id\n  pattern: 'EMP-[0-9]{6}'\n")
    with make_stack(
        policy_file=write_policy(tmp_path), group_resolver="static", audit_flush_ms=20, redaction_patterns=str(patterns)
    ) as stack:
        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["Hi EMP-", "123456"]))
        response = post(stack, FULL_USER, messages_body("Look up EMP-004211 please"))
        (content,) = content_rows(stack)

    assert '"Hi EMP-"' in response.text and '"123456"' in response.text  # the client's stream is untouched
    assert json.loads(content["redactions"]) == {"employee_id": 2}
    assert "EMP-004211" not in content["request"] and "[REDACTED:employee_id]" in content["request"]
    # Split across two deltas, and still found: redaction runs on the assembled text.
    assert json.loads(content["response"])["content"][0]["text"] == "Hi [REDACTED:employee_id]"
