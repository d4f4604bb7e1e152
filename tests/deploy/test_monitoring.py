"""terraform/monitoring.tf: the log-based metrics match the lines the gateway really writes, the alerts go to the
channels named, the dashboard charts metrics that exist, and the unusual-tokens alert keeps the view's rule.

Log lines come from the handlers production installs (`configure_logging` in gateway/logs.py: the access log's own
JSON handler and Cloud Logging's `StructuredLogHandler`), fed by the gateway's own loggers; they are
turned into the LogEntry Cloud Run's agent makes of them, and the planned filters are evaluated on that entry by a
small evaluator of the part of Cloud Logging's query language monitoring.tf uses (it refuses anything else, so a
filter cannot drift outside what is tested here).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.access_log import log_access
from gateway.audit.record import AuditRecord
from gateway.logs import ACCESS_LOGGER, configure_logging
from tests.deploy.conftest import REQUIRED_VARIABLES
from tests.deploy.offline_plan import VIEWS, Plan, Planner

SERVICE = "claude-gateway"
RESOURCE = {"type": "cloud_run_revision", "labels": {"service_name": SERVICE, "revision_name": f"{SERVICE}-00001"}}

# --- log lines as the gateway writes them, and as Cloud Logging stores them ------------------------------------------


@pytest.fixture
def structured_lines() -> Iterator[io.StringIO]:
    """Everything the gateway's loggers write, as JSON lines on a stream, as in production (configure_logging)."""
    stream = io.StringIO()
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (list(root.handlers), root.level, list(access.handlers), access.propagate)
    configure_logging("INFO", structured=True, stream=stream)
    yield stream
    root.handlers[:], root.level, access.handlers[:], access.propagate = saved


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    """The LogEntry Cloud Run's logging agent makes of each stdout JSON line: special keys lifted out."""
    found = []
    for line in stream.getvalue().splitlines():
        payload = json.loads(line)
        if payload.get("logging.googleapis.com/diagnostic"):
            continue  # the library's one-off instrumentation line
        entry = {
            "resource": RESOURCE,
            "labels": payload.pop("logging.googleapis.com/labels", {}),
            "severity": payload.pop("severity", "DEFAULT"),
            "httpRequest": payload.pop("httpRequest", {}),
        }
        for key in [key for key in payload if key.startswith("logging.googleapis.com/")]:
            payload.pop(key)
        entry["jsonPayload"] = payload
        found.append(entry)
    return found


def _lookup(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


_CLAUSE = re.compile(
    r'^(?P<field>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|=|>|<)\s*(?:"(?P<string>[^"]*)"|(?P<number>-?[\d.]+)'
    r'|\((?P<any>"[^"]*"(?:\s+OR\s+"[^"]*")*)\))$'
)


def matches(log_filter: str, entry: dict[str, Any]) -> bool:
    """Whether a conjunction of `field OP value` clauses matches the entry (Cloud Logging's semantics for them:
    a missing field matches nothing; numbers compare as numbers)."""
    for clause in log_filter.split(" AND "):
        parsed = _CLAUSE.match(clause.strip())
        assert parsed, f"clause outside the tested subset of the query language: {clause!r}"
        value = _lookup(entry, parsed["field"])
        op = parsed["op"]
        if parsed["string"] is not None or parsed["any"] is not None:
            assert op == "=", clause
            wanted = [parsed["string"]] if parsed["string"] is not None else re.findall(r'"([^"]*)"', parsed["any"])
            if value is None or str(value) not in wanted:
                return False
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        number = float(parsed["number"])
        if not {
            ">": value > number,
            ">=": value >= number,
            "<": value < number,
            "<=": value <= number,
            "=": value == number,
        }[op]:
            return False
    return True


def extract(extractor: str, entry: dict[str, Any]) -> Any:
    parsed = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor)
    assert parsed, f"extractor outside the tested subset: {extractor!r}"
    return _lookup(entry, parsed[1])


# --- the lines ------------------------------------------------------------------------------------------------------


def served(**fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/messages",
        "status_code": 200,
        "outcome": "ok",
        "user_email": "ada@example.com",
        "groups": ["eng@example.com", "all@example.com"],
        "requested_model": "claude-sonnet-4-5",
        "served_model": "claude-sonnet-4-5",
        "upstream": "anthropic",
        "attempts": 1,
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 1000,
        "cost_usd": 0.0123,
        "ttfb_ms": 412.5,
        "duration_ms": 2000.0,
        **fields,
    }
    return AuditRecord("req-1", datetime.now(UTC), **values)


def budget_event(threshold: float) -> None:
    """The event as the budget code writes it (logger gateway.budget, message budget_threshold_crossed)."""
    logging.getLogger("gateway.budget").warning(
        "budget_threshold_crossed",
        extra={
            "json_fields": {
                "user": "ada@example.com",
                "groups": ["eng@example.com"],
                "period": "month",
                "threshold": threshold,
                "spent_usd": 70.5,
                "budget_usd": 100.0,
                "resets_at": "2027-01-01T00:00:00Z",
            }
        },
    )


