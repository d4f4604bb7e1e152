"""Rows that leave memory unwritten: an entry in the fallback log (durable: Cloud Run ships stdout to Cloud
Logging) and a line in the local spill, which the writer replays into the sink once it answers again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gateway.audit.counters import AuditCounters
from gateway.audit.kind import RowKind
from gateway.audit.spill import Pending, Spill

logger = logging.getLogger("gateway.audit")

# A row failed over this many times is left to the audit_fallback log rather than spilled yet again.
MAX_ROUNDS = 3


class Fallback:
    """Logs and spills one kind's rows under that kind's names, and counts what became of them."""

    def __init__(self, kind: RowKind, spill: Spill, counters: AuditCounters, sink_name: str) -> None:
        self.kind = kind
        self.spill = spill
        self.counters = counters
        self._sink_name = sink_name

    def log(self, row: dict[str, Any], reason: str) -> None:
        """The row as a fallback entry: durable once the log line is out."""
        try:
            key = self.kind.fallback_key
            logger.error(key, extra={"json_fields": {key: row, "reason": reason}})
        except Exception:  # pragma: no cover - logging swallows handler errors itself
            self.counters.dropped += 1
        else:
            self.counters.failed_over += 1

    def spill_over(self, row: dict[str, Any], queue_size: int) -> None:
        """The queue is full: the row waits on disk, and in the log in case the instance goes first."""
        self.log(row, f"audit queue over its bound of {queue_size} rows")
        self._to_spill(row, 0)

    def fail_over(self, batch: list[Pending], reason: str, *, log: bool = True) -> None:
        """The sink did not take the rows: to the log (unless they are there already) and back to the spill."""
        for row, rounds in batch:
            if log:
                self.log(row, reason)
            if rounds + 1 < MAX_ROUNDS:
                self._to_spill(row, rounds + 1)
            else:
                logger.error(
                    "audit row %s failed over %d times; it is left to the %s log",
                    row["request_id"],
                    rounds + 1,
                    self.kind.fallback_key,
                )

    def reject(self, row: dict[str, Any], reason: str) -> None:
        """The sink refused the row as invalid: trying again is pointless, so it stays in the log only."""
        self.counters.rejected += 1
        logger.error("audit sink %s rejected row %s: %s", self._sink_name, row.get("request_id"), reason)
        self.log(row, f"rejected by {self._sink_name}: {reason}")

    def warn_leftovers(self, leftovers: list[Path]) -> None:
        """Spill files found at start-up: another process's, which this one does not replay."""
        logger.warning(
            "%d audit spill file(s) in %s were not written by this process (their rows are also in the %s log)%s: %s",
            len(leftovers),
            self.spill.directory,
            self.kind.fallback_key,
            self._replay_hint,
            ", ".join(path.name for path in leftovers),
        )

    def warn_remaining(self, remaining: list[Path]) -> None:
        """Spill files still holding rows as the writer closes."""
        logger.warning(
            "%d audit row(s) remain in spill file(s) %s (they are in the %s log too)%s",
            self.spill.pending_rows,
            ", ".join(str(path) for path in remaining),
            self.kind.fallback_key,
            self._replay_hint,
        )

    @property
    def _replay_hint(self) -> str:
        command = self.kind.replay_command
        return f"; send them with `{command} FILE`" if command else ""

    def _to_spill(self, row: dict[str, Any], rounds: int) -> None:
        try:
            self.spill.append(row, rounds)
        except OSError as exc:
            logger.error(
                "audit spill write failed (%s); row %s is in the %s log only",
                exc,
                row.get("request_id"),
                self.kind.fallback_key,
            )
        else:
            self.counters.spilled += 1
