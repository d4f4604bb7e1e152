"""The official anthropic SDK as the client, the gateway under uvicorn, the mock Anthropic API as upstream."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from gateway.dev.mock_upstream import create_mock_upstream
from tests.gateway.conftest import Stack, StackFactory
from tests.support.servers import serve


@pytest.fixture
def sdk_stack(make_stack: StackFactory) -> Iterator[Stack]:
    with serve(create_mock_upstream(deltas=20, cache_read_tokens=300)) as mock_url:
        with make_stack(upstream_url=mock_url) as stack:
            yield stack


_clients: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """SDK clients hold pooled sockets; left to the garbage collector they surface as ResourceWarnings."""
    yield
    while _clients:
        _clients.pop().close()


def client_for(stack: Stack) -> anthropic.Anthropic:
    # The SDK's own key is a placeholder: the gateway strips it and uses its own.
    client = anthropic.Anthropic(
        base_url=stack.url,
        api_key="placeholder-not-a-real-key",
        default_headers={"x-goog-iap-jwt-assertion": stack.assertion("grace@example.com")},
        max_retries=0,
    )
    _clients.append(client)
    return client


def test_sdk_streaming_through_gateway_is_audited_with_user_model_and_tokens(sdk_stack: Stack) -> None:
    client = client_for(sdk_stack)

    with client.messages.stream(
        model="claude-opus-5-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "ping through the gateway"}],
        extra_headers={"x-claude-code-session-id": "session-e2e"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert "Hello from the mock upstream" in text
    assert final.usage.output_tokens == 20
    row = sdk_stack.rows(1)[0]
    assert row["user_email"] == "grace@example.com"
    assert row["served_model"] == "claude-opus-5-5"
    assert row["output_tokens"] == 20
    assert row["input_tokens"] == final.usage.input_tokens
    assert row["cache_read_input_tokens"] == 300
    assert row["session_id"] == "session-e2e"
    assert row["stream"] == 1 and row["outcome"] == "ok"
    assert row["cost_usd"] > 0


def test_sdk_non_streaming_through_gateway(sdk_stack: Stack) -> None:
    client = client_for(sdk_stack)

    message = client.messages.create(
        model="claude-haiku-4-5-20251001",
        max_tokens=50,
        messages=[{"role": "user", "content": "hello"}],
    )

    assert message.content[0].type == "text"
    assert "mock upstream" in message.content[0].text
    row = sdk_stack.rows(1)[0]
    assert (row["user_email"], row["served_model"], row["stream"]) == (
        "grace@example.com",
        "claude-haiku-4-5-20251001",
        0,
    )
    assert row["output_tokens"] == message.usage.output_tokens
    assert row["upstream_request_id"] == message._request_id


def test_sdk_count_tokens_and_models(sdk_stack: Stack) -> None:
    client = client_for(sdk_stack)

    counted = client.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
    models = client.models.list()

    assert counted.input_tokens > 0
    assert any(m.id.startswith("claude") for m in models.data)
    rows = sdk_stack.rows(2)
    assert [r["path"] for r in rows] == ["/v1/messages/count_tokens", "/v1/models"]
    assert rows[0]["input_tokens"] == counted.input_tokens


def test_sdk_sees_gateway_refusal_as_authentication_error(sdk_stack: Stack) -> None:
    client = anthropic.Anthropic(base_url=sdk_stack.url, api_key="x", max_retries=0)
    _clients.append(client)

    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])

    assert "IAP" in str(refused.value)