@pytest.fixture(scope="module")
def default_plan(planner: Planner) -> Plan:
    plan = planner.plan(REQUIRED_VARIABLES)
    assert plan.ok, "\n".join(plan.errors)
    return plan


def metric(plan: Plan, name: str) -> dict[str, Any]:
    return plan.resources[f"google_logging_metric.{name}[0]"]


# --- the metrics count the lines they are meant to -------------------------------------------------------------------


def test_a_served_request_counts_in_requests_tokens_cost_and_latency(
    default_plan: Plan, structured_lines: io.StringIO
) -> None:
    log_access(served(), project=None)
    (entry,) = entries(structured_lines)

    requests = metric(default_plan, "requests")
    assert matches(requests["filter"], entry)
    labels = {key: extract(extractor, entry) for key, extractor in requests["label_extractors"].items()}
    assert labels == {"outcome": "ok", "model": "claude-sonnet-4-5", "groups": "eng@example.com,all@example.com"}
    values = {}
    for name in ("tokens", "cost", "ttfb"):
        values[name] = extract(metric(default_plan, name)["value_extractor"], entry)
        assert matches(metric(default_plan, name)["filter"], entry), name
    # The views' token total (input + output + cache writes + cache reads), the row's cost, the time to first byte.
    assert values == {"tokens": 1160, "cost": 0.0123, "ttfb": 412.5}
    assert extract(metric(default_plan, "tokens")["label_extractors"]["user"], entry) == "ada@example.com"
    assert not matches(metric(default_plan, "failovers")["filter"], entry)
    assert not matches(metric(default_plan, "audit_fallback")["filter"], entry)
    assert not matches(metric(default_plan, "budget")["filter"], entry)


def test_a_refusal_is_a_request_without_tokens_or_cost(default_plan: Plan, structured_lines: io.StringIO) -> None:
    log_access(
        served(
            outcome="denied",
            status_code=403,
            groups=[],
            served_model=None,
            input_tokens=None,
            output_tokens=None,
            cache_creation_input_tokens=None,
            cache_read_input_tokens=None,
            cost_usd=None,
            ttfb_ms=None,
        ),
        project=None,
    )
    (entry,) = entries(structured_lines)

    requests = metric(default_plan, "requests")
    assert matches(requests["filter"], entry)
    assert extract(requests["label_extractors"]["outcome"], entry) == "denied"
    assert extract(requests["label_extractors"]["groups"], entry) == "(no group)"  # as daily_usage_by_group says
    for name in ("tokens", "cost", "ttfb"):
        assert not matches(metric(default_plan, name)["filter"], entry), name


def test_a_failover_counts_as_an_upstream_failure(default_plan: Plan, structured_lines: io.StringIO) -> None:
    log_access(served(attempts=2, upstream="vertex", upstream_failures="anthropic: 529 overloaded"), project=None)
    (entry,) = entries(structured_lines)

    failovers = metric(default_plan, "failovers")
    assert matches(failovers["filter"], entry)
    assert extract(failovers["label_extractors"]["upstream"], entry) == "vertex"


def test_audit_fallback_entries_are_counted_by_kind(default_plan: Plan, structured_lines: io.StringIO) -> None:
    # The entry as Fallback.log writes it (gateway/audit/fallback.py).
    audit = logging.getLogger("gateway.audit")
    for key in ("audit_fallback", "audit_content_fallback"):
        audit.error(key, extra={"json_fields": {key: {"request_id": "req-1"}, "reason": "bigquery: unreachable"}})
    audit.warning("audit sink bigquery still unavailable")
    found = entries(structured_lines)

    fallback = metric(default_plan, "audit_fallback")
    assert [matches(fallback["filter"], entry) for entry in found] == [True, True, False]
    assert [extract(fallback["label_extractors"]["kind"], entry) for entry in found[:2]] == [
        "audit_fallback",
        "audit_content_fallback",
    ]


def test_each_budget_crossing_matches_exactly_its_thresholds_alert(
    default_plan: Plan, structured_lines: io.StringIO
) -> None:
    for threshold in (0.7, 0.9, 1.0):
        budget_event(threshold)
    found = entries(structured_lines)
    policies = default_plan.of_type("google_monitoring_alert_policy")
    budget_policies = {address: values for address, values in policies.items() if ".budget[" in address}

    assert all(matches(metric(default_plan, "budget")["filter"], entry) for entry in found)
    assert [extract(metric(default_plan, "budget")["label_extractors"]["threshold"], e) for e in found] == [
        0.7,
        0.9,
        1.0,
    ]
    matched = {}
    for address, values in budget_policies.items():
        (condition,) = values["conditions"]
        (log_match,) = condition["condition_matched_log"]
        matched[address] = [entry["jsonPayload"]["threshold"] for entry in found if matches(log_match["filter"], entry)]
        assert {key: extract(value, found[0]) for key, value in log_match["label_extractors"].items()} == {
            "user": "ada@example.com",
            "period": "month",
            "spent_usd": 70.5,
            "budget_usd": 100.0,
            "resets_at": "2027-01-01T00:00:00Z",
        }
    assert matched == {
        'google_monitoring_alert_policy.budget["70"]': [0.7],
        'google_monitoring_alert_policy.budget["90"]': [0.9],
        'google_monitoring_alert_policy.budget["100"]': [1.0],
    }
    severities = {address: values["severity"] for address, values in budget_policies.items()}
    assert severities['google_monitoring_alert_policy.budget["100"]'] == "CRITICAL"


