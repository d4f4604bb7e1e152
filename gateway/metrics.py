"""The audit and capture counters in Prometheus text form, for `GET /metrics` (no user data, only counts)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.audit.writer import AuditWriter
    from gateway.capture.pipeline import CapturePipeline

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "written": "Audit rows accepted by the sink (replayed rows included).",
    "retried": "Audit row writes that failed and were tried again.",
    "failed_over": "Audit rows logged as audit_fallback entries because the sink had not taken them.",
    "spilled": "Audit rows written to the local spill file.",
    "replayed": "Spilled audit rows later accepted by the sink.",
    "rejected": "Audit rows the sink refused as invalid (logged as audit_fallback with the reason).",
    "dropped": "Audit rows lost. Must stay 0.",
}


def prometheus_text(writer: AuditWriter, capture: CapturePipeline | None = None) -> str:
    """`gateway_audit_rows_<what>_total{sink=...}` counters and the queue and spill gauges; with prompt capture,
    the same for the content table (`gateway_audit_content_...`) and the captures skipped and waiting."""
    lines = _writer_lines(writer, "gateway_audit", "Audit rows")
    if capture is not None:
        lines += _writer_lines(capture.content, "gateway_audit_content", "Content rows")
        for metric, kind, text, value in (
            (
                "gateway_capture_skipped_total",
                "counter",
                "Requests audited without content because too many captures were waiting.",
                capture.skipped,
            ),
            ("gateway_capture_pending", "gauge", "Captures waiting to be turned into content rows.", capture.pending),
        ):
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


def _writer_lines(writer: AuditWriter, prefix: str, rows: str) -> list[str]:
    label = f'{{sink="{writer.sink.name}"}}'
    lines: list[str] = []
    for name, value in asdict(writer.counters).items():
        metric = f"{prefix}_rows_{name}_total"
        text = _HELP[name].replace("Audit row", rows[:-1]).replace("audit rows", rows.lower())
        text = text.replace("audit_fallback", writer.fallback_key)
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter", f"{metric}{label} {value}"]
    for metric, text, value in (
        (f"{prefix}_queue_rows", f"{rows} waiting in memory.", writer.pending),
        (f"{prefix}_spill_rows", f"{rows} waiting in the local spill file.", writer.spill_pending),
    ):
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric}{label} {value}"]
    return lines
