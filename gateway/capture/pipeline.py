"""Prompt capture on the proxy path: what is held while a response streams, and the content row made after it.

The relay only feeds response bytes to the assembler beside the meter. Parsing the request, rendering the
response, redacting and building the row happen once the last byte has gone to the client, in a worker thread,
and only then is the request's metadata row submitted, so that it can say whether capture worked."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import yaml

from gateway.audit.record import AuditRecord, rfc3339
from gateway.capture.assemble import MAX_JSON_BODY, ResponseAssembler, dumps
from gateway.capture.redact import Redactor
from gateway.capture.summary import capture_request, summarise_request

if TYPE_CHECKING:
    from gateway.audit.writer import AuditWriter
    from gateway.config import Settings

logger = logging.getLogger("gateway.capture")

NONE, METADATA, FULL = "none", "metadata+", "full"
# Only Messages requests are captured: they carry the prompts and produce the responses. `count_tokens` sends the
# same prompt a moment before its Messages request does, and `/v1/models` sends none.
CAPTURED_PATH = "/v1/messages"
# Rows are built in a few threads of their own, so captures never take the threads the sinks write with.
WORKER_THREADS = 2
_MAX_ERROR = 500


def load_patterns(spec: str) -> Mapping[str, str] | list[Any]:
    """Operator redaction patterns from `GATEWAY_REDACTION_PATTERNS`: inline JSON, or the path of a YAML or JSON
    file; either a mapping of name to regex or a list of `{name, pattern}`. A ValueError says what is wrong."""
    text = spec.strip()
    if text.startswith(("{", "[")):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"GATEWAY_REDACTION_PATTERNS is not valid JSON: {exc}") from None
        where = "GATEWAY_REDACTION_PATTERNS"
    else:
        path = Path(text)
        try:
            value = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"GATEWAY_REDACTION_PATTERNS: cannot read {path}: {exc.strerror or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"GATEWAY_REDACTION_PATTERNS: {path} is not valid YAML or JSON: {exc}") from None
        where = str(path)
    if not isinstance(value, Mapping | list):
        raise ValueError(f"{where}: expected a mapping of name to regex, or a list of {{name, pattern}}")
    return value


def load_redactor(spec: str | None) -> Redactor:
    """The built-in patterns plus the operator's; a ValueError names the pattern that does not compile."""
    if not spec:
        return Redactor()
    patterns = load_patterns(spec)
    try:
        return Redactor(patterns)
    except ValueError as exc:
        raise ValueError(f"GATEWAY_REDACTION_PATTERNS: {exc}") from None


class RequestCapture:
    """One request's capture while its response streams: the body it sent, and the response rebuilt beside the
    meter (at `full`). The proxy calls `start` when the upstream answers, `feed` for every byte relayed."""

    __slots__ = ("pipeline", "level", "body", "assembler", "_json", "_event_stream", "_answered")

    def __init__(self, pipeline: CapturePipeline, level: str, body: bytes) -> None:
        self.pipeline = pipeline
        self.level = level
        self.body = body
        self.assembler = ResponseAssembler(pipeline.cap_bytes) if level == FULL else None
        self._json: bytearray | None = None
        self._event_stream = False
        self._answered = False

    @property
    def wants_response(self) -> bool:
        return self.assembler is not None

    def start(self, event_stream: bool) -> None:
        """The upstream answered: with an SSE stream, or with one JSON body."""
        self._answered = True
        self._event_stream = event_stream
        if not event_stream:
            self._json = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Bytes sent to the client. Never raises: the assembler stops capturing instead."""
        if self._event_stream:
            if self.assembler is not None:
                self.assembler.feed(chunk)
        elif self._json is not None:
            # One byte past the assembler's limit is enough for it to mark the body as too large to parse.
            room = MAX_JSON_BODY + 1 - len(self._json)
            if room > 0:
                self._json += chunk[:room]

    def submit(self, record: AuditRecord) -> None:
        """The response is over: build the content row off the response path, then audit the request."""
        self.pipeline.finish(self, record)

    def response(self) -> dict[str, Any] | None:
        """The response as the client saw it, or None when no upstream answered."""
        if self.assembler is None or not self._answered:
            return None
        if self._json is not None:
            self.assembler.feed_json(bytes(self._json))
            self._json = None
        return self.assembler.result()


def content_row(
    capture: RequestCapture,
    request_id: str,
    timestamp: datetime,
    user_email: str | None,
    redactor: Redactor,
    cap_bytes: int,
) -> dict[str, Any]:
    """The content table's row for one request: facts at `metadata+`, and the redacted text at `full`."""
    summary = summarise_request(capture.body)
    errors = [summary["error"]] if summary["error"] else []
    row: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": rfc3339(timestamp),
        "user_email": user_email,
        "capture_level": capture.level,
        "request": None,
        "response": None,
        "system_sha256": summary["system_sha256"],
        "message_count": summary["message_count"],
        "tools_offered": summary["tools_offered"],
        "tools_used": summary["tools_used"],
        "has_images": summary["has_images"],
        "has_documents": summary["has_documents"],
        "redactions": None,
        "redaction_count": 0,
        "truncated": False,
        "capture_error": None,
    }
    counts: dict[str, int] = {}
    if capture.level == FULL:
        request = capture_request(capture.body, cap_bytes)
        if request["error"] and request["error"] not in errors:
            errors.append(request["error"])
        truncated = bool(request["truncated"])
        row["request"] = _redacted_json(request, redactor, counts)
        response = capture.response()
        if response is not None:
            if response["capture_error"]:
                errors.append(f"response capture failed: {response['capture_error']}")
            truncated |= bool(response["truncated"])
            row["response"] = _redacted_json(response, redactor, counts)
        row["truncated"] = truncated
    if counts:
        row["redactions"] = json.dumps(counts, sort_keys=True)
        row["redaction_count"] = sum(counts.values())
    if errors:
        row["capture_error"] = "; ".join(errors)[:_MAX_ERROR]
    return row


