from __future__ import annotations

import dataclasses
import json
import random
import tracemalloc
from typing import Any

import pytest

from gateway.metering import JSONMeter, SSEMeter, Usage

MESSAGE_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
MODEL = "claude-sonnet-4-5-20250929"


def event(name: str | None, data: dict[str, Any] | str, eol: str = "\n") -> bytes:
    """One SSE event as Anthropic frames it: an `event:` line, one `data:` line, a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = ([f"event: {name}"] if name is not None else []) + [f"data: {payload}", ""]
    return "".join(line + eol for line in lines).encode()


def message_start(
    input_tokens: int = 2095, cache_creation: int | None = 1200, cache_read: int | None = 18000
) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": 1}
    if cache_creation is not None:
        usage["cache_creation_input_tokens"] = cache_creation
    if cache_read is not None:
        usage["cache_read_input_tokens"] = cache_read
    return {
        "type": "message_start",
        "message": {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        },
    }


def message_delta(output_tokens: int, stop_reason: str | None = "end_turn", **usage: int | None) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens, **usage},
    }


def text_delta(text: str, index: int = 0) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


def json_delta(partial: str, index: int) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def reply(deltas: int = 50, eol: str = "\n", named: bool = True, output_tokens: int = 503) -> bytes:
    """A realistic streamed reply: cache tokens, text, a tool call, pings, an unknown event."""

    def ev(data: dict[str, Any]) -> bytes:
        return event(data["type"] if named else None, data, eol)

    parts = [
        ev(message_start()),
        ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ev({"type": "ping"}),
    ]
    for i in range(deltas):
        parts.append(ev(text_delta(f'Word {i} of the reply, with unicode \u00e9\u4e2d\U0001f600 and "quotes". ')))
        if i == deltas // 2:
            parts.append(ev({"type": "ping"}))
    # Text that mentions the events we read must not be mistaken for them.
    parts.append(ev(text_delta('the "message_delta" event has "usage": {"output_tokens": 999999}; an error')))
    tool = {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {}}
    parts += [
        ev({"type": "content_block_stop", "index": 0}),
        ev({"type": "content_block_start", "index": 1, "content_block": tool}),
        ev(json_delta('{"command": "ls', index=1)),
        ev(json_delta(' -la"}', index=1)),
        ev({"type": "content_block_stop", "index": 1}),
        ev({"type": "some_future_event", "detail": {"nested": [1, 2, 3]}}),
        ev(message_delta(output_tokens, stop_reason="tool_use")),
        ev({"type": "message_stop"}),
    ]
    return b"".join(parts)


EXPECTED = Usage(
    message_id=MESSAGE_ID,
    model=MODEL,
    input_tokens=2095,
    output_tokens=503,
    cache_creation_input_tokens=1200,
    cache_read_input_tokens=18000,
    stop_reason="tool_use",
    started=True,
    finished=True,
)


def meter(*chunks: bytes, limit: int | None = None) -> Usage:
    m = SSEMeter() if limit is None else SSEMeter(limit=limit)
    for chunk in chunks:
        m.feed(chunk)
    m.finish()
    return m.usage


def in_chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# Streaming


def test_streamed_reply_reports_id_model_tokens_cache_tokens_and_stop_reason() -> None:
    assert meter(reply()) == EXPECTED


def test_output_tokens_are_cumulative_not_summed() -> None:
    stream = event("message_start", message_start()) + b"".join(
        event("message_delta", message_delta(n, stop_reason=None)) for n in (10, 25, 40)
    )
    assert meter(stream).output_tokens == 40


def test_placeholder_output_tokens_stand_when_stream_ends_before_message_delta() -> None:
    usage = meter(event("message_start", message_start()) + event("content_block_delta", text_delta("hi")))
    assert usage.output_tokens == 1
    assert usage.input_tokens == 2095
    assert usage.stop_reason is None


def test_message_delta_input_and_cache_counts_replace_message_start_ones() -> None:
    final = message_delta(77, input_tokens=3000, cache_creation_input_tokens=50, cache_read_input_tokens=20000)
    usage = meter(event("message_start", message_start()), event("message_delta", final))
    assert (usage.input_tokens, usage.output_tokens) == (3000, 77)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (50, 20000)


def test_null_counts_in_message_delta_keep_message_start_ones() -> None:
    final = message_delta(77, input_tokens=None, cache_creation_input_tokens=None, cache_read_input_tokens=None)
    usage = meter(event("message_start", message_start()), event("message_delta", final))
    assert (usage.input_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (2095, 1200, 18000)


def test_missing_cache_fields_stay_none() -> None:
    usage = meter(event("message_start", message_start(cache_creation=None, cache_read=None)))
    assert usage.cache_creation_input_tokens is None
    assert usage.cache_read_input_tokens is None


def test_counts_that_are_not_non_negative_integers_are_ignored() -> None:
    bad = message_start()
    bad["message"]["usage"].update(input_tokens=True, cache_read_input_tokens=-5, cache_creation_input_tokens="9")
    usage = meter(event("message_start", bad))
    assert (usage.input_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (None, None, None)


def test_error_event_after_200_records_type_and_message() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    stream = (
        event("message_start", message_start())
        + event("content_block_delta", text_delta("partial"))
        + event("error", error)
    )
    usage = meter(stream)
    assert (usage.error_type, usage.error_message) == ("overloaded_error", "Overloaded")
    assert usage.input_tokens == 2095


def test_error_event_with_undocumented_data_still_marks_the_response_failed() -> None:
    usage = meter(event("message_start", message_start()) + event("error", "upstream connect error"))
    assert usage.error_type == "error"
    assert usage.error_message == "upstream connect error"


def test_events_without_event_field_are_read_by_their_json_type() -> None:
    assert meter(reply(named=False)) == EXPECTED


def test_unnamed_error_event_is_read_by_its_json_type() -> None:
    error = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    assert meter(event(None, error)).error_type == "api_error"


def test_event_name_decides_even_when_data_mentions_a_usage_event() -> None:
    # A `data` that looks like message_delta under another event name is content, not usage.
    usage = meter(event("content_block_delta", message_delta(999)), event("message_delta", message_delta(5)))
    assert usage.output_tokens == 5


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_gives_the_same_usage(eol: str) -> None:
    assert meter(reply(eol=eol)) == EXPECTED


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_feeding_byte_by_byte_gives_the_same_usage(eol: str, named: bool) -> None:
    stream = reply(eol=eol, named=named)
    assert meter(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_split_point_gives_the_same_usage(eol: str) -> None:
    # The last two events are read differently if a line ending is mistaken for a blank line.
    stream = (
        reply(deltas=3, eol=eol)
        + event("content_block_delta", message_delta(999), eol=eol)
        + event("error", "upstream connect error", eol=eol)
    )
    expected = dataclasses.replace(EXPECTED, error_type="error", error_message="upstream connect error")
    for cut in range(len(stream) + 1):
        assert meter(stream[:cut], stream[cut:]) == expected, f"split at byte {cut}"


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_pair_of_split_points_around_the_usage_events_gives_the_same_usage(eol: str) -> None:
    stream = reply(deltas=2, eol=eol)
    end = stream.index(b"message_start") + 400
    for first in range(0, end, 7):
        for second in range(first, end):
            assert meter(stream[:first], stream[first:second], stream[second:]) == EXPECTED, (first, second)


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    # Events whose outcome depends on their `event:` line: a LF after a chunk-final CR taken as a second
    # (blank) line would cut the name off its data.
    stream = (
        event("message_start", message_start(), eol="\r\n")
        + event("content_block_delta", message_delta(999), eol="\r\n")
        + event("error", "upstream connect error", eol="\r\n")
    )
    pieces = stream.replace(b"\r\n", b"\r\x00\n").split(b"\x00")
    usage = meter(*pieces)
    assert (usage.input_tokens, usage.output_tokens) == (2095, 1)
    assert (usage.error_type, usage.error_message) == ("error", "upstream connect error")


def test_data_split_over_several_lines_is_joined_with_newlines() -> None:
    body = json.dumps(message_delta(42), indent=1)  # Multi-line JSON, one `data:` line per line.
    stream = b"event: message_delta\n" + b"".join(b"data: " + line.encode() + b"\n" for line in body.splitlines())
    assert meter(stream + b"\n").output_tokens == 42


def test_comments_other_fields_and_no_space_after_colon_are_handled() -> None:
    data = json.dumps(message_delta(12)).encode()
    stream = b": keep-alive comment\nid: 7\nretry: 1000\nevent:message_delta\ndata:" + data + b"\n\n"
    assert meter(b": opening comment\n\n", stream).output_tokens == 12


def test_only_one_space_after_the_colon_is_removed() -> None:
    # `event:  message_delta` names the event " message_delta", which is not one we read.
    stream = b"event:  message_delta\ndata: " + json.dumps(message_delta(12)).encode() + b"\n\n"
    assert meter(stream).output_tokens is None


def test_last_event_field_wins() -> None:
    data = json.dumps(message_delta(12)).encode()
    stream = b"event: content_block_delta\nevent: message_delta\ndata: " + data + b"\n\n"
    assert meter(stream).output_tokens == 12


def test_trailing_event_without_final_blank_line_is_read_on_finish() -> None:
    stream = (
        event("message_start", message_start())
        + b"event: message_delta\ndata: "
        + json.dumps(message_delta(31)).encode()
    )
    assert meter(stream).output_tokens == 31


def test_nothing_is_read_after_finish() -> None:
    m = SSEMeter()
    m.feed(event("message_delta", message_delta(3)))
    m.finish()
    m.feed(event("message_delta", message_delta(4)))
    m.finish()
    assert m.usage.output_tokens == 3


def test_byte_order_mark_at_stream_start_is_ignored() -> None:
    assert meter(b"\xef\xbb\xbf", reply()) == EXPECTED


def test_event_without_data_is_not_dispatched() -> None:
    assert meter(b"event: message_delta\n\n", b"event: error\n\n") == Usage()


def test_junk_and_invalid_utf8_never_raise() -> None:
    rng = random.Random(1234)
    junk = bytes(rng.randrange(256) for _ in range(200_000))
    m = SSEMeter()
    for chunk in in_chunks(junk, 997):
        m.feed(chunk)
    m.feed(b"\xff\xfe\x00\n\n\r\r\r\nevent: message_delta\ndata: {\xff\n\n")
    m.feed(b"event: message_start\ndata: [1, 2]\n\nevent: message_delta\ndata: null\n\n")
    m.feed(b'event: message_start\ndata: {"message": "nope"}\n\n')
    m.finish()
    assert m.usage.output_tokens is None
    assert m.usage.input_tokens is None


def test_stream_is_read_correctly_after_junk() -> None:
    assert meter(b"\x00\xff garbage \xc3\x28\n\n", reply()) == EXPECTED


def test_invalid_utf8_inside_a_json_string_does_not_lose_the_event() -> None:
    data = json.dumps(message_start()).replace("assistant", "assi\udcffstant", 1).encode("utf-8", "surrogateescape")
    assert meter(b"event: message_start\ndata: " + data + b"\n\n").input_tokens == 2095


def test_oversize_event_is_skipped_and_later_events_are_read() -> None:
    huge = event("content_block_delta", text_delta("x" * 5000))
    stream = event("message_start", message_start()) + huge + event("message_delta", message_delta(8))
    for size in (1, 100, 4096, len(stream)):
        usage = meter(*in_chunks(stream, size), limit=1024)
        assert (usage.input_tokens, usage.output_tokens) == (2095, 8), size


def test_oversize_usage_event_is_skipped_whatever_the_chunking() -> None:
    padded = message_delta(8)
    padded["padding"] = "x" * 5000
    stream = event("message_delta", padded) + event("message_start", message_start())
    for size in (1, 100, 4096, len(stream)):
        usage = meter(*in_chunks(stream, size), limit=1024)
        assert (usage.input_tokens, usage.output_tokens) == (2095, 1), size


def test_endless_event_does_not_grow_memory() -> None:
    m = SSEMeter()
    chunk = b"data: " + b"y" * (64 * 1024 - 6)
    tracemalloc.start()
    try:
        for _ in range(256):  # 16 MiB with no blank line.
            m.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    m.feed(b"\n\n" + event("message_delta", message_delta(6)))
    m.finish()
    assert m.usage.output_tokens == 6


def test_feed_of_an_unexpected_type_never_raises() -> None:
    m = SSEMeter()
    m.feed("not bytes")  # type: ignore[arg-type]
    m.finish()
    assert m.usage == Usage()


# Non-streaming


def json_meter(body: bytes, limit: int | None = None, chunk: int = 1000) -> JSONMeter:
    m = JSONMeter() if limit is None else JSONMeter(limit=limit)
    for piece in in_chunks(body, chunk):
        m.feed(piece)
    m.finish()
    return m


def test_json_message_response_reports_usage() -> None:
    body = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello! " * 500}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4096,
            "output_tokens": 6,
            "service_tier": "standard",
        },
    }
    assert json_meter(json.dumps(body).encode(), chunk=7).usage == Usage(
        message_id=MESSAGE_ID,
        model=MODEL,
        input_tokens=12,
        output_tokens=6,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=4096,
        stop_reason="end_turn",
        started=True,
        finished=True,
    )


def test_json_error_body_sets_error_type_and_message() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}
    usage = json_meter(json.dumps(body).encode()).usage
    assert (usage.error_type, usage.error_message) == ("overloaded_error", "Overloaded")


def test_json_vertex_error_body_names_its_status() -> None:
    body = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    usage = json_meter(json.dumps(body).encode()).usage
    assert (usage.error_type, usage.error_message) == ("RESOURCE_EXHAUSTED", "Quota exceeded")


def test_json_count_tokens_response_sets_input_tokens() -> None:
    assert json_meter(b'{"input_tokens": 2095}').usage == Usage(input_tokens=2095, started=True, finished=True)


def test_json_body_beyond_the_cap_is_dropped_without_error() -> None:
    body = json.dumps({"id": MESSAGE_ID, "content": "z" * 5000, "usage": {"input_tokens": 1}}).encode()
    m = json_meter(body, limit=1024)
    assert m.truncated
    assert m.usage == Usage(started=True, finished=True)  # not judged: too large to hold


def test_json_body_exactly_at_the_cap_is_read() -> None:
    body = b'{"input_tokens": 7}'
    m = json_meter(body, limit=len(body), chunk=3)
    assert not m.truncated
    assert m.usage.input_tokens == 7


GARBAGE = {
    "empty": b"",
    "text": b"not json",
    "binary": b"\xff\xfe\x00garbage",
    "list": b"[1, 2, 3]",
    "number": b"42",
    "bad-usage": b'{"usage": "many"}',
    "string-error": b'{"error": "x"}',
    "deep": b"{" * 10_000,
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
def test_json_garbage_never_raises(body: bytes) -> None:
    json_meter(body)


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_a_stream_is_started_at_message_start_and_finished_only_at_message_stop(named: bool) -> None:
    whole = reply(named=named)
    stop = whole.rindex(b"message_stop")
    cut = whole[: whole.rfind(b"\n\n", 0, stop) + 2]  # everything before the message_stop event

    complete, truncated, garbage = meter(whole), SSEMeter(), SSEMeter()
    truncated.feed(cut)
    truncated.finish()
    garbage.feed(b"<html>502 Bad Gateway</html>\n\n" + event("content_block_delta", text_delta("x")))
    garbage.finish()

    assert (complete.started, complete.finished) == (True, True)
    assert (truncated.usage.started, truncated.usage.finished) == (True, False)
    assert (garbage.usage.started, garbage.usage.finished) == (False, False)


def test_a_lone_surrogate_escape_is_read_and_stored_writable() -> None:
    error = b'{"type": "error", "error": {"type": "api_error", "message": "half \\ud83d an emoji"}}'
    usage = meter(b"event: error\ndata: " + error + b"\n\n")
    assert (usage.error_type, usage.error_message) == ("api_error", "half \ufffd an emoji")
