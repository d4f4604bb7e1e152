"""What the CLI writes to the terminal, escaped, and the one-line error a failed command ends with."""

from __future__ import annotations

import sys

from gateway.terminal import escape, escape_text


class CLIError(Exception):
    """A problem the person at the terminal can fix, said in one line."""


def say(text: str = "") -> None:
    """The CLI's one way to write to the terminal: control characters escaped whatever the text holds (its line
    breaks aside), so data a caller chose cannot drive the terminal. Caller-chosen fields go through `field` too,
    which escapes line breaks and cuts them short."""
    write(text + "\n")


def write(text: str) -> None:
    """Part of a line, escaped as `say` does."""
    sys.stdout.write(escape_text(text))
    sys.stdout.flush()


def note(text: str) -> None:
    """A remark for the person at the terminal, kept out of output that may be piped (stderr)."""
    sys.stderr.write(escape_text(text) + "\n")
    sys.stderr.flush()


def fail(error: CLIError) -> None:
    """The error as the command's last line, on stderr."""
    note(f"claude-gateway: {escape(str(error))}")  # one line, whatever path or value it quotes
