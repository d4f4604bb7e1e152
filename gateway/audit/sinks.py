"""Where audit rows go, chosen by `GATEWAY_AUDIT_SINK`, and how a sink says a write went wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.audit.schema import Table


class AuditSink(Protocol):
    """A destination for batches of audit rows (dicts keyed by column name)."""

    name: str

    async def open(self) -> None:
        """Check the destination is usable; raise `SinkConfigError` with a clear message if not."""
        ...

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Write a batch; raise a `SinkError` (or anything else) if any of it may not have been written."""
        ...

    async def aclose(self) -> None: ...


class SinkConfigError(ValueError):
    """`GATEWAY_AUDIT_SINK` names no usable sink: a start-up error, never a silent loss."""


class SinkError(Exception):
    """A write that did not (entirely) happen."""


class SinkUnavailable(SinkError):
    """The sink could not be reached or did not answer in time: try again later."""


class SinkServerError(SinkUnavailable):
    """The sink answered with a failure (5xx, quota, permission, missing table): try again later.

    Unlike `SinkUnavailable`, the server did answer, so one bad row may be the cause (the BigQuery emulator
    answers a bad row with a 500): the writer splits a batch that keeps failing this way."""


class BatchRefused(SinkError):
    """The sink refused the request as invalid (HTTP 400, e.g. too large): retrying it unchanged is pointless."""


class RowsRejected(SinkError):
    """Some rows were refused with a reason each; every other row in the batch was written."""

    def __init__(self, rejected: list[tuple[int, str]]) -> None:
        super().__init__(f"{len(rejected)} row(s) rejected: {rejected[0][1] if rejected else ''}")
        self.rejected = rejected


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
    from gateway.audit.schema import AUDIT_TABLE

    table = table or AUDIT_TABLE
    check_sink_url(url, setting)
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
