"""Log set-up: JSON lines Cloud Logging understands in production, plain lines on a laptop."""

from __future__ import annotations

import logging
import sys

from google.cloud.logging.handlers import StructuredLogHandler

from gateway.terminal import escape, escape_text


class _TerminalFormatter(logging.Formatter):
    """Plain lines for a terminal: what a caller chose (a path, a model) cannot drive it (see gateway.terminal)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))  # the line itself stays one line

    def format(self, record: logging.LogRecord) -> str:
        return escape_text(super().format(record))  # a traceback after it keeps its lines


def configure_logging(level: str = "INFO", *, structured: bool = True, project: str | None = None) -> None:
    """Send the root logger's records to stdout as Cloud Logging JSON, or to stderr as text."""
    handler: logging.Handler
    if structured:
        handler = StructuredLogHandler(project_id=project, stream=sys.stdout)  # type: ignore[no-untyped-call]
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_TerminalFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The gateway writes its own access log with the audit fields; uvicorn's would be a second, poorer copy.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
