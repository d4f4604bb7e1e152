"""`claude-gateway audit report`: read a period's audit rows from the sink, write the HTML report and its CSV."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.reports.data import Line, Period, ReportError, from_bigquery, from_sqlite, groups_of, total
from gateway.reports.page import Report, money, render_html, write_csv

if TYPE_CHECKING:
    from gateway.config import Settings

DEFAULT_MAX_SCAN_GB = 10.0


@dataclass(frozen=True, slots=True)
class Written:
    html: Path
    csv: Path
    report: Report


def make_report(
    settings: Settings,
    *,
    period: str,
    out: str,
    of: date | None = None,
    group: str | None = None,
    sink: str | None = None,
    max_scan_gb: float = DEFAULT_MAX_SCAN_GB,
    say: Callable[[str], None] = lambda _: None,
) -> Written:
    """Read the rows, filter by group, write FILE and FILE's .csv; a ReportError says in one line what is wrong."""
    chosen = Period.of(period, of or datetime.now(UTC).date())
    html_path = Path(out)
    if html_path.suffix.lower() == ".csv":
        raise ReportError(f"--out {out}: name the HTML file (e.g. report.html); the CSV is written beside it")
    if not max_scan_gb > 0:
        raise ReportError(f"--max-scan-gb must be above 0; got {max_scan_gb}")
    csv_path = html_path.with_suffix(".csv")
    lines, source = _read(settings, sink or settings.audit_sink, chosen, int(max_scan_gb * 2**30), say)
    if group is not None:
        group = group.strip().lower()
        in_period = {name for line in lines for name in line.groups}
        if group not in in_period and group not in _policy_groups(settings):
            known = ", ".join(sorted(in_period)) or "none"
            raise ReportError(
                f"no group {group!r} in the audit rows of {chosen.label} nor in the policy file; "
                f"groups with requests in that period: {known}"
            )
        lines = [line for line in lines if group in groups_of(line)]
    report = Report(chosen, lines, source, group, datetime.now(UTC))
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(report), encoding="utf-8")
        write_csv(str(csv_path), lines)
    except OSError as exc:
        raise ReportError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    return Written(html_path, csv_path, report)


def dev_report(settings: Settings, audit_db: str) -> Path:
    """This month's report of a `claude-gateway dev` audit file, beside it."""
    out = Path(audit_db).with_name(Path(audit_db).stem + "-report.html")
    return make_report(settings, period="month", out=str(out), sink=f"sqlite:///{audit_db}").html.resolve()


def summary_line(written: Written) -> str:
    report = written.report
    if not report.lines:
        return f"{written.html}: no requests in {report.period.label}; the report says so (CSV: {written.csv})"
    overall = total("all", report.lines)
    return (
        f"{written.html}: {report.period.label}, {overall.requests:,} requests, {report.people} people, "
        f"{overall.tokens:,} tokens, {money(overall.cost_usd)} (CSV: {written.csv})"
    )


def _read(
    settings: Settings, sink: str, period: Period, max_bytes: int, say: Callable[[str], None]
) -> tuple[list[Line], str]:
    from gateway.audit.sinks import SinkConfigError, check_sink_url

    try:
        check_sink_url(sink, "--sink")
    except SinkConfigError as exc:
        raise ReportError(str(exc)) from None
    if sink.startswith("sqlite:///"):
        from gateway.admin import query

        try:
            path = query.sqlite_path(sink)
        except ValueError as exc:
            raise ReportError(str(exc)) from None
        return from_sqlite(path, period), path
    return _read_bigquery(settings, sink, period, max_bytes, say)


def _read_bigquery(
    settings: Settings, sink: str, period: Period, max_bytes: int, say: Callable[[str], None]
) -> tuple[list[Line], str]:
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    from gateway.audit.bigquery import TableRef, make_client
    from gateway.audit.sinks import SinkConfigError

    table = TableRef.from_url(sink, "--sink")
    try:
        client = make_client(table.project, endpoint=settings.bigquery_endpoint, anonymous=settings.bigquery_anonymous)
        try:
            lines, _ = from_bigquery(client, table, period, max_bytes=max_bytes, say=say)
        finally:
            client.close()  # type: ignore[no-untyped-call]
    except api.Forbidden as exc:
        raise ReportError(
            f"BigQuery refused to read {table.path} ({exc.message}); the security views' readers "
            "read the views, not the table: ask for roles/bigquery.dataViewer on it"
        ) from None
    except api.GoogleAPICallError as exc:
        raise ReportError(f"BigQuery query failed: {str(exc.message).splitlines()[0]}") from None
    except (SinkConfigError, requests.RequestException, google.auth.exceptions.GoogleAuthError) as exc:
        raise ReportError(f"cannot reach BigQuery: {exc}") from None
    return lines, f"BigQuery {table.path}"


def _policy_groups(settings: Settings) -> set[str]:
    """Groups the policy file names, when one is configured and readable (a report does not need one)."""
    if not settings.policy_file:
        return set()
    from gateway.policy.loader import PolicyFileError, load_policy

    try:
        return {name.lower() for name in load_policy(settings.policy_file).groups}
    except (PolicyFileError, OSError):
        return set()
