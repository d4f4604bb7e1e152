"""`claude-gateway audit report`: the HTML report and its CSV, from SQLite and from BigQuery (the emulator), totals
checked against the audit rows to the cent, and the page rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.audit.bigquery import BigQuerySink, TableRef
from gateway.audit.record import AuditRecord
from gateway.audit.sqlite import SQLiteSink
from gateway.cli import main
from gateway.reports.data import ReportError, check_scan
from gateway.reports.page import money
from tests.support import chromium
from tests.support.servers import lifespan, read_body, serve

OCTOBER = "2026-10-15"
HOSTILE_MODEL = '=HYPERLINK("http://evil.example/","x") <script>alert(1)</script> $\\alpha$'

PEOPLE = {
    "ada@example.com": ["eng@example.com", "all@example.com"],
    "bob@example.com": ["all@example.com"],
    "cy@example.com": ["data@example.com", "all@example.com"],
    "dee@example.com": [],
}
MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]


def audit_records() -> list[AuditRecord]:
    """October's requests (costs with more decimals than cents), refusals, and rows just outside the month."""
    records = []
    serial = 0

    def add(at: datetime, user: str | None, **fields: Any) -> None:
        nonlocal serial
        serial += 1
        values = {"method": "POST", "path": "/v1/messages", "status_code": 200, "outcome": "ok", **fields}
        records.append(
            AuditRecord(f"req-{serial:04d}", at, user_email=user, groups=PEOPLE.get(user or "", []), **values)
        )

    start = datetime(2026, 10, 1, tzinfo=UTC)
    for n in range(150):
        user = list(PEOPLE)[n % 4]
        model = MODELS[n % 3]
        at = start + timedelta(hours=n * 4.9 + 1)
        add(
            at,
            user,
            requested_model=model,
            served_model=model,
            input_tokens=100 + 37 * n,
            output_tokens=20 + 11 * n,
            cache_creation_input_tokens=n % 5 * 100,
            cache_read_input_tokens=n % 7 * 1000,
            cost_usd=round(0.0012345 * (n + 1) * (3 if model.endswith("opus-4-1") else 1), 7),
            price_source="genai-prices 0.2.3" if n % 10 else "packaged gap table 2026-12-01",
        )
    for n in range(12):
        add(
            start + timedelta(days=n * 2, hours=3),
            list(PEOPLE)[n % 4],
            requested_model="claude-opus-4-1",
            status_code=403,
            outcome="denied",
            policy_rule="opus-for-staff",
        )
    add(start + timedelta(days=3), None, status_code=401, outcome="unauthenticated")
    add(
        start + timedelta(days=4),
        "bob@example.com",
        requested_model=HOSTILE_MODEL,
        served_model=HOSTILE_MODEL,
        input_tokens=5,
        output_tokens=5,
        cost_usd=0.004,
        price_source="genai-prices 0.2.3",
    )
    # Outside October by a second either way: not in the report.
    add(
        datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC),
        "ada@example.com",
        served_model=MODELS[0],
        input_tokens=9,
        cost_usd=100.0,
    )
    add(datetime(2026, 11, 1, tzinfo=UTC), "ada@example.com", served_model=MODELS[0], input_tokens=9, cost_usd=200.0)
    return records


def in_october(records: list[AuditRecord]) -> list[AuditRecord]:
    return [r for r in records if r.timestamp.year == 2026 and r.timestamp.month == 10]


async def write(sink: Any, records: list[AuditRecord]) -> None:
    """Started rows first, then the final rows, then the first final row again (an at-least-once retry)."""
    await sink.open()
    await sink.write([record.admission_row() for record in records])
    rows = [record.to_row() for record in records]
    await sink.write(rows)
    await sink.write(rows[:1])
    await sink.aclose()


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "audit.db"
    asyncio.run(write(SQLiteSink(str(path)), audit_records()))
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    yield monkeypatch


def report(sink: str, out: Path, *extra: str) -> int:
    return main(["audit", "report", "--period", "month", "--of", OCTOBER, "--out", str(out), "--sink", sink, *extra])


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def cost_by_user(rows: list[dict[str, str]]) -> dict[str, float]:
    costs: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        costs[row["user_email"]].append(float(row["cost_usd"]))
    return {user: math.fsum(values) for user, values in costs.items()}


# --- SQLite ---------------------------------------------------------------------------------------------------------


