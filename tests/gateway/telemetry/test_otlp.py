"""OTLP/HTTP telemetry at `/v1/metrics`, `/v1/logs`, `/v1/traces`: exports made by OpenTelemetry's own SDK and
exporter land in the telemetry table stamped with the verified sender; malformed ones are a 400 and an audit row;
the tool-decisions view reads them in BigQuery (the emulator)."""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from gateway.admin.bq_admin import telemetry_ref
from gateway.audit.bigquery import BigQuerySink
from gateway.cli import main
from gateway.telemetry import otlp
from gateway.telemetry.schema import TELEMETRY_TABLE
from tests.gateway.conftest import Stack
from tests.support.bqemulator import shared_emulator

ADA = "ada@example.com"
RESOURCE = Resource.create({"service.name": "claude-code", "user.email": "someone-else@example.com"})


def telemetry(db: Path, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as connection:
            connection.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in connection.execute("SELECT * FROM telemetry ORDER BY event_time")]
            except sqlite3.OperationalError:
                rows = []
        if len(rows) >= want:
            break
        time.sleep(0.05)
    return rows


def test_sdk_log_export_lands_with_the_verified_email_not_the_reported_one(stack: Stack) -> None:
    exporter = OTLPLogExporter(endpoint=stack.url + "/v1/logs", headers=stack.headers(ADA), timeout=10)
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("com.anthropic.claude_code.events")
    logger.emit(
        LogRecord(
            body="claude_code.tool_decision",
            event_name="tool_decision",
            attributes={
                "tool_name": "Bash",
                "decision": "reject",
                "source": "user",
                "session.id": "s-1",
                "tool_parameters": '{"full_command":"rm -rf /"}',
            },
        )
    )
    provider.shutdown()

    [row] = telemetry(stack.audit_db, 1)
    assert (row["signal"], row["name"], row["body"]) == ("logs", "tool_decision", "claude_code.tool_decision")
    assert row["user_email"] == ADA and row["reported_email"] == "someone-else@example.com"
    assert row["session_id"] == "s-1" and row["scope"] == "com.anthropic.claude_code.events"
    assert orjson.loads(row["attributes"])["decision"] == "reject"
    assert orjson.loads(row["resource"])["service.name"] == "claude-code"
    audit = {r["request_id"]: r for r in stack.rows(1)}
    assert (audit[row["request_id"]]["path"], audit[row["request_id"]]["outcome"]) == ("/v1/logs", "ok")


def test_sdk_metric_export_gives_one_row_per_data_point(stack: Stack) -> None:
    exporter = OTLPMetricExporter(endpoint=stack.url + "/v1/metrics", headers=stack.headers(ADA), timeout=10)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    counter = provider.get_meter("com.anthropic.claude_code").create_counter("claude_code.cost.usage", unit="USD")
    counter.add(0.25, {"model": "claude-opus-5-5"})
    counter.add(0.5, {"model": "claude-haiku-5-5"})
    provider.shutdown()

    rows = telemetry(stack.audit_db, 2)
    assert sorted((r["name"], r["unit"], r["value"]) for r in rows) == [
        ("claude_code.cost.usage", "USD", 0.25),
        ("claude_code.cost.usage", "USD", 0.5),
    ]
    assert {r["user_email"] for r in rows} == {ADA}


