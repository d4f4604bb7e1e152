"""Content rows from finished captures: the facts, and the redacted text, of one request and its response.

This runs in the capture worker process (gateway.capture.worker) or, for small facts-only work, on the event
loop, so its inputs are plain data that pickles: a `CaptureJob` per request."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.audit.record import rfc3339
from gateway.capture.assemble import ResponseAssembler
from gateway.capture.levels import CaptureLevel
from gateway.capture.redact import Redactor
from gateway.capture.summary import capture_request, summarise_request
from gateway.jsonish import dumps_clean

logger = logging.getLogger("gateway.capture")

MAX_ERROR = 500


@dataclass(frozen=True, slots=True)
class CaptureJob:
    """One finished capture, as the worker takes it."""

    request_id: str
    timestamp: datetime
    user_email: str | None
    level: CaptureLevel
    body: bytes
    assembler: ResponseAssembler | None
    """The response rebuilt so far (`full`, and only when an upstream answered)."""
    json_body: bytes | None = None
    """A non-streamed reply, for the assembler to read."""

    def response(self) -> dict[str, Any] | None:
        if self.assembler is None:
            return None
        if self.json_body is not None:
            self.assembler.feed_json(self.json_body)
        return self.assembler.result()


def content_row(job: CaptureJob, redactor: Redactor, cap_bytes: int) -> dict[str, Any]:
    """The content table's row for one request: facts at `metadata+`, and the redacted text at `full`."""
    summary = summarise_request(job.body)
    errors = [summary["error"]] if summary["error"] else []
    row: dict[str, Any] = {
        "request_id": job.request_id,
        "timestamp": rfc3339(job.timestamp),
        "user_email": job.user_email,
        "capture_level": job.level.value,
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
    if job.level == CaptureLevel.FULL:
        request = capture_request(job.body, cap_bytes)
        if request["error"] and request["error"] not in errors:
            errors.append(request["error"])
        truncated = bool(request["truncated"])
        row["request"] = _redacted_json(request, redactor, counts)
        response = job.response()
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
        row["capture_error"] = "; ".join(errors)[:MAX_ERROR]
    return row


def content_rows(jobs: list[CaptureJob], redactor: Redactor, cap_bytes: int) -> list[dict[str, Any] | str]:
    """Rows for a batch of captures; for a capture that fails, why, as text (its request is still audited)."""
    out: list[dict[str, Any] | str] = []
    for job in jobs:
        try:
            out.append(content_row(job, redactor, cap_bytes))
        except Exception as exc:  # a capture bug costs the content row, never the metadata row
            logger.exception("prompt capture failed for request %s", job.request_id)
            out.append(f"capture failed: {type(exc).__name__}: {exc}"[:MAX_ERROR])
    return out


def _redacted_json(value: Any, redactor: Redactor, counts: dict[str, int]) -> str:
    redacted, found = redactor.redact_json(value)
    for name, count in found.items():
        counts[name] = counts.get(name, 0) + count
    return dumps_clean(redacted).decode()
