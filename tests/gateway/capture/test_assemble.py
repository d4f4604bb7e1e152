from __future__ import annotations

import base64
import hashlib
import json
import random
import tracemalloc
from typing import Any

import orjson
import pytest

from gateway.capture.assemble import EVENT_SLACK, ResponseAssembler
from gateway.capture.redact import Redactor
from gateway.capture.summary import TRUNCATION_MARKER, capture_request, summarise_request, system_sha256

MESSAGE_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
MODEL = "claude-sonnet-4-5-20250929"
Event = dict[str, Any]


# Builders for a realistic Anthropic stream.


def sse(events: list[Event], eol: str = "\n") -> bytes:
    """Frame events as Anthropic does: `event:` line, one `data:` line, blank line."""
    out = []
    for data in events:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        out.append(f"event: {data['type']}{eol}data: {payload}{eol}{eol}")
    return "".join(out).encode()


def message_start() -> Event:
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
            "usage": {"input_tokens": 2095, "output_tokens": 1, "cache_read_input_tokens": 18000},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> Event:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **body: Any) -> Event:
    return {"type": "content_block_delta", "index": index, "delta": body}


def block_stop(index: int) -> Event:
    return {"type": "content_block_stop", "index": index}


def message_end(stop_reason: str = "end_turn") -> list[Event]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 503},
        },
        {"type": "message_stop"},
    ]


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def text_block(index: int, text: str, size: int = 7) -> list[Event]:
    return [
        block_start(index, {"type": "text", "text": ""}),
        *[delta(index, type="text_delta", text=part) for part in pieces(text, size)],
        block_stop(index),
    ]


def tool_block(index: int, tool_id: str, name: str, arguments: dict[str, Any], size: int = 5) -> list[Event]:
    encoded = json.dumps(arguments, ensure_ascii=False)
    return [
        block_start(index, {"type": "tool_use", "id": tool_id, "name": name, "input": {}}),
        delta(index, type="input_json_delta", partial_json=""),
        *[delta(index, type="input_json_delta", partial_json=part) for part in pieces(encoded, size)],
        block_stop(index),
    ]


def thinking_block(index: int, thinking: str, size: int = 11) -> list[Event]:
    return [
        block_start(index, {"type": "thinking", "thinking": ""}),
        *[delta(index, type="thinking_delta", thinking=part) for part in pieces(thinking, size)],
        delta(index, type="signature_delta", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds" * 3),
        block_stop(index),
    ]


TEXT = 'Here is the plan: read the file, fix the bug, run the tests — «vite» 中文 \U0001f600 "quoted".'
THINKING = "The user wants the bug fixed. First I should look at proxy.py; the relay closes late. ü\u00df\U0001f914"
ARGUMENTS = {"command": "grep -rn 'résumé' src/ | head -n 5", "description": "Find the résumé code \U0001f50e"}


def full_reply(size: int = 7) -> list[Event]:
    return [
        message_start(),
        {"type": "ping"},
        *thinking_block(0, THINKING, size),
        *text_block(1, TEXT, size),
        {"type": "ping"},
        *tool_block(2, "toolu_01A09q90qw90lq917835lq9", "Bash", ARGUMENTS, size),
        *message_end("tool_use"),
    ]


EXPECTED_CONTENT = [
    {"type": "thinking", "thinking": THINKING, "signed": True},
    {"type": "text", "text": TEXT},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "Bash", "input": ARGUMENTS},
]


def assemble(*chunks: bytes, cap: int = 1 << 20) -> dict[str, Any]:
    assembler = ResponseAssembler(cap)
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.result()


# Streams.


def test_text_reply() -> None:
    result = assemble(sse([message_start(), *text_block(0, TEXT), *message_end()]))
    assert result == {
        "message_id": MESSAGE_ID,
        "model": MODEL,
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "error": None,
        "complete": True,
        "truncated": False,
        "stored_bytes": result["stored_bytes"],
        "dropped_bytes": 0,
        "received_bytes": len(sse([message_start(), *text_block(0, TEXT), *message_end()])),
        "capture_error": None,
    }
    assert len(TEXT.encode()) < result["stored_bytes"] < 1000


def test_thinking_text_and_tool_use_blocks_in_index_order() -> None:
    result = assemble(sse(full_reply()))
    assert result["content"] == EXPECTED_CONTENT
    assert result["stop_reason"] == "tool_use"
    # The signature is noted, never stored.
    assert "EqQBCgIYAhIM" not in json.dumps(result)


