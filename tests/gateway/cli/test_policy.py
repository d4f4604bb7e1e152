from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.cli import main
from gateway.policy.counters import Quota
from gateway.policy.redis_counters import RedisCounters

EXAMPLE = Path(__file__).parents[3] / "examples" / "policy.yaml"
REDIS_URL = "redis://127.0.0.1:6379/0"


def test_validate_says_what_a_valid_file_holds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(EXAMPLE)]) == 0

    out = capsys.readouterr().out
    assert out == (f"{EXAMPLE}: valid: a default rule, 3 group rules, 2 user overrides, static members for 4 groups\n")


def test_validate_names_file_line_and_reason_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("groups:\n  eng@example.com:\n    models: [claude-sonnet-*]\n    tokens_per_minut: 5\n")

    assert main(["policy", "validate", str(bad)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"claude-gateway: {bad}:4:5: unknown key 'tokens_per_minut' in the rule for group eng@example.com "
        "(did you mean 'tokens_per_minute'?)\n"
    )


def test_explain_shows_groups_rules_limits_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "explain", "Ada@example.com", "--policy", str(EXAMPLE), "--resolver", "static"])

    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "ada@example.com"
    assert lines[1] == (
        f"  groups:  engineering@example.com, ml-research@example.com  (from static members in {EXAMPLE})"
    )
    assert lines[2] == (
        "  rules:   user:ada@example.com override on top of group:engineering@example.com, "
        "group:ml-research@example.com (the most generous value of each limit wins)"
    )
    assert "claude-sonnet-*, claude-haiku-*, claude-opus-*" in out
    assert "daily_budget_usd         $300.00" in out and "user:ada@example.com override" in out
    assert (
        "monthly_budget_usd       $2,000.00                    group:ml-research@example.com, the most generous of "
        "$400.00 from group:engineering@example.com, $2,000.00 from group:ml-research@example.com"
    ) in out


def test_explain_someone_in_no_group_shows_the_default_rule(capsys: pytest.CaptureFixture[str]) -> None:
    main(["policy", "explain", "visitor@example.com", "--policy", str(EXAMPLE), "--resolver", "static"])

    out = capsys.readouterr().out
    assert "  rules:   default (in none of the groups the policy has rules for)" in out
    assert "models                   claude-haiku-*" in out


def test_explain_without_a_rule_says_every_request_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups:\n  eng@example.com: {}\nmembers:\n  eng@example.com: [ada@example.com]\n")

    main(["policy", "explain", "visitor@example.com", "--policy", str(policy), "--resolver", "static"])

    assert "rule:    none, and the policy has no default rule: every request is refused" in capsys.readouterr().out


def test_explain_reads_the_policy_file_setting_and_shows_shared_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"

    async def use_some() -> None:
        counters = RedisCounters(REDIS_URL, prefix=prefix)
        lease = uuid.uuid4().hex
        await counters.acquire("grace@example.com", lease, Quota(requests_per_minute=60), time.time())
        await counters.settle("grace@example.com", lease, time.time(), tokens=1234, micros=56_700)
        await counters.aclose()

    async def clean() -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(use_some())
    monkeypatch.setenv("GATEWAY_POLICY_FILE", str(EXAMPLE))
    monkeypatch.setenv("GATEWAY_GROUP_RESOLVER", "static")
    monkeypatch.setenv("GATEWAY_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("GATEWAY_REDIS_KEY_PREFIX", prefix)
    try:
        assert main(["policy", "explain", "grace@example.com"]) == 0
    finally:
        asyncio.run(clean())

    out = capsys.readouterr().out
    assert "requests in the last minute  1" in out
    assert "tokens in the last minute    1234" in out
    assert "spent today (UTC)            $0.0567" in out


def test_explain_without_a_policy_file_says_how_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "ada@example.com"]) == 2

    assert capsys.readouterr().err == (
        "claude-gateway: no policy file: pass --policy FILE or set GATEWAY_POLICY_FILE\n"
    )


def test_explain_with_static_resolver_needs_a_members_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups:\n  eng@example.com: {}\n")

    assert main(["policy", "explain", "ada@example.com", "--policy", str(policy), "--resolver", "static"]) == 2

    assert "GATEWAY_GROUP_RESOLVER=static needs a `members:` section" in capsys.readouterr().err


def test_serve_refuses_a_bad_policy_file_in_one_line_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("default:\n  daily_budget_usd: -1\n")
    monkeypatch.setenv("GATEWAY_DEV_MODE", "1")
    monkeypatch.setenv("GATEWAY_POLICY_FILE", str(bad))

    assert main(["serve", "--port", "1"]) == 2

    assert capsys.readouterr().err == (
        f"claude-gateway: {bad}:2:21: daily_budget_usd in the default rule may not be negative (-1)\n"
    )
