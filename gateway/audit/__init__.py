"""The audit trail: one row per request, written off the response path."""

from __future__ import annotations

from gateway.audit.record import AuditRecord
from gateway.audit.sinks import AuditSink, open_sink
from gateway.audit.writer import AuditWriter

__all__ = ["AuditRecord", "AuditSink", "AuditWriter", "open_sink"]