def test_interleaved_blocks_are_ordered_by_index() -> None:
    events = [
        message_start(),
        block_start(1, {"type": "text", "text": ""}),
        block_start(0, {"type": "text", "text": ""}),
        delta(1, type="text_delta", text="second "),
        delta(0, type="text_delta", text="first "),
        delta(1, type="text_delta", text="block"),
        delta(0, type="text_delta", text="block"),
        *message_end(),
    ]
    assert [b["text"] for b in assemble(sse(events))["content"]] == ["first block", "second block"]


def test_tool_input_split_across_many_deltas_and_chunks() -> None:
    arguments = {"file_path": "/src/ünïcödé/文件.py", "old_string": 'a\nb\t"c"', "new_string": "\U0001f600" * 20}
    body = sse([message_start(), *tool_block(0, "toolu_1", "Edit", arguments, size=1), *message_end("tool_use")])
    # Three-byte chunks cut multibyte characters and every line in pieces.
    result = assemble(*[body[i : i + 3] for i in range(0, len(body), 3)])
    assert result["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "Edit", "input": arguments}]


def test_tool_without_arguments_keeps_empty_input() -> None:
    events = [message_start(), *tool_block(0, "toolu_2", "ListTodos", {}), *message_end("tool_use")]
    events = [e for e in events if e.get("delta", {}).get("partial_json") != "{}"]
    result = assemble(sse(events))
    assert result["content"] == [{"type": "tool_use", "id": "toolu_2", "name": "ListTodos", "input": {}}]


def test_unparseable_tool_input_is_kept_raw_and_marked() -> None:
    events = [
        message_start(),
        block_start(0, {"type": "tool_use", "id": "toolu_3", "name": "Bash", "input": {}}),
        delta(0, type="input_json_delta", partial_json='{"command": "ls'),
        *message_end("tool_use"),
    ]
    assert assemble(sse(events))["content"] == [
        {"type": "tool_use", "id": "toolu_3", "name": "Bash", "input_raw": '{"command": "ls', "input_invalid": True}
    ]


def test_redacted_thinking_server_tools_and_citations() -> None:
    search_results = {
        "type": "web_search_tool_result",
        "tool_use_id": "srvtoolu_1",
        "content": [
            {"type": "web_search_result", "url": "https://example.com", "title": "Ex", "encrypted_content": "Eo8"}
        ],
    }
    citation = {"type": "web_search_result_location", "url": "https://example.com", "cited_text": "Example text"}
    events = [
        message_start(),
        block_start(0, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a" * 10}),
        block_stop(0),
        block_start(1, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}),
        delta(1, type="input_json_delta", partial_json='{"query": "claude'),
        delta(1, type="input_json_delta", partial_json=' gateway"}'),
        block_stop(1),
        block_start(2, search_results),
        block_stop(2),
        block_start(3, {"type": "text", "text": "", "citations": []}),
        delta(3, type="citations_delta", citation=citation),
        delta(3, type="text_delta", text="As the site says."),
        block_stop(3),
        *message_end(),
    ]
    assert assemble(sse(events))["content"] == [
        {"type": "redacted_thinking", "data_bytes": 280},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "claude gateway"}},
        search_results,
        {"type": "text", "text": "As the site says.", "citations": [citation]},
    ]


def test_error_event_mid_stream_keeps_what_came_before() -> None:
    events = [
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, type="text_delta", text="Half an ans"),
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    result = assemble(sse(events))
    assert result["content"] == [{"type": "text", "text": "Half an ans"}]
    assert result["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert (result["complete"], result["stop_reason"]) == (False, None)


def test_undecodable_error_event_is_still_an_error() -> None:
    result = assemble(b"event: error\ndata: <html>502 Bad Gateway</html>\n\n")
    assert result["error"] == {"type": "error", "message": "<html>502 Bad Gateway</html>"}


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_every_split_point_gives_the_same_result(eol: str) -> None:
    # Longer deltas than usual keep the number of split points (one full assembly each) affordable.
    body = sse(full_reply(size=40), eol)
    whole = assemble(body)
    assert whole["content"] == EXPECTED_CONTENT
    for split in range(1, len(body)):
        assert assemble(body[:split], body[split:]) == whole, f"split at {split}"


def test_byte_by_byte_and_random_chunks() -> None:
    body = sse(full_reply(), "\r\n")
    whole = assemble(body)
    assert assemble(*[body[i : i + 1] for i in range(len(body))]) == whole
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(body)), 20))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert assemble(*chunks) == whole


