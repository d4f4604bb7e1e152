"""The report as one HTML file (inline CSS, charts as data URIs, no script) and its CSV of every summed line."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway import __version__
from gateway.reports import charts
from gateway.reports.data import REFUSED, Line, Period, Total, groups_of, total, totals_by

TOP = 20
CSV_COLUMNS = (
    "day",
    "user_email",
    "groups",
    "model",
    "outcome",
    "price_source",
    "policy_rule",
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "tokens",
    "cost_usd",
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 2em auto;
       max-width: 1100px; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; }
.meta { color: #555; } .empty { font-size: 1.2em; padding: 1em; background: #f4f4f6; border-radius: 6px; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; margin: 1.5em 0; }
.card { background: #f4f4f6; border-radius: 6px; padding: 0.8em 1.2em; min-width: 9em; }
.card b { display: block; font-size: 1.5em; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0 1em; }
th, td { text-align: left; padding: 0.3em 0.6em; border-bottom: 1px solid #e3e3e6; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
img { width: 100%; height: auto; } .note { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True, slots=True)
class Report:
    """The lines of one period (and group, if asked), and where they came from."""

    period: Period
    lines: list[Line]
    source: str
    group: str | None
    generated: datetime

    @property
    def total(self) -> Total:
        return total("all", self.lines)

    @property
    def people(self) -> int:
        return len({line.user for line in self.lines})


def money(value: float) -> str:
    """To the cent, as finance reads it."""
    return f"${value:,.2f}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int) -> str:
    cells = "".join(f"<th{' class=n' if i >= numeric_from else ''}>{_e(h)}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i >= numeric_from else ''}>{_e(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _totals_table(totals: Sequence[Total], what: str, overall: float) -> str:
    rows = [
        (
            t.key,
            f"{t.requests:,}",
            f"{t.refused:,}",
            f"{t.tokens:,}",
            money(t.cost_usd),
            f"{100 * t.cost_usd / overall:.1f} %" if overall else "-",
        )
        for t in totals
    ]
    return _table((what, "requests", "refused", "tokens", "cost", "share of cost"), rows, 1)


def render_html(report: Report) -> str:
    title = f"Claude Code usage: {report.period.label}" + (f", group {report.group}" if report.group else "")
    head = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        # Nothing is fetched: the page works offline and in mail clients that block remote content.
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
        f"<p class=meta>{_e(report.period.first)} to {_e(report.period.last)} (UTC days) · from {_e(report.source)} · "
        f"generated {report.generated:%Y-%m-%d %H:%M} UTC by claude-gateway {_e(__version__)}</p>"
    )
    if not report.lines:
        scope = f" for group {report.group}" if report.group else ""
        return head + (
            f"<p class=empty>No requests in {_e(report.period.label)}{_e(scope)}: nothing to report.</p></body></html>"
        )
    overall = report.total
    lines = report.lines
    by_person = totals_by(lines, lambda line: (line.user,))
    by_group = totals_by(lines, groups_of)
    by_model = totals_by(lines, lambda line: (line.model,))
    days = report.period.days
    day_cost = {day: math.fsum(line.cost_usd for line in lines if line.day == day) for day in days}
    day_tokens = {day: sum(line.tokens for line in lines if line.day == day) for day in days}
    cards = (
        ("cost (list prices)", money(overall.cost_usd)),
        ("requests", f"{overall.requests:,}"),
        ("people", f"{report.people:,}"),
        ("tokens", f"{overall.tokens:,}"),
        ("refused", f"{overall.refused:,}"),
    )
    day_chart = charts.by_day(days, list(day_cost.values()), list(day_tokens.values()))
    parts = [
        head,
        "<div class=cards>" + "".join(f"<div class=card><b>{_e(v)}</b>{_e(k)}</div>" for k, v in cards) + "</div>",
        "<h2>By day</h2>",
        f"<img alt='Cost and tokens per day' src='{day_chart}'>",
        f"<h2>Top spenders</h2><img alt='Cost and tokens by person' src='{charts.ranked(by_person, 'person')}'>",
        _spenders(by_person[:TOP], lines, overall.cost_usd),
        f"<h2>By group</h2><img alt='Cost and tokens by group' src='{charts.ranked(by_group, 'group')}'>",
        "<p class=note>A request counts once for each Workspace group its person matched, so groups add up to more "
        "than the total; requests with no matched group are under (no group).</p>",
        _totals_table(by_group, "group", overall.cost_usd),
        f"<h2>By model</h2><img alt='Cost and tokens by model' src='{charts.ranked(by_model, 'model')}'>",
        _totals_table(by_model, "model", overall.cost_usd),
        "<h2>Refusals</h2>",
        _refusals(lines),
        "<h2>Price sources</h2><p class=note>The price data that costed the rows (the audit column price_source); "
        "cost is at list prices: the invoice is what is charged.</p>",
        _price_sources(lines),
        "</body></html>",
    ]
    return "".join(parts)


def _spenders(people: Sequence[Total], lines: Sequence[Line], overall: float) -> str:
    groups: dict[str, set[str]] = {}
    for line in lines:
        groups.setdefault(line.user, set()).update(line.groups)
    rows = [
        (
            rank,
            t.key,
            ", ".join(sorted(groups.get(t.key, ()))) or "-",
            f"{t.requests:,}",
            f"{t.tokens:,}",
            money(t.cost_usd),
            f"{100 * t.cost_usd / overall:.1f} %" if overall else "-",
        )
        for rank, t in enumerate(people, 1)
    ]
    return _table(("#", "person", "groups", "requests", "tokens", "cost", "share of cost"), rows, 3)


def _refusals(lines: Sequence[Line]) -> str:
    refused = [line for line in lines if line.outcome in REFUSED]
    if not refused:
        return "<p>No request was refused.</p>"
    counts: dict[tuple[str, str, str], int] = {}
    for line in refused:
        key = (line.user, line.outcome, line.policy_rule or "-")
        counts[key] = counts.get(key, 0) + line.requests
    rows = [(*key, f"{n:,}") for key, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return _table(("person", "outcome", "policy rule", "requests"), rows, 3)


def _price_sources(lines: Sequence[Line]) -> str:
    totals = totals_by(lines, lambda line: (line.price_source,))
    rows = [(t.key, f"{t.requests:,}", money(t.cost_usd)) for t in totals]
    return _table(("price source", "requests", "cost"), rows, 1)


def _cell(value: object) -> object:
    """A spreadsheet runs a cell starting with = + - @ as a formula: text a caller chose (a model name) is quoted."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_csv(path: str, lines: Sequence[Line]) -> None:
    ordered = sorted(lines, key=lambda x: (x.day, x.user, x.model, x.outcome, x.groups, x.price_source, x.policy_rule))
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for line in ordered:
            writer.writerow(
                [
                    _cell(v)
                    for v in (
                        line.day.isoformat(),
                        line.user,
                        ";".join(line.groups),
                        line.model,
                        line.outcome,
                        line.price_source,
                        line.policy_rule,
                        line.requests,
                        line.input_tokens,
                        line.output_tokens,
                        line.cache_creation_input_tokens,
                        line.cache_read_input_tokens,
                        line.tokens,
                        f"{line.cost_usd:.6f}",
                    )
                ]
            )
