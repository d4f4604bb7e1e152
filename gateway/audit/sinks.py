"""Where audit rows go: the sink `GATEWAY_AUDIT_SINK` (or another setting) names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.audit.schema import AUDIT_TABLE
from gateway.audit.sink_base import AuditSink, SinkConfigError

if TYPE_CHECKING:
    from gateway.audit.schema import Table

# The factory's own error, raised for a bad URL; the other sink errors live in sink_base.
__all__ = ["SinkConfigError", "check_sink_url", "open_sink"]


def open_sink(
    url: str,
    *,
    bigquery_endpoint: str | None = None,
    bigquery_anonymous: bool = False,
    table: Table | None = None,
    setting: str = "GATEWAY_AUDIT_SINK",
) -> AuditSink:
    """The sink a URL names: `sqlite:///PATH` or `bigquery://PROJECT/DATASET/TABLE`, for the metadata table
    unless `table` names another (the content table)."""
    table = table or AUDIT_TABLE
    check_sink_url(url, setting)
    # Each sink module is imported when named: Google's client libraries load only for a BigQuery sink.
    if url.startswith("bigquery://"):
        from gateway.audit.bigquery import BigQuerySink, TableRef

        return BigQuerySink(
            TableRef.from_url(url, setting), endpoint=bigquery_endpoint, anonymous=bigquery_anonymous, schema=table
        )
    from gateway.audit.sqlite import SQLiteSink

    return SQLiteSink(url.removeprefix("sqlite:///"), table)


def check_sink_url(url: str, setting: str = "GATEWAY_AUDIT_SINK") -> str:
    """The URL if it names a sink; a `SinkConfigError` saying what is wrong otherwise."""
    if url.startswith("sqlite:///"):
        if not url.removeprefix("sqlite:///"):
            raise SinkConfigError(f"{setting}={url!r}: no file path after sqlite:///")
        return url
    if url.startswith("bigquery://"):
        from gateway.audit.bigquery import TableRef

        TableRef.from_url(url, setting)
        return url
    raise SinkConfigError(
        f"{setting}={url!r} is not a known sink; use sqlite:///PATH or bigquery://PROJECT/DATASET/TABLE"
    )