def test_report_totals_match_the_audit_rows_to_the_cent(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    october = in_october(audit_records())
    expected_total = math.fsum(r.cost_usd or 0 for r in october)
    expected_users: dict[str, float] = defaultdict(float)
    for record in october:
        expected_users[record.user_email or "(unauthenticated)"] += record.cost_usd or 0

    assert report(f"sqlite:///{audit_db}", tmp_path / "october.html") == 0
    rows = csv_rows(tmp_path / "october.csv")
    page = (tmp_path / "october.html").read_text()

    assert sum(int(row["requests"]) for row in rows) == len(october) == 164  # the duplicate and started rows: once
    assert round(math.fsum(float(row["cost_usd"]) for row in rows), 2) == round(expected_total, 2)
    assert {u: round(c, 2) for u, c in cost_by_user(rows).items()} == {
        u: round(c, 2) for u, c in expected_users.items()
    }
    assert f"<b>{money(expected_total)}</b>cost (list prices)" in page
    for user, cost in expected_users.items():
        if cost:
            assert money(cost) in page, user
    assert sum(int(row["tokens"]) for row in rows) == sum(
        (r.input_tokens or 0)
        + (r.output_tokens or 0)
        + (r.cache_creation_input_tokens or 0)
        + (r.cache_read_input_tokens or 0)
        for r in october
    )
    assert "October 2026, 164 requests, 5 people" in capsys.readouterr().out
    assert "$100.00" not in page and "$200.00" not in page  # the rows a second outside October


def test_report_shows_refusals_and_price_sources(audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    assert report(f"sqlite:///{audit_db}", tmp_path / "r.html") == 0
    page = (tmp_path / "r.html").read_text()
    refusals = page.split("<h2>Refusals</h2>")[1].split("<h2>")[0]
    sources = page.split("<h2>Price sources</h2>")[1]

    assert refusals.count("opus-for-staff") == 4 and "denied" in refusals and "unauthenticated" in refusals
    assert "genai-prices 0.2.3" in sources and "packaged gap table 2026-12-01" in sources
    assert "(not priced)" in sources  # the refusals, which cost nothing


def test_caller_chosen_text_is_escaped_in_the_page_and_defused_in_the_csv(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    assert report(f"sqlite:///{audit_db}", tmp_path / "r.html") == 0
    page = (tmp_path / "r.html").read_text()
    (hostile,) = [row for row in csv_rows(tmp_path / "r.csv") if "HYPERLINK" in row["model"]]

    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert hostile["model"] == "'" + HOSTILE_MODEL  # a spreadsheet shows it as text, never runs it


def test_a_period_without_traffic_gives_an_empty_report_that_says_so(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "audit",
            "report",
            "--period",
            "week",
            "--of",
            "2026-08-12",
            "--out",
            str(tmp_path / "e.html"),
            "--sink",
            f"sqlite:///{audit_db}",
        ]
    )

    assert code == 0
    page = (tmp_path / "e.html").read_text()
    assert "No requests in week 33 of 2026 (10 Aug to 16 Aug 2026): nothing to report." in page
    assert len(csv_rows(tmp_path / "e.csv")) == 0
    assert "no requests in week 33 of 2026" in capsys.readouterr().out


def test_a_group_report_counts_only_that_groups_people(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    october = in_october(audit_records())
    expected = math.fsum(r.cost_usd or 0 for r in october if "eng@example.com" in r.groups)

    assert report(f"sqlite:///{audit_db}", tmp_path / "eng.html", "--group", "ENG@example.com") == 0
    rows = csv_rows(tmp_path / "eng.csv")

    assert {row["user_email"] for row in rows} == {"ada@example.com"}
    assert round(math.fsum(float(row["cost_usd"]) for row in rows), 2) == round(expected, 2)
    assert "group eng@example.com" in (tmp_path / "eng.html").read_text()


def test_a_group_that_does_not_exist_is_one_readable_line(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report(f"sqlite:///{audit_db}", tmp_path / "x.html", "--group", "nobody@example.com") == 2
    error = capsys.readouterr().err

    assert error.count("\n") == 1 and "no group 'nobody@example.com'" in error
    assert "all@example.com, data@example.com, eng@example.com" in error
    assert not (tmp_path / "x.html").exists()


def test_a_group_of_the_policy_without_traffic_gets_an_empty_report(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups:\n  interns@example.com:\n    models: [claude-haiku-*]\n")
    clean_env.setenv("GATEWAY_POLICY_FILE", str(policy))

    assert report(f"sqlite:///{audit_db}", tmp_path / "i.html", "--group", "interns@example.com") == 0
    assert "No requests in October 2026 for group interns@example.com" in (tmp_path / "i.html").read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--out", "r.csv"], "--out r.csv: name the HTML file (e.g. report.html); the CSV is written beside it"),
        (["--out", "r.html", "--max-scan-gb", "0"], "--max-scan-gb must be above 0; got 0.0"),
        (["--out", "r.html", "--of", "2026-13-01"], "--of takes a date as YYYY-MM-DD"),
    ],
)
def test_bad_arguments_are_one_readable_line(
    audit_db: Path,
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    clean_env.chdir(tmp_path)
    code = main(["audit", "report", "--period", "month", "--sink", f"sqlite:///{audit_db}", *arguments])
    error = capsys.readouterr().err

    assert code == 2 and error.count("\n") == 1 and message in error
    assert list(tmp_path.iterdir()) == []


def test_a_missing_audit_file_is_one_readable_line(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "r.html") == 2
    assert capsys.readouterr().err.startswith("claude-gateway: no audit file at ")


# --- the page in a browser ------------------------------------------------------------------------------------------


def test_the_report_renders_in_chromium_with_its_charts(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "october.html"
    assert report(f"sqlite:///{audit_db}", page) == 0
    png = chromium.screenshot(page, tmp_path / "october.png", 1280, 2600)
    text = chromium.rendered_text(page)

    with Image.open(png) as image:
        assert image.size == (1280, 2600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # charts and text, not a blank or error page
    painted = {colour for _, colour in colours}
    assert (0xC2, 0x56, 0x2F) in painted and (0x3B, 0x6E, 0xA8) in painted  # the cost and token bars were drawn
    assert png.stat().st_size > 50_000
    assert text.count("<img") == 4 and "Claude Code usage: October 2026" in text and "Top spenders" in text


# --- BigQuery -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bigquery_report_states_its_scan_and_gives_the_sqlite_numbers(
    audit_db: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.bqemulator import shared_emulator

    emulator = shared_emulator()
    table: TableRef = emulator.new_table()
    asyncio.run(write(BigQuerySink(table, endpoint=emulator.url, anonymous=True), audit_records()))
    clean_env.setenv("GATEWAY_BIGQUERY_ENDPOINT", emulator.url)
    clean_env.setenv("GATEWAY_BIGQUERY_ANONYMOUS", "1")

    assert report(table.url, tmp_path / "bq.html") == 0
    said = capsys.readouterr()
    assert report(f"sqlite:///{audit_db}", tmp_path / "local.html") == 0
    remote, local = csv_rows(tmp_path / "bq.csv"), csv_rows(tmp_path / "local.csv")

    assert "BigQuery: this report scans " in said.err and f"of {table.path} (limit 10.0 GiB)" in said.err
    assert sum(int(r["requests"]) for r in remote) == sum(int(r["requests"]) for r in local) == 164
    assert {u: round(c, 2) for u, c in cost_by_user(remote).items()} == {
        u: round(c, 2) for u, c in cost_by_user(local).items()
    }
    assert {r["groups"] for r in remote} == {r["groups"] for r in local}


class LargeTable:
    """Between the client and the emulator (whose dry runs estimate 0 bytes): says a dry run would scan `claimed`
    bytes, as BigQuery says of a large table, and records the query jobs that are not dry runs."""

    def __init__(self, emulator_url: str, claimed: int) -> None:
        self.emulator_url = emulator_url
        self.claimed = claimed
        self.queries_run: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        sent = json.loads(body) if body else {}
        query = sent.get("configuration", {}).get("query", {}).get("query") if isinstance(sent, dict) else None
        dry_run = bool(sent.get("configuration", {}).get("dryRun")) if isinstance(sent, dict) else False
        if query and not dry_run:
            self.queries_run.append(query)
        query_string = scope["query_string"].decode()
        url = self.emulator_url + scope["path"] + (f"?{query_string}" if query_string else "")
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")}
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.request(scope["method"], url, content=body, headers=headers)
        content = answer.content
        if dry_run:
            job = answer.json()
            job.setdefault("statistics", {})["totalBytesProcessed"] = str(self.claimed)
            job["statistics"].setdefault("query", {})["totalBytesProcessed"] = str(self.claimed)
            content = json.dumps(job).encode()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": content})


@pytest.mark.slow
def test_a_bigquery_report_over_the_scan_limit_is_refused_before_it_runs(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.bqemulator import shared_emulator

    emulator = shared_emulator()
    table: TableRef = emulator.new_table()
    large = LargeTable(emulator.url, 12 * 2**30)
    with serve(large) as url:
        clean_env.setenv("GATEWAY_BIGQUERY_ENDPOINT", url)
        clean_env.setenv("GATEWAY_BIGQUERY_ANONYMOUS", "1")
        refused = report(table.url, tmp_path / "big.html")
        said = capsys.readouterr().err
        allowed = report(table.url, tmp_path / "allowed.html", "--max-scan-gb", "12")

    assert refused == 2
    assert f"BigQuery: this report scans 12.0 GiB of {table.path} (limit 10.0 GiB)" in said
    assert said.splitlines()[-1] == (
        "claude-gateway: the report would scan 12.0 GiB of BigQuery data, over the limit of 10.0 GiB: raise it "
        "with --max-scan-gb, or report a shorter period (--period week)"
    )
    assert not (tmp_path / "big.html").exists()
    assert allowed == 0 and len(large.queries_run) == 1  # the dry run alone, until the limit allowed the query


def test_the_scan_limit_itself_is_allowed() -> None:
    check_scan(10 * 2**30, 10 * 2**30)
    with pytest.raises(ReportError, match=r"would scan 10\.5 GiB of BigQuery data, over the limit of 10\.0 GiB"):
        check_scan(int(10.5 * 2**30), 10 * 2**30)
