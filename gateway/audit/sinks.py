"""Where audit rows go, chosen by `GATEWAY_AUDIT_SINK`."""

from __future__ import annotations

from typing import Any, Protocol


class AuditSink(Protocol):
    """A destination for batches of audit rows (dicts keyed by column name)."""

    name: str

    async def open(self) -> None:
        """Check the destination is usable; raise with a clear message if not."""
        ...

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Write a batch; raise if any of it may not have been written."""
        ...

    async def aclose(self) -> None: ...


class SinkConfigError(ValueError):
    """`GATEWAY_AUDIT_SINK` names no usable sink."""


def open_sink(url: str) -> AuditSink:
    """The sink a URL names: `sqlite:///PATH`."""
    if url.startswith("sqlite:///"):
        from gateway.audit.sqlite import SQLiteSink

        path = url.removeprefix("sqlite:///")
        if not path:
            raise SinkConfigError(f"GATEWAY_AUDIT_SINK={url!r}: no file path after sqlite:///")
        return SQLiteSink(path)
    raise SinkConfigError(
        f"GATEWAY_AUDIT_SINK={url!r} is not a known sink; use sqlite:///PATH or bigquery://PROJECT/DATASET/TABLE"
    )
