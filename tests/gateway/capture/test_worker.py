"""The capture worker process: rows built there, and a stop that does not wait for a runaway pattern."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from datetime import UTC, datetime

import pytest

from gateway.capture.levels import CaptureLevel
from gateway.capture.rows import CaptureJob
from gateway.capture.worker import CaptureWorker

pytestmark = pytest.mark.anyio

# Nested quantifiers: on a long run of `a` that does not end the text, the regex engine backtracks for ages.
RUNAWAY = json.dumps({"runaway": "(a+)+$"})


def job(text: str) -> CaptureJob:
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    return CaptureJob("req-1", datetime.now(UTC), "ada@example.com", CaptureLevel.FULL, body, None)


async def test_the_worker_builds_rows_and_close_ends_its_process() -> None:
    before = set(multiprocessing.active_children())
    worker = CaptureWorker(None, niceness=0)
    await worker.start()
    (process,) = set(multiprocessing.active_children()) - before

    (row,) = await worker.rows([job("hello")], 4096)
    worker.close()
    process.join(5)

    assert isinstance(row, dict) and row["capture_level"] == "full" and row["message_count"] == 1
    assert not process.is_alive()


async def test_close_stops_a_worker_busy_with_a_runaway_pattern_at_once() -> None:
    before = set(multiprocessing.active_children())
    worker = CaptureWorker(RUNAWAY, niceness=0)
    await worker.start()
    (process,) = set(multiprocessing.active_children()) - before
    rows = asyncio.ensure_future(worker.rows([job("a" * 64 + "!")], 4096))
    await asyncio.sleep(0.5)
    assert not rows.done(), "expected the pattern to keep the worker busy"

    worker.close()
    process.join(5)

    assert not process.is_alive()
    rows.cancel()
