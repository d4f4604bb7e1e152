"""`claude-shim` prints text that partly comes from the network (the gateway's and Google's answers): control
characters are escaped, so an answer cannot drive the person's terminal or forge a line."""

from __future__ import annotations

import io

from local_shim.checks import Check
from local_shim.cli import Output


def test_output_escapes_control_characters_but_keeps_its_own_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err)
    output.line("gateway said: \x1b[2Jcleared\rover\u202edrawn\nsecond line")
    output.error("bad \x1b]0;title\x07")
    output.note("note \x9b31m")
    assert out.getvalue() == "gateway said: \\u001b[2Jcleared\\rover\\u202edrawn\nsecond line\n"
    assert err.getvalue() == "claude-shim: error: bad \\u001b]0;title\\u0007\nnote \\u009b31m\n"


def test_a_check_detail_from_the_network_stays_on_its_line() -> None:
    out = io.StringIO()
    detail = "HTTP 502: <html>\n[ok  ] gateway: reachable\x1b[2K"
    Output(out, io.StringIO()).check(Check("gateway", False, detail, fix="ask\nyour admin"))
    assert out.getvalue().splitlines() == [
        "[FAIL] gateway: HTTP 502: <html>\\n[ok  ] gateway: reachable\\u001b[2K",
        "       fix: ask\\nyour admin",
    ]
