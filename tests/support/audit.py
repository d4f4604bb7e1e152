"""Reading the gateway's SQLite audit file from tests."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any


def wait_for_rows(
    audit_db: Path, count: int = 1, timeout: float = 5.0, *, started: bool = False
) -> list[dict[str, Any]]:
    """The final audit rows (or with `started`, every row, a request under way's started row included), oldest
    first, once at least `count` are written (the writer flushes in the background)."""
    where = "" if started else "WHERE outcome != 'started' "
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if audit_db.exists():
            with sqlite3.connect(audit_db) as connection:
                connection.row_factory = sqlite3.Row
                try:
                    rows = [dict(r) for r in connection.execute(f"SELECT * FROM audit_log {where}ORDER BY timestamp")]
                except sqlite3.OperationalError:
                    rows = []
            if len(rows) >= count:
                for row in rows:
                    row["groups"] = json.loads(row["groups"]) if row["groups"] else []
                return rows
        time.sleep(0.02)
    raise AssertionError(f"expected {count} audit rows, found {len(rows)}")
