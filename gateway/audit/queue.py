"""The writer's queue: rows in the order they came, and the started rows of requests still under way."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from gateway.audit.record import AuditRecord, rfc3339
from gateway.audit.spill import Pending

logger = logging.getLogger("gateway.audit")


class Admission:
    """A request under way: written as its `started` row if its final row has not come by the next flush."""

    __slots__ = ("record", "settled")

    def __init__(self, record: AuditRecord) -> None:
        self.record = record
        self.settled = False


Item = AuditRecord | dict[str, Any] | Admission


class RowQueue:
    """Rows with when each was queued, bounded by `size`; a request's final row makes its queued admission moot."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[tuple[float, Item]] = deque()  # (when queued, row)
        self._admissions: dict[str, Admission] = {}  # requests under way whose started row is still queued
        self._moot = 0  # queued admissions whose request has ended: nothing to write

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.size

    @property
    def pending(self) -> int:
        """Rows waiting, moot admissions aside."""
        return len(self._items) - self._moot

    @property
    def oldest(self) -> float:
        """When the row at the head was queued."""
        return self._items[0][0]

    def admit(self, when: float, record: AuditRecord) -> None:
        admission = Admission(record)
        self._admissions[record.request_id] = admission
        self._items.append((when, admission))

    def settle(self, record: AuditRecord | dict[str, Any]) -> None:
        """The request's final row has come: its admission, if still queued, is moot."""
        if self._admissions and isinstance(record, AuditRecord):
            admission = self._admissions.pop(record.request_id, None)
            if admission is not None:
                admission.settled = True
                self._moot += 1

    def append(self, when: float, record: AuditRecord | dict[str, Any]) -> None:
        # Kept as the record: turning it into a row costs more than the append, and happens in the batch.
        self._items.append((when, record))

    def take(self, count: int) -> list[Pending]:
        """Up to `count` rows from the head, made rows now, never failed over yet."""
        batch: list[Pending] = []
        while self._items and len(batch) < count:
            row = self._to_row(self._items.popleft()[1])
            if row is not None:
                batch.append((row, 0))
        return batch

    def put_back(self, when: float, rows: Iterable[dict[str, Any]]) -> None:
        """Rows taken but not settled, back at the head in their order."""
        self._items.extendleft((when, row) for row in reversed(list(rows)))

    def take_all(self) -> list[Pending]:
        """Every row left, the queue emptied."""
        left = [(row, 0) for row in (self._to_row(item) for _, item in self._items) if row is not None]
        self._items.clear()
        self._moot = 0
        return left

    def _to_row(self, item: Item) -> dict[str, Any] | None:
        """The row to write; None for an admission whose request has ended (its final row says it all)."""
        if isinstance(item, Admission):
            if item.settled:
                self._moot -= 1
                return None
            self._admissions.pop(item.record.request_id, None)
            return item.record.admission_row()
        return to_row(item)


def to_row(item: AuditRecord | dict[str, Any]) -> dict[str, Any]:
    """A record as its table row; a dict is a row already."""
    if not isinstance(item, AuditRecord):
        return item
    try:
        return item.to_row()
    except Exception:  # pragma: no cover - a record of plain values always converts; keep at least the request
        logger.exception("audit record %s could not be converted; writing its required columns only", item.request_id)
        return {
            "request_id": str(item.request_id),
            "timestamp": rfc3339(datetime.now(UTC)),
            "method": str(item.method),
            "path": str(item.path),
            "status_code": 0,
            "outcome": "gateway_error",
        }
