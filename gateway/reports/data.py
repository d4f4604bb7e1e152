"""What a usage report counts: the audit rows of a month or a week, summed per day, person, groups, model, outcome
and price source, from the SQLite file or BigQuery, counted as the security views count them."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from gateway.audit.record import STARTED
from gateway.audit.sqlite import TABLE

if TYPE_CHECKING:
    from google.cloud import bigquery

    from gateway.audit.bigquery import TableRef

PERIODS = ("month", "week")
REFUSED = ("denied", "rate_limited", "unauthenticated")  # as the views' `refused` column
NO_GROUP = "(no group)"
UNAUTHENTICATED = "(unauthenticated)"
NOT_PRICED = "(not priced)"


class ReportError(ValueError):
    """A report that cannot be made, said in one line."""


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar month or a Monday-to-Sunday week, in whole UTC days."""

    kind: str
    first: date
    last: date  # inclusive

    @classmethod
    def of(cls, kind: str, day: date) -> Period:
        if kind == "month":
            first = day.replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
            return cls(kind, first, following - timedelta(days=1))
        if kind == "week":
            first = day - timedelta(days=day.weekday())
            return cls(kind, first, first + timedelta(days=6))
        raise ReportError(f"--period must be one of {', '.join(PERIODS)}; got {kind!r}")

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), UTC)

    @property
    def end(self) -> datetime:
        """The first moment after the period."""
        return datetime.combine(self.last + timedelta(days=1), time(), UTC)

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    @property
    def label(self) -> str:
        if self.kind == "month":
            return self.first.strftime("%B %Y")
        iso = self.first.isocalendar()
        return f"week {iso.week} of {iso.year} ({self.first:%d %b} to {self.last:%d %b %Y})"


@dataclass(frozen=True, slots=True)
class Line:
    """Requests of one day, person, set of groups, model, outcome, price source and policy rule, summed."""

    day: date
    user: str
    groups: tuple[str, ...]
    model: str
    outcome: str
    price_source: str
    policy_rule: str
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        """As the views count tokens: input + output + cache writes + cache reads."""
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def refused(self) -> bool:
        return self.outcome in REFUSED


@dataclass(frozen=True, slots=True)
class Total:
    key: str
    requests: int
    refused: int
    tokens: int
    cost_usd: float


def total(key: str, lines: Iterable[Line]) -> Total:
    lines = list(lines)
    return Total(
        key,
        sum(line.requests for line in lines),
        sum(line.requests for line in lines if line.refused),
        sum(line.tokens for line in lines),
        math.fsum(line.cost_usd for line in lines),
    )


def totals_by(lines: Iterable[Line], keys: Callable[[Line], Iterable[str]]) -> list[Total]:
    """Totals per key, most cost first; a line counts once for each of its keys (a person's several groups)."""
    grouped: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        for key in keys(line):
            grouped[key].append(line)
    return sorted((total(key, found) for key, found in grouped.items()), key=lambda t: (-t.cost_usd, -t.tokens, t.key))


def groups_of(line: Line) -> tuple[str, ...]:
    return line.groups or (NO_GROUP,)


# What both queries total per day, person, groups, model, outcome, price source and rule, over one row per request
# (`audit`); each dialect writes its own day and groups columns before this.
_TOTALS = """
           COALESCE(served_model, requested_model, '(none)') AS model,
           outcome,
           COALESCE(price_source, '') AS price_source,
           COALESCE(policy_rule, '') AS policy_rule,
           COUNT(*) AS requests,
           COALESCE(SUM(input_tokens), 0) AS input_tokens,
           COALESCE(SUM(output_tokens), 0) AS output_tokens,
           COALESCE(SUM(cache_creation_input_tokens), 0) AS cache_creation_input_tokens,
           COALESCE(SUM(cache_read_input_tokens), 0) AS cache_read_input_tokens,
           COALESCE(SUM(cost_usd), 0) AS cost_usd
    FROM audit
    GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

# --- SQLite ---------------------------------------------------------------------------------------------------------

# One row per request (the first written), final rows only: as the views, whatever the file holds.
_SQLITE = (
    f"""
    WITH audit AS (
      SELECT * FROM {TABLE} WHERE rowid IN (
        SELECT MIN(rowid) FROM {TABLE}
        WHERE timestamp >= ? AND timestamp < ? AND outcome != '{STARTED}'
        GROUP BY request_id
      )
    )
    SELECT substr(timestamp, 1, 10) AS day,
           COALESCE(user_email, '{UNAUTHENTICATED}') AS user,
           COALESCE(groups, '[]') AS groups,
