"""Our budget headers and refusal against the gateway protocol as the pinned Claude Code release states it: the
document its own gateway serves at `GET /protocol` is a constant in the binary, read from there, so a new release
that changes the contract fails here rather than in front of developers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.managed_settings import checksum
from gateway.policy.budget import Cap, allowed_headers, billing_refusal
from tests.support import claude_code

pytestmark = pytest.mark.slow

_START = b"# Claude Code gateway protocol"


@pytest.fixture(scope="module")
def protocol() -> str:
    """The protocol document, as the binary carries it (a JavaScript template literal)."""
    binary: Path = claude_code.install()
    data = binary.read_bytes()
    start = data.find(_START)
    assert start >= 0, "the gateway protocol document is no longer in the binary: find where it went"
    end = data.find(b"## References", start)
    return data[start:end].decode("utf-8").replace("\\`", "`")


def _example_429_headers(protocol: str) -> dict[str, str]:
    block = protocol.split("When the cap is reached, reject", 1)[1].split('{"type":"error"', 1)[0]
    return dict(re.findall(r"^    ([a-z-]+): (\S+)$", block, re.MULTILINE))


def test_success_headers_are_the_protocols(protocol: str) -> None:
    documented = set(
        re.findall(
            r"`(anthropic-ratelimit-unified-[a-z-]+)`",
            protocol.split("## Usage-limit", 1)[1].split("When the cap is reached", 1)[0],
        )
    )
    cap = Cap("daily", 1_000_000, 960_000, datetime(2026, 12, 2, tzinfo=UTC))
    sent = {name.decode() for name, _ in allowed_headers(cap)}

    assert sent == documented | {"anthropic-ratelimit-unified-overage-reset"}
    assert "two decimals, kept below `1`" in protocol and "`0.75` or `0.95`" in protocol


def test_refusal_at_the_cap_has_exactly_the_protocols_headers(protocol: str) -> None:
    example = _example_429_headers(protocol)
    cap = Cap("daily", 1_000_000, 1_000_000, datetime(2026, 12, 2, tzinfo=UTC))
    refusal = billing_refusal(cap, "ada@example.com", cap.resets_at.timestamp() - 37800)

    assert set(refusal["headers"]) == set(example)
    fixed = {
        "x-should-retry",
        "anthropic-ratelimit-unified-status",
        "anthropic-ratelimit-unified-overage-utilization",
        "anthropic-ratelimit-unified-overage-surpassed-threshold",
        "anthropic-ratelimit-unified-overage-period",
        "anthropic-ratelimit-unified-overage-disabled-reason",
        "retry-after",
    }
    assert {name: refusal["headers"][name] for name in fixed} == {name: example[name] for name in fixed}
    assert refusal["error_type"] == "billing_error" and "| 429 | `billing_error` |" in protocol
    assert "Leave `representative-claim` and `overage-status` off the 429" in protocol


def test_checksum_rule_is_the_protocols(protocol: str) -> None:
    assert (
        "`sha256:` plus the hex SHA-256 of the `settings` JSON with\nkeys sorted at every level and no whitespace"
        in protocol
    )
    assert checksum({}) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # sha256("{}")
    assert 'Return `404` for "no managed policy"' in protocol


def test_denied_model_and_telemetry_answers_are_the_protocols(protocol: str) -> None:
    assert "returning `400 invalid_request_error` for a denied\nmodel" in protocol
    assert "Return `200`\nwhether you forward or discard" in protocol
