"""`claude-shim usage` against the real gateway behind the local IAP stand-in: the caller's own budget, in the same
figures as the `anthropic-ratelimit-unified-*` headers Claude Code shows, and one readable line when it cannot."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import pytest

from local_shim import usage as usage_module
from local_shim.cli import main
from local_shim.errors import ShimError
from tests.local_shim.conftest import run_shim, shim_settings
from tests.local_shim.test_claude_code import shim_config
from tests.local_shim.test_claude_code_signed_in import ADA, ALLOWED, BudgetStack, budget_stack

pytestmark = pytest.mark.slow
__all__ = ["budget_stack"]  # the fixture, shared with the signed-in Claude Code test

SECRET = "usage-test-secret"


def signed_in(stack: BudgetStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, email: str) -> None:
    env = shim_config(stack.local, tmp_path / "shim-config", email)
    monkeypatch.setenv("CLAUDE_SHIM_CONFIG_DIR", env["CLAUDE_SHIM_CONFIG_DIR"])


def usage(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["usage"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_usage_shows_the_callers_spend_and_budget_as_the_budget_headers_do(
    budget_stack: BudgetStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    signed_in(budget_stack, tmp_path, monkeypatch, ADA)
    before = usage(capsys)
    settings = shim_settings(
        gateway_url=budget_stack.local.iap_url,
        token_endpoint=f"{budget_stack.local.google_url}/token",
        token_store="file",
    )
    with (
        run_shim(settings, secret=SECRET) as shim_url,
        anthropic.Anthropic(base_url=shim_url, auth_token=SECRET, max_retries=0) as client,
    ):
        ask = {"model": ALLOWED, "max_tokens": 64}
        client.messages.create(**ask, messages=[{"role": "user", "content": "SPEND"}])
        shown = client.messages.with_raw_response.create(**ask, messages=[{"role": "user", "content": "small"}])
    after = usage(capsys)

    assert before[0] == 0 and before[2] == ""
    assert before[1].splitlines()[0] == f"Usage for {ADA} at {budget_stack.local.iap_url}"
    assert re.search(r"^budget +used +spent +limit +left +resets$", before[1], re.M), before[1]
    assert re.search(r"^daily +0% +\$0\.00 +\$0\.10 +\$0\.10 +\d{4}-\d\d-\d\d 00:00 UTC \(in ", before[1], re.M)
    # What Claude Code reads: 80 % used, and the reset the table prints.
    utilization = float(shown.headers["anthropic-ratelimit-unified-overage-utilization"])
    reset = datetime.fromtimestamp(int(shown.headers["anthropic-ratelimit-unified-reset"]), UTC)
    assert after[0] == 0, after[2]
    row = re.search(r"^daily +(\d+)% +\$0\.08 +\$0\.10 +\$0\.02 +(.+) UTC \(in ", after[1], re.M)
    assert row, after[1]
    assert int(row.group(1)) == round(utilization * 100) == 80
    assert row.group(2) == f"{reset:%Y-%m-%d %H:%M}"
    assert {row["user_email"] for row in budget_stack.local.rows(3)} == {ADA}


def test_usage_for_a_person_without_a_budget_says_so(
    budget_stack: BudgetStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    signed_in(budget_stack, tmp_path, monkeypatch, "grace@example.com")

    status, out, err = usage(capsys)

    assert (status, err) == (0, "")
    assert out.splitlines()[1] == "No dollar budget applies to you: nothing to run out of."
    [row] = [row for row in budget_stack.local.rows(1) if row["path"] == "/api/oauth/usage"]
    assert row["user_email"] == "grace@example.com"


def test_usage_for_a_person_no_rule_admits_is_one_readable_line(
    budget_stack: BudgetStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    signed_in(budget_stack, tmp_path, monkeypatch, "linus@example.com")

    status, out, err = usage(capsys)

    assert (status, out) == (1, "")
    assert err.startswith("claude-shim: error: The gateway refused the usage request (HTTP 403): ")
    assert len(err.splitlines()) == 1 and "linus@example.com" in err


def test_usage_when_the_gateway_is_unreachable_is_one_readable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], budget_stack: BudgetStack
) -> None:
    signed_in(budget_stack, tmp_path, monkeypatch, ADA)
    monkeypatch.setenv("CLAUDE_SHIM_GATEWAY_URL", "http://127.0.0.1:9")  # discard port: nothing listens

    status, out, err = usage(capsys)

    assert (status, out) == (1, "")
    assert err.startswith("claude-shim: error: Cannot reach the gateway at http://127.0.0.1:9/api/oauth/usage")


def test_a_budget_row_the_shim_cannot_read_is_one_readable_error() -> None:
    with pytest.raises(ShimError, match="has a budget row it cannot read"):
        usage_module._budgets({"limits": [{"kind": "spend", "group": "daily", "percent": "most"}]})


def test_table_gives_dollars_for_the_binding_budget_and_percent_for_the_others() -> None:
    body = {
        "extra_usage": {"is_enabled": True, "monthly_limit": 1000, "used_credits": 1250, "utilization": 125},
        "limits": [
            {
                "kind": "spend",
                "group": "daily",
                "percent": 125,
                "resets_at": "2026-12-02T00:00:00.000Z",
                "is_active": True,
            },
            {
                "kind": "spend",
                "group": "monthly",
                "percent": 40,
                "resets_at": "2027-01-01T00:00:00.000Z",
                "is_active": False,
            },
        ],
    }
    now = datetime(2026, 12, 1, 23, 30, tzinfo=UTC).timestamp()

    lines = usage_module.table(usage_module.Usage(ADA, "https://gw", usage_module._budgets(body)), now)

    assert lines == [
        f"Usage for {ADA} at https://gw",
        "budget   used  spent   limit   left   resets",
        "daily    125%  $12.50  $10.00  $0.00  2026-12-02 00:00 UTC (in 30 min)",
        "monthly  40%   -       -       -      2027-01-01 00:00 UTC (in 30 d 0 h)",
        "The daily budget is used up: requests are refused until it resets.",
    ]
