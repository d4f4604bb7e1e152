"""What redaction costs per MiB, and what it finds in text that holds no secret.

    .venv/bin/python -m bench.redaction

Texts: this repository's own source and docs (code and prose, no real secret: every redaction there is a false
positive), random base64, and a Claude Code-shaped conversation as the capture worker redacts it (the JSON of a
captured request, string by string). Each is timed with our patterns alone, with the detect-secrets detectors
alone, and with both (the default). Medians of several runs; one core, no other load wanted."""

from __future__ import annotations

import datetime as dt
import random
import statistics
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.capture.assemble import ResponseAssembler
from gateway.capture.detectors import LibraryDetectors
from gateway.capture.levels import CaptureLevel
from gateway.capture.redact import Redactor
from gateway.capture.rows import CaptureJob, content_row
from gateway.capture.summary import capture_request

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
RUNS = 5


def _source(suffixes: tuple[str, ...], folders: tuple[str, ...]) -> str:
    files = sorted(path for folder in folders for path in (ROOT / folder).rglob("*") if path.suffix in suffixes)
    return "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in files)


def _conversation(text: str, size: int) -> bytes:
    """A Messages request of about `size` bytes: turns of prose and tool results holding file contents."""
    rng = random.Random(7)
    messages: list[dict[str, object]] = []
    while sum(len(str(message)) for message in messages) < size:
        start = rng.randrange(0, max(len(text) - 6000, 1))
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"toolu_{len(messages):04d}",
                        "content": text[start : start + 6000],
                    },
                    {
                        "type": "text",
                        "text": "Now change the relay so that it closes the upstream response in a finally.",
                    },
                ],
            }
        )
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "Reading the file first."}]})
    return orjson.dumps({"model": "claude-sonnet-4-5", "system": "You are Claude Code.", "messages": messages})


def _median_ms(run: Callable[[Any], object], argument: Any) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run(argument)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    both = Redactor()
    ours = Redactor()
    ours.library = None
    library = LibraryDetectors()
    code = _source((".py", ".tf", ".sql", ".yaml", ".toml"), ("gateway", "local_shim", "terraform", "bench"))
    prose = _source((".md",), ("docs",)) + (ROOT / "README.md").read_text(encoding="utf-8")
    base64_text = "".join(random.Random(1).choices(string.ascii_letters + string.digits + "+/", k=MIB))
    texts = {"code": code, "prose (docs)": prose, "random base64": base64_text}

    print(f"{'text':<28} {'MiB':>5} {'ours ms/MiB':>12} {'library':>9} {'both':>9} {'redactions':>11}")
    for name, text in texts.items():
        mib = len(text.encode()) / MIB
        found = both.redact(text)[1]
        print(
            f"{name:<28} {mib:5.2f} {_median_ms(ours.redact, text) / mib:12.0f} "
            f"{_median_ms(library.find, text) / mib:9.0f} {_median_ms(both.redact, text) / mib:9.0f} "
            f"{sum(found.values()):>11}  {dict(sorted(found.items()))}"
        )

    body = _conversation(code, MIB)
    captured = capture_request(body, cap_bytes=2 * MIB)
    mib = len(body) / MIB
    found = both.redact_json(captured)[1]
    print(
        f"{'conversation (redact_json)':<28} {mib:5.2f} {_median_ms(ours.redact_json, captured) / mib:12.0f} "
        f"{'-':>9} {_median_ms(both.redact_json, captured) / mib:9.0f} {sum(found.values()):>11}"
    )

    # The whole content row, as the capture worker builds it at `full` (parse, capture, redact, serialise).
    for size in (2_000, 100_000, MIB):
        body = _conversation(code, size)

        def row(redactor: Redactor, body: bytes = body) -> object:
            job = CaptureJob(
                "bench", dt.datetime.now(dt.UTC), "ada@example.com", CaptureLevel.FULL, body, ResponseAssembler()
            )
            return content_row(job, redactor, MIB)

        print(
            f"content row, {len(body) / 1000:7.0f} kB request: {_median_ms(row, ours):6.1f} ms with our patterns, "
            f"{_median_ms(row, both):6.1f} ms with both"
        )


if __name__ == "__main__":
    main()
