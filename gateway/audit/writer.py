"""The background audit writer: the response path only appends to a bounded queue; a task drains it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.audit.record import AuditRecord
from gateway.audit.sinks import AuditSink

logger = logging.getLogger("gateway.audit")


@dataclass(slots=True)
class AuditCounters:
    written: int = 0
    retried: int = 0
    failed_over: int = 0
    dropped: int = 0
    queued: int = 0


class AuditWriter:
    """Batches rows to a sink: a flush every `batch_size` rows or `flush_interval` seconds, retries with
    exponential backoff and jitter, and a full drain on close."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_backoff: float = 30.0,
    ) -> None:
        self.sink = sink
        self.counters = AuditCounters()
        self._queue: deque[AuditRecord] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_backoff = max_backoff
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self.sink.open()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def submit(self, record: AuditRecord) -> None:
        """Queue a row; never blocks and never raises."""
        if len(self._queue) >= self._queue_size:
            self.counters.dropped += 1
            logger.error(
                "audit queue full (%d rows): row %s dropped", self._queue_size, record.request_id,
                extra={"json_fields": {"audit_row": _safe_row(record)}},
            )
            return
        self._queue.append(record)
        if len(self._queue) >= self._batch_size:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        """Write everything queued so far (used by tests and on shutdown)."""
        while self._queue:
            await self._write_batch()

    async def aclose(self) -> None:
        """Stop the background task after writing every queued row."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self.flush()
        await self.sink.aclose()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            while self._queue and not self._closing:
                await self._write_batch()

    async def _write_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        rows = [record.to_row() for record in batch]
        delay = 0.1
        while True:
            try:
                await self.sink.write(rows)
            except Exception as exc:  # a sink failure must never end the writer
                if self._closing:
                    # Shutting down: nowhere left to wait; the rows go to the log rather than nowhere.
                    self._fail_over(rows, exc)
                    return
                self.counters.retried += len(rows)
                logger.warning("audit sink %s failed (%s); retrying in %.1fs", self.sink.name, exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._max_backoff)
                continue
            self.counters.written += len(rows)
            return

    def _fail_over(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        for row in rows:
            self.counters.failed_over += 1
            logger.error("audit_fallback", extra={"json_fields": {"audit_fallback": row, "error": str(exc)}})


def _safe_row(record: AuditRecord) -> dict[str, Any]:
    try:
        return record.to_row()
    except Exception:  # pragma: no cover - a row that cannot be serialised is still logged by id
        return {"request_id": record.request_id}
