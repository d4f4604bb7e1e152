"""The audit writer against a scriptable sink: spill, fallback log, replay, splitting, the shutdown budget.

The end-to-end versions, through a real gateway into the BigQuery emulator, are in test_bigquery_sink.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.audit.kind import AUDIT_ROWS, RowKind
from gateway.audit.record import AuditRecord
from gateway.audit.sink_base import RowsRejected, SinkServerError, SinkUnavailable
from gateway.audit.spill import Spill, load_rows
from gateway.audit.writer import AuditWriter
from gateway.capture.schema import CONTENT_ROWS
from gateway.telemetry.schema import TELEMETRY_ROWS
from tests.gateway.conftest import Stack

pytestmark = pytest.mark.anyio


class ScriptedSink:
    """Keeps rows in memory; `fail(rows)` may return an exception to raise instead of writing them."""

    name = "scripted"

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.calls = 0
        self.delay = 0.0
        self.fail: Callable[[list[dict[str, Any]]], Exception | None] = lambda rows: None

    async def open(self) -> None:
        pass

    async def write(self, rows: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        error = self.fail(rows)
        if isinstance(error, RowsRejected):
            refused = {index for index, _ in error.rejected}
            self.rows.update(row["request_id"] for i, row in enumerate(rows) if i not in refused)
        if error is not None:
            raise error
        self.rows.update(row["request_id"] for row in rows)

    async def aclose(self) -> None:
        pass


def record(n: int, **fields: Any) -> AuditRecord:
    fields = {"method": "POST", "path": "/v1/messages", "status_code": 200, **fields}
    return AuditRecord(f"req-{n:04d}", datetime.now(UTC), **fields)


def fallback_ids(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    return Counter(
        r.json_fields["audit_fallback"]["request_id"] for r in caplog.records if r.getMessage() == "audit_fallback"
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def writer_for(sink: ScriptedSink, tmp_path: Path, **options: Any) -> AuditWriter:
    options = {"batch_size": 5, "flush_interval": 0.01, "spill_dir": str(tmp_path / "spill"), **options}
    return AuditWriter(sink, **options)


async def test_rows_beyond_the_queue_bound_are_spilled_logged_and_replayed_when_the_sink_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkUnavailable("connection refused")
    writer = writer_for(sink, tmp_path, queue_size=5, retry_max_seconds=30)
    await writer.start()

    for n in range(20):
        writer.submit(record(n))
    spilled = writer.counters.spilled
    sink.fail = lambda rows: None
    await wait_for(lambda: len(sink.rows) == 20)
    await writer.aclose()

    assert spilled >= 10  # at most one batch in flight and a full queue stayed in memory
    assert writer.counters.replayed == spilled
    assert set(fallback_ids(caplog)) >= {f"req-{n:04d}" for n in range(15, 20)}  # spilled rows are logged too
    assert max(sink.rows.values()) == 1
    assert writer.counters.dropped == 0
    assert not list((tmp_path / "spill").glob("*.jsonl"))


async def test_a_batch_that_keeps_failing_goes_to_the_log_and_the_spill_after_retry_max_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkUnavailable("connection refused")
    writer = writer_for(sink, tmp_path, retry_max_seconds=0.3)
    await writer.start()

    for n in range(3):
        writer.submit(record(n))
    await wait_for(lambda: writer.counters.failed_over == 3)

    assert writer.counters.spilled == 3 and writer.spill_pending == 3
    assert writer.counters.retried >= 3  # tried more than once, with backoff, before giving up
    assert set(fallback_ids(caplog)) == {"req-0000", "req-0001", "req-0002"}
    fallback = next(r for r in caplog.records if r.getMessage() == "audit_fallback")
    assert "connection refused" in fallback.json_fields["reason"]
    await writer.aclose()


async def test_rows_the_sink_rejects_are_logged_with_the_row_and_reason_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink()
    sink.fail = lambda rows: RowsRejected([(1, "invalid: no such field: extra.")])
    writer = writer_for(sink, tmp_path, batch_size=3)
    await writer.start()

    for n in range(3):
        writer.submit(record(n))
    await writer.aclose()

    assert sink.calls == 1
    assert set(sink.rows) == {"req-0000", "req-0002"}
    assert fallback_ids(caplog) == Counter({"req-0001": 1})
    rejected = next(r for r in caplog.records if r.getMessage() == "audit_fallback")
    assert "no such field" in rejected.json_fields["reason"]
    assert writer.counters.rejected == 1 and writer.counters.written == 2 and writer.counters.dropped == 0


async def test_a_row_the_server_chokes_on_is_found_by_splitting_and_the_rest_written_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The BigQuery emulator answers a bad row with a 500 for the whole request."""
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkServerError("500") if any(r["path"] == "/poison" for r in rows) else None
    writer = writer_for(sink, tmp_path, batch_size=8, retry_max_seconds=1.5)
    await writer.start()

    for n in range(8):
        writer.submit(record(n, path="/poison") if n == 5 else record(n))
    await wait_for(lambda: writer.counters.failed_over == 1)
    await writer.aclose()

    assert set(sink.rows) == {f"req-{n:04d}" for n in range(8) if n != 5}
    assert max(sink.rows.values()) == 1
    assert fallback_ids(caplog)["req-0005"] >= 1
    assert writer.counters.dropped == 0


