"""What a writer writes: a table, and the names its rows go by when they leave memory unwritten."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit.schema import AUDIT_TABLE, Table


@dataclass(frozen=True, slots=True)
class RowKind:
    """A kind of row the writer carries to its table, with the same guarantees for every kind."""

    table: Table
    label: str
    """The writer's name in its log lines."""
    fallback_key: str
    """The log message and JSON key of rows logged unwritten: each kind's own, so that entries holding prompt
    text can be routed away from everyone who reads the project's logs."""
    spill_folder: str = ""
    """Under the spill directory: each writer takes the spill files it finds as its own leftovers."""
    replay_command: str | None = "claude-gateway audit replay"
    """The command that sends a spill file or fallback entries of this kind back to its table."""


AUDIT_ROWS = RowKind(AUDIT_TABLE, "audit writer", "audit_fallback")
