"""Log set-up: JSON lines Cloud Logging understands in production, plain lines on a laptop."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
from google.cloud.logging.handlers import StructuredLogHandler

from gateway.terminal import escape, escape_text


class _TerminalFormatter(logging.Formatter):
    """Plain lines for a terminal: what a caller chose (a path, a model) cannot drive it (see gateway.terminal)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))  # the line itself stays one line

    def format(self, record: logging.LogRecord) -> str:
        return escape_text(super().format(record))  # a traceback after it keeps its lines


ACCESS_LOGGER = "gateway.access"


class AccessLineHandler(logging.Handler):
    """The access log's lines in the shape StructuredLogHandler gives them (what Cloud Logging and the log-based
    metrics read: the logger's name as the `python_logger` label, `json_fields` at the top, `httpRequest`, the
    trace), written with one orjson call. One line per request is on every request's path; the general handler's
    caller lookups, filters and three json.dumps per line cost three times as much CPU."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = dict(getattr(record, "json_fields", None) or {})
            entry["message"] = record.getMessage()
            entry["severity"] = record.levelname
            entry["logging.googleapis.com/labels"] = {"python_logger": record.name}
            if trace := getattr(record, "trace", None):
                entry["logging.googleapis.com/trace"] = trace
            if http_request := getattr(record, "http_request", None):
                entry["httpRequest"] = http_request
            self.stream.write(orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE).decode())
            self.stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(
    level: str = "INFO", *, structured: bool = True, project: str | None = None, stream: TextIO | None = None
) -> None:
    """Send the root logger's records to stdout (or `stream`) as Cloud Logging JSON, or to stderr as text."""
    handler: logging.Handler
    access = logging.getLogger(ACCESS_LOGGER)
    for existing in list(access.handlers):
        access.removeHandler(existing)
    access.propagate = True
    if structured:
        out = stream or sys.stdout
        handler = StructuredLogHandler(project_id=project, stream=out)  # type: ignore[no-untyped-call]
        access.addHandler(AccessLineHandler(out))
        access.propagate = False
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_TerminalFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The gateway writes its own access log with the audit fields; uvicorn's would be a second, poorer copy.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
