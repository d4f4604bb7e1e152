"""`claude-gateway bq schema|init`: the BigQuery audit table's schema, and creating it with its views."""

from __future__ import annotations

import argparse
import json

import google.auth.exceptions
import requests

from gateway.admin import bq_admin
from gateway.audit.bigquery import TableRef, make_client
from gateway.audit.schema import bigquery_schema_json
from gateway.audit.sinks import SinkConfigError
from gateway.capture.schema import content_schema_json, default_content_sink
from gateway.cli.output import CLIError, say
from gateway.cli.settings import load_settings
from gateway.config import Settings


def _bigquery_target(sink: str | None) -> tuple[TableRef, Settings]:
    """The audit table a command works on (`--sink`, else GATEWAY_AUDIT_SINK), and the settings it came from."""
    settings = load_settings(dev_mode=True)
    try:
        return TableRef.from_url(sink or settings.audit_sink), settings
    except SinkConfigError as exc:
        raise CLIError(f"{exc} (or pass --sink bigquery://PROJECT/DATASET/TABLE)") from None


def cmd_bq_schema(args: argparse.Namespace) -> int:
    say(json.dumps(content_schema_json() if args.content else bigquery_schema_json(), indent=2))
    return 0


def cmd_bq_init(args: argparse.Namespace) -> int:
    table, settings = _bigquery_target(args.sink)
    try:
        content = None
        if not args.no_content:
            content = TableRef.from_url(
                args.content_sink
                or (settings.content_sink if settings.content_sink and not args.sink else None)
                or default_content_sink(table.url),
                "--content-sink",
            )
        client = make_client(table.project, endpoint=settings.bigquery_endpoint, anonymous=settings.bigquery_anonymous)
        bq_admin.init(
            client,
            table,
            location=args.location,
            views_dataset=args.views_dataset or f"{table.dataset}_security",
            retention_days=args.retention_days,
            content=content,
            content_retention_days=args.content_retention_days,
            say=say,
        )
    except (bq_admin.InitError, SinkConfigError) as exc:
        raise CLIError(str(exc)) from None
    except (requests.RequestException, google.auth.exceptions.GoogleAuthError) as exc:
        raise CLIError(f"cannot reach BigQuery: {exc}") from None
    return 0