def test_stream_without_final_blank_line_bom_comments_and_unknown_events() -> None:
    body = (
        b"\xef\xbb\xbf: keep-alive comment\n\n"
        + b'event: brand_new_event\ndata: {"type": "brand_new_event", "x": 1}\n\n'
        + b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"no start, no name"}}\n\n'
        + b"data: not json\n\n"
        + b'event: message_delta\ndata: {"type":"message_delta",\n'
        + b'data: "delta":{"stop_reason":"end_turn"}}\n\n'
        + b'event: message_stop\ndata: {"type":"message_stop"}'
    )
    result = assemble(body)
    # A delta without its start still counts: the block's kind follows from the delta.
    assert result["content"] == [{"type": "text", "text": "no start, no name"}]
    assert (result["stop_reason"], result["complete"], result["capture_error"]) == ("end_turn", True, None)


def test_garbage_never_raises() -> None:
    rng = random.Random(3)
    for _ in range(200):
        assembler = ResponseAssembler(cap_bytes=rng.choice([0, 10, 1000]))
        for _ in range(20):
            chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            assembler.feed(chunk + rng.choice([b"", b"\n\n", b"event: error\n", b'data: {"index": -1}\n\n']))
        result = assembler.result()
        assert result["capture_error"] is None
        orjson.dumps(result)  # JSON-ready whatever came in


def test_hostile_deltas_are_tolerated() -> None:
    events: list[Event] = [
        block_start(0, {"type": "text", "text": ""}),
        delta(0, type="text_delta", text=None),
        delta(0, type="input_json_delta", partial_json="wrong kind for a text block"),
        delta("zero", type="text_delta", text="bad index"),  # type: ignore[arg-type]
        delta(-1, type="text_delta", text="negative index"),
        block_start(0, {"type": "tool_use", "id": "again"}),  # a second start for the same index is ignored
        {"type": "content_block_start", "index": 1, "content_block": "not an object"},
        delta(0, type="text_delta", text="ok LONE lone surrogate"),
    ]
    body = sse(events).replace(b"LONE", b"\\ud83d")  # the escape a JS client sends for half an emoji
    result = assemble(body)
    assert result["content"][0] == {"type": "text", "text": "ok \ufffd lone surrogate"}
    assert result["capture_error"] is None
    orjson.dumps(result)


def test_absurd_nesting_is_stored_serialisable() -> None:
    nested: Any = "leaf"
    for _ in range(300):
        nested = {"a": [nested]}
    events = [message_start(), block_start(0, {"type": "mcp_tool_result", "content": nested}), *message_end()]
    result = assemble(sse(events).replace(b'"leaf"', b'"half \\ud83d"'))
    assert result["capture_error"] is None
    encoded = orjson.dumps(result)
    assert b"[TRUNCATED]" in encoded and b"leaf" not in encoded


def test_feeding_after_result_is_only_counted() -> None:
    assembler = ResponseAssembler()
    assembler.feed(sse([message_start(), *text_block(0, "one")]))
    first = assembler.result()
    assembler.feed(sse(text_block(1, "two")))
    second = assembler.result()
    assert second["content"] == first["content"] == [{"type": "text", "text": "one"}]
    assert second["received_bytes"] > first["received_bytes"]


# The cap.


def test_cap_truncates_and_marks_but_keeps_reading_the_end() -> None:
    long_text = "".join(f"Sentence {i} with ü and \U0001f600. " for i in range(400))
    body = sse(
        [message_start(), *text_block(0, long_text, size=13), *tool_block(1, "t", "Bash", ARGUMENTS), *message_end()]
    )
    uncapped = assemble(body)
    result = assemble(body, cap=2000)
    assert result["truncated"] is True
    assert result["stored_bytes"] <= 2000
    text = result["content"][0]["text"]
    assert long_text.startswith(text) and len(text.encode()) > 1500
    assert result["content"][0]["truncated"] is True
    # Beyond the cap nothing more is stored (not even the later small block), but bytes are counted...
    assert len(result["content"]) == 1
    content = len(long_text.encode()) + len(json.dumps(ARGUMENTS, ensure_ascii=False).encode())
    assert result["dropped_bytes"] >= content - 2000
    # ...and the end of the message is still read.
    assert (result["stop_reason"], result["complete"]) == ("end_turn", True)
    assert uncapped["truncated"] is False and uncapped["dropped_bytes"] == 0


