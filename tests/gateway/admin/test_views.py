"""The security views, created by `claude-gateway bq init` in the BigQuery emulator and queried over rows the
test wrote; and `claude-gateway audit summary` (SQLite) giving the same numbers for the same rows."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.admin import query
from gateway.admin.bq_admin import view_templates
from gateway.audit.bigquery import BigQuerySink, TableRef
from gateway.audit.record import AuditRecord
from gateway.audit.sqlite import SQLiteSink
from gateway.cli import main
from tests.support.bqemulator import Emulator, shared_emulator

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC)
TODAY = NOW.date()
WEEK_START = datetime.combine(TODAY - timedelta(days=TODAY.weekday()), time(), UTC)
# "Now" rows, kept inside this week even in the first seconds of a Monday.
T0 = max(NOW - timedelta(minutes=1), WEEK_START + timedelta(seconds=1))
DAY0 = T0.date()


def days_ago(days: int, hour: int = 12) -> datetime:
    return datetime.combine(TODAY - timedelta(days=days), time(hour), UTC)


def last(weekdays: set[int], at_least: int) -> date:
    """The most recent date at least `at_least` days ago that falls on one of `weekdays` (Monday is 0)."""
    days = at_least
    while (TODAY - timedelta(days=days)).weekday() not in weekdays:
        days += 1
    return TODAY - timedelta(days=days)


EVE_WEEKDAY = last({0, 1, 2, 3, 4}, 2)
EVE_SATURDAY = last({5}, 1)

_serial = iter(range(1, 10_000))


def row(at: datetime, user: str | None, **fields: Any) -> AuditRecord:
    fields = {"method": "POST", "path": "/v1/messages", "status_code": 200, "outcome": "ok", **fields}
    email_domain = user.split("@")[1] if user else None
    return AuditRecord(f"req-{next(_serial):04d}", at, user_email=user, user_domain=email_domain, **fields)


def audit_rows() -> list[AuditRecord]:
    sonnet, haiku, opus = "claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"
    ada = {"groups": ["eng@example.com", "all@example.com"], "session_id": "s1"}
    bob = {"groups": ["all@example.com"], "session_id": "s2"}
    rows = [
        row(
            T0,
            "ada@example.com",
            **ada,
            agent_id="a1",
            requested_model=sonnet,
            served_model=sonnet,
            input_tokens=100,
            output_tokens=50,
            cache_creation_input_tokens=10,
            cache_read_input_tokens=1000,
            cost_usd=0.5,
        ),
        row(
            T0,
            "ada@example.com",
            **ada,
            agent_id="a2",
            requested_model=sonnet,
            served_model=sonnet,
            input_tokens=200,
            output_tokens=100,
            cost_usd=1.0,
        ),
        row(
            T0,
            "ada@example.com",
            **ada,
            requested_model=opus,
            status_code=403,
            outcome="denied",
            policy_rule="opus-for-staff",
            error_message="claude-opus-4-1 is not allowed for ada@example.com",
        ),
        row(
            T0,
            "bob@example.com",
            **bob,
            requested_model=haiku,
            served_model=haiku,
            input_tokens=10,
            output_tokens=5,
            cost_usd=0.01,
        ),
        row(
            T0,
            "bob@example.com",
            **bob,
            requested_model=haiku,
            status_code=429,
            outcome="rate_limited",
            policy_rule="default",
        ),
        row(
            T0,
            None,
            status_code=401,
            outcome="unauthenticated",
            client_ip="203.0.113.9",
            error_message="Missing IAP assertion.",
        ),
        row(
            days_ago(8),
            "bob@example.com",
            **bob,
            requested_model=haiku,
            served_model=haiku,
            input_tokens=40,
            output_tokens=20,
            cost_usd=5.0,
        ),
        row(datetime.combine(EVE_WEEKDAY, time(2), UTC), "eve@example.com", served_model=sonnet, input_tokens=1000),
        row(datetime.combine(EVE_WEEKDAY, time(10), UTC), "eve@example.com", served_model=sonnet, input_tokens=1000),
        row(datetime.combine(EVE_SATURDAY, time(12), UTC), "eve@example.com", served_model=sonnet, input_tokens=7),
        row(
            T0,
            "mallory@example.com",
            served_model="claude-3-5-haiku",
            input_tokens=450_000,
            output_tokens=50_000,
            cost_usd=2.0,
        ),
    ]
    rows += [
        row(days_ago(days), "mallory@example.com", served_model="claude-3-5-haiku", input_tokens=20_000, cost_usd=0.02)
        for days in range(8, 18)
    ]
    return rows


@dataclass
class Loaded:
    emulator: Emulator
    table: TableRef
    views: str
    sqlite: str
    records: list[AuditRecord]

    def view(self, name: str, where: str = "TRUE") -> list[dict[str, Any]]:
        return self.emulator.query(f"SELECT * FROM `{self.table.project}.{self.views}.{name}` WHERE {where}")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """`bq init` run twice (it is idempotent), then the same rows written to BigQuery and to SQLite, after the
    requests' started rows; the first row is sent to BigQuery twice, as an at-least-once retry would (the emulator
    does not de-duplicate)."""
    emulator = shared_emulator()
    table = emulator.new_table()
    records = audit_rows()
    sqlite = str(tmp_path_factory.mktemp("views") / "audit.db")
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
            env.delenv(name)
        env.setenv("GATEWAY_BIGQUERY_ENDPOINT", emulator.url)
        env.setenv("GATEWAY_BIGQUERY_ANONYMOUS", "1")
        sink_url = f"bigquery://{table.project}/{table.dataset}/{table.table}"
        assert main(["bq", "init", "--sink", sink_url]) == 0
        assert main(["bq", "init", "--sink", sink_url]) == 0

    async def write() -> None:
        rows = [record.to_row() for record in records]
        for sink in (BigQuerySink(table, endpoint=emulator.url, anonymous=True), SQLiteSink(sqlite)):
            await sink.open()
            # Each request's started row first, as a gateway writes it while the request runs; the views leave
            # them out (and SQLite replaces them), so every number below counts the final rows only.
            await sink.write([record.admission_row() for record in records])
            await sink.write(rows)
            await sink.write(rows[:1])
            await sink.aclose()

    asyncio.run(write())
    yield Loaded(emulator, table, f"{table.dataset}_security", sqlite, records)


def by(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


def test_bq_init_creates_every_view_file_as_a_view(loaded: Loaded) -> None:
    client = loaded.emulator.client()
    names = {t.table_id for t in client.list_tables(f"{loaded.table.project}.{loaded.views}")}
    table = client.get_table(loaded.table.path)
    client.close()

    assert names == set(view_templates()) and len(names) == 11
    assert table.time_partitioning.field == "timestamp"
    assert table.clustering_fields == ["user_email", "requested_model", "outcome"]


def test_daily_usage_by_user(loaded: Loaded) -> None:
    today = by(loaded.view("daily_usage_by_user", f"day = '{DAY0}'"), "user_email")
    bob = by(loaded.view("daily_usage_by_user", "user_email = 'bob@example.com'"), "day")

    ada = today["ada@example.com"]
    assert (ada["requests"], ada["refused"], ada["failed"], ada["sessions"]) == (3, 1, 1, 1)  # the duplicate is gone
    assert (ada["input_tokens"], ada["output_tokens"]) == (300, 150)
    assert (ada["cache_creation_input_tokens"], ada["cache_read_input_tokens"]) == (10, 1000)
    assert ada["cost_usd"] == pytest.approx(1.5)
    assert today["(unauthenticated)"]["requests"] == today["(unauthenticated)"]["refused"] == 1
    assert bob[TODAY - timedelta(days=8)]["cost_usd"] == pytest.approx(5.0)
    assert bob[DAY0]["requests"] == 2 and bob[DAY0]["refused"] == 1


def test_daily_usage_by_model(loaded: Loaded) -> None:
    today = by(loaded.view("daily_usage_by_model", f"day = '{DAY0}'"), "model")

    assert (today["claude-sonnet-4-5"]["requests"], today["claude-sonnet-4-5"]["users"]) == (2, 1)
    assert today["claude-sonnet-4-5"]["cost_usd"] == pytest.approx(1.5)
    assert (today["claude-opus-4-1"]["requests"], today["claude-opus-4-1"]["refused"]) == (1, 1)
    assert (today["claude-haiku-4-5"]["requests"], today["claude-haiku-4-5"]["refused"]) == (2, 1)
    assert today["(none)"]["requests"] == 1


def test_daily_usage_by_group(loaded: Loaded) -> None:
    today = by(loaded.view("daily_usage_by_group", f"day = '{DAY0}'"), "group_email")

    assert (today["eng@example.com"]["requests"], today["eng@example.com"]["users"]) == (3, 1)
    assert (today["all@example.com"]["requests"], today["all@example.com"]["users"]) == (5, 2)
    assert today["all@example.com"]["cost_usd"] == pytest.approx(1.51)
    assert today["(no group)"]["requests"] == 2  # the unauthenticated request and mallory's


def test_daily_usage_by_session(loaded: Loaded) -> None:
    today = by(loaded.view("daily_usage_by_session", f"day = '{DAY0}'"), "session_id", "user_email")

    s1 = today["s1", "ada@example.com"]
    assert (s1["requests"], s1["subagents"], s1["refused"]) == (3, 2, 1)
    assert set(s1["models"].split(", ")) == {"claude-sonnet-4-5", "claude-opus-4-1"}
    assert s1["cost_usd"] == pytest.approx(1.5)
    assert today["s2", "bob@example.com"]["requests"] == 2
    assert today["(none)", "mallory@example.com"]["requests"] == 1


def test_refused_requests_daily(loaded: Loaded) -> None:
    today = by(loaded.view("refused_requests_daily", f"day = '{DAY0}'"), "user_email", "outcome")

    assert set(today) == {
        ("ada@example.com", "denied"),
        ("bob@example.com", "rate_limited"),
        ("(unauthenticated)", "unauthenticated"),
    }
    assert today["ada@example.com", "denied"]["policy_rules"] == "opus-for-staff"
    assert "not allowed" in today["ada@example.com", "denied"]["example_error"]
    unauthenticated = today["(unauthenticated)", "unauthenticated"]
    assert (unauthenticated["requests"], unauthenticated["client_ips"]) == (1, 1)


def test_top_spenders_this_week(loaded: Loaded) -> None:
    ranked = by(loaded.view("top_spenders_this_week"), "user_email")

    assert ranked["mallory@example.com"]["spend_rank"] == 1
    assert ranked["mallory@example.com"]["cost_usd"] == pytest.approx(2.0)  # her earlier days are last week
    assert ranked["ada@example.com"]["spend_rank"] == 2
    assert ranked["bob@example.com"]["cost_usd"] == pytest.approx(0.01)  # his $5 of last week does not count
    assert "(unauthenticated)" not in ranked and None not in ranked


def test_unusual_daily_tokens_flags_a_day_far_above_the_users_median(loaded: Loaded) -> None:
    (flagged,) = loaded.view("unusual_daily_tokens")

    assert (flagged["user_email"], flagged["day"]) == ("mallory@example.com", DAY0)
    assert (flagged["tokens"], flagged["median_daily_tokens_30d"]) == (500_000, 20_000)
    assert flagged["times_median"] == pytest.approx(25.0)
    assert flagged["history_days"] == 10


def test_off_hours_usage(loaded: Loaded) -> None:
    eve = by(loaded.view("off_hours_usage", "user_email = 'eve@example.com'"), "day")

    assert set(eve) == {EVE_WEEKDAY, EVE_SATURDAY}  # 10:00 on a weekday is working hours
    assert (eve[EVE_WEEKDAY]["requests"], eve[EVE_WEEKDAY]["weekend"], eve[EVE_WEEKDAY]["tokens"]) == (1, False, 1000)
    assert (eve[EVE_SATURDAY]["requests"], eve[EVE_SATURDAY]["weekend"]) == (1, True)


def test_requests_by_group_flattens_groups_and_counts_each_request_once(loaded: Loaded) -> None:
    rows = loaded.view("requests_by_group", f"day = '{DAY0}'")
    ada = [row for row in rows if row["user_email"] == "ada@example.com"]
    once = [row for row in rows if row["counts_once"]]

    assert sorted(row["group_email"] for row in ada) == ["all@example.com"] * 3 + ["eng@example.com"] * 3
    assert len(once) == len({row["request_id"] for row in rows}) == 7  # the duplicate is gone
    assert sum(row["cost_usd"] for row in once) == pytest.approx(3.51)  # ada 1.5, bob 0.01, mallory 2.0
    assert sum(row["tokens"] for row in once if row["user_email"] == "ada@example.com") == 1460
    by_group = {g: sum(r["cost_usd"] for r in rows if r["group_email"] == g) for g in {r["group_email"] for r in rows}}
    assert by_group["all@example.com"] == pytest.approx(1.51)  # as daily_usage_by_group
    assert by_group["(no group)"] == pytest.approx(2.0)
    assert {row["refused"] for row in rows if row["outcome"] == "denied"} == {True}


def guide_queries() -> list[str]:
    """The statements of docs/security-teams.md#example-queries."""
    guide = (Path(__file__).parents[3] / "docs" / "security-teams.md").read_text()
    section = guide.split("\n## Example queries\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    return [statement.strip() for block in blocks for statement in block.split(";") if statement.strip()]


@pytest.mark.parametrize("query", guide_queries(), ids=lambda q: q.splitlines()[0].removeprefix("-- ")[:60])
def test_the_guides_example_queries_run_and_find_the_rows(loaded: Loaded, query: str) -> None:
    project = loaded.table.project
    sql = (
        query.replace("`PROJECT.claude_gateway_security.", f"`{project}.{loaded.views}.")
        .replace("`PROJECT.claude_gateway.requests`", loaded.table.sql)
        .replace("'0f5c6d2e-...'", "'s1'")  # the session of the test rows
    )
    assert "PROJECT" not in sql, "a table the test does not know how to name"

    rows = loaded.emulator.query(sql)

    assert rows, f"no rows from:\n{sql}"
    first = rows[0]
    heading = query.splitlines()[0]
    if "Who spent the most" in heading:
        assert (first["spend_rank"], first["user_email"]) == (1, "mallory@example.com")
    elif "Cost per Workspace group" in heading:
        groups = {row["group_email"]: row for row in rows}
        assert groups["all@example.com"]["cost_usd"] == pytest.approx(6.51)  # with bob's $5 of 8 days ago
        assert (groups["all@example.com"]["people"], groups["(no group)"]["cost_usd"]) == (2, pytest.approx(2.2))
    elif "Cost per model" in heading:
        # Each request once: today's 7, bob's of 8 days ago, eve's 3, mallory's 10 earlier days.
        assert sum(row["requests"] for row in rows) == 7 + 1 + 3 + 10
    elif "unusual token use" in heading:
        assert first["user_email"] == "mallory@example.com"
    elif "one Claude Code session" in heading:
        assert len(rows) == 3 and {row["agent_id"] for row in rows} == {"a1", "a2", None}


def test_every_example_query_of_the_guide_is_checked() -> None:
    assert len(guide_queries()) == 8


NUMBERS = (
    "requests",
    "refused",
    "failed",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
)


@pytest.mark.parametrize(
    ("summary_key", "view", "view_key"),
    [
        ("user", "daily_usage_by_user", "user_email"),
        ("model", "daily_usage_by_model", "model"),
        ("group", "daily_usage_by_group", "group_email"),
        ("session", "daily_usage_by_session", "session_id"),
        ("day", "daily_usage_by_user", "CAST(day AS STRING)"),
    ],
)
def test_audit_summary_gives_the_views_numbers_for_the_same_rows(
    loaded: Loaded, summary_key: str, view: str, view_key: str
) -> None:
    sums = ", ".join(f"SUM({n}) AS {n}" for n in NUMBERS)
    from_views = loaded.emulator.query(
        f"SELECT {view_key} AS key, {sums} FROM `{loaded.table.project}.{loaded.views}.{view}` GROUP BY 1"
    )
    from_sqlite = query.summary(loaded.sqlite, summary_key)

    assert len(from_sqlite) == len(from_views) > 1
    views = by(from_views, "key")
    for local in from_sqlite:
        remote = views[local["key"]]
        assert {n: local[n] for n in NUMBERS if n != "cost_usd"} == {n: remote[n] for n in NUMBERS if n != "cost_usd"}
        assert local["cost_usd"] == pytest.approx(remote["cost_usd"], abs=1e-5)


def test_view_files_keep_the_terraform_placeholder_convention() -> None:
    for name, sql in view_templates().items():
        assert name.isidentifier() and name == name.lower()
        assert not re.search(r"`[^`]*\.[^`]*`", sql)  # no table named outright
        # at-least-once rows de-duplicated, by the key of the table the view reads
        if "{telemetry_table}" in sql:
            assert "QUALIFY ROW_NUMBER() OVER (PARTITION BY telemetry_id" in sql
        else:
            assert "{audit_table}" in sql and "QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id" in sql
        assert "WHERE timestamp >=" in sql  # the table requires a partition filter
    assert Path(__file__).parents[3].joinpath("gateway/admin/views").is_dir()
