"""Captured content in BigQuery (the bqemulator subprocess): rows keyed to the metadata rows, the export command
reading both tables, and content that cannot be written logged apart from metadata."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.bq_admin import content_table
from gateway.audit.bigquery import TableRef
from gateway.audit.record import rfc3339
from gateway.audit.sinks import SinkConfigError
from gateway.audit.writer import AuditWriter
from gateway.capture.sink import content_writer
from gateway.cli import main
from gateway.config import Settings
from tests.gateway.audit.test_bigquery_sink import sink_settings, table_rows
from tests.gateway.capture.test_pipeline import (
    ANTHROPIC_KEY,
    AWS_KEY_ID,
    FULL_USER,
    NONE_USER,
    messages_body,
    mixed_stream,
    post,
    write_policy,
)
from tests.gateway.conftest import StackFactory
from tests.support.anthropic_sse import SSE_HEADERS
from tests.support.bqemulator import Emulator, Relay, shared_emulator
from tests.support.servers import Reply

pytestmark = pytest.mark.slow


@pytest.fixture
def emulator() -> Emulator:
    return shared_emulator()


def new_content_table(emulator: Emulator) -> TableRef:
    """A content table in a dataset of its own, laid out as `bq init` and Terraform make it."""
    table = TableRef(emulator.project, f"c_{uuid.uuid4().hex[:12]}", "audit_content")
    client = emulator.client()
    client.create_dataset(f"{table.project}.{table.dataset}")
    client.create_table(content_table(table))
    client.close()
    return table


def test_content_rows_land_in_bigquery_keyed_to_the_metadata_rows_and_export_reads_both(
    emulator: Emulator,
    make_stack: StackFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table, content = emulator.new_table(), new_content_table(emulator)
    settings = sink_settings(
        table,
        emulator.url,
        tmp_path,
        content_sink=content.url,
        policy_file=write_policy(tmp_path),
        group_resolver="static",
    )
    with make_stack(**settings) as stack:
        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, mixed_stream())
        captured = post(stack, FULL_USER, messages_body()).headers["x-gateway-request-id"]
        uncaptured = post(stack, NONE_USER, messages_body()).headers["x-gateway-request-id"]
        metadata = {row["request_id"]: row for row in table_rows(emulator, table, 2)}
        (row,) = table_rows(emulator, content, 1)

    assert row["request_id"] == captured and row["timestamp"] == metadata[captured]["timestamp"]
    assert row["user_email"] == FULL_USER and row["capture_level"] == "full"
    assert row["redaction_count"] == metadata[captured]["redaction_count"] == 2
    assert AWS_KEY_ID not in row["request"] and ANTHROPIC_KEY not in row["response"]
    assert [block["type"] for block in json.loads(row["response"])["content"]] == ["thinking", "text", "tool_use"]
    assert metadata[captured]["capture_level"] == "full" and metadata[uncaptured]["capture_level"] == "none"

    # The export reads both tables from BigQuery, as an operator with the content grant would.
    for name, value in (
        ("GATEWAY_AUDIT_SINK", table.url),
        ("GATEWAY_CONTENT_SINK", content.url),
        ("GATEWAY_BIGQUERY_ENDPOINT", emulator.url),
        ("GATEWAY_BIGQUERY_ANONYMOUS", "1"),
    ):
        monkeypatch.setenv(name, value)
    day = datetime.now(UTC).date().isoformat()
    assert main(["audit", "export", "--user", FULL_USER, "--from", day, "--to", day, "--content"]) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["request_id"] == captured and line["groups"] == ["compliance@example.com"]
    assert line["timestamp"] == rfc3339(metadata[captured]["timestamp"])
    assert line["content"]["request"]["messages"][0]["content"].startswith("Please deploy with key [REDACTED:")
    assert line["content"]["tools_offered"] == [] and line["content"]["truncated"] is False


def test_content_the_sink_does_not_take_is_logged_apart_from_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Content that cannot be written is kept like metadata (log and spill), under its own name, so that it can
    be routed away from everyone who reads the project's logs."""
    relay = Relay(("127.0.0.1", 9))  # never up: a dead port
    settings = Settings(
        dev_mode=True,
        **sink_settings(
            TableRef("p-roject", "d", "t"),
            relay.url,
            tmp_path,
            audit_retry_max_seconds=0.2,
            content_sink="bigquery://p-roject/d_content/audit_content",
        ),
    )
    row: dict[str, Any] = {
        "request_id": "req-c",
        "timestamp": rfc3339(datetime.now(UTC)),
        "capture_level": "full",
        "request": '{"messages": ["secret plans"]}',
    }

    async def run() -> AuditWriter:
        writer = content_writer(settings)
        await writer.start()
        writer.submit(row)
        await asyncio.sleep(0.6)
        await writer.aclose()
        return writer

    writer = asyncio.run(run())

    entries = [record for record in caplog.records if record.getMessage() == "audit_content_fallback"]
    assert entries and entries[0].json_fields["audit_content_fallback"] == row
    assert not [record for record in caplog.records if record.getMessage() == "audit_fallback"]
    assert writer.counters.spilled == 1 and writer.counters.dropped == 0
    assert list((tmp_path / "spill" / "content").glob("spill-*.jsonl"))


def test_a_missing_content_table_is_a_clear_start_up_error(emulator: Emulator, tmp_path: Path) -> None:
    table = emulator.new_table()
    settings = Settings(dev_mode=True, **sink_settings(table, emulator.url, tmp_path))

    with pytest.raises(SinkConfigError) as caught:
        asyncio.run(content_writer(settings).start())

    expected = f"bigquery://{table.project}/{table.dataset}_content/audit_content"
    assert f"does not exist: create it with `claude-gateway bq init --content-sink {expected}`" in str(caught.value)
