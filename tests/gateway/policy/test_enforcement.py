"""The policy end to end: a real gateway under uvicorn, real IAP assertions, the fake upstream, real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import yaml

from gateway.app import create_app
from gateway.dev.iap import AssertionSigner
from gateway.policy.loader import PolicyFileError
from tests.gateway.conftest import Stack, StackFactory, gateway_settings
from tests.support.anthropic_sse import SSE_HEADERS, stream_events
from tests.support.servers import FakeUpstream, Reply, serve

REDIS_URL = "redis://127.0.0.1:6379/0"
ADA, GRACE, MALLORY = "ada@example.com", "grace@example.com", "mallory@example.com"
SONNET = "claude-sonnet-4-5-20250929"


def policy_file(tmp_path: Path, eng: dict[str, Any], *, default: dict[str, Any] | None = None) -> str:
    """A policy with one group (engineering: ada, grace) and, if given, a default rule."""
    document: dict[str, Any] = {
        "version": 1,
        "groups": {"eng@example.com": eng},
        "members": {"eng@example.com": [ADA, GRACE]},
    }
    if default is not None:
        document["default"] = default
    path = tmp_path / f"policy-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def streamed(seen: Any) -> Reply:
    return Reply(200, SSE_HEADERS, stream_events(["Hel", "lo"], model=SONNET))


def send(
    stack: Stack, email: str = ADA, *, model: str = SONNET, max_tokens: int = 1024, path: str = "/v1/messages"
) -> httpx.Response:
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"content-type": "application/json", **stack.headers(email)}
    return httpx.post(stack.url + path, content=orjson.dumps(body), headers=headers, timeout=10)


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert body["type"] == "error"
    return dict(body["error"])


@pytest.fixture
def policy_stack(make_stack: StackFactory, tmp_path: Path) -> Callable[..., AbstractContextManager[Stack]]:
    """`with policy_stack({"requests_per_minute": 2}) as stack:` runs a gateway with that rule for engineering."""

    def start(eng: dict[str, Any], *, default: dict[str, Any] | None = None, **settings: Any) -> Any:
        settings.setdefault("group_resolver", "static")
        return make_stack(policy_file=policy_file(tmp_path, eng, default=default), **settings)

    return start


def test_model_outside_the_allow_list_is_refused_and_audited(policy_stack: Any) -> None:
    with policy_stack({"models": ["claude-sonnet-*", "claude-haiku-*"]}) as stack:
        stack.upstream.reply = streamed

        response = send(stack, model="claude-opus-4-1-20250805")

        # The gateway protocol's answer to a denied model, which Claude Code shows as it is.
        assert response.status_code == 400
        error = error_of(response)
        assert error["type"] == "invalid_request_error"
        assert error["message"] == (
            "Model claude-opus-4-1-20250805 is not allowed for ada@example.com (rule group:eng@example.com). "
            "Allowed: claude-sonnet-*, claude-haiku-*. In Claude Code, pick another with /model."
        )
        assert stack.upstream.requests == []
        row = stack.rows(1)[-1]
        assert (row["status_code"], row["outcome"]) == (400, "denied")
        assert row["policy_rule"] == "group:eng@example.com"
        assert row["groups"] == ["eng@example.com"]


def test_allowed_request_is_relayed_and_audited_with_groups_and_rule(policy_stack: Any) -> None:
    with policy_stack({"models": ["claude-sonnet-*"], "requests_per_minute": 5}) as stack:
        stack.upstream.reply = streamed

        response = send(stack)

        assert response.status_code == 200
        row = stack.rows(1)[-1]
        assert (row["outcome"], row["policy_rule"]) == ("ok", "group:eng@example.com")
        assert row["groups"] == ["eng@example.com"]


def test_max_tokens_above_the_cap_is_refused_naming_the_limit(policy_stack: Any) -> None:
    with policy_stack({"max_tokens": 8192}) as stack:
        response = send(stack, max_tokens=32000)

        assert response.status_code == 403
        assert error_of(response)["message"] == (
            "max_tokens 32000 is more than the 8192 allowed for ada@example.com (rule group:eng@example.com). "
            "Ask for at most 8192; in Claude Code, set CLAUDE_CODE_MAX_OUTPUT_TOKENS=8192."
        )
        assert stack.rows(1)[-1]["outcome"] == "denied"


def test_person_in_no_rule_without_default_is_denied_everywhere(policy_stack: Any) -> None:
    with policy_stack({}) as stack:
        messages = send(stack, MALLORY)
        models = httpx.get(stack.url + "/v1/models", headers=stack.headers(MALLORY), timeout=10)

        for response in (messages, models):
            assert response.status_code == 403
            assert error_of(response)["message"].startswith("mallory@example.com has no access to Claude")
        rows = stack.rows(2)
        assert [(r["outcome"], r["policy_rule"], r["groups"]) for r in rows] == [("denied", None, [])] * 2
        assert stack.upstream.requests == []


def test_person_in_no_group_gets_the_default_rule(policy_stack: Any) -> None:
    with policy_stack({}, default={"models": ["claude-haiku-*"]}) as stack:
        stack.upstream.reply = streamed

        assert send(stack, MALLORY, model="claude-haiku-4-5").status_code == 200
        refused = send(stack, MALLORY, model=SONNET)

        assert refused.status_code == 400
        assert "(rule default)" in error_of(refused)["message"]
        assert stack.rows(2)[-1]["policy_rule"] == "default"


def test_requests_per_minute_over_the_limit_get_429_with_retry_after(policy_stack: Any) -> None:
    with policy_stack({"requests_per_minute": 2}) as stack:
        stack.upstream.reply = streamed

        statuses = [send(stack).status_code for _ in range(2)]
        refused = send(stack)

        assert statuses == [200, 200]
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        error = error_of(refused)
        assert error["type"] == "rate_limit_error"
        assert error["message"].startswith(
            "Rate limit reached: at most 2 requests per minute for ada@example.com (rule group:eng@example.com). "
            "Try again in "
        )
        assert len(stack.upstream.requests) == 2
        row = stack.rows(3)[-1]
        assert (row["status_code"], row["outcome"]) == (429, "rate_limited")
        assert row["policy_rule"] == "group:eng@example.com"
        # Another member of the group has their own count.
        assert send(stack, GRACE).status_code == 200


def test_tokens_per_minute_counts_what_was_metered(policy_stack: Any) -> None:
    with policy_stack({"tokens_per_minute": 100}) as stack:
        stack.upstream.reply = streamed  # 25 input + 100 cache writes + 2 output: 127 counted, cache reads not

        assert send(stack).status_code == 200
        refused = send(stack)

        assert refused.status_code == 429
        message = error_of(refused)["message"]
        assert "at most 100 tokens (input + output) per minute" in message
        assert "127 used in the last minute" in message
        assert int(refused.headers["retry-after"]) >= 1


def test_spent_budget_is_refused_with_which_budget_and_when_it_resets(policy_stack: Any) -> None:
    with policy_stack({"daily_budget_usd": 0.001}) as stack:
        stack.upstream.reply = streamed  # $0.001095 at Sonnet 4.5 prices

        assert send(stack).status_code == 200
        refused = send(stack)

        assert refused.status_code == 429
        message = error_of(refused)["message"]
        assert message.startswith(
            "Daily budget of $0.001 used up for ada@example.com (rule group:eng@example.com): $0.0011 spent today. "
            "It resets at "
        )
        assert " 00:00 UTC (in " in message
        assert error_of(refused)["type"] == "billing_error"  # the gateway protocol's shape for a spent budget
        assert refused.headers["x-should-retry"] == "false"  # Claude Code would only retry in vain
        assert 0 < int(refused.headers["retry-after"]) <= 86_400
        assert stack.rows(2)[-1]["outcome"] == "rate_limited"


def test_concurrent_requests_beyond_the_limit_are_refused_and_the_slot_comes_back(policy_stack: Any) -> None:
    with policy_stack({"max_concurrent_requests": 1}) as stack:
        release = threading.Event()

        def slow_then_fast(seen: Any) -> Reply:
            reply = streamed(seen)
            if not release.is_set():
                reply.hold = 1.0
            return reply

        stack.upstream.reply = slow_then_fast
        first: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: first.append(send(stack)))
        runner.start()
        try:
            for _ in range(200):
                if stack.upstream.requests:
                    break
                time.sleep(0.01)
            refused = send(stack)
        finally:
            release.set()
            runner.join(10)

        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert error_of(refused)["message"].startswith("Too many requests at once: at most 1 at a time")
        assert first[0].status_code == 200
        assert send(stack).status_code == 200


def test_count_tokens_and_model_list_need_a_rule_but_are_not_counted(policy_stack: Any) -> None:
    with policy_stack({"models": ["claude-sonnet-*"], "requests_per_minute": 1}) as stack:
        stack.upstream.reply = lambda seen: Reply(200, [("content-type", "application/json")], [b'{"input_tokens": 9}'])

        counted = send(stack, path="/v1/messages/count_tokens")
        other_model = send(stack, path="/v1/messages/count_tokens", model="claude-opus-4-1")
        models = httpx.get(stack.url + "/v1/models", headers=stack.headers(ADA), timeout=10)
        stack.upstream.reply = streamed
        first, second = send(stack), send(stack)

        assert counted.status_code == 200
        assert other_model.status_code == 400
        assert models.status_code == 200
        listed = [entry["id"] for entry in models.json()["data"]]
        assert listed and all(model.startswith("claude-sonnet-") for model in listed)
        assert (first.status_code, second.status_code) == (200, 429)


def test_start_up_refuses_a_bad_policy_file_with_file_line_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("groups:\n  eng@example.com:\n    requests_per_minute: -5\n")
    app = create_app(gateway_settings("http://127.0.0.1:9", tmp_path / "audit.db", policy_file=str(bad)))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(PolicyFileError) as caught:
        anyio.run(start)
    assert str(caught.value) == (
        f"{bad}:3:26: requests_per_minute in the rule for group eng@example.com may not be negative (-5)"
    )


@contextmanager
def gateway(
    upstream: tuple[FakeUpstream, str], signer: AssertionSigner, audit_db: Path, **settings: Any
) -> Iterator[Stack]:
    fake, fake_url = upstream
    with serve(create_app(gateway_settings(fake_url, audit_db, **settings))) as url:
        yield Stack(url=url, upstream=fake, signer=signer, audit_db=audit_db)


def test_two_gateways_sharing_redis_enforce_one_combined_limit(
    upstream: tuple[FakeUpstream, str], signer: AssertionSigner, tmp_path: Path
) -> None:
    settings = {
        "policy_file": policy_file(tmp_path, {"requests_per_minute": 3}),
        "group_resolver": "static",
        "redis_url": REDIS_URL,
        "redis_key_prefix": f"test-{uuid.uuid4().hex}",
    }
    upstream[0].reply = streamed
    with (
        gateway(upstream, signer, tmp_path / "a.db", **settings) as first,
        gateway(upstream, signer, tmp_path / "b.db", **settings) as second,
    ):
        statuses = [send(first).status_code, send(second).status_code, send(first).status_code]
        refused_by_second = send(second)
        refused_by_first = send(first)

        assert statuses == [200, 200, 200]
        assert (refused_by_second.status_code, refused_by_first.status_code) == (429, 429)
        assert "at most 3 requests per minute" in error_of(refused_by_second)["message"]
        assert [row["outcome"] for row in second.rows(2)] == ["ok", "rate_limited"]


def test_two_gateways_sharing_redis_share_the_concurrency_limit(
    upstream: tuple[FakeUpstream, str], signer: AssertionSigner, tmp_path: Path
) -> None:
    settings = {
        "policy_file": policy_file(tmp_path, {"max_concurrent_requests": 1}),
        "group_resolver": "static",
        "redis_url": REDIS_URL,
        "redis_key_prefix": f"test-{uuid.uuid4().hex}",
    }
    fake = upstream[0]
    release = threading.Event()

    def slow_once(seen: Any) -> Reply:
        reply = streamed(seen)
        if not release.is_set():
            reply.hold = 1.0
        return reply

    fake.reply = slow_once
    with (
        gateway(upstream, signer, tmp_path / "a.db", **settings) as first,
        gateway(upstream, signer, tmp_path / "b.db", **settings) as second,
    ):
        running: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: running.append(send(first)))
        runner.start()
        try:
            for _ in range(200):
                if fake.requests:
                    break
                time.sleep(0.01)
            refused = send(second)
        finally:
            release.set()
            runner.join(10)

        assert refused.status_code == 429
        assert running[0].status_code == 200
        assert send(second).status_code == 200


def test_unreachable_redis_fails_open_by_default_and_keeps_auditing(
    policy_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = {"redis_url": "redis://127.0.0.1:1/0", "redis_timeout_seconds": 0.2}
    with policy_stack({"requests_per_minute": 1}, **unreachable) as stack:
        stack.upstream.reply = streamed

        statuses = [send(stack).status_code for _ in range(3)]

        assert statuses == [200, 200, 200]
        rows = stack.rows(3)
        # Each row says its limits were not checked.
        assert {(r["outcome"], r["policy_rule"]) for r in rows} == {("ok", "group:eng@example.com,limits-unchecked")}
    assert "FAIL-OPEN" in caplog.text


def test_unreachable_redis_fails_closed_when_configured(policy_stack: Any) -> None:
    with policy_stack(
        {"requests_per_minute": 1},
        redis_url="redis://127.0.0.1:1/0",
        redis_timeout_seconds=0.2,
        policy_fail_mode="closed",
    ) as stack:
        refused = send(stack)

        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert error_of(refused)["message"].startswith("Usage limits cannot be checked right now")
        assert stack.upstream.requests == []
        assert stack.rows(1)[-1]["outcome"] == "rate_limited"


def test_rules_without_counted_limits_never_touch_the_counters(policy_stack: Any) -> None:
    """Only model and max_tokens limits: the unreachable Redis is never asked, even with fail-closed."""
    with policy_stack(
        {"models": ["claude-sonnet-*"], "max_tokens": 4096},
        redis_url="redis://127.0.0.1:1/0",
        redis_timeout_seconds=0.2,
        policy_fail_mode="closed",
    ) as stack:
        stack.upstream.reply = streamed

        assert send(stack).status_code == 200
