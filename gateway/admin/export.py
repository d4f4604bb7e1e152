"""`claude-gateway audit export`: one person's audit rows (and captured content) for a data-subject request."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from gateway.audit.record import rfc3339
from gateway.audit.schema import AUDIT_TABLE, Table
from gateway.capture.schema import CONTENT_TABLE

if TYPE_CHECKING:
    from google.cloud import bigquery

    from gateway.audit.bigquery import TableRef

# Content columns holding JSON text, given back as JSON values so the export reads as one document per request.
_JSON_COLUMNS = ("request", "response", "redactions")


@dataclass(frozen=True, slots=True)
class Window:
    """Whole UTC days, `first` to `last` inclusive."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), UTC)

    @property
    def end(self) -> datetime:
        """The first moment after the window."""
        return datetime.combine(self.last + timedelta(days=1), time(), UTC)


@dataclass
class Export:
    """What an export found; `lines` yields the JSON Lines objects, metadata order (oldest first)."""

    requests: list[dict[str, Any]]
    content: dict[str, dict[str, Any]] | None  # by request id; None when content was not asked for

    def lines(self) -> Iterator[dict[str, Any]]:
        content = dict(self.content) if self.content is not None else None
        for row in self.requests:
            if content is not None:
                row = {**row, "content": content.pop(row["request_id"], None)}
            yield row
        # Content whose metadata row is not in the window or not written (yet): still the person's data.
        for row in (content or {}).values():
            yield {
                "request_id": row["request_id"],
                "timestamp": row["timestamp"],
                "user_email": row["user_email"],
                "content": row,
            }

    @property
    def content_rows(self) -> int:
        return len(self.content or {})


def from_sqlite(path: str, email: str, window: Window, *, content_path: str | None) -> Export:
    """Rows from the SQLite audit file (and the content table in `content_path`, which may be the same file)."""
    requests = _sqlite_rows(path, AUDIT_TABLE, email, window)
    content = None
    if content_path is not None:
        content = {row["request_id"]: row for row in _sqlite_rows(content_path, CONTENT_TABLE, email, window)}
    return Export(requests, content)


def _sqlite_rows(path: str, table: Table, email: str, window: Window) -> list[dict[str, Any]]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        exists = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table.sqlite_name,)
        ).fetchone()
        if not exists:
            return []  # an audit file from before capture existed, or capture never used
        # Timestamps are stored as RFC 3339 UTC text, which sorts as time does.
        rows = connection.execute(
            f"SELECT * FROM {table.sqlite_name} WHERE timestamp >= ? AND timestamp < ? "
            "AND lower(user_email) = lower(?) ORDER BY timestamp, request_id",
            (rfc3339(window.start), rfc3339(window.end), email),
        ).fetchall()
    finally:
        connection.close()
    return [_normalise(dict(row), table) for row in rows]


def from_bigquery(
    client: bigquery.Client, table: TableRef, email: str, window: Window, *, content_table: TableRef | None
) -> Export:
    """Rows from the BigQuery tables, each request id once (streaming inserts are at-least-once)."""
    requests = _bigquery_rows(client, table, AUDIT_TABLE, email, window)
    content = None
    if content_table is not None:
        rows = _bigquery_rows(client, content_table, CONTENT_TABLE, email, window)
        content = {row["request_id"]: row for row in rows}
    return Export(requests, content)


def _bigquery_rows(
    client: bigquery.Client, ref: TableRef, table: Table, email: str, window: Window
) -> list[dict[str, Any]]:
    from google.cloud import bigquery

    sql = (
        f"SELECT * FROM {ref.sql} WHERE timestamp >= @start AND timestamp < @end AND LOWER(user_email) = @email "
        "ORDER BY timestamp, request_id"
    )
    config = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter("start", "TIMESTAMP", window.start),
            bigquery.ScalarQueryParameter("end", "TIMESTAMP", window.end),
            bigquery.ScalarQueryParameter("email", "STRING", email.lower()),
        ]
    )
    seen: set[str] = set()
    rows = []
    for row in client.query(sql, job_config=config).result():
        values = dict(row.items())
        if values["request_id"] not in seen:
            seen.add(values["request_id"])
            rows.append(_normalise(values, table))
    return rows


def _normalise(row: dict[str, Any], table: Table) -> dict[str, Any]:
    """The same JSON from either sink: RFC 3339 timestamps, lists, booleans, JSON columns as values."""
    for column in table.columns:
        value = row.get(column.name)
        if value is None:
            if column.mode == "REPEATED":
                row[column.name] = []
            continue
        if column.mode == "REPEATED" and isinstance(value, str):
            row[column.name] = json.loads(value)
        elif column.type == "BOOL":
            row[column.name] = bool(value)
        elif isinstance(value, datetime):
            row[column.name] = rfc3339(value)
        if table is CONTENT_TABLE and column.name in _JSON_COLUMNS and isinstance(value, str):
            row[column.name] = json.loads(value)
    return row
