"""The telemetry table's writer: the audit pipeline's own batching, retries, spill and fallback log."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gateway.audit.sinks import open_sink
from gateway.audit.spill import default_spill_dir
from gateway.audit.writer import AuditWriter
from gateway.telemetry.schema import TELEMETRY_TABLE, telemetry_sink_url

if TYPE_CHECKING:
    from gateway.config import Settings


def telemetry_writer(settings: Settings) -> AuditWriter:
    """Writes telemetry rows beside the audit table (the same SQLite file or BigQuery dataset), in the background."""
    sink = open_sink(
        telemetry_sink_url(settings.audit_sink),
        bigquery_endpoint=settings.bigquery_endpoint,
        bigquery_anonymous=settings.bigquery_anonymous,
        table=TELEMETRY_TABLE,
    )
    return AuditWriter(
        sink,
        queue_size=settings.audit_queue_size,
        batch_size=settings.audit_batch_size,
        flush_interval=settings.audit_flush_ms / 1000,
        retry_max_seconds=settings.audit_retry_max_seconds,
        # Its own folder: each writer takes the spill files it finds as its own leftovers.
        spill_dir=os.path.join(settings.audit_spill_dir or default_spill_dir(), "telemetry"),
        fallback_key="telemetry_fallback",
    )
