"""The embedded audit sink: a local SQLite file with the same columns as the BigQuery table."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio.to_thread

from gateway.audit.schema import AUDIT_COLUMNS, COLUMN_NAMES

TABLE = "audit_log"
_SQL_TYPES = {"STRING": "TEXT", "TIMESTAMP": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "BOOL": "INTEGER"}


def create_table_sql() -> str:
    columns = []
    for column in AUDIT_COLUMNS:
        sql_type = "TEXT" if column.mode == "REPEATED" else _SQL_TYPES[column.type]
        suffix = " PRIMARY KEY" if column.name == "request_id" else ""
        columns.append(f"{column.name} {sql_type}{suffix}")
    return f"CREATE TABLE IF NOT EXISTS {TABLE} ({', '.join(columns)})"


def connect(path: str) -> sqlite3.Connection:
    """A connection to the audit file with the table in place."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(create_table_sql())
    connection.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_timestamp ON {TABLE} (timestamp)")
    connection.commit()
    return connection


def _to_sqlite(row: dict[str, Any]) -> tuple[Any, ...]:
    values = []
    for name in COLUMN_NAMES:
        value = row.get(name)
        if isinstance(value, list):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        values.append(value)
    return tuple(values)


class SQLiteSink:
    """Writes batches with one transaction each; a request id already present is not written twice."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        placeholders = ", ".join("?" for _ in COLUMN_NAMES)
        self._insert = f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMN_NAMES)}) VALUES ({placeholders})"

    async def open(self) -> None:
        try:
            self._connection = await anyio.to_thread.run_sync(connect, self.path)
        except sqlite3.Error as exc:
            raise RuntimeError(f"cannot open the SQLite audit file {self.path}: {exc}") from exc

    async def write(self, rows: list[dict[str, Any]]) -> None:
        await anyio.to_thread.run_sync(self._write, [_to_sqlite(row) for row in rows])

    def _write(self, values: list[tuple[Any, ...]]) -> None:
        if self._connection is None:
            raise RuntimeError("SQLite audit sink used before open()")
        with self._lock, self._connection:
            self._connection.executemany(self._insert, values)

    async def aclose(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await anyio.to_thread.run_sync(connection.close)
