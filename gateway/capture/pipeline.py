"""Prompt capture on the proxy path: what is held while a response streams, and the rows made after it.

The relay only feeds response bytes to the assembler beside the meter. Parsing the request, rendering the
response, redacting and building the row happen once the last byte has gone to the client, in a worker process
of lower priority (the GIL would let a worker thread stall every stream while it redacts), and only then is the
request's metadata row submitted, so that it can say whether capture worked."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from gateway.audit.record import AuditRecord
from gateway.capture.assemble import MAX_JSON_BODY, ResponseAssembler
from gateway.capture.levels import CaptureLevel
from gateway.capture.patterns import load_redactor
from gateway.capture.redact import Redactor
from gateway.capture.rows import CaptureJob, content_rows
from gateway.capture.worker import CaptureWorker
from gateway.endpoints import Endpoint

if TYPE_CHECKING:
    from gateway.audit.writer import AuditWriter
    from gateway.config import Settings

logger = logging.getLogger("gateway.capture")

# Only Messages requests are captured: they carry the prompts and produce the responses. `count_tokens` sends the
# same prompt a moment before its Messages request does, and `/v1/models` sends none.
CAPTURED_PATH = Endpoint.MESSAGES
# Captures go to the worker in batches: one hand-over per batch rather than per capture.
BATCH_SIZE = 32
# A batch of `metadata+` captures with this many request bytes in all is built on the event loop itself (about
# 0.4 ms at most): handing it to the worker would cost more than that.
INLINE_BYTES = 64 * 1024
# A batch the worker has not finished in this long is given up (the worker is restarted): a runaway operator
# pattern must not hold every later request's metadata row.
BATCH_TIMEOUT_SECONDS = 120.0
_STOPPED = "the gateway stopped before the capture was written"


class RequestCapture:
    """One request's capture while its response streams: the body it sent, and the response rebuilt beside the
    meter (at `full`). The proxy calls `start` when the upstream answers, `feed` for every byte relayed."""

    __slots__ = ("pipeline", "level", "body", "assembler", "_json")

    def __init__(self, pipeline: CapturePipeline, level: CaptureLevel, body: bytes) -> None:
        self.pipeline = pipeline
        self.level = level
        self.body = body
        self.assembler: ResponseAssembler | None = None
        self._json: bytearray | None = None

    @property
    def wants_response(self) -> bool:
        return self.level == CaptureLevel.FULL

    def start(self, event_stream: bool) -> None:
        """The upstream answered: with an SSE stream, or with one JSON body."""
        self.assembler = ResponseAssembler(self.pipeline.cap_bytes)
        if not event_stream:
            self._json = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Bytes sent to the client. Never raises: the assembler stops capturing instead."""
        if self._json is not None:
            # One byte past the assembler's limit is enough for it to mark the body as too large to parse.
            room = MAX_JSON_BODY + 1 - len(self._json)
            if room > 0:
                self._json += chunk[:room]
        elif self.assembler is not None:
            self.assembler.feed(chunk)

    def submit(self, record: AuditRecord) -> None:
        """The response is over: build the content row off the response path, then audit the request."""
        self.pipeline.finish(self, record)

    def job(self, record: AuditRecord) -> CaptureJob:
        json_body = bytes(self._json) if self._json is not None else None
        return CaptureJob(
            record.request_id, record.timestamp, record.user_email, self.level, self.body, self.assembler, json_body
        )


Pending = tuple[RequestCapture, AuditRecord]