def test_json_export_with_hex_ids_and_gzip_is_read(stack: Stack) -> None:
    export = {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [
                    {
                        "scope": {"name": "cc"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "claude_code.llm_request",
                                "startTimeUnixNano": "1764590000000000000",
                                "endTimeUnixNano": "1764590000250000000",
                                "attributes": [{"key": "model", "value": {"stringValue": "claude-opus-5-5"}}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    response = httpx.post(
        stack.url + "/v1/traces",
        content=gzip.compress(orjson.dumps(export)),
        headers={**stack.headers(ADA), "content-type": "application/json", "content-encoding": "gzip"},
        timeout=10,
    )

    assert response.status_code == 200 and response.json() == {}
    [row] = telemetry(stack.audit_db, 1)
    assert (row["trace_id"], row["span_id"], row["duration_ms"]) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        250.0,
    )
    assert row["event_time"].startswith(datetime.fromtimestamp(1764590000, UTC).strftime("%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("application/x-protobuf", b"\xff\xff\xff\xff garbage", "Not an OTLP ExportLogsServiceRequest in protobuf"),
        ("application/json", b"{not json", "Not valid JSON"),
        ("application/json", b'{"resourceLogs": 7}', "Not an OTLP ExportLogsServiceRequest in JSON"),
        ("application/json", b"[1, 2]", "is a JSON object"),
        ("application/json", b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}', "hex"),
        ("text/plain", b"hello", "Content-Type must be application/x-protobuf or application/json"),
    ],
)
def test_malformed_export_is_a_400_and_never_reaches_the_upstream(
    stack: Stack, content_type: str, body: bytes, reason: str
) -> None:
    response = httpx.post(
        stack.url + "/v1/logs", content=body, headers={**stack.headers(ADA), "content-type": content_type}, timeout=10
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and reason in error["message"]
    row = stack.rows(1)[-1]
    assert (row["path"], row["outcome"], row["user_email"]) == ("/v1/logs", "bad_request", ADA)
    assert stack.upstream.requests == []


def test_export_without_a_verified_identity_is_refused(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/v1/metrics", content=b"", timeout=10, headers={"content-type": "application/x-protobuf"}
    )

    assert response.status_code == 401
    assert stack.rows(1)[-1]["outcome"] == "unauthenticated"


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"\0" * (2 * 1024 * 1024))
    with pytest.raises(otlp.OTLPError, match="larger than 1048576 bytes once decompressed"):
        otlp.decode("/v1/logs", otlp.PROTOBUF, "gzip", bomb, 1024 * 1024)


@pytest.mark.slow
def test_tool_decisions_view_shows_commands_per_verified_person(tmp_path: Path) -> None:
    emulator = shared_emulator()
    table = emulator.new_table()
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
            env.delenv(name)
        env.setenv("GATEWAY_BIGQUERY_ENDPOINT", emulator.url)
        env.setenv("GATEWAY_BIGQUERY_ANONYMOUS", "1")
        assert main(["bq", "init", "--sink", f"bigquery://{table.project}/{table.dataset}/{table.table}"]) == 0
    export = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "user.email", "value": {"stringValue": "mallory@example.com"}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": str(time.time_ns()),
                                "eventName": "tool_decision",
                                "attributes": [
                                    {"key": "tool_name", "value": {"stringValue": "Bash"}},
                                    {"key": "decision", "value": {"stringValue": "accept"}},
                                    {"key": "source", "value": {"stringValue": "config"}},
                                    {"key": "tool_parameters", "value": {"stringValue": '{"full_command":"echo hi"}'}},
                                ],
                            },
                            {"eventName": "api_request", "attributes": []},
                        ]
                    }
                ],
            }
        ]
    }
    message = otlp.decode("/v1/logs", otlp.JSON, "", orjson.dumps(export), 1 << 20)
    sender = otlp.Sender(ADA, ("eng@example.com",), "req-1", "claude-cli/2.1.332")
    rows = otlp.rows("/v1/logs", message, sender, datetime.now(UTC))

    async def write() -> None:
        sink = BigQuerySink(telemetry_ref(table), endpoint=emulator.url, anonymous=True, schema=TELEMETRY_TABLE)
        await sink.open()
        await sink.write(rows)
        await sink.write(rows[:1])  # an at-least-once retry
        await sink.aclose()

    asyncio.run(write())
    found = emulator.query(f"SELECT * FROM `{table.project}.{table.dataset}_security.tool_decisions_by_user`")

    assert len(found) == 1
    [view] = found
    assert (view["user_email"], view["groups"], view["tool_name"], view["decision"], view["decided_by"]) == (
        ADA,
        "eng@example.com",
        "Bash",
        "accept",
        "config",
    )
    assert view["command"] == "echo hi" and view["reported_email"] == "mallory@example.com"
