from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from gateway.upstreams.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, parse_retry_after
from tests.gateway.conftest import Stack, StackFactory
from tests.support.anthropic_sse import JSON_HEADERS, SSE_HEADERS, stream_events
from tests.support.google_oauth import FakeGoogleOAuth, google_credentials
from tests.support.servers import FakeUpstream, Reply, serve

REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}
VERTEX_SSE = [("content-type", "text/event-stream")]


def overloaded(status: int = 529, **headers: str) -> Reply:
    kind = {529: "overloaded_error", 429: "rate_limit_error"}.get(status, "api_error")
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": "Overloaded"}})
    return Reply(status, [*JSON_HEADERS, *headers.items()], [body])


@dataclass
class Pair:
    """A gateway with two upstreams: Anthropic (`anthropic`, first) then Vertex AI (`vertex`)."""

    gateway: Stack
    anthropic: FakeUpstream
    vertex: FakeUpstream

    def post(self, body: object = REQUEST) -> httpx.Response:
        headers = {"content-type": "application/json", **self.gateway.headers()}
        return httpx.post(self.gateway.url + "/v1/messages", content=orjson.dumps(body), headers=headers, timeout=10)


@pytest.fixture
def google(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGoogleOAuth]:
    with google_credentials(tmp_path) as (oauth, key_file):
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        yield oauth


@pytest.fixture
def vertex(google: FakeGoogleOAuth) -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def make_pair(make_stack: StackFactory, vertex: tuple[FakeUpstream, str]) -> Any:
    fake, url = vertex

    def start(**overrides: Any) -> Any:
        overrides.setdefault("upstream", ["anthropic", "vertex"])
        return _PairContext(make_stack(vertex_base_url=url, **overrides), fake)

    return start


class _PairContext:
    def __init__(self, stack_context: Any, vertex: FakeUpstream) -> None:
        self._context = stack_context
        self._vertex = vertex

    def __enter__(self) -> Pair:
        stack = self._context.__enter__()
        return Pair(stack, stack.upstream, self._vertex)

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


@pytest.fixture
def pair(make_pair: Any) -> Iterator[Pair]:
    with make_pair() as running:
        yield running