class CapturePipeline:
    """Starts a capture for each request the policy asks to capture, and finishes it off the response path: a
    background task hands finished captures to the worker process in batches, then submits each content row to
    the content writer and the request's metadata row (saying how capture went) to the audit writer."""

    def __init__(
        self,
        audit: AuditWriter,
        content: AuditWriter,
        redactor: Redactor,
        *,
        cap_bytes: int,
        max_pending: int,
        patterns: str | None = None,
    ) -> None:
        self.audit = audit
        self.content = content
        self.redactor = redactor
        self.cap_bytes = cap_bytes
        self.max_pending = max_pending
        self.skipped = 0
        self._queue: deque[Pending] = deque()
        self._building: list[Pending] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._worker = CaptureWorker(patterns)

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditWriter) -> CapturePipeline:
        from gateway.capture.sink import content_writer

        return cls(
            audit,
            content_writer(settings),
            load_redactor(settings.redaction_patterns),
            cap_bytes=settings.capture_max_bytes,
            max_pending=settings.capture_max_pending,
            patterns=settings.redaction_patterns,
        )

    @property
    def pending(self) -> int:
        """Captures finished by the relay and not yet turned into rows."""
        return len(self._queue) + len(self._building)

    async def start(self) -> None:
        await self.content.start()
        await self._worker.start()
        self._task = asyncio.create_task(self._run(), name="capture-rows")

    def begin(self, level: CaptureLevel, path: str, body: bytes, record: AuditRecord) -> RequestCapture | None:
        """A capture for this request if its level and path call for one; notes the level applied on the row."""
        if path != CAPTURED_PATH or level not in (CaptureLevel.METADATA, CaptureLevel.FULL):
            record.capture_level = CaptureLevel.NONE.value
            return None
        record.capture_level = level.value
        return RequestCapture(self, level, body)

    def finish(self, capture: RequestCapture, record: AuditRecord) -> None:
        """Queue the capture; never blocks and never raises. Beyond `max_pending`, audit without content."""
        if self._task is None or self._task.done():
            record.capture_error = _STOPPED
            self.audit.submit(record)
        elif self.pending >= self.max_pending:
            self.skipped += 1
            record.capture_error = f"capture skipped: {self.max_pending} captures were already waiting"
            logger.error("prompt capture skipped for request %s: %s", record.request_id, record.capture_error)
            self.audit.submit(record)
        else:
            self._queue.append((capture, record))
            self._idle.clear()
            self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                count = min(BATCH_SIZE, len(self._queue))
                self._building = [self._queue.popleft() for _ in range(count)]
                rows = await self._rows([capture.job(record) for capture, record in self._building])
                for (_, record), row in zip(self._building, rows, strict=True):
                    if isinstance(row, str):
                        record.capture_error = row
                    else:
                        self.content.submit(row)
                        record.capture_error = row["capture_error"]
                        record.redaction_count = row["redaction_count"]
                    self.audit.submit(record)
                self._building = []
            if not self._queue:
                self._idle.set()

    async def _rows(self, jobs: list[CaptureJob]) -> list[dict[str, Any] | str]:
        facts_only = all(job.level == CaptureLevel.METADATA for job in jobs)
        if facts_only and sum(len(job.body) for job in jobs) <= INLINE_BYTES:
            return content_rows(jobs, self.redactor, self.cap_bytes)
        try:
            return await asyncio.wait_for(self._worker.rows(jobs, self.cap_bytes), BATCH_TIMEOUT_SECONDS)
        except (TimeoutError, BrokenProcessPool) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else "the capture worker stopped"
            logger.error(
                "prompt capture of %d request(s) failed (%s); restarting the capture worker", len(jobs), reason
            )
            self._worker.restart()
            return [f"capture failed: {reason}"] * len(jobs)
        except Exception as exc:  # a job that would not pickle, say: those requests are audited without content
            logger.exception("prompt capture batch failed")
            return [f"capture failed: {type(exc).__name__}: {exc}"[:500]] * len(jobs)

    async def drain(self, timeout: float) -> None:
        """Finish the captures under way within `timeout`, then stop; the rest are audited without content."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        left = [*self._building, *self._queue]
        self._building, self._queue = [], deque()
        for _, record in left:
            record.capture_error = _STOPPED
            self.audit.submit(record)
        if left:
            logger.error(
                "%d prompt capture(s) unfinished at shutdown; their requests are audited without content", len(left)
            )
        self._worker.close()

    async def aclose(self, deadline: float | None = None) -> None:
        """Close the content writer: its rows are in the sink or its fallback log by `deadline` (see
        `AuditWriter.aclose`). After `drain`, since the captures it finishes submit content rows."""
        await self.content.aclose(deadline)
