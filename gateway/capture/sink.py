"""The content table's writer: the audit pipeline's own batching, retries, spill and fallback log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.audit.writer import AuditWriter
from gateway.capture.schema import CONTENT_ROWS

if TYPE_CHECKING:
    from gateway.config import Settings

# The most bytes of captured content sent in one write (BigQuery refuses requests over 10 MB).
CONTENT_BATCH_BYTES = 8 * 1024 * 1024


def content_writer(settings: Settings) -> AuditWriter:
    """Writes captured prompts and responses to the content table, with the same guarantees as audit rows."""
    # A content row can hold twice the capture cap: keep a batch well inside BigQuery's 10 MB request limit.
    rows_per_batch = max(1, CONTENT_BATCH_BYTES // (2 * settings.capture_max_bytes))
    return AuditWriter.from_settings(
        settings,
        CONTENT_ROWS,
        sink_url=settings.content_sink_url,
        setting="GATEWAY_CONTENT_SINK",
        batch_size=min(settings.audit_batch_size, rows_per_batch),
    )
