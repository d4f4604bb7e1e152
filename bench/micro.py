"""In-process CPU cost of reading the benchmark's SSE reply: the gateway's metering, and prompt capture's
reassembly, independent of the network.

End to end, metering is a few tens of microseconds inside milliseconds of relay work and lost in the noise
of a shared machine; fed the same bytes in a loop, its cost per reply is exact enough to hold against the
relay's CPU per request.

Run: python -m bench.micro [--deltas 50] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench.upstream import sse_events


def _shapes(deltas: int) -> dict[str, list[bytes]]:
    """The reply as one chunk (a fast upstream) and as one chunk per event (a real stream)."""
    head, body, tail = sse_events(deltas)
    whole = head + b"".join(body) + tail
    return {"one_chunk_us": [whole], "per_event_us": [event + b"\n\n" for event in whole.split(b"\n\n")[:-1]]}


def _time(run: Callable[[list[bytes]], None], chunks: list[bytes], seconds: float) -> float:
    """CPU microseconds per call of `run`, over about `seconds` of CPU."""
    runs = 0
    started = time.process_time()
    deadline = started + seconds
    while time.process_time() < deadline:
        for _ in range(100):
            run(chunks)
        runs += 100
    return (time.process_time() - started) / runs * 1e6


def meter_cost(deltas: int, *, seconds: float = 1.0) -> dict[str, float]:
    """CPU microseconds to meter one reply: as one chunk and as one chunk per event."""
    from gateway.metering import SSEMeter

    def run(chunks: list[bytes]) -> None:
        meter = SSEMeter()
        for chunk in chunks:
            meter.feed(chunk)
        meter.finish()

    out = {}
    for name, chunks in _shapes(deltas).items():
        meter = SSEMeter()
        for chunk in chunks:
            meter.feed(chunk)
        meter.finish()
        if meter.usage.output_tokens != deltas or meter.usage.cache_read_input_tokens is None:
            raise RuntimeError(f"SSEMeter did not read the benchmark's reply: {meter.usage}")
        out[name] = _time(run, chunks, seconds / 2)
    return out


def assembler_cost(deltas: int, *, seconds: float = 1.0) -> dict[str, float]:
    """CPU microseconds for prompt capture to rebuild one reply: as one chunk and as one chunk per event."""
    from gateway.capture.assemble import ResponseAssembler

    def run(chunks: list[bytes]) -> None:
        assembler = ResponseAssembler()
        for chunk in chunks:
            assembler.feed(chunk)
        assembler.result()

    out = {}
    for name, chunks in _shapes(deltas).items():
        assembler = ResponseAssembler()
        for chunk in chunks:
            assembler.feed(chunk)
        result = assembler.result()
        if not result["complete"] or len(result["content"]) != 1 or result["capture_error"]:
            raise RuntimeError(f"ResponseAssembler did not read the benchmark's reply: {result}")
        out[name] = _time(run, chunks, seconds / 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=50, help="text deltas in the reply (default 50)")
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement pair (default 2)")
    args = parser.parse_args()
    for name, cost in (("SSEMeter", meter_cost), ("ResponseAssembler", assembler_cost)):
        result = cost(args.deltas, seconds=args.seconds)
        print(
            f"{name:18} {result['one_chunk_us']:7.1f} us per reply as one chunk, "
            f"{result['per_event_us']:7.1f} us fed one event per chunk"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
