"""The SSE framer every reader of a relayed stream shares: framing rules, chunk boundaries, the oversize guard."""

from __future__ import annotations

import pytest

from gateway.sse import SSEFramer, parse

STREAM = (
    b"\xef\xbb\xbf: comment\n\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"id: 7\nretry: 10\ndata:first\ndata: second\n\n"
    b"event: one\nevent:  two \ndata: x\n\n"
    b"event: nothing\n\n"
)
EXPECTED = [(b"message_start", b'{"a": 1}'), (b"", b"first\nsecond"), (b" two ", b"x")]


def events(*chunks: bytes, limit: int = 1 << 20) -> list[tuple[bytes, bytes]]:
    framer = SSEFramer(limit)
    blocks = [block for chunk in chunks for block in framer.feed(chunk)] + framer.finish()
    return [event for event in map(parse, blocks) if event is not None]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_and_split_point_gives_the_same_events(eol: bytes) -> None:
    stream = STREAM.replace(b"\n", eol)
    assert events(stream) == EXPECTED
    for cut in range(len(stream) + 1):
        assert events(stream[:cut], stream[cut:]) == EXPECTED, cut
    assert events(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


def test_a_byte_order_mark_is_dropped_only_at_the_start() -> None:
    assert events(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n") == [(b"", b"a")]


def test_a_trailing_event_without_its_blank_line_is_dispatched_at_the_end() -> None:
    assert events(b"data: a\n\nevent: e\ndata: b") == [(b"", b"a"), (b"e", b"b")]


def test_an_oversize_event_is_dropped_and_counted_whatever_the_chunking() -> None:
    big = b"data: " + b"y" * 5000 + b"\n\n"
    for size in (1, 100, 4096, len(big) * 3):
        framer = SSEFramer(1024)
        stream = b"data: a\n\n" + big + b"data: b\n\n"
        blocks: list[bytes] = []
        for i in range(0, len(stream), size):
            blocks += framer.feed(stream[i : i + size])
        assert [parse(block) for block in blocks + framer.finish()] == [(b"", b"a"), (b"", b"b")], size
        assert framer.dropped >= 5000, size