def _redacted_json(value: Any, redactor: Redactor, counts: dict[str, int]) -> str:
    redacted, found = redactor.redact_json(value)
    for name, count in found.items():
        counts[name] = counts.get(name, 0) + count
    return dumps(redacted).decode()


class CapturePipeline:
    """Starts a capture for each request the policy asks to capture, and finishes it off the response path:
    the content row goes to the content writer, then the metadata row (with the outcome) to the audit writer."""

    def __init__(
        self,
        audit: AuditWriter,
        content: AuditWriter,
        redactor: Redactor,
        *,
        cap_bytes: int,
        max_pending: int,
    ) -> None:
        self.audit = audit
        self.content = content
        self.redactor = redactor
        self.cap_bytes = cap_bytes
        self.max_pending = max_pending
        self.skipped = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditWriter) -> CapturePipeline:
        from gateway.audit.writer import AuditWriter

        return cls(
            audit,
            AuditWriter.for_content(settings),
            load_redactor(settings.redaction_patterns),
            cap_bytes=settings.capture_max_bytes,
            max_pending=settings.capture_max_pending,
        )

    @property
    def pending(self) -> int:
        """Captures finished by the relay and not yet turned into rows."""
        return len(self._tasks)

    async def start(self) -> None:
        await self.content.start()

    def begin(self, level: str, path: str, body: bytes, record: AuditRecord) -> RequestCapture | None:
        """A capture for this request if its level and path call for one; notes the level applied on the row."""
        if path != CAPTURED_PATH or level not in (METADATA, FULL):
            record.capture_level = NONE
            return None
        record.capture_level = level
        return RequestCapture(self, level, body)

    def finish(self, capture: RequestCapture, record: AuditRecord) -> None:
        """Queue the row building; never blocks and never raises. Beyond `max_pending`, audit without content."""
        if len(self._tasks) >= self.max_pending:
            self.skipped += 1
            record.capture_error = f"capture skipped: {self.max_pending} captures were already waiting"
            logger.error("prompt capture skipped for request %s: %s", record.request_id, record.capture_error)
            self.audit.submit(record)
            return
        task = asyncio.get_running_loop().create_task(self._complete(capture, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, capture: RequestCapture, record: AuditRecord) -> None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(WORKER_THREADS)
        try:
            row = await anyio.to_thread.run_sync(
                content_row,
                capture,
                record.request_id,
                record.timestamp,
                record.user_email,
                self.redactor,
                self.cap_bytes,
                limiter=self._limiter,
                abandon_on_cancel=True,  # at shutdown, audit the request now rather than wait for the thread
            )
            self.content.submit(row)
            record.capture_error = row["capture_error"]
            record.redaction_count = row["redaction_count"]
        except asyncio.CancelledError:
            record.capture_error = "the gateway stopped before the capture was written"
            raise
        except Exception as exc:  # a capture bug costs the content row, never the metadata row
            logger.exception("prompt capture failed for request %s", record.request_id)
            record.capture_error = f"capture failed: {type(exc).__name__}: {exc}"[:_MAX_ERROR]
        finally:
            self.audit.submit(record)

    async def drain(self, timeout: float) -> None:
        """Finish the captures under way within `timeout`; the rest are audited without content."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            logger.error("%d prompt capture(s) unfinished at shutdown; their requests are audited without content",
                         len(late))

    async def aclose(self) -> None:
        await self.content.aclose()
