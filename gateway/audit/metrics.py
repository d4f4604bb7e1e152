"""The audit writer's counters in Prometheus text form, for `GET /metrics` (no user data, only counts)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.audit.writer import AuditWriter

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


def prometheus_text(writer: AuditWriter) -> str:
    """`gateway_audit_rows_<what>_total{sink=...}` counters and the queue and spill gauges."""
    label = f'{{sink="{writer.sink.name}"}}'
    lines: list[str] = []
    for name, value in asdict(writer.counters).items():
        metric = f"gateway_audit_rows_{name}_total"
        lines += [f"# HELP {metric} {_HELP[name]}", f"# TYPE {metric} counter", f"{metric}{label} {value}"]
    for metric, text, value in (
        ("gateway_audit_queue_rows", "Audit rows waiting in memory.", writer.pending),
        ("gateway_audit_spill_rows", "Audit rows waiting in the local spill file.", writer.spill_pending),
    ):
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric}{label} {value}"]
    return "\n".join(lines) + "\n"
