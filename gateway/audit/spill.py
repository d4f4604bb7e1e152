"""The spill: audit rows that could not stay in memory wait in local JSON-lines files until the sink is back."""

from __future__ import annotations

import io
import logging
import os
import secrets
import tempfile
from collections import deque
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.audit.kind import AUDIT_ROWS, RowKind
from gateway.audit.schema import Table

logger = logging.getLogger("gateway.audit")

SUFFIX = ".jsonl"

Pending = tuple[dict[str, Any], int]  # a row, and how many times it has been failed over


def default_spill_dir() -> str:
    """`$TMPDIR/claude-gateway-audit` (on Cloud Run, /tmp is memory and goes with the instance)."""
    return os.path.join(tempfile.gettempdir(), "claude-gateway-audit")


class Spill:
    """Append-only files of `{"row": ..., "rounds": n}` lines, one set per process, read back oldest first.

    `rounds` counts how often a row has already been failed over, so a row the sink keeps refusing is
    eventually left to the audit_fallback log instead of cycling for ever."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.pending_rows = 0
        self._prefix = f"spill-{os.getpid()}-{secrets.token_hex(4)}-"
        self._sequence = 0
        self._active: IO[bytes] | None = None
        self._active_path: Path | None = None
        self._backlog: deque[Path] = deque()
        self._reader: io.BufferedReader | None = None
        self._reading: Path | None = None
        self._uncommitted = 0
        self._committed_at = 0  # offset in the file being read up to which rows are settled

    def prepare(self) -> list[Path]:
        """Create the directory and prove it writable; the spill files other processes left there."""
        try:
            # Rows name people: only the gateway's own user may read them.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.directory / f".{self._prefix}probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"audit spill directory {self.directory} is not writable: {exc.strerror}") from None
        return sorted(self.directory.glob(f"spill-*{SUFFIX}"))

    def append(self, row: dict[str, Any], rounds: int) -> None:
        """Add one row; raises OSError if the disk refuses (the caller then relies on the log alone)."""
        if self._active is None:
            self._sequence += 1
            self._active_path = self.directory / f"{self._prefix}{self._sequence:06d}{SUFFIX}"
            descriptor = os.open(self._active_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._active = os.fdopen(descriptor, "ab")
        self._active.write(orjson.dumps({"row": row, "rounds": rounds}) + b"\n")
        self._active.flush()
        self.pending_rows += 1

    def read_batch(self, size: int) -> list[Pending]:
        """Up to `size` rows from the oldest file; `commit()` once they are settled, else they stay on disk."""
        if self._reader is None and not self._open_next():
            return []
        assert self._reader is not None
        batch: list[Pending] = []
        while len(batch) < size:
            line = self._reader.readline()
            if not line:
                break
            self._uncommitted += 1
            try:
                entry = orjson.loads(line)
                batch.append((entry["row"], int(entry.get("rounds", 0))))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                # Only a crash mid-write leaves a broken line; that row is also in the audit_fallback log.
                logger.warning("skipped an unreadable line in audit spill file %s", self._reading)
        return batch

    def commit(self) -> None:
        """The rows last read are settled: count them off, and delete the file once it is read to the end."""
        self.pending_rows = max(0, self.pending_rows - self._uncommitted)
        self._uncommitted = 0
        if self._reader is None:
            return
        self._committed_at = self._reader.tell()
        if self._reader.peek(1) == b"":
            self._reader.close()
            self._reader = None
            self._committed_at = 0
            if self._reading is not None:
                self._reading.unlink(missing_ok=True)
                self._reading = None

    def rewind(self) -> None:
        """The rows last read were not settled: read them again next time."""
        if self._reader is not None:
            self._reader.seek(self._committed_at)
        self._uncommitted = 0

    def close(self) -> list[Path]:
        """Close the files; the ones that still hold unsettled rows."""
        for handle in (self._active, self._reader):
            if handle is not None:
                handle.close()
        self._active = self._reader = None
        remaining = [path for path in (self._reading, *self._backlog, self._active_path) if path and path.exists()]
        return list(dict.fromkeys(remaining))

    def _open_next(self) -> bool:
        if not self._backlog and self._active is not None:
            # Start a new file for appends, and read the one that was being written.
            self._active.close()
            self._active = None
            assert self._active_path is not None
            self._backlog.append(self._active_path)
            self._active_path = None
        if not self._backlog:
            return False
        self._reading = self._backlog.popleft()
        self._reader = self._reading.open("rb")
        return True


def load_rows(path: str | Path, kind: RowKind = AUDIT_ROWS) -> tuple[list[dict[str, Any]], int]:
    """Rows of a kind from a spill file, or from its fallback entries in a log (JSON lines, or the JSON array
    `gcloud logging read --format=json` prints), with integer columns made integers again; and how many
    lines held no row (other log lines, or a line a crash cut short)."""
    data = Path(path).read_bytes()
    entries: list[Any] = []
    skipped = 0
    if data.lstrip()[:1] == b"[":
        entries = orjson.loads(data)
    else:
        for line in data.splitlines():
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                skipped += bool(line.strip())
    rows = []
    for entry in entries:
        row = _row_of(entry, kind.fallback_key)
        if row is not None and isinstance(row.get("request_id"), str):
            rows.append(coerce_row(row, kind.table))
        else:
            skipped += 1
    return rows, skipped


def _row_of(entry: Any, fallback_key: str) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    for holder in (entry, entry.get("jsonPayload")):
        if isinstance(holder, dict):
            for key in ("row", fallback_key):
                if isinstance(holder.get(key), dict):
                    return dict(holder[key])
    return entry if "request_id" in entry else None


def coerce_row(row: dict[str, Any], table: Table = AUDIT_ROWS.table) -> dict[str, Any]:
    """Cloud Logging keeps every JSON number as a double: give the table's integer columns their integers back."""
    for name in (column.name for column in table.columns if column.type == "INT64"):
        value = row.get(name)
        if isinstance(value, float) and value.is_integer():
            row[name] = int(value)
    return row
