"""The background audit writer: the response path only appends to a bounded queue; a task drains it.

No row waits in memory for long. A row the sink has not taken within `retry_max_seconds` of being queued (the
sink is down, hangs or is slow), or one beyond the queue's bound, or one queued while the process stops, is
logged as an `audit_fallback` entry (durable: Cloud Run ships stdout to Cloud Logging) and written to the local
spill, which is replayed into the sink once it answers again. While the sink is known to be failing, rows go to
the log at the next flush instead of waiting for it; one batch now and then probes whether it is back."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.audit.record import AuditRecord, rfc3339
from gateway.audit.sink_base import AuditSink, BatchRefused, RowsRejected, SinkServerError
from gateway.audit.sinks import open_sink
from gateway.audit.spill import Spill, default_spill_dir

if TYPE_CHECKING:
    from gateway.config import Settings

logger = logging.getLogger("gateway.audit")

# The most bytes of captured content sent in one write (BigQuery refuses requests over 10 MB).
CONTENT_BATCH_BYTES = 8 * 1024 * 1024
# A row failed over this many times is left to the audit_fallback log rather than spilled yet again.
MAX_ROUNDS = 3
COUNTER_LOG_SECONDS = 60.0
# The longest one probe of a failing sink may hold up the queue behind it.
PROBE_SECONDS = 1.0

Pending = tuple[dict[str, Any], int]  # a row, and how many times it has been failed over


class Admission:
    """A request under way: written as its `started` row if its final row has not come by the next flush."""

    __slots__ = ("record", "settled")

    def __init__(self, record: AuditRecord) -> None:
        self.record = record
        self.settled = False


Item = AuditRecord | dict[str, Any] | Admission


@dataclass(slots=True)
class AuditCounters:
    """Rows by what happened to them; `dropped` counts rows lost and must stay 0."""

    written: int = 0  # accepted by the sink (replayed rows included)
    retried: int = 0  # row writes that failed and were tried again
    failed_over: int = 0  # logged as audit_fallback entries
    spilled: int = 0  # written to the local spill file
    replayed: int = 0  # taken back from the spill and accepted by the sink
    rejected: int = 0  # refused by the sink as invalid; logged as audit_fallback with the reason
    dropped: int = 0


class AuditWriter:
    """Batches rows to a sink: a flush every `batch_size` rows or `flush_interval` seconds, retries with backoff
    and jitter until the row is `retry_max_seconds` old, a spill beyond `queue_size` rows, a bounded drain on close."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        retry_max_seconds: float = 1.5,
        max_backoff: float = 10.0,
        spill_dir: str | None = None,
        shutdown_seconds: float = 2.0,
        fallback_key: str = "audit_fallback",
    ) -> None:
        self.sink = sink
        # The log message and JSON key of rows that leave memory unwritten; the content writer's differ, so that
        # its entries (which hold prompt text) can be routed away from everyone who reads the project's logs.
        self.fallback_key = fallback_key
        self.counters = AuditCounters()
        self._queue: deque[tuple[float, Item]] = deque()  # (when queued, row)
        self._admissions: dict[str, Admission] = {}  # requests under way whose started row is still queued
        self._moot = 0  # queued admissions whose request has ended: nothing to write
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._durable_seconds = retry_max_seconds
        self._max_backoff = max_backoff
        self._shutdown_seconds = shutdown_seconds
        self._spill = Spill(spill_dir or default_spill_dir())
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._healthy = True  # the last write was accepted: queued rows wait for the sink, the spill is replayed
        self._probe_delay = 0.5
        self._next_probe = 0.0
        self._next_report = self._now() + COUNTER_LOG_SECONDS
        self._reported = asdict(self.counters)

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditWriter:
        sink = open_sink(
            settings.audit_sink,
            bigquery_endpoint=settings.bigquery_endpoint,
            bigquery_anonymous=settings.bigquery_anonymous,
        )
        return cls(
            sink,
            queue_size=settings.audit_queue_size,
            batch_size=settings.audit_batch_size,
            flush_interval=settings.audit_flush_ms / 1000,
            retry_max_seconds=settings.audit_retry_max_seconds,
            spill_dir=settings.audit_spill_dir,
        )

    @classmethod
    def for_content(cls, settings: Settings) -> AuditWriter:
        """The writer of captured prompts and responses: the content table, with the same guarantees."""
        from gateway.audit.content_schema import CONTENT_TABLE

        sink = open_sink(
            settings.content_sink_url,
            bigquery_endpoint=settings.bigquery_endpoint,
            bigquery_anonymous=settings.bigquery_anonymous,
            table=CONTENT_TABLE,
            setting="GATEWAY_CONTENT_SINK",
        )
        # A content row can hold twice the capture cap: keep a batch well inside BigQuery's 10 MB request limit.
        rows_per_batch = max(1, CONTENT_BATCH_BYTES // (2 * settings.capture_max_bytes))
        return cls(
            sink,
            queue_size=settings.audit_queue_size,
            batch_size=min(settings.audit_batch_size, rows_per_batch),
            flush_interval=settings.audit_flush_ms / 1000,
            retry_max_seconds=settings.audit_retry_max_seconds,
            # Its own folder: each writer takes the spill files it finds as its own leftovers.
            spill_dir=os.path.join(settings.audit_spill_dir or default_spill_dir(), "content"),
            fallback_key="audit_content_fallback",
        )

    async def start(self) -> None:
        leftovers = self._spill.prepare()
        if leftovers:
            logger.warning(
                "%d audit spill file(s) in %s were not written by this process (their rows are also in the "
                "%s log); send them with `claude-gateway audit replay%s FILE`: %s",
                len(leftovers), self._spill.directory, self.fallback_key, self._replay_flag,
                ", ".join(path.name for path in leftovers),
            )
        await self.sink.open()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def admit(self, record: AuditRecord) -> None:
        """Note a request under way: if it is still running at the next flush, its `started` row is written, so a
        crash before its end leaves it visible as incomplete. Its final row, queued in time, makes this one moot."""
        if self._closed or len(self._queue) >= self._queue_size:
            return  # its final row is on its way to the log or the spill; a started row would add nothing
        admission = Admission(record)
        self._admissions[record.request_id] = admission
        self._queue.append((self._now(), admission))

    def submit(self, record: AuditRecord | dict[str, Any]) -> None:
        """Queue a row; never blocks and never raises. Beyond the queue's bound, spill it (and log it)."""
        if self._admissions and isinstance(record, AuditRecord):
            admission = self._admissions.pop(record.request_id, None)
            if admission is not None:
                admission.settled = True
                self._moot += 1
        if self._closed:
            self._log_fallback(_row(record), "audit writer already closed")
        elif len(self._queue) >= self._queue_size:
            self._spill_over(_row(record))
        else:
            # Kept as the record: turning it into a row costs more than the append, and happens in the batch.
            self._queue.append((self._now(), record))
            if len(self._queue) >= self._batch_size:
                self._wakeup.set()

    @property
    def label(self) -> str:
        return "audit content writer" if self.fallback_key != "audit_fallback" else "audit writer"

    @property
    def _replay_flag(self) -> str:
        return " --content" if self.fallback_key != "audit_fallback" else ""

    @property
    def pending(self) -> int:
        """Rows waiting in memory."""
        return len(self._queue) - self._moot

    @property
    def spill_pending(self) -> int:
        """Rows waiting in the spill files."""
        return self._spill.pending_rows

    async def flush(self) -> None:
        """Write everything queued so far (or log it, as the sink allows)."""
        while self._queue:
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
        while self._queue and self._now() < deadline:
            await self._send_queued(deadline)
        if self._queue:
            left = [(row, 0) for row in (self._to_row(item) for _, item in self._queue) if row is not None]
            self._queue.clear()
            self._moot = 0
            self._fail_over(left, f"{self.sink.name} did not take the rows within the shutdown budget")
        while self._spill.pending_rows and self._healthy and self._now() < deadline:
            await self._replay_batch(deadline)
        remaining = self._spill.close()
        if remaining:
            logger.warning(
                "%d audit row(s) remain in spill file(s) %s (they are in the %s log too); "
                "send them with `claude-gateway audit replay%s FILE`",
                self._spill.pending_rows, ", ".join(str(path) for path in remaining), self.fallback_key,
                self._replay_flag,
            )
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
        while self._queue:
            await self._send_queued()
            self._report_now_and_then()
        if self._spill.pending_rows:
            if self._healthy:
                # Rows queued meanwhile wait for at most one batch: bound it like a probe.
                await self._replay_batch(self._now() + PROBE_SECONDS)
                if self._spill.pending_rows:
                    self._wakeup.set()  # carry on with the next batch at once
            elif self._now() >= self._next_probe:
                await self._probe()
        self._report_now_and_then()

    async def _probe(self) -> None:
        """No traffic to show the sink is back: try one spilled row, once; it stays spilled if that fails."""
        batch = self._spill.read_batch(1)
        rows = [row for row, _ in batch]
        if not rows:
            self._spill.commit()
            return
        try:
            async with asyncio.timeout(min(PROBE_SECONDS, self._durable_seconds)):
                await self.sink.write(rows)
        except (RowsRejected, BatchRefused) as exc:
            # The sink answers: the row is the trouble, not the sink.
            self._spill.commit()
            self._healthy = True
            self._reject(rows[0], exc.rejected[0][1] if isinstance(exc, RowsRejected) and exc.rejected else str(exc))
        except Exception as exc:
            if isinstance(exc, SinkServerError):
                # The server answers but not to this row, which may be the trouble: to the back of the spill (for
                # MAX_ROUNDS), so that it cannot keep the rows behind it from being tried.
                self._spill.commit()
                self._fail_over(batch, f"{self.sink.name}: {exc}", log=False)
            else:
                self._spill.rewind()
            self._failing()
            logger.info("audit sink %s still unavailable (%s)", self.sink.name, exc)
        else:
            self._spill.commit()
            self._healthy = True
            self._note_written(len(rows), replay=True)

    def _report_now_and_then(self) -> None:
        """The counters in the log once a minute, when they have moved."""
        if self._now() >= self._next_report:
            self._next_report = self._now() + COUNTER_LOG_SECONDS
            if asdict(self.counters) != self._reported:
                self._reported = asdict(self.counters)
                self._log_counters(self.label)

    async def _send_queued(self, deadline: float | None = None) -> None:
        """One batch from the queue, to the sink by its oldest row's deadline, or to the log and the spill."""
        oldest = self._queue[0][0]
        batch: list[Pending] = []
        while self._queue and len(batch) < self._batch_size:
            row = self._to_row(self._queue.popleft()[1])
            if row is not None:
                batch.append((row, 0))
        if not batch:
            return
        due = oldest + self._durable_seconds
        deadline = due if deadline is None else min(due, deadline)
        if not self._healthy and self._now() < self._next_probe:
            # The sink is failing: the rows are made durable in the log now, and replayed once it is back.
            self._fail_over(batch, f"{self.sink.name} unavailable")
            return
        try:
            await self._deliver(batch, deadline)
        except asyncio.CancelledError:
            # Stopping: the drain in aclose() writes or logs them. A write already under way may still
            # land, which is a duplicate (the same request id), never a loss.
            self._queue.extendleft((oldest, row) for row, _ in reversed(batch))
            raise
        except Exception:  # pragma: no cover - a bug in the writer: the rows still reach the log
            self._fail_over(batch, "audit writer error")
            raise

    async def _replay_batch(self, deadline: float) -> None:
        batch = self._spill.read_batch(self._batch_size)
        if batch:
            # Cancelled half-way, the batch stays in the file; it is in the audit_fallback log already.
            await self._deliver(batch, deadline, replay=True)
        self._spill.commit()

    async def _deliver(self, batch: list[Pending], deadline: float, *, replay: bool = False) -> None:
        """Settle every row of the batch: written, rejected (logged), or failed over (logged and spilled)."""
        rows = [row for row, _ in batch]
        delay = 0.1
        server_errors = 0
        while True:
            try:
                async with asyncio.timeout(max(deadline - self._now(), 0.05)):
                    await self.sink.write(rows)
            except RowsRejected as exc:
                self._healthy = True
                refused = {index: reason for index, reason in exc.rejected if 0 <= index < len(rows)}
                self._note_written(len(rows) - len(refused), replay)
                for index, reason in refused.items():
                    self._reject(rows[index], reason)
                return
            except BatchRefused as exc:
                self._healthy = True
                if len(batch) == 1:
                    self._reject(rows[0], str(exc))
                else:
                    await self._split(batch, deadline, replay)
                return
            except Exception as exc:  # a sink failure must never end the writer
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, SinkServerError) and len(batch) > 1:
                    server_errors += 1
                    if server_errors >= 2:
                        # The server answers but not to this batch: find the row it chokes on.
                        await self._split(batch, deadline, replay)
                        return
                if self._now() + delay > deadline:
                    self._failing()
                    logger.error(
                        "audit sink %s failing (%s): %d row(s) go to the %s log and the spill",
                        self.sink.name, reason, len(batch), self.fallback_key,
                    )
                    # Replayed rows are in the log already: back to the spill only.
                    self._fail_over(batch, f"{self.sink.name}: {reason}", log=not replay)
                    return
                self.counters.retried += len(batch)
                logger.warning(
                    "audit sink %s failed (%s); retrying %d row(s) in %.1fs", self.sink.name, reason, len(batch), delay
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._max_backoff)
            else:
                self._healthy = True
                self._note_written(len(rows), replay)
                return

    async def _split(self, batch: list[Pending], deadline: float, replay: bool) -> None:
        half = len(batch) // 2
        await self._deliver(batch[:half], deadline, replay=replay)
        await self._deliver(batch[half:], deadline, replay=replay)

    def _failing(self) -> None:
        """The sink failed: rows go straight to the log until a probe, later and later, finds it back."""
        if self._healthy:
            self._probe_delay = 0.5
        else:
            self._probe_delay = min(self._probe_delay * 2, self._max_backoff)
        self._healthy = False
        self._next_probe = self._now() + self._probe_delay

    def _note_written(self, count: int, replay: bool) -> None:
        self.counters.written += count
        if replay:
            self.counters.replayed += count

    def _to_row(self, item: Item) -> dict[str, Any] | None:
        """The row to write; None for an admission whose request has ended (its final row says it all)."""
        if isinstance(item, Admission):
            if item.settled:
                self._moot -= 1
                return None
            self._admissions.pop(item.record.request_id, None)
            return item.record.admission_row()
        return _row(item)

    def _spill_over(self, row: dict[str, Any]) -> None:
        """The queue is full: the row waits on disk, and in the log in case the instance goes first."""
        self._log_fallback(row, f"audit queue over its bound of {self._queue_size} rows")
        self._to_spill(row, 0)

    def _fail_over(self, batch: list[Pending], reason: str, *, log: bool = True) -> None:
        for row, rounds in batch:
            if log:
                self._log_fallback(row, reason)
            if rounds + 1 < MAX_ROUNDS:
                self._to_spill(row, rounds + 1)
            else:
                logger.error(
                    "audit row %s failed over %d times; it is left to the %s log", row["request_id"], rounds + 1,
                    self.fallback_key,
                )

    def _reject(self, row: dict[str, Any], reason: str) -> None:
        self.counters.rejected += 1
        logger.error("audit sink %s rejected row %s: %s", self.sink.name, row.get("request_id"), reason)
        self._log_fallback(row, f"rejected by {self.sink.name}: {reason}")

    def _to_spill(self, row: dict[str, Any], rounds: int) -> None:
        try:
            self._spill.append(row, rounds)
        except OSError as exc:
            logger.error("audit spill write failed (%s); row %s is in the %s log only", exc,
                         row.get("request_id"), self.fallback_key)
        else:
            self.counters.spilled += 1

    def _log_fallback(self, row: dict[str, Any], reason: str) -> None:
        try:
            key = self.fallback_key
            logger.error(key, extra={"json_fields": {key: row, "reason": reason}})
        except Exception:  # pragma: no cover - logging swallows handler errors itself
            self.counters.dropped += 1
        else:
            self.counters.failed_over += 1

    def _log_counters(self, what: str) -> None:
        counters = asdict(self.counters)
        logger.info(
            "%s: %s, queued=%d spilled_pending=%d", what, " ".join(f"{k}={v}" for k, v in counters.items()),
            self.pending, self.spill_pending,
            extra={"json_fields": {"audit_counters": counters, "queued": self.pending,
                                   "spill_pending": self.spill_pending}},
        )

    @staticmethod
    def _now() -> float:
        return time.monotonic()


def _row(item: AuditRecord | dict[str, Any]) -> dict[str, Any]:
    if not isinstance(item, AuditRecord):
        return item
    try:
        return item.to_row()
    except Exception:  # pragma: no cover - a record of plain values always converts; keep at least the request
        logger.exception("audit record %s could not be converted; writing its required columns only", item.request_id)
        return {"request_id": str(item.request_id), "timestamp": rfc3339(datetime.now(UTC)), "method": str(item.method),
                "path": str(item.path), "status_code": 0, "outcome": "gateway_error"}
