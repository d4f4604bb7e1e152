from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.capture.levels import CaptureLevel
from gateway.policy.loader import PolicyFileError, load_policy, parse_policy
from gateway.policy.model import ModelPattern, Policy, decide

EXAMPLE = Path(__file__).parents[3] / "examples" / "policy.yaml"

THREE_GROUPS = """\
version: 1
default:
  models: [claude-haiku-*]
  requests_per_minute: 10
  daily_budget_usd: 2
groups:
  eng@example.com:
    models: [claude-sonnet-*]
    requests_per_minute: 60
    tokens_per_minute: 100000
    daily_budget_usd: 20
    max_concurrent_requests: 4
    max_tokens: 16000
  ml@example.com:
    models: [claude-opus-*]
    requests_per_minute: 30
    tokens_per_minute: unlimited
    daily_budget_usd: 100.5
    max_concurrent_requests: 2
    max_tokens: 32000
  ADMINS@example.com: {}
users:
  Ada@Example.com:
    daily_budget_usd: 5
  solo@example.com:
    models: [claude-haiku-*]
    max_tokens: 100
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(textwrap.dedent(text), "policy.yaml")
    return caught.value.errors


def test_example_policy_file_is_valid() -> None:
    policy = load_policy(EXAMPLE)

    assert set(policy.groups) == {"engineering@example.com", "ml-research@example.com", "claude-admins@example.com"}
    assert policy.default is not None
    assert policy.members is not None
    # The YAML anchor is merged, and the rule's own keys win over it.
    research = policy.groups["ml-research@example.com"]
    assert research.requests_per_minute == 60
    assert research.daily_budget_usd == Decimal("150")


def test_valid_file_is_read_with_emails_lower_cased_and_unlimited_as_none() -> None:
    policy = parse_policy(THREE_GROUPS, "policy.yaml")

    assert set(policy.groups) == {"eng@example.com", "ml@example.com", "admins@example.com"}
    ml = policy.groups["ml@example.com"]
    assert ml.tokens_per_minute is None
    assert ml.daily_budget_usd == Decimal("100.5")
    assert "tokens_per_minute" in ml.given
    assert policy.groups["admins@example.com"].models is None
    assert set(policy.users) == {"ada@example.com", "solo@example.com"}
    assert policy.users["ada@example.com"].given == {"daily_budget_usd"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "groups:\n  eng@example.com:\n    request_per_minute: 5\n",
            "policy.yaml:3:5: unknown key 'request_per_minute' in the rule for group eng@example.com "
            "(did you mean 'requests_per_minute'?)",
        ),
        (
            "default:\n  requests_per_minute: -1\n",
            "policy.yaml:2:24: requests_per_minute in the default rule may not be negative (-1)",
        ),
        (
            "default:\n  daily_budget_usd: -0.5\n",
            "policy.yaml:2:21: daily_budget_usd in the default rule may not be negative (-0.5)",
        ),
        (
            "default:\n  models:\n    - claude-[opus]-*\n",
            "policy.yaml:3:7: invalid model pattern 'claude-[opus]-*': '[' is not allowed",
        ),
        ("default:\n  models: ['']\n", "policy.yaml:2:12: a model pattern may not be empty"),
        ("default:\n  models: claude-*\n", "policy.yaml:2:11: models in the default rule must be a list"),
        ("default:\n  max_tokens: 0\n", "policy.yaml:2:15: max_tokens in the default rule must be at least 1"),
        (
            "default:\n  max_concurrent_requests: 2.5\n",
            "policy.yaml:2:28: max_concurrent_requests in the default rule must be a whole number or `unlimited`, "
            "not 2.5",
        ),
        ("default:\n  requests_per_minute: true\n", "must be a whole number or `unlimited`, not true"),
        ("default:\n  requests_per_minute: '10'\n", "must be a whole number or `unlimited`, not '10'"),
        ("default:\n  monthly_budget_usd: .inf\n", "must be a finite amount of US dollars"),
        ("default:\n  tokens_per_minute:\n", "policy.yaml:2:21: tokens_per_minute in the default rule has no value"),
        ("groups:\n  eng@example.com:\n", "policy.yaml:2:19: the rule for group eng@example.com is empty; write {}"),
        ("groups:\n  engineering: {}\n", "policy.yaml:2:3: 'engineering' in `groups` is not an email address"),
        (
            "groups:\n  a@example.com: {}\n  A@EXAMPLE.com: {}\n",
            "policy.yaml:3:3: group a@example.com appears twice (also on line 2; case is ignored)",
        ),
        ("default: {}\ndefault: {}\n", "policy.yaml:2:1: duplicate key 'default' in the policy file (first on line 1)"),
        ("defaults: {}\n", "policy.yaml:1:1: unknown key 'defaults' in the policy file (did you mean 'default'?)"),
        ("version: 2\n", "policy.yaml:1:10: version must be 1"),
        ("- a\n- b\n", "policy.yaml:1:1: the policy file must be a mapping"),
        (
            "members:\n  eng@example.com: ada@example.com\n",
            "policy.yaml:2:20: members of eng@example.com must be a list",
        ),
        ("members:\n  eng@example.com: [ada]\n", "policy.yaml:2:21: 'ada' in the members of eng@example.com is not an"),
        ("default:\n  models: [a\n", "policy.yaml:3:1: not valid YAML"),
        ("default: {requests_per_minute: !!python/object:os.system x}\n", "must be a whole number"),
    ],
)
def test_broken_file_is_refused_with_file_line_and_reason(text: str, expected: str) -> None:
    errors = errors_of(text)

    assert any(error.startswith(expected) or expected in error for error in errors), errors


def test_every_problem_is_reported_in_line_order() -> None:
    errors = errors_of(
        """\
        groups:
          eng@example.com:
            requests_per_minute: -1
            colour: blue
          ml@example.com:
            max_tokens: 0
        """
    )

    assert [error.split(":")[1] for error in errors] == ["3", "4", "6"]


def test_empty_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")

    with pytest.raises(PolicyFileError, match="empty.yaml: the policy file is empty"):
        load_policy(empty)
    with pytest.raises(PolicyFileError, match="missing.yaml: cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_model_patterns_match_whole_ids_case_blind() -> None:
    sonnet = ModelPattern.parse("claude-sonnet-*")
    vertex = ModelPattern.parse("claude-opus-4-1@*")

    assert sonnet.matches("claude-sonnet-4-5-20250929")
    assert sonnet.matches("CLAUDE-SONNET-4-5")
    assert not sonnet.matches("xclaude-sonnet-4-5")
    assert not sonnet.matches("claude-opus-4-1")
    assert vertex.matches("claude-opus-4-1@20250805")
    assert ModelPattern.parse("claude-?aiku-4-5").matches("claude-haiku-4-5")
    assert not ModelPattern.parse("claude.haiku").matches("claude-haiku")  # `.` is literal


@pytest.fixture
def policy() -> Policy:
    return parse_policy(THREE_GROUPS, "policy.yaml")


def test_most_generous_value_of_each_limit_wins_across_groups(policy: Policy) -> None:
    decision = decide(policy, "bob@example.com", {"eng@example.com", "ml@example.com", "unrelated@example.com"})

    limits = decision.limits
    assert limits is not None
    assert decision.groups == ("eng@example.com", "ml@example.com")
    assert decision.rule == "group:eng@example.com,group:ml@example.com"
    assert limits.requests_per_minute == 60
    assert limits.tokens_per_minute is None  # ml sets no limit, which is the most generous
    assert limits.daily_budget_usd == Decimal("100.5")
    assert limits.max_concurrent_requests == 4
    assert limits.max_tokens == 32000
    assert limits.allows_model("claude-sonnet-4-5") and limits.allows_model("claude-opus-4-1")
    assert not limits.allows_model("claude-haiku-4-5")
    assert limits.source["requests_per_minute"] == "group:eng@example.com"
    assert (
        "most generous of 60 from group:eng@example.com, 30 from group:ml@example.com"
        in limits.why["requests_per_minute"]
    )


def test_person_in_no_group_gets_the_default_rule(policy: Policy) -> None:
    decision = decide(policy, "carol@example.com", set())

    assert decision.rule == "default"
    assert decision.limits is not None and decision.limits.requests_per_minute == 10


def test_person_in_no_rule_without_default_is_denied() -> None:
    policy = parse_policy("groups:\n  eng@example.com: {}\n")

    decision = decide(policy, "carol@example.com", {"other@example.com"})

    assert decision.limits is None
    assert decision.rule is None


def test_user_override_changes_only_the_keys_it_writes(policy: Policy) -> None:
    decision = decide(policy, "ADA@example.com", {"eng@example.com"})

    limits = decision.limits
    assert limits is not None
    assert decision.rule == "user:ada@example.com,group:eng@example.com"
    assert limits.daily_budget_usd == Decimal("5")  # stricter than the group: overrides win either way
    assert limits.requests_per_minute == 60
    assert limits.source["daily_budget_usd"] == "user:ada@example.com"


def test_user_override_applies_over_the_default_rule(policy: Policy) -> None:
    decision = decide(policy, "ada@example.com", set())

    assert decision.rule == "user:ada@example.com,default"
    assert decision.limits is not None
    assert decision.limits.requests_per_minute == 10
    assert decision.limits.daily_budget_usd == Decimal("5")


def test_user_override_alone_is_the_whole_rule_without_group_or_default() -> None:
    policy = parse_policy("users:\n  solo@example.com:\n    max_tokens: 100\n")

    decision = decide(policy, "solo@example.com", set())

    assert decision.rule == "user:solo@example.com"
    assert decision.limits is not None
    assert decision.limits.max_tokens == 100
    assert decision.limits.requests_per_minute is None


def test_capture_levels_are_the_files_words_and_the_most_capture_across_groups_wins() -> None:
    policy = parse_policy(
        textwrap.dedent("""\
        version: 1
        default: {capture: none}
        groups:
          eng@example.com: {capture: metadata+}
          audit@example.com: {capture: full}
        """)
    )

    assert [str(level) for level in CaptureLevel] == ["none", "metadata+", "full"]
    assert policy.groups["eng@example.com"].capture is CaptureLevel.METADATA
    both = decide(policy, "ada@example.com", {"eng@example.com", "audit@example.com"})
    assert both.limits.capture is CaptureLevel.FULL and both.limits.capture == "full"
    assert decide(policy, "bo@example.com", set()).limits.capture is CaptureLevel.NONE
