"""Bad variable values stop `terraform plan` with the variable's own message: Terraform judges its validations.

Terraform reports every failing validation of a plan at once, so the cases run in a few plans ("rounds") of
values that do not interact; each case then looks for its message among that plan's errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import REQUIRED_VARIABLES
from tests.deploy.offline_plan import Plan, Planner

POLICY = {"access_policy_number": "123456789"}

# case id -> (variables over REQUIRED_VARIABLES, the message Terraform must print)
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "dataset id over 1015 characters": (
        {"bigquery_dataset_id": "a" * 1016},
        "The bigquery_dataset_id must be at most 1015 letters, digits and underscores",
    ),
    "table id over 1024 characters": (
        {"audit_table_id": "t" * 1025},
        "The audit_table_id must be at most 1024 letters",
    ),
    "content table id starting with a digit": (
        {"content_table_id": "1content"},
        "The content_table_id must be at most 1024 letters, digits and underscores, not starting with a digit",
    ),
    "CIDR without a prefix length": ({"vpc_subnet_cidr": "10.8.0.0"}, "The vpc_subnet_cidr must be an IPv4 CIDR"),
    "CIDR smaller than /26": ({"vpc_subnet_cidr": "10.8.0.0/27"}, "The vpc_subnet_cidr must be an IPv4 CIDR"),
    "nobody may pass IAP": ({"access_groups": []}, "Name at least one group in access_groups"),
    "fewer max than min instances": ({"min_instances": 5, "max_instances": 2}, "max_instances must be at least min"),
    "unknown BigQuery location": ({"bigquery_location": "europe"}, "The bigquery_location must be null, the US or EU"),
    "lowercase multi-region": ({"bigquery_location": "eu"}, "The bigquery_location must be null, the US or EU"),
    "group with a member prefix": (
        {"access_groups": ["group:team@example.com"]},
        "Each access_groups entry must be a bare group email",
    ),
    "allUsers as a user": ({"access_users": ["allUsers"]}, "Each access_users entry must be a bare user email"),
    "public security readers": (
        {"security_reader_groups": ["allAuthenticatedUsers"]},
        "Each security_reader_groups entry must be a bare group email",
    ),
    "domain as content readers": (
        {"content_reader_groups": ["domain:example.com"]},
        "Each content_reader_groups entry must be a bare group email",
    ),
    "unknown upstream": ({"upstream": ["openai"]}, "The upstream list must be non-empty"),
    "vertex without a region": ({"upstream": ["vertex:"]}, "The upstream list must be non-empty"),
    "access level short name": ({"access_level": "corp_network"}, "The access_level must be null or a full"),
    "access level without its policy": (
        {"access_level_ip_ranges": ["203.0.113.0/24"]},
        "Creating an access level (access_level_ip_ranges or access_level_device_policy) needs access_policy_number",
    ),
    "existing and created access level": (
        {"access_level": "accessPolicies/1/accessLevels/corp", "access_level_ip_ranges": ["203.0.113.0/24"], **POLICY},
        "Set either access_level (an existing level) or access_level_ip_ranges",
    ),
    "IP range that is not a range": (
        {"access_level_ip_ranges": ["203.0.113.7"], **POLICY},
        "Each access_level_ip_ranges entry must be a CIDR range",
    ),
    "IP range with host bits": (
        {"access_level_ip_ranges": ["203.0.113.7/24"], **POLICY},
        "must have its host bits zero",
    ),
    "unknown device OS": (
        {"access_level_device_policy": {"os_types": ["WINDOWS"]}, **POLICY},
        "Each os_types entry must be DESKTOP_MAC",
    ),
    "unknown encryption status": (
        {"access_level_device_policy": {"allowed_encryption_statuses": ["YES"]}, **POLICY},
        "Each allowed_encryption_statuses entry must be",
    ),
    "notification channel by its number only": (
        {"alert_notification_channels": ["1234567890"]},
        "Each alert_notification_channels entry must be a channel name",
    ),
    "alert email without a domain": ({"alert_emails": ["admins"]}, "Each alert_emails entry must be an email address"),
    "error ratio as a percentage": ({"alert_error_ratio": 5}, "The alert_error_ratio must be above 0 and at most 1"),
}

# Cases planned together: no variable twice in a round, and no invalid value of a variable that another case's
# validation refers to (Terraform skips a validation whose other variable is itself invalid).
ROUNDS = [
    [
        "dataset id over 1015 characters",
        "table id over 1024 characters",
        "content table id starting with a digit",
        "CIDR without a prefix length",
        "nobody may pass IAP",
        "fewer max than min instances",
        "unknown BigQuery location",
        "public security readers",
        "domain as content readers",
        "unknown upstream",
        "access level short name",
        "notification channel by its number only",
        "alert email without a domain",
        "error ratio as a percentage",
    ],
    [
        "CIDR smaller than /26",
        "group with a member prefix",
        "lowercase multi-region",
        "vertex without a region",
        "access level without its policy",
    ],
    ["existing and created access level"],
    ["allUsers as a user", "IP range that is not a range", "unknown encryption status"],
    ["IP range with host bits", "unknown device OS"],
]


def _round_of(case: str) -> int:
    (number,) = [number for number, cases in enumerate(ROUNDS) if case in cases]
    return number


def _round_plan(planner: Planner, number: int) -> Plan:
    variables = dict(REQUIRED_VARIABLES)
    overridden: set[str] = set()
    for case in ROUNDS[number]:
        names = set(CASES[case][0]) - set(POLICY)
        assert not names & overridden, f"{case} sets {names & overridden} again in round {number}"
        overridden |= names
        variables.update(CASES[case][0])
    return planner.plan(variables)


def test_every_case_is_in_exactly_one_round() -> None:
    assert sorted(case for cases in ROUNDS for case in cases) == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_refuses_a_bad_value_with_its_message(planner: Planner, case: str) -> None:
    plan = _round_plan(planner, _round_of(case))
    assert not plan.ok, f"terraform plan accepted {CASES[case][0]}"
    message = CASES[case][1]
    assert any(message in error for error in plan.errors), f"{message!r} not in:\n" + "\n".join(plan.errors)
    # Refused by a validation, not by an expression that broke on the value ("Invalid index", "Error in function").
    assert {error.split(":")[0] for error in plan.errors} == {"Invalid value for variable"}


def test_the_values_next_to_each_limit_are_accepted(planner: Planner) -> None:
    plan = planner.plan(
        {
            **REQUIRED_VARIABLES,
            "bigquery_dataset_id": "d" * 1015,
            "audit_table_id": "_" + "t" * 1023,
            "vpc_subnet_cidr": "10.8.0.0/26",
            "min_instances": 3,
            "max_instances": 3,
            "bigquery_location": "US",
            "access_users": ["someone@example.com"],
            "access_groups": [],
        }
    )
    assert plan.ok, "\n".join(plan.errors)


def test_a_views_folder_without_sql_files_stops_the_plan(planner: Planner, tmp_path: Path) -> None:
    """A copy of terraform/ away from the repository would otherwise plan no security views, silently."""
    plan = planner.plan({**REQUIRED_VARIABLES, "security_views_dir": str(tmp_path)})
    assert not plan.ok
    assert any(f"No *.sql file in {tmp_path}" in error for error in plan.errors), plan.errors
