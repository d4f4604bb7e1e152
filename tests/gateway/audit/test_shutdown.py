"""SIGTERM to a real `claude-gateway serve` process (as Cloud Run sends it, with 10 s to go) while audit rows are
queued: they reach BigQuery, or the audit_fallback log when BigQuery is down, from which `audit replay` sends them."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.audit.bigquery import TableRef
from gateway.cli import main
from gateway.dev.iap import AssertionSigner
from tests.gateway.audit.conftest import bigquery_env, iap_headers
from tests.support.anthropic_sse import JSON_HEADERS, message_json
from tests.support.bqemulator import Emulator, Relay
from tests.support.gateway_process import CLOUD_RUN_GRACE
from tests.support.gateway_process import gateway_process as serve_process
from tests.support.servers import FakeUpstream, Reply

pytestmark = pytest.mark.slow

ROWS = 25


@contextmanager
def gateway_process(
    table: TableRef, bigquery_url: str, upstream_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`claude-gateway serve` configured from the environment, rows held in its queue (a flush only when
    50,000 rows are queued or after ten minutes), its stdout (Cloud Logging
    JSON lines) in a file."""
    env = bigquery_env(
        table, bigquery_url, upstream_url, GATEWAY_AUDIT_FLUSH_MS="600000", GATEWAY_AUDIT_BATCH_SIZE="10000"
    )
    with serve_process(env, tmp_path) as gateway:
        yield gateway.process, gateway.url, gateway.stdout


def send_requests(url: str, upstream: FakeUpstream, signer_headers: dict[str, str]) -> list[str]:
    upstream.reply = lambda seen: Reply(200, JSON_HEADERS, [message_json("ok")])
    body = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, timeout=10) as client:
        return [
            client.post("/v1/messages", json=body, headers=signer_headers).headers["x-gateway-request-id"]
            for _ in range(ROWS)
        ]


def terminate(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM, then the seconds the process took to exit; it must be within Cloud Run's grace period."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(CLOUD_RUN_GRACE)
    return time.monotonic() - started


def clean_exit(process: subprocess.Popen[bytes], stdout: Path) -> bool:
    """uvicorn finishes its shutdown, then re-raises the SIGTERM it caught, so -15 is a clean exit too."""
    return process.returncode in (0, -signal.SIGTERM) and b"Application shutdown complete" in stdout.read_bytes()


def queued(url: str) -> int:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("gateway_audit_queue_rows"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no queue gauge")


def count_rows(emulator: Emulator, table: TableRef) -> list[str]:
    return [
        row["request_id"]
        for row in emulator.query(f"SELECT request_id FROM {table.sql} WHERE timestamp >= TIMESTAMP '2000-01-01'")
    ]


def test_sigterm_writes_queued_rows_to_bigquery_before_exit(
    emulator: Emulator, relay: Relay, upstream: tuple[FakeUpstream, str], signer: AssertionSigner, tmp_path: Path
) -> None:
    fake, fake_url = upstream
    table = emulator.new_table()
    headers = iap_headers(signer)
    with gateway_process(table, relay.url, fake_url, tmp_path) as (process, url, stdout):
        sent = send_requests(url, fake, headers)
        assert queued(url) == ROWS and count_rows(emulator, table) == []
        took = terminate(process)

    assert clean_exit(process, stdout), stdout.read_text()[-3000:]
    assert sorted(count_rows(emulator, table)) == sorted(sent)
    assert took < CLOUD_RUN_GRACE
    assert b'"audit_fallback"' not in stdout.read_bytes()
    print(f"\n{ROWS} queued rows written to BigQuery; exited {took:.1f}s after SIGTERM")


def test_sigterm_with_bigquery_down_logs_queued_rows_as_audit_fallback_and_replay_sends_them(
    emulator: Emulator,
    relay: Relay,
    upstream: tuple[FakeUpstream, str],
    signer: AssertionSigner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, fake_url = upstream
    table = emulator.new_table()
    headers = iap_headers(signer)
    with gateway_process(table, relay.url, fake_url, tmp_path) as (process, url, stdout):
        sent = send_requests(url, fake, headers)
        relay.down()
        took = terminate(process)

    fallback = [
        entry
        for entry in map(orjson.loads, stdout.read_bytes().splitlines())
        if entry.get("message") == "audit_fallback"
    ]
    assert clean_exit(process, stdout)
    assert took < CLOUD_RUN_GRACE
    assert {entry["audit_fallback"]["request_id"] for entry in fallback} == set(sent)
    assert all(entry["severity"] == "ERROR" and entry["reason"] for entry in fallback)
    assert count_rows(emulator, table) == []

    relay.up()
    monkeypatch.setenv("GATEWAY_BIGQUERY_ENDPOINT", relay.url)
    monkeypatch.setenv("GATEWAY_BIGQUERY_ANONYMOUS", "1")
    sink = f"bigquery://{table.project}/{table.dataset}/{table.table}"
    assert main(["audit", "replay", str(stdout), "--sink", sink]) == 0

    assert sorted(count_rows(emulator, table)) == sorted(sent)
    assert f"{ROWS} written to bigquery" in capsys.readouterr().out
    with capsys.disabled():
        print(f"\nBigQuery down: {ROWS} queued rows logged as audit_fallback; exited {took:.1f}s after SIGTERM")
