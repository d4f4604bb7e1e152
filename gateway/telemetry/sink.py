"""The telemetry table's writer: the audit pipeline's own batching, retries, spill and fallback log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.audit.writer import AuditWriter
from gateway.telemetry.schema import TELEMETRY_ROWS, telemetry_sink_url

if TYPE_CHECKING:
    from gateway.config import Settings


def telemetry_writer(settings: Settings) -> AuditWriter:
    """Writes telemetry rows beside the audit table (the same SQLite file or BigQuery dataset), in the background."""
    return AuditWriter.from_settings(settings, TELEMETRY_ROWS, sink_url=telemetry_sink_url(settings.audit_sink))
