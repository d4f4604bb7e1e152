"""Reading the embedded SQLite audit log: what `claude-gateway audit tail` and `audit summary` show."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from gateway.audit.sqlite import TABLE

# The same keys and sums as the BigQuery views (gateway/admin/views), so both give the same numbers.
SUMMARY_KEYS = {
    "user": "COALESCE(user_email, '(unauthenticated)')",
    "model": "COALESCE(served_model, requested_model, '(none)')",
    "day": "substr(timestamp, 1, 10)",
    "outcome": "outcome",
    "session": "COALESCE(session_id, '(none)')",
    "group": "COALESCE(matched.value, '(no group)')",
}


def sqlite_path(sink_url: str) -> str:
    """The file behind a `sqlite:///PATH` sink URL; a ValueError names what is wrong otherwise."""
    if not sink_url.startswith("sqlite:///"):
        raise ValueError(f"audit commands read a sqlite:/// sink; got {sink_url!r}")
    path = sink_url.removeprefix("sqlite:///")
    if not Path(path).exists():
        raise ValueError(f"no audit file at {path} (has the gateway run with this GATEWAY_AUDIT_SINK?)")
    return path


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    return connection


def tail(path: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest rows, oldest first."""
    with _connect(path) as connection:
        rows = connection.execute(
            f"SELECT * FROM {TABLE} ORDER BY timestamp DESC, rowid DESC LIMIT ?", (limit,)
        ).fetchall()
    return [dict(row) for row in reversed(rows)]


def summary(path: str, by: str, since: str | None = None) -> list[dict[str, Any]]:
    """Requests, refusals, tokens and cost grouped by user, model, day, outcome, session or group."""
    if by not in SUMMARY_KEYS:
        raise ValueError(f"--by must be one of {', '.join(SUMMARY_KEYS)}")
    where, params = ("WHERE timestamp >= ?", (since,)) if since else ("", ())
    # A request counts once for each group it matched, as in daily_usage_by_group.
    join = f"LEFT JOIN json_each({TABLE}.groups) AS matched" if by == "group" else ""
    sql = f"""
        SELECT {SUMMARY_KEYS[by]} AS key,
               COUNT(*) AS requests,
               SUM(outcome IN ('denied', 'unauthenticated', 'rate_limited')) AS refused,
               SUM(outcome NOT IN ('ok')) AS failed,
               COALESCE(SUM(input_tokens), 0) AS input_tokens,
               COALESCE(SUM(output_tokens), 0) AS output_tokens,
               COALESCE(SUM(cache_creation_input_tokens), 0) AS cache_creation_input_tokens,
               COALESCE(SUM(cache_read_input_tokens), 0) AS cache_read_input_tokens,
               ROUND(COALESCE(SUM(cost_usd), 0), 6) AS cost_usd
        FROM {TABLE} {join} {where}
        GROUP BY 1 ORDER BY cost_usd DESC, requests DESC, key
    """
    with _connect(path) as connection:
        return [dict(row) for row in connection.execute(sql, params).fetchall()]
