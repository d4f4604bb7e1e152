"""The sink interface: what every audit sink implements, and the errors it raises."""

from __future__ import annotations

from typing import Any, Protocol


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
