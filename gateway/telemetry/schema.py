"""The telemetry table's columns: one row per metric data point, log record (event) or span Claude Code sent."""

from __future__ import annotations

from gateway.audit.kind import RowKind
from gateway.audit.schema import Column, Table

TELEMETRY_COLUMNS: tuple[Column, ...] = (
    Column("telemetry_id", "STRING", "Unique id of the row (BigQuery insertId).", "REQUIRED"),
    Column(
        "timestamp", "TIMESTAMP", "When the gateway received the export (UTC); the table's partitioning.", "REQUIRED"
    ),
    Column("event_time", "TIMESTAMP", "When the client recorded the data point, event or span start (UTC)."),
    Column("signal", "STRING", "metrics, logs or traces: the OTLP endpoint it came to.", "REQUIRED"),
    Column("name", "STRING", "Metric name (claude_code.cost.usage), event name (tool_decision) or span name."),
    Column(
        "user_email", "STRING", "Verified Workspace email from the IAP assertion of the export request.", "REQUIRED"
    ),
    Column("groups", "STRING", "Workspace groups that matched the sender's policy.", "REPEATED"),
    Column("request_id", "STRING", "Gateway request id of the export (its row in the audit table).", "REQUIRED"),
    Column("reported_email", "STRING", "user.email as the client reported it: unverified, for comparison only."),
    Column("session_id", "STRING", "Claude Code session (session.id attribute)."),
    Column("value", "FLOAT64", "Metric value: the number, or a histogram's sum."),
    Column("unit", "STRING", "Metric unit (USD, tokens, s, ...)."),
    Column("body", "STRING", "Log record body (text, or JSON for a structured body)."),
    Column("severity", "STRING", "Log severity text."),
    Column("trace_id", "STRING", "Trace id (hex) of a span or a log record."),
    Column("span_id", "STRING", "Span id (hex)."),
    Column("duration_ms", "FLOAT64", "Span duration in milliseconds."),
    Column("attributes", "STRING", "The data point's, event's or span's attributes, as JSON."),
    Column("resource", "STRING", "The resource attributes (service, version, OS, ...), as JSON."),
    Column("scope", "STRING", "Instrumentation scope name (com.anthropic.claude_code, ...)."),
    Column("user_agent", "STRING", "User-Agent of the export request."),
)

TELEMETRY_TABLE = Table("telemetry", TELEMETRY_COLUMNS, key="telemetry_id")
DEFAULT_TELEMETRY_TABLE = "telemetry"
TELEMETRY_CLUSTERING_FIELDS = ("user_email", "signal")
# No command replays telemetry: its spill files and fallback entries are kept for a person to read.
TELEMETRY_ROWS = RowKind(
    TELEMETRY_TABLE, "telemetry writer", "telemetry_fallback", spill_folder="telemetry", replay_command=None
)


def telemetry_sink_url(audit_sink: str) -> str:
    """Beside the audit table: the same SQLite file, or the same BigQuery dataset."""
    if not audit_sink.startswith("bigquery://"):
        return audit_sink
    project, dataset, _ = audit_sink.removeprefix("bigquery://").split("/")
    return f"bigquery://{project}/{dataset}/{DEFAULT_TELEMETRY_TABLE}"


def telemetry_schema_json() -> list[dict[str, str]]:
    """The telemetry table's schema in BigQuery's JSON form (terraform/telemetry_schema.json)."""
    return TELEMETRY_TABLE.bigquery_schema_json()
