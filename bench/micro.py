"""In-process CPU cost of reading the benchmark's SSE reply: the gateway's metering, and prompt capture's
reassembly, independent of the network.

End to end, metering is a few tens of microseconds inside milliseconds of relay work and lost in the noise
of a shared machine; fed the same bytes in a loop, its cost per reply is exact enough to hold against the
relay's CPU per request.

Run: python -m bench.micro [--deltas 50] [--seconds 2] [--against REV]
`--against REV` also times the gateway package of a git revision, interleaved with this tree's so that a shared
machine's load falls on both alike, and prints the two side by side.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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


def _runs(metering: ModuleType, assemble: ModuleType) -> dict[str, Callable[[list[bytes]], None]]:
    def meter(chunks: list[bytes]) -> None:
        m = metering.SSEMeter()
        for chunk in chunks:
            m.feed(chunk)
        m.finish()

    def assembler(chunks: list[bytes]) -> None:
        a = assemble.ResponseAssembler()
        for chunk in chunks:
            a.feed(chunk)
        a.result()

    return {"SSEMeter": meter, "ResponseAssembler": assembler}


def _import_gateway(root: Path) -> tuple[ModuleType, ModuleType]:
    """gateway.metering and gateway.capture.assemble as found under `root`, leaving sys.modules as it was."""
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "gateway"}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("gateway.metering"), importlib.import_module("gateway.capture.assemble")
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == "gateway"]:
            del sys.modules[name]
        sys.modules.update(saved)


def compare(rev: str, deltas: int, *, seconds: float, rounds: int = 5) -> dict[tuple[str, str], list[float]]:
    """Per reader and shape: [µs at `rev`, µs here], each the least of `rounds` interleaved measurements."""
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(here), "archive", rev, "gateway"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        old = _runs(*_import_gateway(Path(tmp)))
    new = _runs(*_import_gateway(here))
    shapes = _shapes(deltas)
    best = {(name, shape): [float("inf"), float("inf")] for name in new for shape in shapes}
    for _ in range(rounds):
        for (name, shape), pair in best.items():
            for index, runs in enumerate((old, new)):
                pair[index] = min(pair[index], _time(runs[name], shapes[shape], seconds / rounds / 4))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=50, help="text deltas in the reply (default 50)")
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement pair (default 2)")
    parser.add_argument("--against", metavar="REV", help="also time the gateway package of this git revision")
    args = parser.parse_args()
    if args.against:
        for (name, shape), (before, after) in compare(args.against, args.deltas, seconds=args.seconds).items():
            label = "one chunk" if shape == "one_chunk_us" else "one event per chunk"
            print(
                f"{name:18} {label:20} {args.against}: {before:7.1f} us   this tree: {after:7.1f} us "
                f"({after / before - 1:+.0%})"
            )
        return 0
    for name, cost in (("SSEMeter", meter_cost), ("ResponseAssembler", assembler_cost)):
        result = cost(args.deltas, seconds=args.seconds)
        print(
            f"{name:18} {result['one_chunk_us']:7.1f} us per reply as one chunk, "
            f"{result['per_event_us']:7.1f} us fed one event per chunk"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