def test_529_then_200_gives_one_clean_stream_and_two_attempts(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    events = stream_events(["from", " vertex"])
    pair.anthropic.reply = lambda seen: overloaded(529)
    pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, events)

    response = pair.post()

    assert response.status_code == 200
    assert response.content == b"".join(events)  # nothing of the 529 reached the client
    assert len(pair.anthropic.requests) == 1 and len(pair.vertex.requests) == 1
    row = pair.gateway.rows(1)[0]
    assert (row["upstream"], row["attempts"], row["outcome"]) == ("vertex", 2, "ok")
    assert row["upstream_failures"] == "anthropic: HTTP 529 overloaded_error: Overloaded"
    assert row["output_tokens"] == 2
    assert "upstream anthropic busy: HTTP 529" in caplog.text
    deadline = time.monotonic() + 5  # the access line is logged just after the audit row is queued
    while not (access := [r for r in caplog.records if r.name == "gateway.access"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    fields = access[-1].json_fields  # type: ignore[attr-defined]
    assert (fields["upstream"], fields["attempts"]) == ("vertex", 2)
    assert fields["upstream_failures"] == row["upstream_failures"]


def test_connection_failure_fails_over(make_pair: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with make_pair(upstream_url=dead) as pair:
        pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, stream_events(["ok"]))

        response = pair.post()

        assert response.status_code == 200
        row = pair.gateway.rows(1)[0]
        assert (row["upstream"], row["attempts"]) == ("vertex", 2)
        assert row["upstream_failures"].startswith("anthropic: connection failed (ConnectError)")


def test_failure_after_the_first_byte_is_not_retried(pair: Pair) -> None:
    events = stream_events(["one", "two", "three"])

    def broken_stream() -> Iterator[bytes]:
        yield from events[:4]
        raise RuntimeError("upstream died mid-stream")

    pair.anthropic.reply = lambda seen: Reply(200, SSE_HEADERS, broken_stream())  # type: ignore[arg-type]

    response = pair.post()

    assert response.status_code == 200
    assert response.content.startswith(b"".join(events[:4]))
    assert b"event: error" in response.content and b"failed mid-response" in response.content
    assert pair.vertex.requests == []
    row = pair.gateway.rows(1)[0]
    assert (row["outcome"], row["upstream"], row["attempts"]) == ("upstream_error", "anthropic", 1)


@pytest.mark.parametrize("status", [400, 404, 413])
def test_a_4xx_the_caller_caused_is_relayed_not_retried(pair: Pair, status: int) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    pair.anthropic.reply = lambda seen: Reply(status, JSON_HEADERS, [body])

    response = pair.post()

    assert (response.status_code, response.content) == (status, body)
    assert pair.vertex.requests == []
    row = pair.gateway.rows(1)[0]
    assert (row["upstream"], row["attempts"], row["upstream_failures"]) == ("anthropic", 1, None)


def test_when_every_upstream_fails_the_last_answer_is_relayed(pair: Pair) -> None:
    pair.anthropic.reply = lambda seen: overloaded(500)
    pair.vertex.reply = lambda seen: overloaded(529, **{"retry-after": "7"})

    response = pair.post()

    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.headers["retry-after"] == "7"
    row = pair.gateway.rows(1)[0]
    assert (row["upstream"], row["attempts"], row["outcome"]) == ("vertex", 2, "upstream_error")
    assert row["upstream_failures"] == "anthropic: HTTP 500 api_error: Overloaded"


def test_circuit_opens_after_repeated_failures_and_closes_after_a_good_trial(make_pair: Any) -> None:
    with make_pair(breaker_failures=2, breaker_cooldown_seconds=0.6) as pair:
        pair.anthropic.reply = lambda seen: overloaded(503)
        pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, stream_events(["v"]))

        for _ in range(3):
            assert pair.post().status_code == 200
        # Two failures opened the circuit: the third request did not try Anthropic.
        assert len(pair.anthropic.requests) == 2
        rows = pair.gateway.rows(3)
        assert [r["attempts"] for r in rows] == [2, 2, 1]
        assert rows[2]["upstream_failures"] == "anthropic: circuit open, skipped"

        time.sleep(0.7)
        pair.anthropic.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["a"]))
        assert pair.post().status_code == 200  # the trial request goes to Anthropic and succeeds
        assert pair.post().status_code == 200

        rows = pair.gateway.rows(5)
        assert [(r["upstream"], r["attempts"]) for r in rows[3:]] == [("anthropic", 1), ("anthropic", 1)]
        assert len(pair.anthropic.requests) == 4 and len(pair.vertex.requests) == 3


def test_failed_trial_reopens_the_circuit(make_pair: Any) -> None:
    with make_pair(breaker_failures=1, breaker_cooldown_seconds=0.4) as pair:
        pair.anthropic.reply = lambda seen: overloaded(502)
        pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, stream_events(["v"]))

        pair.post()
        time.sleep(0.5)
        pair.post()  # trial: fails again
        pair.post()  # circuit open again: Anthropic skipped

        assert len(pair.anthropic.requests) == 2
        assert [r["attempts"] for r in pair.gateway.rows(3)] == [2, 2, 1]


def test_single_upstream_with_open_circuit_fails_fast_with_retry_after(make_stack: StackFactory) -> None:
    with make_stack(breaker_failures=1, breaker_cooldown_seconds=30) as stack:
        stack.upstream.reply = lambda seen: overloaded(503)
        headers = {"content-type": "application/json", **stack.headers()}

        first = httpx.post(stack.url + "/v1/messages", content=orjson.dumps(REQUEST), headers=headers, timeout=10)
        second = httpx.post(stack.url + "/v1/messages", content=orjson.dumps(REQUEST), headers=headers, timeout=10)

        assert first.status_code == 503 and first.json()["error"]["message"] == "Overloaded"
        assert second.status_code == 503
        assert 28 <= int(second.headers["retry-after"]) <= 30
        assert "not sending to them for now" in second.json()["error"]["message"]
        assert len(stack.upstream.requests) == 1
        row = stack.rows(2)[1]
        assert (row["attempts"], row["upstream"], row["outcome"]) == (0, None, "upstream_error")
        assert row["upstream_failures"] == "anthropic: circuit open, skipped"