"""
    + _TOTALS
)


def from_sqlite(path: str, period: Period) -> list[Line]:
    bounds = (period.start.strftime("%Y-%m-%dT%H:%M:%S"), period.end.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            connection.row_factory = sqlite3.Row
            rows = connection.execute(_SQLITE, bounds).fetchall()
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read the audit file {path}: {exc}") from None
    return [_line({**dict(row), "groups": _json_groups(row["groups"])}) for row in rows]


def _json_groups(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(group) for group in value] if isinstance(value, list) else []


# --- BigQuery -------------------------------------------------------------------------------------------------------

# Only the columns the report needs: BigQuery bills the columns a query reads, over the period's partitions only.
_BIGQUERY = (
    """
    WITH audit AS (
      SELECT request_id, timestamp, user_email, `groups`, served_model, requested_model, outcome, price_source,
             policy_rule, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd
      FROM {table}
      WHERE timestamp >= @start AND timestamp < @end AND outcome != '{started}'
      QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
    )
    SELECT CAST(DATE(timestamp) AS STRING) AS day,
           COALESCE(user_email, '{unauthenticated}') AS user,
           ARRAY_TO_STRING(`groups`, ',') AS `groups`,
"""
    + _TOTALS
)


def from_bigquery(
    client: bigquery.Client, table: TableRef, period: Period, *, max_bytes: int, say: Callable[[str], None]
) -> tuple[list[Line], int]:
    """The period's lines and the bytes the query was estimated to scan. A dry run first: its estimate is said,
    and a query over `max_bytes` is refused before it runs (and BigQuery holds it to that limit too)."""
    from google.cloud import bigquery

    sql = _BIGQUERY.format(table=table.sql, started=STARTED, unauthenticated=UNAUTHENTICATED)
    parameters = [
        bigquery.ScalarQueryParameter("start", "TIMESTAMP", period.start),
        bigquery.ScalarQueryParameter("end", "TIMESTAMP", period.end),
    ]
    dry = client.query(
        sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False, query_parameters=parameters)
    )
    scanned = int(dry.total_bytes_processed or 0)
    say(f"BigQuery: this report scans {human_bytes(scanned)} of {table.path} (limit {human_bytes(max_bytes)})")
    check_scan(scanned, max_bytes)
    config = bigquery.QueryJobConfig(query_parameters=parameters, maximum_bytes_billed=max(max_bytes, 10 * 2**20))
    rows = client.query(sql, job_config=config).result()
    lines = []
    for row in rows:
        values = dict(row.items())
        values["groups"] = [group for group in (values["groups"] or "").split(",") if group]
        lines.append(_line(values))
    return lines, scanned


def check_scan(scanned: int, max_bytes: int) -> None:
    """Refuse a query estimated to scan more than the limit, saying how to go on."""
    if scanned > max_bytes:
        raise ReportError(
            f"the report would scan {human_bytes(scanned)} of BigQuery data, over the limit of "
            f"{human_bytes(max_bytes)}: raise it with --max-scan-gb, or report a shorter period (--period week)"
        )


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _line(values: dict[str, Any]) -> Line:
    day = values["day"]
    return Line(
        day=day if isinstance(day, date) else date.fromisoformat(str(day)),
        user=str(values["user"]),
        groups=tuple(values["groups"]),
        model=str(values["model"]),
        outcome=str(values["outcome"]),
        price_source=str(values["price_source"]) or NOT_PRICED,
        policy_rule=str(values["policy_rule"]),
        requests=int(values["requests"]),
        input_tokens=int(values["input_tokens"]),
        output_tokens=int(values["output_tokens"]),
        cache_creation_input_tokens=int(values["cache_creation_input_tokens"]),
        cache_read_input_tokens=int(values["cache_read_input_tokens"]),
        cost_usd=float(values["cost_usd"]),
    )