# --- alerts and the dashboard ---------------------------------------------------------------------------------------


def _promql_metrics(text: str) -> set[str]:
    """Log-based metric names a PromQL text refers to (histogram suffixes removed)."""
    names = re.findall(r"logging_googleapis_com:user_(\w+)", text)
    return {re.sub(r"_(sum|count|bucket)$", "", name) for name in names}


def test_every_alert_and_chart_refers_to_a_metric_the_plan_creates(default_plan: Plan) -> None:
    names = {values["name"] for values in default_plan.of_type("google_logging_metric").values()}
    referred: set[str] = set()
    for values in default_plan.of_type("google_monitoring_alert_policy").values():
        for condition in values["conditions"]:
            for threshold in condition["condition_threshold"]:
                referred |= set(re.findall(r'metric.type="logging.googleapis.com/user/(\w+)"', threshold["filter"]))
            for promql in condition["condition_prometheus_query_language"]:
                referred |= _promql_metrics(promql["query"])
    (dashboard,) = default_plan.of_type("google_monitoring_dashboard").values()
    charted = _promql_metrics(dashboard["dashboard_json"])

    assert referred <= names and charted <= names
    assert names == charted  # every metric is on the dashboard
    assert {"claude_gateway_requests", "claude_gateway_tokens", "claude_gateway_audit_fallback"} <= referred


def test_the_dashboard_charts_each_measure_by_model_and_by_group(default_plan: Plan) -> None:
    (dashboard,) = default_plan.of_type("google_monitoring_dashboard").values()
    layout = json.loads(dashboard["dashboard_json"])["mosaicLayout"]
    charts = {
        tile["widget"]["title"]: tile["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"] for tile in layout["tiles"]
    }

    for measure in (
        "Requests",
        "Tokens",
        "Cost (USD, list prices)",
        "Requests not ok (errors and refusals)",
        "Time to first byte, p95",
    ):
        for by in ("model", "groups"):
            query = charts[f"{measure} by {by}"]["prometheusQuery"]
            assert f"by ({by}" in query and f'service_name="{SERVICE}"' in query
    places = {(tile["xPos"], tile["yPos"]) for tile in layout["tiles"]}
    assert len(places) == len(layout["tiles"]) == 13  # no two tiles on top of each other
    assert all(tile["xPos"] + tile["width"] <= layout["columns"] for tile in layout["tiles"])


def test_every_alert_goes_to_the_named_channels_and_the_created_email_channel(all_features_plan: Plan) -> None:
    variables = all_features_plan.variables
    (channel,) = all_features_plan.of_type("google_monitoring_notification_channel").values()
    assert (channel["type"], channel["labels"]) == ("email", {"email_address": variables["alert_emails"][0]})
    policies = all_features_plan.of_type("google_monitoring_alert_policy")
    assert len(policies) == 8
    for address in policies:
        change = next(c["change"] for c in all_features_plan.shown["resource_changes"] if c["address"] == address)
        # The named channel, then the email channel, whose id is known only after apply.
        assert change["after"]["notification_channels"][0] == variables["alert_notification_channels"][0]
        assert change["after_unknown"]["notification_channels"] == [False, True], address


def test_the_unusual_tokens_alert_keeps_the_views_rule(default_plan: Plan) -> None:
    view = (VIEWS / "unusual_daily_tokens.sql").read_text()
    factor = re.search(r"tokens >= (\d+) \* median_daily_tokens_30d", view)
    minimum = re.search(r"AND tokens >= (\d+)\n", view)
    history = re.search(r"history_days >= (\d+)", view)
    assert factor and minimum and history
    (policy,) = [v for a, v in default_plan.of_type("google_monitoring_alert_policy").items() if "unusual" in a]
    query = policy["conditions"][0]["condition_prometheus_query_language"][0]["query"]

    assert f">= {factor[1]} * quantile_over_time(0.5," in query and "[30d:1d] offset 1d)" in query
    assert f">= {minimum[1]}\n" in query
    assert "count_over_time((sum by (user) (increase(" in query and f">= {history[1]}\n" in query


def test_monitoring_can_be_switched_off(planner: Planner) -> None:
    plan = planner.plan({**REQUIRED_VARIABLES, "monitoring_enabled": False, "alert_emails": ["a@example.com"]})
    assert plan.ok, "\n".join(plan.errors)
    kinds = {address.split(".")[0] for address in plan.resources}
    assert not kinds & {
        "google_logging_metric",
        "google_monitoring_alert_policy",
        "google_monitoring_dashboard",
        "google_monitoring_notification_channel",
    }
    assert plan.shown["planned_values"]["outputs"]["monitoring_dashboard"].get("value") is None
