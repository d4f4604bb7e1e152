"""The background audit writer: the response path only appends to a bounded queue; a task drains it.

No row waits in memory for long. A row the sink has not taken within `retry_max_seconds` of being queued (the
sink is down, hangs or is slow), or one beyond the queue's bound, or one queued while the process stops, is
logged as an `audit_fallback` entry (durable: Cloud Run ships stdout to Cloud Logging) and written to the local
spill, which is replayed into the sink once it answers again. While the sink is known to be failing, rows go to
the log at the next flush instead of waiting for it; one batch now and then probes whether it is back.

One writer carries one kind of row (`RowKind`): the audit table's here; other packages make writers of their own
for their tables, with their own fallback names and spill folders."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gateway.audit.counters import AuditCounters
from gateway.audit.fallback import Fallback
from gateway.audit.kind import AUDIT_ROWS, RowKind
from gateway.audit.queue import RowQueue, to_row
from gateway.audit.record import AuditRecord
from gateway.audit.sender import PROBE_SECONDS, BatchSender
from gateway.audit.sink_base import AuditSink
from gateway.audit.sinks import open_sink
from gateway.audit.spill import Spill, default_spill_dir

if TYPE_CHECKING:
    from gateway.config import Settings

logger = logging.getLogger("gateway.audit")

COUNTER_LOG_SECONDS = 60.0


class AuditWriter:
    """Batches rows to a sink: a flush every `batch_size` rows or `flush_interval` seconds, retries with backoff
    and jitter until the row is `retry_max_seconds` old, a spill beyond `queue_size` rows, a bounded drain on close."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        kind: RowKind = AUDIT_ROWS,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        retry_max_seconds: float = 1.5,
        max_backoff: float = 10.0,
        spill_dir: str | None = None,
        shutdown_seconds: float = 2.0,
    ) -> None:
        self.sink = sink
        self.kind = kind
        self.counters = AuditCounters()
        self._queue = RowQueue(queue_size)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._durable_seconds = retry_max_seconds
        self._shutdown_seconds = shutdown_seconds
        self._spill = Spill(os.path.join(spill_dir or default_spill_dir(), kind.spill_folder))
        self._fallback = Fallback(kind, self._spill, self.counters, sink.name)
        self._sender = BatchSender(
            sink, self._fallback, self.counters, durable_seconds=retry_max_seconds, max_backoff=max_backoff
        )
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._next_report = self._now() + COUNTER_LOG_SECONDS
        self._reported = asdict(self.counters)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        kind: RowKind = AUDIT_ROWS,
        *,
        sink_url: str | None = None,
        setting: str = "GATEWAY_AUDIT_SINK",
        batch_size: int | None = None,
    ) -> AuditWriter:
        """The writer of a kind of row to `sink_url` (by default the audit sink), tuned by the audit settings."""
        sink = open_sink(
            sink_url or settings.audit_sink,
            bigquery_endpoint=settings.bigquery_endpoint,
            bigquery_anonymous=settings.bigquery_anonymous,
            table=kind.table,
            setting=setting,
        )
        return cls(
            sink,
            kind=kind,
            queue_size=settings.audit_queue_size,
            batch_size=batch_size or settings.audit_batch_size,
            flush_interval=settings.audit_flush_ms / 1000,
            retry_max_seconds=settings.audit_retry_max_seconds,
            spill_dir=settings.audit_spill_dir,
        )

    async def start(self) -> None:
        leftovers = self._spill.prepare()
        if leftovers:
            self._fallback.warn_leftovers(leftovers)
        await self.sink.open()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def admit(self, record: AuditRecord) -> None:
        """Note a request under way: if it is still running at the next flush, its `started` row is written, so a
        crash before its end leaves it visible as incomplete. Its final row, queued in time, makes this one moot."""
        if self._closed or self._queue.full:
            return  # its final row is on its way to the log or the spill; a started row would add nothing
        self._queue.admit(self._now(), record)

    def submit(self, record: AuditRecord | dict[str, Any]) -> None:
        """Queue a row; never blocks and never raises. Beyond the queue's bound, spill it (and log it)."""
        self._queue.settle(record)
        if self._closed:
            self._fallback.log(to_row(record), "audit writer already closed")
        elif self._queue.full:
            self._fallback.spill_over(to_row(record), self._queue.size)
        else:
            self._queue.append(self._now(), record)
            if len(self._queue) >= self._batch_size:
                self._wakeup.set()

    @property
    def fallback_key(self) -> str:
        """The log message and JSON key of this writer's rows that leave memory unwritten."""
        return self.kind.fallback_key

    @property
    def label(self) -> str:
        return self.kind.label

    @property
    def pending(self) -> int:
        """Rows waiting in memory."""
        return self._queue.pending

    @property
    def spill_pending(self) -> int:
        """Rows waiting in the spill files."""
        return self._spill.pending_rows

    async def flush(self) -> None:
        """Write everything queued so far (or log it, as the sink allows)."""
        while len(self._queue):
            await self._send_queued()

    async def aclose(self, deadline: float | None = None) -> None:
        """Stop the background task, then write what is queued (and spilled) by `deadline` (a `time.monotonic()`
        value; by default `shutdown_seconds` from now); anything unwritten then is already, or now, in the
        audit_fallback log."""
        deadline = deadline if deadline is not None else self._now() + self._shutdown_seconds
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while len(self._queue) and self._now() < deadline:
            await self._send_queued(deadline)
        if len(self._queue):
            self._fallback.fail_over(
                self._queue.take_all(), f"{self.sink.name} did not take the rows within the shutdown budget"
            )
        while self._spill.pending_rows and self._sender.healthy and self._now() < deadline:
            await self._replay_batch(deadline)
        remaining = self._spill.close()
        if remaining:
            self._fallback.warn_remaining(remaining)
        await self.sink.aclose()
        self._log_counters(f"{self.label} closed")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self._work()
            except Exception:  # pragma: no cover - a bug here must not stop the audit trail
                logger.exception("audit writer error; carrying on")
                await asyncio.sleep(1)

    async def _work(self) -> None:
        while len(self._queue):
            await self._send_queued()
            self._report_now_and_then()
        if self._spill.pending_rows:
            if self._sender.healthy:
                # Rows queued meanwhile wait for at most one batch: bound it like a probe.
                await self._replay_batch(self._now() + PROBE_SECONDS)
                if self._spill.pending_rows:
                    self._wakeup.set()  # carry on with the next batch at once
            elif self._sender.probe_due:
                await self._sender.probe()
        self._report_now_and_then()

    async def _send_queued(self, deadline: float | None = None) -> None:
        """One batch from the queue, to the sink by its oldest row's deadline, or to the log and the spill."""
        oldest = self._queue.oldest
        batch = self._queue.take(self._batch_size)
        if not batch:
            return
        due = oldest + self._durable_seconds
        deadline = due if deadline is None else min(due, deadline)
        if self._sender.known_failing:
            # The sink is failing: the rows are made durable in the log now, and replayed once it is back.
            self._fallback.fail_over(batch, f"{self.sink.name} unavailable")
            return
        try:
            await self._sender.deliver(batch, deadline)
        except asyncio.CancelledError:
            # Stopping: the drain in aclose() writes or logs them. A write already under way may still
            # land, which is a duplicate (the same request id), never a loss.
            self._queue.put_back(oldest, (row for row, _ in batch))
            raise
        except Exception:  # pragma: no cover - a bug in the writer: the rows still reach the log
            self._fallback.fail_over(batch, "audit writer error")
            raise

    async def _replay_batch(self, deadline: float) -> None:
        batch = self._spill.read_batch(self._batch_size)
        if batch:
            # Cancelled half-way, the batch stays in the file; it is in the audit_fallback log already.
            await self._sender.deliver(batch, deadline, replay=True)
        self._spill.commit()

    def _report_now_and_then(self) -> None:
        """The counters in the log once a minute, when they have moved."""
        if self._now() >= self._next_report:
            self._next_report = self._now() + COUNTER_LOG_SECONDS
            if asdict(self.counters) != self._reported:
                self._reported = asdict(self.counters)
                self._log_counters(self.label)

    def _log_counters(self, what: str) -> None:
        counters = asdict(self.counters)
        logger.info(
            "%s: %s, queued=%d spilled_pending=%d",
            what,
            self.counters,
            self.pending,
            self.spill_pending,
            extra={
                "json_fields": {"audit_counters": counters, "queued": self.pending, "spill_pending": self.spill_pending}
            },
        )

    @staticmethod
    def _now() -> float:
        return time.monotonic()