async def test_a_row_failed_over_max_rounds_times_is_left_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkServerError("500") if any(r["path"] == "/poison" for r in rows) else None
    writer = writer_for(sink, tmp_path, batch_size=1, retry_max_seconds=0.2)
    await writer.start()

    writer.submit(record(0, path="/poison"))
    n = 1
    # Each good row shows the sink is up, which lets the writer replay the spilled row for another round.
    while not any("left to the audit_fallback log" in r.getMessage() for r in caplog.records):
        writer.submit(record(n))
        n += 1
        await asyncio.sleep(0.05)
        assert n < 600
    await writer.aclose()

    # Logged once, when it first left memory; its replays from the spill do not log it again.
    assert fallback_ids(caplog)["req-0000"] == 1
    assert "req-0000" not in sink.rows
    assert writer.counters.dropped == 0


async def test_a_hanging_sink_holds_no_row_in_memory_beyond_retry_max_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sink takes requests and never answers: each row is in the log within retry_max_seconds (plus a flush) of
    being queued, the first batch by its deadline and the rest at once while the sink is known to be failing."""
    sink = ScriptedSink()
    sink.delay = 60
    writer = writer_for(sink, tmp_path, batch_size=500, flush_interval=0.05, retry_max_seconds=0.5)
    await writer.start()

    queued_at: dict[str, float] = {}
    logged_at: dict[str, float] = {}
    for n in range(30):
        writer.submit(record(n))
        queued_at[f"req-{n:04d}"] = time.monotonic()
        await asyncio.sleep(0.05)
        for request_id in fallback_ids(caplog):
            logged_at.setdefault(request_id, time.monotonic())
    await wait_for(lambda: len(fallback_ids(caplog)) == 30)
    for request_id in fallback_ids(caplog):
        logged_at.setdefault(request_id, time.monotonic())
    await writer.aclose()

    waits = [logged_at[request_id] - queued_at[request_id] for request_id in queued_at]
    assert max(waits) < 0.5 + 0.05 + 0.5  # the window, a flush, and slack for a loaded machine
    assert writer.counters.spilled == 30 and writer.counters.dropped == 0
    assert max(fallback_ids(caplog).values()) == 1


async def test_rows_logged_while_the_sink_was_down_are_replayed_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkUnavailable("connection refused")
    writer = writer_for(sink, tmp_path, retry_max_seconds=0.2)
    await writer.start()

    for n in range(12):
        writer.submit(record(n))
        await asyncio.sleep(0.02)
    await wait_for(lambda: len(fallback_ids(caplog)) == 12)
    sink.fail = lambda rows: None
    await wait_for(lambda: len(sink.rows) == 12, timeout=15)
    await writer.aclose()

    assert writer.counters.replayed == 12 and writer.spill_pending == 0
    assert max(fallback_ids(caplog).values()) == 1


async def test_a_request_still_running_at_a_flush_gets_a_started_row_and_a_short_one_does_not(
    tmp_path: Path,
) -> None:
    sink = ScriptedSink()
    written: list[dict[str, Any]] = []
    sink.fail = lambda rows: written.extend(rows)  # type: ignore[func-returns-value]
    writer = writer_for(sink, tmp_path, flush_interval=0.05)
    await writer.start()

    short, long = record(1, user_email="ada@example.com"), record(2, user_email="ada@example.com", session_id="s-1")
    writer.admit(short)
    writer.admit(long)
    short.outcome = "ok"
    writer.submit(short)  # ended before the flush: its started row is moot
    await wait_for(lambda: len(written) == 2)
    long.status_code, long.input_tokens = 200, 99
    writer.submit(long)
    await wait_for(lambda: len(written) == 3)
    await writer.aclose()

    started = [row for row in written if row["outcome"] == "started"]
    assert [row["request_id"] for row in started] == ["req-0002"]
    assert started[0]["session_id"] == "s-1" and started[0]["user_email"] == "ada@example.com"
    assert started[0]["status_code"] == 0 and "input_tokens" not in started[0]
    assert [row["request_id"] for row in written if row["outcome"] != "started"] == ["req-0001", "req-0002"]


async def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    sink = ScriptedSink()
    writer = writer_for(sink, tmp_path, batch_size=100, flush_interval=60)
    await writer.start()

    for n in range(50):
        writer.submit(record(n))
    assert writer.pending == 50
    await writer.aclose()

    assert len(sink.rows) == 50 and writer.counters.written == 50


async def test_close_keeps_to_its_budget_and_logs_what_the_sink_did_not_take(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkUnavailable("connection refused")
    writer = writer_for(sink, tmp_path, batch_size=100, flush_interval=60, shutdown_seconds=0.5)
    await writer.start()

    for n in range(10):
        writer.submit(record(n))
    started = time.monotonic()
    await writer.aclose()

    assert time.monotonic() - started < 1.5
    assert set(fallback_ids(caplog)) == {f"req-{n:04d}" for n in range(10)}
    assert writer.counters.dropped == 0
    writer.submit(record(99))  # a straggler after close still reaches the log
    assert fallback_ids(caplog)["req-0099"] == 1


async def test_close_abandons_a_hung_write_at_the_deadline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = ScriptedSink()
    sink.delay = 30
    writer = writer_for(sink, tmp_path, batch_size=100, flush_interval=0.01, shutdown_seconds=0.3)
    await writer.start()
    writer.submit(record(1))
    await asyncio.sleep(0.1)  # the write is under way, and hangs

    started = time.monotonic()
    await writer.aclose()

    assert time.monotonic() - started < 1.0
    assert fallback_ids(caplog)["req-0001"] == 1


def test_spill_is_read_oldest_first_rewound_and_deleted_once_settled(tmp_path: Path) -> None:
    spill = Spill(tmp_path)
    assert spill.prepare() == []
    for n in range(3):
        spill.append({"request_id": f"a{n}"}, 0)

    first = spill.read_batch(2)
    spill.rewind()
    again = spill.read_batch(2)
    spill.commit()
    spill.append({"request_id": "b0"}, 1)  # goes to a new file: the first is being read
    rest = spill.read_batch(10)
    spill.commit()
    last = spill.read_batch(10)
    spill.commit()

    assert first == again == [({"request_id": "a0"}, 0), ({"request_id": "a1"}, 0)]
    assert rest == [({"request_id": "a2"}, 0)]
    assert last == [({"request_id": "b0"}, 1)]
    assert spill.pending_rows == 0 and list(tmp_path.glob("*.jsonl")) == []


def test_spill_files_are_readable_by_the_gateway_user_only(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "spill")
    spill.prepare()
    spill.append({"request_id": "a0", "user_email": "ada@example.com"}, 0)
    (path,) = spill.close()

    assert (tmp_path / "spill").stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600


def test_metrics_count_audit_rows_and_show_no_user_data(stack: Stack) -> None:
    response = httpx.post(f"{stack.url}/v1/messages", json={"model": "m"}, headers=stack.headers())
    stack.rows(1)
    deadline = time.monotonic() + 5
    while 'written_total{sink="sqlite"} 1' not in (metrics := httpx.get(f"{stack.url}/metrics")).text:
        assert time.monotonic() < deadline, metrics.text
        time.sleep(0.02)

    assert response.status_code == 200 and metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'gateway_audit_rows_written_total{sink="sqlite"} 1' in metrics.text
    assert 'gateway_audit_rows_dropped_total{sink="sqlite"} 0' in metrics.text
    assert "ada@example.com" not in metrics.text and response.headers["x-gateway-request-id"] not in metrics.text


def test_an_unwritable_spill_directory_is_a_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not writable"):
        Spill(tmp_path / "file" / "spill").prepare()


def test_replay_reads_spill_files_fallback_log_lines_and_gcloud_json(tmp_path: Path) -> None:
    row = record(7, input_tokens=12).to_row()
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(orjson.dumps({"row": row, "rounds": 1}) + b"\n")
    log_lines = tmp_path / "stdout.log"
    log_lines.write_bytes(
        b'{"message": "gateway started"}\nTraceback (most recent call last):\n'
        + orjson.dumps({"message": "audit_fallback", "audit_fallback": row})
        + b"\n"
    )
    exported = tmp_path / "entries.json"
    # Cloud Logging keeps numbers as doubles: integer columns come back as integers.
    exported.write_bytes(orjson.dumps([{"jsonPayload": {"audit_fallback": {**row, "input_tokens": 12.0}}}]))

    for path, other_lines in ((spill, 0), (log_lines, 2), (exported, 0)):
        (loaded,), skipped = load_rows(path)
        assert loaded == row and isinstance(loaded["input_tokens"], int)
        assert skipped == other_lines


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        (AUDIT_ROWS, "; send them with `claude-gateway audit replay FILE`"),
        (CONTENT_ROWS, "; send them with `claude-gateway audit replay --content FILE`"),
        (TELEMETRY_ROWS, ""),  # no command replays telemetry into its table
    ],
)
async def test_a_writer_spills_and_logs_under_its_kind_and_names_the_command_that_replays_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: RowKind, hint: str
) -> None:
    caplog.set_level(logging.INFO, "gateway.audit")
    folder = tmp_path / "spill" / kind.spill_folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spill-1-00000000-000001.jsonl").write_bytes(b"")  # another process's leftovers
    sink = ScriptedSink()
    sink.fail = lambda rows: SinkUnavailable("connection refused")
    writer = writer_for(sink, tmp_path, kind=kind, retry_max_seconds=0.1)
    await writer.start()

    writer.submit({"request_id": "req-k", "telemetry_id": "t-k"})
    await wait_for(lambda: writer.counters.spilled == 1)
    await writer.aclose(time.monotonic() + 0.2)

    messages = [r.getMessage() for r in caplog.records]
    assert [r.json_fields[kind.fallback_key]["request_id"] for r in caplog.records if r.msg == kind.fallback_key] == [
        "req-k"
    ]
    assert any(m.endswith(f"{kind.fallback_key} log){hint}: spill-1-00000000-000001.jsonl") for m in messages)
    assert any(m.endswith(f"(they are in the {kind.fallback_key} log too){hint}") for m in messages)
    assert any(m.startswith(f"{kind.label} closed: ") for m in messages)
    assert len(list(folder.glob("spill-*.jsonl"))) == 2