def test_cap_cuts_tool_input_and_keeps_it_raw() -> None:
    arguments = {"content": "x" * 5000}
    result = assemble(sse([message_start(), *tool_block(0, "t", "Write", arguments, size=100)]), cap=1000)
    block = result["content"][0]
    assert block["input_invalid"] is True and block["truncated"] is True
    assert block["input_raw"].startswith('{"content": "xxx')


def test_event_larger_than_the_cap_is_skipped_unheld() -> None:
    huge = "y" * (200_000 + EVENT_SLACK)
    events = [message_start(), *text_block(0, "kept"), block_start(1, {"type": "text", "text": ""})]
    events += [delta(1, type="text_delta", text=huge), *message_end()]
    body = sse(events)
    result = assemble(*[body[i : i + 4096] for i in range(0, len(body), 4096)], cap=100_000)
    assert result["content"][0] == {"type": "text", "text": "kept"}
    assert result["content"][1]["text"] == ""
    assert result["truncated"] is True
    assert result["dropped_bytes"] >= len(huge)
    assert result["stop_reason"] == "end_turn"


def test_memory_stays_near_the_cap() -> None:
    cap = 256 * 1024
    chunk = sse([delta(0, type="text_delta", text="z" * 500 + "\u00e9" * 100)] * 100)
    head = sse([message_start(), block_start(0, {"type": "text", "text": ""})])
    assembler = ResponseAssembler(cap)
    tracemalloc.start()
    try:
        assembler.feed(head)
        for _ in range(200):  # about 14 MB of stream
            assembler.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = assembler.result()
    assert result["truncated"] is True and result["stored_bytes"] <= cap
    assert peak < cap * 1.25 + 2 * len(chunk) + EVENT_SLACK


def test_many_empty_blocks_are_bounded_by_the_cap() -> None:
    events = [block_start(i, {"type": "text", "text": ""}) for i in range(2000)]
    result = assemble(sse(events), cap=10_000)
    assert result["truncated"] is True
    assert len(result["content"]) < 100


def test_zero_cap_stores_nothing() -> None:
    result = assemble(sse(full_reply()), cap=0)
    assert result["content"] == [] and result["truncated"] is True and result["stop_reason"] == "tool_use"


# Non-streaming replies.


def test_json_reply_gives_the_same_content_as_the_stream() -> None:
    message = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": THINKING, "signature": "EqQBCgIYAhIM"},
            {"type": "text", "text": TEXT},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "Bash", "input": ARGUMENTS},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }
    assembler = ResponseAssembler()
    assembler.feed_json(orjson.dumps(message))
    result = assembler.result()
    streamed = assemble(sse(full_reply()))
    assert result["content"] == streamed["content"] == EXPECTED_CONTENT
    assert (result["message_id"], result["model"], result["stop_reason"], result["complete"]) == (
        MESSAGE_ID,
        MODEL,
        "tool_use",
        True,
    )


def test_json_reply_is_capped_like_the_stream() -> None:
    message = {"type": "message", "content": [{"type": "text", "text": "é" * 1000}, {"type": "text", "text": "later"}]}
    assembler = ResponseAssembler(cap_bytes=500)
    assembler.feed_json(orjson.dumps(message))
    result = assembler.result()
    assert result["truncated"] is True and result["stored_bytes"] <= 500
    assert len(result["content"]) == 1 and set(result["content"][0]["text"]) == {"é"}
    # Dropped: the rest of the first text, and the second block whole (its text and its head).
    assert result["dropped_bytes"] == 2000 - len(result["content"][0]["text"].encode()) + 5 + len(b'{"type":"text"}')


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}', "rate_limit_error"),
        (b'{"error":{"status":"RESOURCE_EXHAUSTED","message":"quota"}}', "RESOURCE_EXHAUSTED"),
        (b"<html>upstream timeout</html>", "invalid_json"),
    ],
)
def test_json_errors_and_garbage(body: bytes, error: str) -> None:
    assembler = ResponseAssembler()
    assembler.feed_json(body)
    result = assembler.result()
    assert result["error"]["type"] == error
    assert result["content"] == [] and result["capture_error"] is None


