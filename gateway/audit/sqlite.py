"""The embedded audit sink: a local SQLite file with the same columns as the BigQuery tables."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio.to_thread

from gateway.audit.record import STARTED
from gateway.audit.schema import AUDIT_TABLE, Table

TABLE = AUDIT_TABLE.sqlite_name
_SQL_TYPES = {"STRING": "TEXT", "TIMESTAMP": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "BOOL": "INTEGER"}


def _sql_type(column: Any) -> str:
    return "TEXT" if column.mode == "REPEATED" else _SQL_TYPES[column.type]


def create_table_sql(table: Table = AUDIT_TABLE) -> str:
    columns = []
    for column in table.columns:
        suffix = " PRIMARY KEY" if column.name == table.key else ""
        columns.append(f"{column.name} {_sql_type(column)}{suffix}")
    return f"CREATE TABLE IF NOT EXISTS {table.sqlite_name} ({', '.join(columns)})"


def add_missing_columns(connection: sqlite3.Connection, table: Table = AUDIT_TABLE) -> list[str]:
    """Bring a table made by an older gateway up to the schema: SQLite, like BigQuery, lets columns be added."""
    have = {row[1] for row in connection.execute(f"PRAGMA table_info({table.sqlite_name})")}
    missing = [column for column in table.columns if column.name not in have]
    for column in missing:
        connection.execute(f"ALTER TABLE {table.sqlite_name} ADD COLUMN {column.name} {_sql_type(column)}")
    return [column.name for column in missing]


def connect(path: str, table: Table = AUDIT_TABLE) -> sqlite3.Connection:
    """A connection to the audit file with the table in place and up to date."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Two sinks (metadata and content) may share the file: wait for the other's transaction rather than fail.
    connection = sqlite3.connect(path, check_same_thread=False, timeout=10)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(create_table_sql(table))
    add_missing_columns(connection, table)
    name = table.sqlite_name
    connection.execute(f"CREATE INDEX IF NOT EXISTS {name}_timestamp ON {name} (timestamp)")
    if not unique_request_id(connection, table):
        try:
            connection.execute(f"CREATE UNIQUE INDEX {name}_{table.key} ON {name} ({table.key})")
        except sqlite3.IntegrityError:
            pass  # a file that already holds a request twice: rows are then only appended
    connection.commit()
    return connection


def unique_request_id(connection: sqlite3.Connection, table: Table = AUDIT_TABLE) -> bool:
    """Whether the table keeps one row per request id (its primary key, or a unique index)."""
    for index in connection.execute(f"PRAGMA index_list({table.sqlite_name})").fetchall():
        columns = [column[2] for column in connection.execute(f"PRAGMA index_info({index[1]})")]
        if index[2] and columns == [table.key]:
            return True
    return False


def _to_sqlite(row: dict[str, Any], names: tuple[str, ...]) -> tuple[Any, ...]:
    values = []
    for name in names:
        value = row.get(name)
        if isinstance(value, list):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        values.append(value)
    return tuple(values)


class SQLiteSink:
    """Writes batches with one transaction each; a request id already present is not written twice (but a final
    row takes the place of the request's started row)."""

    name = "sqlite"

    def __init__(self, path: str, table: Table = AUDIT_TABLE) -> None:
        self.path = path
        self.table = table
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        names = table.names
        placeholders = ", ".join("?" for _ in names)
        self._insert = f"INSERT OR IGNORE INTO {table.sqlite_name} ({', '.join(names)}) VALUES ({placeholders})"
        name = table.sqlite_name
        updates = ", ".join(f"{column} = excluded.{column}" for column in names if column != "request_id")
        # One row per request: a request's final row replaces its started row, never the other way round.
        self._upsert = (
            f"INSERT INTO {name} ({', '.join(names)}) VALUES ({placeholders}) ON CONFLICT (request_id) DO UPDATE "
            f"SET {updates} WHERE {name}.outcome = '{STARTED}' AND excluded.outcome != '{STARTED}'"
        )

    async def open(self) -> None:
        try:
            self._connection = await anyio.to_thread.run_sync(connect, self.path, self.table)
        except sqlite3.Error as exc:
            raise RuntimeError(f"cannot open the SQLite audit file {self.path}: {exc}") from exc
        if "outcome" in self.table.names and unique_request_id(self._connection, self.table):
            self._insert = self._upsert

    async def write(self, rows: list[dict[str, Any]]) -> None:
        names = self.table.names
        await anyio.to_thread.run_sync(self._write, [_to_sqlite(row, names) for row in rows])

    def _write(self, values: list[tuple[Any, ...]]) -> None:
        if self._connection is None:
            raise RuntimeError("SQLite audit sink used before open()")
        with self._lock, self._connection:
            self._connection.executemany(self._insert, values)

    async def aclose(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await anyio.to_thread.run_sync(connection.close)
