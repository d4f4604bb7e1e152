"""Claude Code managed settings per Workspace group: the policy block, the merge across a person's groups, the
derived `availableModels`, and `GET /managed/settings` with the protocol's checksum, ETag, 304 and 404."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.managed_settings import available_models, checksum
from gateway.policy.loader import PolicyFileError, parse_policy
from gateway.policy.model import ModelPattern
from tests.gateway.conftest import Stack, StackFactory

ADA, GRACE, LIN, MALLORY = "ada@example.com", "grace@example.com", "lin@example.com", "mallory@example.com"

POLICY = textwrap.dedent("""\
    version: 1
    budget_help: "ask in #claude-admins"
    groups:
      contractors@example.com:
        models: [claude-sonnet-*, claude-haiku-4-5]
        managed_settings:
          permissions:
            deny: ["Bash(curl:*)", "WebFetch"]
          cleanupPeriodDays: 7
          env: {CLAUDE_CODE_ENABLE_TELEMETRY: "1"}
      eng@example.com:
        managed_settings:
          permissions:
            deny: ["Bash(rm -rf:*)", "WebFetch"]
            allow: ["Bash(npm test)"]
          cleanupPeriodDays: 30
      research@example.com:
        requests_per_minute: 10
    users:
      lin@example.com:
        managed_settings:
          cleanupPeriodDays: 1
    members:
      contractors@example.com: [ada@example.com, lin@example.com]
      eng@example.com: [ada@example.com, grace@example.com]
      research@example.com: [mallory@example.com]
    """)


@pytest.fixture
def settings_stack(make_stack: StackFactory, tmp_path: Path) -> Iterator[Stack]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    with make_stack(policy_file=str(path), group_resolver="static") as stack:
        yield stack


def fetch(stack: Stack, email: str, **headers: str) -> httpx.Response:
    return httpx.get(stack.url + "/managed/settings", headers=stack.headers(email, **headers), timeout=10)


def test_settings_of_a_person_merge_their_groups_in_file_order(settings_stack: Stack) -> None:
    response = fetch(settings_stack, ADA)

    assert response.status_code == 200
    body = response.json()
    # contractors (listed first) wins the scalar; lists are joined without repeats. eng allows any model, so
    # (most generous wins, as for the gateway's own allow-list) no availableModels.
    assert body["settings"] == ada_settings()
    # The protocol's checksum, computed here independently: keys sorted at every level, no whitespace.
    canonical = json.dumps(body["settings"], sort_keys=True, separators=(",", ":"))
    expected = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert body["checksum"] == expected
    assert response.headers["etag"] == f'"{expected}"'
    assert body["uuid"]


def test_matching_if_none_match_gets_304_and_anything_else_the_settings(settings_stack: Stack) -> None:
    first = fetch(settings_stack, ADA)
    etag = first.headers["etag"]

    unchanged = fetch(settings_stack, ADA, **{"if-none-match": etag})
    stale = fetch(settings_stack, ADA, **{"if-none-match": '"sha256:' + "0" * 64 + '"'})
    star = fetch(settings_stack, ADA, **{"if-none-match": "*"})  # Desktop's probe: answered as without it

    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag
    assert stale.status_code == 200 and stale.json() == first.json()
    assert star.status_code == 200


def test_user_override_block_wins_over_groups(settings_stack: Stack) -> None:
    settings = fetch(settings_stack, LIN).json()["settings"]

    assert settings["cleanupPeriodDays"] == 1
    assert settings["permissions"] == {"deny": ["Bash(curl:*)", "WebFetch"]}
    # Only in contractors: Claude Code's /model offers what the gateway allows, from the one `models` list.
    assert settings["availableModels"] == ["sonnet", "claude-haiku-4-5"]


def test_no_settings_and_no_model_restriction_is_404(settings_stack: Stack) -> None:
    response = fetch(settings_stack, MALLORY)

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    rows = settings_stack.rows(1)
    assert (rows[-1]["path"], rows[-1]["status_code"], rows[-1]["user_email"]) == ("/managed/settings", 404, MALLORY)


def test_settings_need_a_verified_identity(settings_stack: Stack) -> None:
    response = httpx.get(settings_stack.url + "/managed/settings", timeout=10)

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_wrong_method_on_settings_is_405(settings_stack: Stack) -> None:
    response = httpx.post(settings_stack.url + "/managed/settings", headers=settings_stack.headers(ADA), timeout=10)

    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_checksum_writes_numbers_as_javascript_does() -> None:
    # JSON.stringify({b:[1.0,"é"],a:{d:2,c:1}}) is '{"a":{"c":1,"d":2},"b":[1,"é"]}' once keys are sorted.
    text = '{"a":{"c":1,"d":2},"b":[1,"é"]}'
    assert checksum({"b": [1.0, "é"], "a": {"d": 2, "c": 1}}) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["claude-opus-*", "claude-sonnet-5-*"], ["opus", "claude-sonnet-5"]),
        (["claude-haiku-4-5-20251001"], ["claude-haiku-4-5-20251001"]),
        (["claude-*-4-5"], None),
        (["claude-son*"], None),
    ],
)
def test_available_models_come_from_the_model_patterns(patterns: list[str], expected: list[str] | None) -> None:
    available, note = available_models(tuple(ModelPattern.parse(p) for p in patterns))

    assert available == expected
    assert ("no availableModels equivalent" in note) == (expected is None)


def test_available_models_written_by_hand_is_refused() -> None:
    text = "version: 1\ngroups:\n  eng@example.com:\n    managed_settings:\n      availableModels: [opus]\n"

    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, "p.yaml")

    assert caught.value.errors == [
        "p.yaml:5:7: availableModels in the rule for group eng@example.com is derived from the rule's `models` "
        "patterns (one declaration for the gateway and Claude Code's /model); list the models there"
    ]


def test_settings_that_json_cannot_carry_are_refused() -> None:
    text = "version: 1\ndefault:\n  managed_settings:\n    since: 2026-01-01\n"

    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, "p.yaml")

    assert "managed_settings.since is date" in caught.value.errors[0]


def test_policy_explain_shows_the_settings_a_person_gets(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)

    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "policy", "explain", ADA, "--policy", str(path), "--resolver", "static"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    expected = checksum(ada_settings())
    assert f"  managed settings: {expected}" in result.stdout
    assert "merged from group:contractors@example.com over group:eng@example.com" in result.stdout
    assert "availableModels not set: every model is allowed" in result.stdout


def ada_settings() -> dict[str, object]:
    """Ada's settings (contractors and eng), as the gateway serves them."""
    return {
        "permissions": {"deny": ["Bash(curl:*)", "WebFetch", "Bash(rm -rf:*)"], "allow": ["Bash(npm test)"]},
        "cleanupPeriodDays": 7,
        "env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1"},
    }
