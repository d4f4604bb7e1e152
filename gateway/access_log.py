"""The access log: one structured line per request, with Cloud Logging's `httpRequest` and the audit fields.

terraform/monitoring.tf builds its log-based metrics on these lines (`labels.python_logger="gateway.access"`):
a field renamed here is a metric that silently stops counting (tests/deploy/test_monitoring.py)."""

from __future__ import annotations

import logging
from typing import Any

from gateway.audit.record import AuditRecord
from gateway.logs import ACCESS_LOGGER

access_logger = logging.getLogger(ACCESS_LOGGER)
NO_GROUP = "(no group)"  # as the daily_usage_by_group view names requests without a matched group


def log_access(record: AuditRecord, project: str | None) -> None:
    level = logging.INFO if record.status_code < 400 else logging.WARNING
    if not access_logger.isEnabledFor(level):
        return
    extra: dict[str, Any] = {
        "http_request": {
            "requestMethod": record.method,
            "requestUrl": record.path,
            "status": record.status_code,
            "latency": f"{(record.duration_ms or 0) / 1000:.6f}s",
            "userAgent": record.user_agent,
            "remoteIp": record.client_ip,
            "requestSize": record.request_bytes,
            "responseSize": record.response_bytes,
        },
        "json_fields": {
            "request_id": record.request_id,
            "user": record.user_email,
            "outcome": record.outcome,
            "model": record.served_model or record.requested_model,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "upstream": record.upstream,
            "attempts": record.attempts,
            "upstream_failures": record.upstream_failures,
            # For the log-based metrics: one string (a metric label cannot be a list), and the views' token total.
            "groups": ",".join(record.groups) or NO_GROUP,
            "tokens": (record.input_tokens or 0)
            + (record.output_tokens or 0)
            + (record.cache_creation_input_tokens or 0)
            + (record.cache_read_input_tokens or 0),
            "cost_usd": record.cost_usd,
            "ttfb_ms": record.ttfb_ms,
        },
    }
    if record.trace_id and project:
        extra["trace"] = f"projects/{project}/traces/{record.trace_id}"
    access_logger.log(level, "%s %s %s %s", record.method, record.path, record.status_code, record.outcome, extra=extra)
