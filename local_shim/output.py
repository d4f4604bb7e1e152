"""The one place the CLI writes to the terminal."""

from __future__ import annotations

import sys
from typing import TextIO

from gateway.terminal import escape_text, field
from local_shim.checks import Check


class Output:
    """The one place the CLI writes to the terminal; control characters are escaped (line breaks aside) whatever
    the text holds, since some of it comes from the network (the gateway's and Google's answers)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def line(self, text: str = "") -> None:
        self._out.write(escape_text(text) + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        """Guidance for the person, kept off stdout so `eval "$(claude-shim env)"` stays clean."""
        self._err.write(escape_text(text) + "\n")
        self._err.flush()

    def error(self, text: str) -> None:
        self._err.write(f"claude-shim: error: {escape_text(text)}\n")
        self._err.flush()

    def check(self, check: Check) -> None:
        mark = "ok  " if check.ok else "FAIL"
        self.line(f"[{mark}] {check.name}: {field(check.detail, 500)}")
        if check.fix:
            self.line(f"       fix: {field(check.fix, 500)}")
