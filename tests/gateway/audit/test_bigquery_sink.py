"""The BigQuery sink against a real BigQuery-compatible server (the bqemulator subprocess), through the gateway."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.audit.bigquery import TableRef
from gateway.audit.record import AuditRecord
from gateway.audit.sinks import SinkConfigError
from gateway.audit.writer import AuditWriter
from gateway.config import Settings
from tests.gateway.conftest import StackFactory
from tests.support.anthropic_sse import JSON_HEADERS, SSE_HEADERS, message_json, stream_events
from tests.support.bqemulator import Emulator, Relay, shared_emulator
from tests.support.servers import Reply

pytestmark = pytest.mark.slow

BODY = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def emulator() -> Emulator:
    return shared_emulator()


def sink_settings(table: TableRef, endpoint: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "audit_sink": f"bigquery://{table.project}/{table.dataset}/{table.table}",
        "bigquery_endpoint": endpoint,
        "bigquery_anonymous": True,
        "audit_spill_dir": str(tmp_path / "spill"),
        "audit_flush_ms": 50,
        **overrides,
    }


def table_rows(emulator: Emulator, table: TableRef, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The table's rows once there are `count` distinct request ids (written in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = emulator.query(f"SELECT * FROM {table.sql} WHERE timestamp >= TIMESTAMP '2000-01-01'")
        if len({row["request_id"] for row in rows}) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{", 1)[0]] = float(value)
    return values


def test_requests_through_the_gateway_become_rows_in_bigquery(
    emulator: Emulator, make_stack: StackFactory, tmp_path: Path
) -> None:
    table = emulator.new_table()
    with make_stack(**sink_settings(table, emulator.url, tmp_path)) as stack:
        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["Hel", "lo"], output_tokens=9))
        before = datetime.now(UTC)
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            ok = client.post(
                "/v1/messages",
                json={**BODY, "stream": True},
                headers=stack.headers(
                    **{"x-claude-code-session-id": "sess-42", "user-agent": "claude-cli/2.1.0 (external, cli)"}
                ),
            )
            refused = client.post("/v1/messages", json=BODY, headers={"anthropic-version": "2023-06-01"})
        written = table_rows(emulator, table, 2)
        counters = metrics(stack.url)

    # A request still running at the writer's next flush also has a `started` row (a loaded machine makes the
    # stream outlast one); its final row comes after it.
    rows = {row["request_id"]: row for row in written if row["outcome"] != "started"}
    served, unauthenticated = rows[ok.headers["x-gateway-request-id"]], rows[refused.headers["x-gateway-request-id"]]
    assert len(rows) == 2
    assert {row["request_id"] for row in written} == set(rows)  # a started row only for one of these requests
    assert served["user_email"] == "ada@example.com" and served["user_domain"] == "example.com"
    assert served["session_id"] == "sess-42" and served["user_agent"].startswith("claude-cli/2.1.0")
    assert served["outcome"] == "ok" and served["status_code"] == 200 and served["stream"] is True
    assert served["served_model"] == "claude-sonnet-4-5-20250929"
    assert (served["input_tokens"], served["output_tokens"]) == (25, 9)
    assert (served["cache_creation_input_tokens"], served["cache_read_input_tokens"]) == (100, 2000)
    assert served["cost_usd"] > 0
    assert before - timedelta(seconds=1) <= served["timestamp"] <= datetime.now(UTC)  # RFC 3339, read right
    assert unauthenticated["outcome"] == "unauthenticated" and unauthenticated["status_code"] == 401
    assert unauthenticated["user_email"] is None
    assert counters["gateway_audit_rows_written_total"] == len(written)  # the started row included, if any
    assert counters["gateway_audit_rows_dropped_total"] == 0


def test_bigquery_outage_while_requests_flow_loses_no_row(
    emulator: Emulator, make_stack: StackFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """BigQuery's port goes dead mid-traffic and comes back: every request ends up with exactly one row once
    de-duplicated by request id, and the rows that waited are in the audit_fallback log as well."""
    table = emulator.new_table()
    relay = Relay(("127.0.0.1", int(emulator.url.rsplit(":", 1)[1])))
    relay.up()
    settings = sink_settings(
        table,
        relay.url,
        tmp_path,
        audit_queue_size=20,
        audit_batch_size=10,
        audit_retry_max_seconds=1.0,
    )
    sent: list[str] = []
    with make_stack(**settings) as stack, httpx.Client(base_url=stack.url, timeout=10) as client:
        stack.upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("ok")])

        def send(count: int) -> None:
            for _ in range(count):
                response = client.post("/v1/messages", json=BODY, headers=stack.headers())
                assert response.status_code == 200
                sent.append(response.headers["x-gateway-request-id"])

        send(30)
        relay.down()
        outage_started = time.monotonic()
        send(120)
        time.sleep(max(0.0, 2.5 - (time.monotonic() - outage_started)))  # long enough for batches to fail over
        during = metrics(stack.url)
        relay.up()
        send(30)
        recovered_at = time.monotonic()
        rows = table_rows(emulator, table, len(sent), timeout=40)
        caught_up = time.monotonic() - recovered_at
        after = metrics(stack.url)
    relay.down()

    ids = [row["request_id"] for row in rows]
    assert set(ids) == set(sent) and len(sent) == 180
    assert len(ids) - len(set(ids)) <= during["gateway_audit_rows_failed_over_total"]  # duplicates only from replay
    assert during["gateway_audit_rows_spilled_total"] > 0
    assert during["gateway_audit_rows_failed_over_total"] > 0
    assert after["gateway_audit_rows_replayed_total"] > 0
    assert after["gateway_audit_rows_dropped_total"] == 0
    assert after["gateway_audit_spill_rows"] == 0
    fallback = {
        r.json_fields["audit_fallback"]["request_id"] for r in caplog.records if r.getMessage() == "audit_fallback"
    }
    assert fallback and fallback <= set(sent)
    print(
        f"\noutage: {int(during['gateway_audit_rows_spilled_total'])} rows spilled, "
        f"{int(during['gateway_audit_rows_failed_over_total'])} logged as audit_fallback; "
        f"caught up {caught_up:.1f}s after BigQuery came back; {len(ids) - len(set(ids))} duplicate rows"
    )


def test_a_missing_table_is_a_clear_start_up_error(emulator: Emulator, tmp_path: Path) -> None:
    settings = Settings(
        dev_mode=True, **sink_settings(TableRef(emulator.project, "nowhere", "audit"), emulator.url, tmp_path)
    )
    writer = AuditWriter.from_settings(settings)

    with pytest.raises(SinkConfigError, match="does not exist: create it with `claude-gateway bq init"):
        asyncio.run(writer.start())


def test_a_table_without_the_audit_columns_is_a_clear_start_up_error(emulator: Emulator, tmp_path: Path) -> None:
    from google.cloud import bigquery

    table = TableRef(emulator.project, emulator.new_table().dataset, "other")
    client = emulator.client()
    client.create_table(bigquery.Table(table.path, schema=[bigquery.SchemaField("request_id", "STRING")]))
    client.close()
    writer = AuditWriter.from_settings(Settings(dev_mode=True, **sink_settings(table, emulator.url, tmp_path)))

    with pytest.raises(SinkConfigError, match="lacks the columns timestamp, duration_ms"):
        asyncio.run(writer.start())


def test_bigquery_unreachable_at_start_up_is_a_warning_and_rows_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay(("127.0.0.1", 9))  # never up: a dead port
    settings = Settings(
        dev_mode=True, **sink_settings(TableRef("p-roject", "d", "t"), relay.url, tmp_path, audit_retry_max_seconds=0.2)
    )

    async def run() -> AuditWriter:
        writer = AuditWriter.from_settings(settings)
        await writer.start()
        writer.submit(AuditRecord("req-1", datetime.now(UTC), "POST", "/v1/messages"))
        await asyncio.sleep(0.6)
        await writer.aclose()
        return writer

    writer = asyncio.run(run())

    assert "BigQuery did not answer at start-up" in caplog.text
    assert writer.counters.failed_over >= 1 and writer.counters.spilled == 1 and writer.counters.dropped == 0


@pytest.mark.parametrize(
    "url",
    [
        "bigquery://project/dataset",
        "bigquery://Project/d/t",
        "bigquery://my-project/data-set/t",
        "bq://p/d/t",
        "sqlite:///",
    ],
)
def test_a_misconfigured_sink_url_is_refused_with_settings(url: str) -> None:
    with pytest.raises(ValidationError, match="GATEWAY_AUDIT_SINK"):
        Settings(dev_mode=True, audit_sink=url)


def test_oversized_fields_are_truncated_not_refused(emulator: Emulator, tmp_path: Path) -> None:
    table = emulator.new_table()
    record = AuditRecord(
        "req-big",
        datetime.now(UTC),
        "POST",
        "/v1/messages",
        status_code=502,
        outcome="upstream_error",
        error_message="x" * 100_000,
        user_agent="y" * 10_000,
    )
    settings = Settings(dev_mode=True, **sink_settings(table, emulator.url, tmp_path))

    async def run() -> AuditWriter:
        writer = AuditWriter.from_settings(settings)
        await writer.start()
        writer.submit(record)
        await writer.aclose()
        return writer

    writer = asyncio.run(run())
    (row,) = table_rows(emulator, table, 1)

    assert writer.counters.written == 1
    assert len(row["error_message"]) == 4096 and row["error_message"].endswith("…")
    assert len(row["user_agent"]) == 512
