"""`claude-gateway audit tail|summary|replay|export|report`: read, replay, export and report on the audit log."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json

import google.auth.exceptions
import requests
from google.api_core import exceptions as api

from gateway.admin import export, query
from gateway.admin.replay import distinct_rows, replay
from gateway.audit.bigquery import TableRef, make_client
from gateway.audit.kind import AUDIT_ROWS
from gateway.audit.sinks import SinkConfigError, check_sink_url, open_sink
from gateway.audit.spill import load_rows
from gateway.capture.schema import CONTENT_ROWS, CONTENT_TABLE, default_content_sink
from gateway.cli.output import CLIError, note, say
from gateway.cli.settings import load_settings
from gateway.config import Settings
from gateway.reports.data import ReportError
from gateway.terminal import escape, field


def _audit_db(args: argparse.Namespace) -> str:
    sink = f"sqlite:///{args.db}" if args.db else load_settings(dev_mode=True).audit_sink
    try:
        return query.sqlite_path(sink)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def cmd_audit_tail(args: argparse.Namespace) -> int:
    rows = query.tail(_audit_db(args), args.n)
    if args.json:
        for row in rows:
            say(json.dumps(row, default=str))
        return 0
    if not rows:
        say("no audit rows yet")
    for row in rows:
        tokens = f"in={row['input_tokens'] or 0} out={row['output_tokens'] or 0}"
        cost = f"${row['cost_usd']:.6f}" if row["cost_usd"] is not None else "-"
        # Every text column may hold what a caller sent (the path and model always do): each is escaped and cut.
        say(
            f"{field(row['timestamp'], 40)}  {field(row['user_email'], 80):<28} {field(row['method'], 16)} "
            f"{field(row['path'])}  {field(row['status_code'], 8)} {field(row['outcome'], 32):<17} "
            f"{field(row['served_model'] or row['requested_model'], 80)}  {tokens} {cost}  "
            f"{field(row['request_id'], 64)}"
        )
    return 0


def cmd_audit_summary(args: argparse.Namespace) -> int:
    try:
        rows = query.summary(_audit_db(args), args.by, args.since)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        for row in rows:
            say(json.dumps(row))
        return 0
    say(
        f"{args.by:<32} {'requests':>8} {'refused':>7} {'failed':>6} {'input':>10} {'output':>10} "
        f"{'cache_w':>9} {'cache_r':>10} {'cost_usd':>11}"
    )
    for row in rows:
        say(
            f"{field(row['key'], 80):<32} {row['requests']:>8} {row['refused']:>7} {row['failed']:>6} "
            f"{row['input_tokens']:>10} {row['output_tokens']:>10} {row['cache_creation_input_tokens']:>9} "
            f"{row['cache_read_input_tokens']:>10} {row['cost_usd']:>11.4f}"
        )
    return 0


def cmd_audit_replay(args: argparse.Namespace) -> int:
    settings = load_settings(dev_mode=True)
    try:
        rows, skipped = load_rows(args.file, CONTENT_ROWS if args.content else AUDIT_ROWS)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read {args.file}: {exc}") from None
    unique = distinct_rows(rows)
    try:
        sink = open_sink(
            args.sink or (settings.content_sink_url if args.content else settings.audit_sink),
            bigquery_endpoint=settings.bigquery_endpoint,
            bigquery_anonymous=settings.bigquery_anonymous,
            table=CONTENT_TABLE if args.content else None,
            setting="--sink",
        )
        result = asyncio.run(replay(sink, unique, batch_size=args.batch_size))
    except (SinkConfigError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    say(
        f"{args.file}: {len(rows)} rows, {len(unique)} requests ({skipped} other lines); "
        f"{result.written} written to {sink.name}"
    )
    for request_id, reason in result.rejected:
        say(f"  rejected {field(request_id, 64)}: {field(reason, 500)}")
    if result.unsent:
        raise CLIError(
            f"{result.unsent} rows not sent ({result.error}); run the command again once the sink answers "
            "(rows already written carry their request id, so the sink can de-duplicate them)"
        )
    return 1 if result.rejected else 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    settings = load_settings(dev_mode=True)
    email = args.user.strip().lower()
    if email.count("@") != 1:
        raise CLIError(f"{args.user!r} is not an email address")
    try:
        window = export.Window(dt.date.fromisoformat(args.date_from), dt.date.fromisoformat(args.date_to))
    except ValueError as exc:
        raise CLIError(f"--from and --to take dates as YYYY-MM-DD ({exc})") from None
    if window.last < window.first:
        raise CLIError(f"--to {window.last} is before --from {window.first}")
    sink = args.sink or settings.audit_sink
    content_sink = args.content_sink or (settings.content_sink_url if not args.sink else default_content_sink(sink))
    try:
        check_sink_url(sink, "--sink")
        check_sink_url(content_sink, "--content-sink")
    except SinkConfigError as exc:
        raise CLIError(str(exc)) from None
    if sink.startswith("sqlite:///"):
        try:
            path = query.sqlite_path(sink)
            content_path = query.sqlite_path(content_sink) if args.content else None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        found = export.from_sqlite(path, email, window, content_path=content_path)
    else:
        found = _export_bigquery(
            settings,
            TableRef.from_url(sink),
            email,
            window,
            TableRef.from_url(content_sink) if args.content else None,
        )
    # Faithful (non-ASCII kept) yet safe to show: JSON escapes C0 controls itself; `escape` adds the C1 and
    # bidirectional ones, as JSON escapes, so the file parses to the same values.
    lines = (escape(json.dumps(line, ensure_ascii=False, default=str)) for line in found.lines())
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as out:
                for line in lines:
                    out.write(line + "\n")
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    else:
        for line in lines:
            say(line)
    content = f", {found.content_rows} with captured content" if args.content else ""
    note(
        f"{email}: {len(found.requests)} requests from {window.first} to {window.last} (UTC){content}"
        + (f", written to {args.out}" if args.out else "")
    )
    return 0


def _export_bigquery(
    settings: Settings, table: TableRef, email: str, window: export.Window, content: TableRef | None
) -> export.Export:
    try:
        client = make_client(table.project, endpoint=settings.bigquery_endpoint, anonymous=settings.bigquery_anonymous)
        try:
            return export.from_bigquery(client, table, email, window, content_table=content)
        finally:
            client.close()  # type: ignore[no-untyped-call]
    except api.Forbidden as exc:
        what = "the content table" if content is not None else "the audit table"
        raise CLIError(
            f"BigQuery refused to read {what} ({exc.message}); reading content needs its own grant "
            "(content_reader_groups in Terraform)"
        ) from None
    except api.GoogleAPICallError as exc:
        raise CLIError(f"BigQuery query failed: {exc.message}") from None
    except (SinkConfigError, requests.RequestException, google.auth.exceptions.GoogleAuthError) as exc:
        raise CLIError(f"cannot reach BigQuery: {exc}") from None


def cmd_audit_report(args: argparse.Namespace) -> int:
    # matplotlib draws the report's charts and is slow to import: only this command pays for it.
    from gateway.reports.command import make_report, summary_line

    try:
        of = dt.date.fromisoformat(args.of) if args.of else None
    except ValueError as exc:
        raise CLIError(f"--of takes a date as YYYY-MM-DD ({exc})") from None
    try:
        written = make_report(
            load_settings(dev_mode=True),
            period=args.period,
            out=args.out,
            of=of,
            group=args.group,
            sink=args.sink,
            max_scan_gb=args.max_scan_gb,
            say=note,
        )
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    say(summary_line(written))
    return 0