def test_retry_after_holds_an_upstream_back_instead_of_waiting(pair: Pair) -> None:
    pair.anthropic.reply = lambda seen: overloaded(429, **{"retry-after": "1"})
    pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, stream_events(["v"]))

    started = time.monotonic()
    assert pair.post().status_code == 200
    assert pair.post().status_code == 200
    elapsed = time.monotonic() - started

    assert elapsed < 1.0  # the gateway moved on; it did not sleep out the retry-after
    assert len(pair.anthropic.requests) == 1  # the second request did not go to Anthropic at all
    rows = pair.gateway.rows(2)
    assert [(r["upstream"], r["attempts"]) for r in rows] == [("vertex", 2), ("vertex", 1)]
    assert rows[0]["upstream_failures"] == "anthropic: HTTP 429 rate_limit_error: Overloaded"

    time.sleep(1.1)
    pair.anthropic.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["a"]))
    assert pair.post().status_code == 200
    assert pair.gateway.rows(3)[2]["upstream"] == "anthropic"


def test_retry_after_hold_is_capped(make_pair: Any) -> None:
    with make_pair(retry_after_max_seconds=0.3) as pair:
        pair.anthropic.reply = lambda seen: overloaded(529, **{"retry-after": "3600"})
        pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, stream_events(["v"]))
        pair.post()

        time.sleep(0.4)
        pair.anthropic.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["a"]))
        pair.post()

        assert [r["upstream"] for r in pair.gateway.rows(2)] == ["vertex", "anthropic"]


def test_a_held_upstream_is_still_tried_when_nothing_else_is_left(stack: Stack) -> None:
    """Alone, an upstream's 429 and retry-after go to the client, whose own retries wait; the gateway never sleeps."""
    stack.upstream.reply = lambda seen: overloaded(429, **{"retry-after": "30"})
    headers = {"content-type": "application/json", **stack.headers()}

    for _ in range(2):
        response = httpx.post(stack.url + "/v1/messages", content=orjson.dumps(REQUEST), headers=headers, timeout=10)
        assert response.status_code == 429 and response.headers["retry-after"] == "30"

    assert len(stack.upstream.requests) == 2
    assert [r["attempts"] for r in stack.rows(2)] == [1, 1]


@pytest.mark.parametrize("status", [429, 529])
def test_429_and_529_do_not_open_the_circuit(make_pair: Any, status: int) -> None:
    """Busy is not down: the upstream is asked again next time, however many times it said so."""
    with make_pair(breaker_failures=1) as pair:
        pair.anthropic.reply = lambda seen: overloaded(status)  # no retry-after: nothing is held either
        pair.vertex.reply = lambda seen: Reply(200, VERTEX_SSE, stream_events(["v"]))

        for _ in range(4):
            assert pair.post().status_code == 200  # served by Vertex

        assert len(pair.anthropic.requests) == 4
        assert all(row["upstream_failures"].startswith(f"anthropic: HTTP {status}") for row in pair.gateway.rows(4))


# An overload is not an outage: one upstream answering a burst of 529s with retry-after.


def test_a_burst_of_529s_passes_their_retry_after_through_and_shuts_nobody_out(make_stack: StackFactory) -> None:
    """Before, the fifth 529 in a row opened the circuit and everyone got 503 `retry-after: 30` for 30 s."""
    with make_stack() as stack:  # the default breaker: 5 failures, 30 s
        burst = 8
        answers = iter([overloaded(529, **{"retry-after": "13"})] * burst)
        stack.upstream.reply = lambda seen: next(answers, Reply(200, SSE_HEADERS, stream_events(["back"])))
        client = anthropic.Anthropic(
            base_url=stack.url,
            api_key="placeholder-not-a-real-key",
            default_headers={"x-goog-iap-jwt-assertion": stack.assertion("ada@example.com")},
            max_retries=0,  # the gateway's answer as it is; Claude Code would wait the retry-after and try again
        )
        try:
            refusals = []
            for _ in range(burst):
                with pytest.raises(anthropic.OverloadedError) as refused:
                    client.messages.create(
                        model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
                    )
                refusals.append(refused.value)
        finally:
            client.close()

        assert [r.response.headers["retry-after"] for r in refusals] == ["13"] * burst
        assert {r.body["error"]["type"] for r in refusals if isinstance(r.body, dict)} == {"overloaded_error"}
        assert len(stack.upstream.requests) == burst  # every one reached the upstream: no circuit opened

        # The upstream has recovered: the next person is served at once, not held out for a cool-down.
        headers = {"content-type": "application/json", **stack.headers("grace@example.com")}
        served = httpx.post(stack.url + "/v1/messages", content=orjson.dumps(REQUEST), headers=headers, timeout=10)
        assert served.status_code == 200
        rows = stack.rows(burst + 1)
        assert [(r["status_code"], r["outcome"], r["attempts"]) for r in rows[:burst]] == [
            (529, "upstream_error", 1)
        ] * burst
        assert (rows[-1]["status_code"], rows[-1]["outcome"]) == (200, "ok")