def test_json_reply_with_invalid_utf8_and_non_object() -> None:
    assembler = ResponseAssembler()
    assembler.feed_json(b'{"type":"message","content":[{"type":"text","text":"caf\xe9"}]}')
    assert assembler.result()["content"] == [{"type": "text", "text": "caf\ufffd"}]
    assembler = ResponseAssembler()
    assembler.feed_json(b"[1, 2]")
    assert assembler.result()["content"] == []


# Request side.


def claude_code_request(**overrides: Any) -> dict[str, Any]:
    """Shaped like what Claude Code sends: system blocks with cache_control, tools, a tool round trip."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}},
            {"name": "Read", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},
            {"description": "nameless"},
        ],
        "messages": [
            {"role": "user", "content": "Why does the relay close late?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a.png"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
                        ],
                    }
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "ls"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "a.png"}]},
        ],
    }
    request.update(overrides)
    return request


def test_summary_of_a_claude_code_request() -> None:
    summary = summarise_request(orjson.dumps(claude_code_request()))
    assert summary == {
        "system_sha256": hashlib.sha256(
            b"x-anthropic-billing-header: cc_version=2.1.328\nYou are Claude Code."
        ).hexdigest(),
        "message_count": 5,
        "tools_offered": ["Bash", "Read", "web_search"],
        "tools_used": ["Read", "Bash"],
        "has_images": True,
        "has_documents": False,
        "error": None,
    }


def test_summary_hashes_a_string_system_like_one_block_and_sees_documents() -> None:
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}
    body = {"system": "Be brief.", "messages": [{"role": "user", "content": [document, {"type": "text", "text": "?"}]}]}
    summary = summarise_request(orjson.dumps(body))
    assert summary["system_sha256"] == system_sha256([{"type": "text", "text": "Be brief."}])
    assert summary["system_sha256"] == hashlib.sha256(b"Be brief.").hexdigest()
    assert (summary["has_documents"], summary["has_images"], summary["tools_used"]) == (True, False, [])
    assert summarise_request(b'{"messages": []}')["system_sha256"] is None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"", "not valid JSON"),
        ("a str, not bytes", "not bytes"),
        (b'{"messages": "' + b"x" * 2000 + b'"}', "larger than 1000"),
    ],
)
def test_summary_of_bad_bodies_says_why(body: Any, error: str) -> None:
    summary = summarise_request(body, max_bytes=1000)
    assert error in summary["error"]
    assert (summary["message_count"], summary["tools_used"], summary["has_images"]) == (0, [], False)


def test_summary_tolerates_odd_shapes_and_encodings() -> None:
    odd = {
        "system": [{"type": "text", "text": 42}, "loose string"],
        "tools": "not a list",
        "messages": [
            None,
            "text",
            {"role": "assistant", "content": [{"type": "tool_use", "name": ["x"]}]},
            {"content": 7},
        ],
    }
    summary = summarise_request(orjson.dumps(odd))
    assert (summary["error"], summary["message_count"], summary["tools_used"]) == (None, 4, [])
    lone = summarise_request(b'{"system": "half \\ud83d emoji", "messages": [{"role": "user", "content": "caf\xe9"}]}')
    assert lone["error"] is None and lone["system_sha256"] is not None and lone["message_count"] == 1


def test_capture_of_a_request_that_fits() -> None:
    request = claude_code_request()
    capture = capture_request(orjson.dumps(request), cap_bytes=1 << 20)
    assert (capture["truncated"], capture["omitted_messages"], capture["message_count"], capture["error"]) == (
        False,
        0,
        5,
        None,
    )
    assert capture["system"] == request["system"]
    assert capture["messages"][0] == request["messages"][0]
    assert capture["messages"][1:2] == request["messages"][1:2] and capture["messages"][3:] == request["messages"][3:]
    # Attachments are kept as their size and hash: bytes are not audit text.
    source = capture["messages"][2]["content"][0]["content"][0]["source"]
    raw = base64.b64decode(request["messages"][2]["content"][0]["content"][0]["source"]["data"])
    assert source == {
        "type": "base64",
        "media_type": "image/png",
        "data_bytes": len(raw),
        "data_sha256": hashlib.sha256(raw).hexdigest(),
    }


def test_capture_over_the_cap_keeps_newest_message_then_system_then_recent_history() -> None:
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "w" * 300} for i in range(40)]
    request = {"system": "You are Claude Code.", "messages": history}
    capture = capture_request(orjson.dumps(request), cap_bytes=4000)
    assert capture["truncated"] is True
    assert capture["system"] == "You are Claude Code."
    kept = capture["messages"]
    assert kept[-1] == history[-1] and kept == history[-len(kept) :]
    assert capture["omitted_messages"] == 40 - len(kept) > 0
    assert len(orjson.dumps(capture)) <= 4000 + 300


def test_capture_clips_a_single_huge_message_with_the_marker() -> None:
    huge = {
        "role": "user",
        "content": [{"type": "text", "text": "ünïcode " * 100_000}, {"type": "text", "text": "tail"}],
    }
    capture = capture_request(
        orjson.dumps({"system": "sys", "messages": [{"role": "user", "content": "old"}, huge]}), 10_000
    )
    assert capture["truncated"] is True and capture["omitted_messages"] == 1
    text = capture["messages"][0]["content"][0]["text"]
    assert text.endswith(TRUNCATION_MARKER) and text.startswith("ünïcode ünïcode")
    assert len(orjson.dumps(capture)) <= 10_000 + 300


@pytest.mark.parametrize(
    ("body", "raw", "error"),
    [
        (b"not json at all", "not json at all", "not valid JSON"),
        (b"\xff\xfe binary \x00\x01", "\ufffd\ufffd binary \x00\x01", "not valid JSON"),
        (b'"just a string"', '"just a string"', "not a JSON object"),
    ],
)
def test_capture_of_a_bad_body_keeps_its_text(body: bytes, raw: str, error: str) -> None:
    capture = capture_request(body, cap_bytes=1000)
    assert capture["raw"] == raw and error in capture["error"] and capture["messages"] == []
    orjson.dumps(capture)


def test_capture_of_a_huge_invalid_body_is_capped() -> None:
    capture = capture_request(b"\x00garbage" * 1_000_000, cap_bytes=5000)
    assert capture["truncated"] is True and capture["raw"].endswith(TRUNCATION_MARKER)
    assert len(orjson.dumps(capture)) < 5000 + 300
    too_big = capture_request(b'{"messages": []}' + b" " * 2000, cap_bytes=100, max_bytes=1000)
    assert "larger than 1000" in too_big["error"]


def test_capture_of_absurd_nesting_is_serialisable() -> None:
    nested: Any = "leaf"
    for _ in range(400):
        nested = [nested]
    body = b'{"messages": [{"role": "user", "content": ' + json.dumps(nested).encode() + b"}]}"
    capture = capture_request(memoryview(body), cap_bytes=100_000)
    assert capture["error"] is None and capture["message_count"] == 1
    assert TRUNCATION_MARKER.encode() in orjson.dumps(capture)
    assert summarise_request(body)["error"] is None


def test_capture_output_is_serialisable_despite_lone_surrogates() -> None:
    body = b'{"system": "sys \\udc00", "messages": [{"role": "user", "content": "half \\ud83d emoji"}]}'
    capture = capture_request(body, cap_bytes=1000)
    assert capture["messages"] == [{"role": "user", "content": "half \ufffd emoji"}]
    assert capture["system"] == "sys \ufffd"
    orjson.dumps(capture)


def test_captured_request_and_response_redact_cleanly() -> None:
    key = "sk-" + "ant-api03-" + "k" * 40
    request = claude_code_request(messages=[{"role": "user", "content": f"deploy with {key}"}])
    assembler = ResponseAssembler()
    assembler.feed(sse([message_start(), *text_block(0, f"Do not paste {key} here."), *message_end()]))
    redactor = Redactor()
    captured, request_counts = redactor.redact_json(capture_request(orjson.dumps(request)))
    assembled, response_counts = redactor.redact_json(assembler.result())
    assert key not in orjson.dumps(captured).decode() and key not in orjson.dumps(assembled).decode()
    assert request_counts == response_counts == {"anthropic_api_key": 1}


# What reaches the model is what is captured: decoded text documents, tools, every other parameter.


def _document(data: bytes, media_type: str = "text/plain") -> dict[str, Any]:
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": "document", "source": source}


def test_capture_decodes_base64_text_documents() -> None:
    notes = "Quarterly plan: ship the sandwich-ledger.\nOwner: ada\n"
    request = claude_code_request(
        messages=[{"role": "user", "content": [_document(notes.encode()), {"type": "text", "text": "Summarise."}]}]
    )
    capture = capture_request(orjson.dumps(request))
    source = capture["messages"][0]["content"][0]["source"]
    assert source == {
        "type": "base64",
        "media_type": "text/plain",
        "data_bytes": len(notes.encode()),
        "data_sha256": hashlib.sha256(notes.encode()).hexdigest(),
        "decoded_text": notes,
    }


@pytest.mark.parametrize(
    ("data", "media_type", "text"),
    [
        pytest.param(b"a mislabelled note", "application/pdf", "a mislabelled note", id="claims-pdf"),
        pytest.param(b'{"k": 1}', "application/json", '{"k": 1}', id="json"),
        pytest.param("\ufeffwith a BOM".encode(), "text/csv", "with a BOM", id="utf8-bom"),
        pytest.param("utf-16 text".encode("utf-16"), "text/plain", "utf-16 text", id="utf16"),
        pytest.param(b"%PDF-1.7\n1 0 obj << >> endobj\n", "application/pdf", None, id="real-pdf"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", None, id="png"),
        pytest.param(b"\xff\xfe\xfd not utf-8", "text/plain", None, id="invalid-utf8"),
        pytest.param(b"nul\x00inside", "text/plain", None, id="nul-bytes"),
    ],
)
def test_capture_keeps_text_whatever_its_label_and_stubs_bytes(data: bytes, media_type: str, text: str | None) -> None:
    request = claude_code_request(messages=[{"role": "user", "content": [_document(data, media_type)]}])
    source = capture_request(orjson.dumps(request))["messages"][0]["content"][0]["source"]
    assert source.get("decoded_text") == text
    assert "data" not in source and source["data_sha256"] == hashlib.sha256(data).hexdigest()


def test_capture_decodes_documents_inside_tool_results() -> None:
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [_document(b"file read by a tool")]}
    request = claude_code_request(messages=[{"role": "user", "content": [result]}])
    capture = capture_request(orjson.dumps(request))
    assert capture["messages"][0]["content"][0]["content"][0]["source"]["decoded_text"] == "file read by a tool"


def test_capture_keeps_tool_definitions_and_other_parameters() -> None:
    request = claude_code_request(
        tool_choice={"type": "auto"},
        mcp_servers=[{"type": "url", "url": "https://mcp.example.com/sse", "name": "wiki"}],
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    capture = capture_request(orjson.dumps(request))
    assert capture["tools"] == request["tools"]
    assert capture["tools"][0]["description"] == "Run a command"
    assert capture["params"] == {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "tool_choice": {"type": "auto"},
        "mcp_servers": request["mcp_servers"],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }


def test_capture_cap_applies_to_decoded_documents_and_tools() -> None:
    huge = ("confidential line\n" * 200_000).encode()
    tools = [{"name": f"tool_{i}", "description": "d" * 2000, "input_schema": {"type": "object"}} for i in range(50)]
    request = claude_code_request(tools=tools, messages=[{"role": "user", "content": [_document(huge)]}])
    capture = capture_request(orjson.dumps(request), cap_bytes=20_000)
    assert capture["truncated"] is True
    text = capture["messages"][0]["content"][0]["source"]["decoded_text"]
    assert text.startswith("confidential line") and text.endswith(TRUNCATION_MARKER)
    assert len(orjson.dumps(capture)) <= 20_000 + 500


def test_secrets_in_documents_tools_and_parameters_are_redacted() -> None:
    key = "sk-" + "ant-api03-" + "k" * 40
    token = "mcp-" + "Zx9" * 10
    request = claude_code_request(
        tools=[{"name": "Deploy", "description": f"Deploys with {key}", "input_schema": {"type": "object"}}],
        mcp_servers=[{"type": "url", "url": "https://mcp.example.com", "name": "w", "authorization_token": token}],
        messages=[{"role": "user", "content": [_document(f"DB_PASS=letters\nkey: {key}\n".encode())]}],
    )
    captured, counts = Redactor().redact_json(capture_request(orjson.dumps(request)))
    dumped = orjson.dumps(captured).decode()
    assert key not in dumped and token not in dumped and "letters" not in dumped
    assert counts == {"anthropic_api_key": 2, "secret_field": 1, "env_secret": 1}
