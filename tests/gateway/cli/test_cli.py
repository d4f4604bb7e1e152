from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main

CLI = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_until(process: subprocess.Popen[str], marker: str, timeout: float = 30) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"{marker!r} never appeared; output so far:\n{seen}")
        seen += process.stdout.readline()
    return seen


@pytest.fixture
def dev_gateway(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, str]]:
    audit_db = tmp_path / "audit.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    process = subprocess.Popen(
        [
            *CLI,
            "dev",
            "--port",
            str(free_port()),
            "--audit-db",
            str(audit_db),
            "--mock-delay",
            "0",
            "--user",
            "newcomer@example.com",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        yield process, audit_db, read_until(process, "The gateway keeps running")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(15)
        assert process.stdout is not None
        process.stdout.close()


def test_dev_shows_a_streamed_reply_and_its_audit_row(dev_gateway: tuple[subprocess.Popen[str], Path, str]) -> None:
    _, _, output = dev_gateway

    assert "reply: Hello from the mock upstream" in output
    assert "user_email: newcomer@example.com" in output
    assert "outcome: ok" in output
    assert "output_tokens: 24" in output


def test_dev_shows_the_path_to_a_report_of_the_demo_traffic(
    dev_gateway: tuple[subprocess.Popen[str], Path, str],
) -> None:
    _, audit_db, output = dev_gateway

    (line,) = [line for line in output.splitlines() if line.startswith("  report: ")]
    report = Path(line.removeprefix("  report: "))
    assert report.parent == audit_db.parent and report.suffix == ".html"
    page = report.read_text()
    assert "newcomer@example.com" in page and "claude-haiku-5-5" in page and "<img" in page
    assert report.with_suffix(".csv").read_text().count("newcomer@example.com") == 1


def test_audit_tail_and_summary_read_the_dev_audit_file(
    dev_gateway: tuple[subprocess.Popen[str], Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, audit_db, _ = dev_gateway

    assert main(["audit", "tail", "--db", str(audit_db)]) == 0
    tail = capsys.readouterr().out
    assert main(["audit", "summary", "--by", "user", "--db", str(audit_db)]) == 0
    summary = capsys.readouterr().out

    assert "newcomer@example.com" in tail and "POST /v1/messages  200 ok" in tail
    assert "newcomer@example.com" in summary.splitlines()[1]


def test_dev_stops_cleanly_on_interrupt(dev_gateway: tuple[subprocess.Popen[str], Path, str]) -> None:
    process, _, _ = dev_gateway

    process.send_signal(signal.SIGINT)
    code = process.wait(15)

    assert process.stdout is not None
    rest = process.stdout.read()
    assert code == 130  # the shell's convention for Ctrl-C
    assert "gateway stopped: written=" in rest  # the lifespan ran: audit rows were drained before exit
    assert "Traceback" not in rest


def test_serve_without_audience_fails_with_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", str(free_port())]) == 2

    error = capsys.readouterr().err
    assert error.startswith("claude-gateway: invalid configuration:")
    assert "GATEWAY_IAP_AUDIENCE is not set" in error
    assert len(error.strip().splitlines()) == 1


def test_audit_tail_on_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "tail", "--db", str(tmp_path / "none.db")]) == 2

    assert "no audit file at" in capsys.readouterr().err


def test_dev_refuses_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        assert main(["dev", "--port", str(port), "--audit-db", str(tmp_path / "a.db")]) == 2

    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