def test_5xx_opens_the_circuit_no_longer_than_the_upstreams_retry_after(make_stack: StackFactory) -> None:
    with make_stack(breaker_failures=2, breaker_cooldown_seconds=30) as stack:
        stack.upstream.reply = lambda seen: overloaded(503, **{"retry-after": "3"})
        headers = {"content-type": "application/json", **stack.headers()}

        def post() -> httpx.Response:
            return httpx.post(stack.url + "/v1/messages", content=orjson.dumps(REQUEST), headers=headers, timeout=10)

        relayed = [post() for _ in range(2)]  # the upstream's own 503s: two failures open the circuit
        fast = post()

        assert [r.headers["retry-after"] for r in relayed] == ["3", "3"]
        assert fast.status_code == 503 and "not sending to them for now" in fast.json()["error"]["message"]
        assert 1 <= int(fast.headers["retry-after"]) <= 3  # what the upstream asked for, not the 30 s cool-down
        assert len(stack.upstream.requests) == 2

        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["back"]))
        statuses = []
        for _ in range(100):  # bounded: the circuit lets a trial through about 3 s after it opened
            time.sleep(0.1)
            statuses.append(post().status_code)
            if statuses[-1] == 200:
                break
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}


def test_vertex_credentials_failure_fails_over_to_anthropic(make_pair: Any, google: FakeGoogleOAuth) -> None:
    google.status = 400
    with make_pair(upstream=["vertex", "anthropic"]) as pair:
        pair.anthropic.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["a"]))

        assert pair.post().status_code == 200

        assert pair.vertex.requests == []
        row = pair.gateway.rows(1)[0]
        assert (row["upstream"], row["attempts"]) == ("anthropic", 2)
        assert row["upstream_failures"].startswith("vertex: Google credentials could not be refreshed")


def test_a_second_vertex_region_is_its_own_upstream(make_pair: Any) -> None:
    with make_pair(upstream=["vertex", "vertex:us-east5"], vertex_region="europe-west1") as pair:
        answers = iter([overloaded(529), Reply(200, VERTEX_SSE, stream_events(["v"]))])
        pair.vertex.reply = lambda seen: next(answers)

        assert pair.post().status_code == 200

        assert ["/locations/europe-west1/" in r.path for r in pair.vertex.requests] == [True, False]
        assert "/locations/us-east5/" in pair.vertex.requests[1].path
        row = pair.gateway.rows(1)[0]
        assert (row["upstream"], row["attempts"]) == ("vertex:us-east5", 2)


# The breaker and retry-after parsing on their own.


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_states() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)

    assert breaker.failure() is False and breaker.failure() is False
    assert breaker.state == CLOSED and breaker.allow()
    assert breaker.failure() is True
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.retry_in() == 10

    clock.now += 10
    assert breaker.state == HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False  # one trial at a time
    breaker.release()
    assert breaker.allow() is True
    assert breaker.success() is True
    assert breaker.state == CLOSED


def test_breaker_opened_by_a_failure_with_retry_after_stays_open_no_longer() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=30, clock=clock)

    assert breaker.failure(retry_after=5) is True
    assert breaker.retry_in() == 5 and breaker.state == OPEN
    clock.now += 5
    assert breaker.state == HALF_OPEN and breaker.allow()
    assert breaker.failure() is True  # the trial failed, without retry-after: the full cool-down
    assert breaker.retry_in() == 30


def test_breaker_with_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(threshold=0, cooldown=10, clock=Clock())
    for _ in range(100):
        breaker.failure()
    assert breaker.allow()


def test_success_resets_the_count_of_failures_in_a_row() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=Clock())
    breaker.failure()
    breaker.success()
    assert breaker.failure() is False


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), (" 2.5 ", 2.5), ("0", 0.0), ("-3", 0.0), (None, None), ("", None), ("soon", None), ("nan", None)],
)
def test_parse_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)

    assert parse_retry_after(later, now=now.timestamp) == 90.0
