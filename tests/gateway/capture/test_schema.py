"""The content table's schema is the one source for the row the pipeline builds, SQLite and the docs."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from gateway.audit.sqlite import connect
from gateway.capture.assemble import ResponseAssembler
from gateway.capture.levels import CaptureLevel
from gateway.capture.redact import Redactor
from gateway.capture.rows import CaptureJob, content_row
from gateway.capture.schema import CONTENT_COLUMN_NAMES, CONTENT_TABLE, default_content_sink


def test_the_pipeline_builds_rows_with_exactly_the_content_columns() -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    for level, assembler in ((CaptureLevel.METADATA, None), (CaptureLevel.FULL, ResponseAssembler(4096))):
        job = CaptureJob("req-1", datetime.now(UTC), "ada@example.com", level, body, assembler)
        assert list(content_row(job, Redactor(), 4096)) == list(CONTENT_COLUMN_NAMES)


def test_sqlite_content_table_has_the_schema_columns(tmp_path: Path) -> None:
    connection = connect(str(tmp_path / "audit.db"), CONTENT_TABLE)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(audit_content)")]
    connection.close()
    assert columns == list(CONTENT_COLUMN_NAMES)


def test_an_older_content_table_gains_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE audit_content (request_id TEXT PRIMARY KEY, timestamp TEXT)")
    connection = connect(str(path), CONTENT_TABLE)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(audit_content)")]
    connection.close()
    assert columns == list(CONTENT_COLUMN_NAMES)


def test_content_goes_beside_the_audit_sink_by_default() -> None:
    assert default_content_sink("sqlite:///audit.db") == "sqlite:///audit.db"
    assert default_content_sink("bigquery://p-1/claude_gateway/requests") == (
        "bigquery://p-1/claude_gateway_content/audit_content"
    )


def test_the_security_teams_guide_explains_every_content_column() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "security-teams.md").read_text()
    documented = guide.split("### The content table", 1)[1]
    missing = [name for name in CONTENT_COLUMN_NAMES if f"`{name}`" not in documented.split("### Redaction")[0]]
    assert missing == []
