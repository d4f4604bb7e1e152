"""`claude-gateway audit replay FILE`: send spilled or fallback-logged rows to the sink again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.record import STARTED, insert_id
from gateway.audit.sink_base import AuditSink, BatchRefused, RowsRejected, SinkServerError


@dataclass
class ReplayResult:
    written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (request id, reason)
    unsent: int = 0
    error: str | None = None


def distinct_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each request id (a fallback log and a spill can hold a row more than once); a request's
    started row only when its final row is not there too."""
    first = list({insert_id(row): row for row in reversed(rows)}.values())[::-1]
    ended = {row["request_id"] for row in first if row.get("outcome") != STARTED}
    return [row for row in first if row.get("outcome") != STARTED or row["request_id"] not in ended]


async def replay(
    sink: AuditSink, rows: list[dict[str, Any]], *, batch_size: int = 500, attempts: int = 3, pause: float = 1.0
) -> ReplayResult:
    """Write the rows in batches, the request id as insertId; stop at the first batch the sink cannot take."""
    result = ReplayResult()
    await sink.open()
    try:
        for start in range(0, len(rows), batch_size):
            if not await _send(sink, rows[start : start + batch_size], result, attempts, pause):
                result.unsent = len(rows) - start
                break
    finally:
        await sink.aclose()
    return result


async def _send(sink: AuditSink, rows: list[dict[str, Any]], result: ReplayResult, attempts: int, pause: float) -> bool:
    """False when the sink stayed unreachable; rows it refused are noted in `result` and count as settled."""
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            await sink.write(rows)
        except RowsRejected as exc:
            bad = dict(exc.rejected)
            result.written += len(rows) - len(bad)
            result.rejected += [(rows[index]["request_id"], reason) for index, reason in bad.items()]
            return True
        except (BatchRefused, SinkServerError) as exc:
            if len(rows) > 1:
                # The sink answers, but not to this batch: halve it to find the row it chokes on.
                half = len(rows) // 2
                return await _send(sink, rows[:half], result, attempts, pause) and await _send(
                    sink, rows[half:], result, attempts, pause
                )
            if isinstance(exc, BatchRefused) or attempt == attempts - 1:
                result.rejected.append((rows[0]["request_id"], str(exc)))
                return True
            error = exc
        except Exception as exc:  # unreachable, timed out: try again, then give up for now
            error = exc
        else:
            result.written += len(rows)
            return True
        if attempt < attempts - 1:
            await asyncio.sleep(pause * 2**attempt)
    result.error = str(error)
    return False
