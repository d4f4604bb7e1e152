"""What happened to a writer's rows, counted for the log and `GET /metrics`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class AuditCounters:
    """Rows by what happened to them; `dropped` counts rows lost and must stay 0."""

    written: int = 0  # accepted by the sink (replayed rows included)
    retried: int = 0  # row writes that failed and were tried again
    failed_over: int = 0  # logged as audit_fallback entries
    spilled: int = 0  # written to the local spill file
    replayed: int = 0  # taken back from the spill and accepted by the sink
    rejected: int = 0  # refused by the sink as invalid; logged as audit_fallback with the reason
    dropped: int = 0

    def __str__(self) -> str:
        return " ".join(f"{name}={count}" for name, count in asdict(self).items())
