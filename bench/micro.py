"""In-process CPU cost of the gateway's SSE metering for the benchmark's reply, independent of the network.

End to end, metering is a few tens of microseconds inside milliseconds of relay work and lost in the noise
of a shared machine; fed the same bytes in a loop, its cost per reply is exact enough to hold against the
relay's CPU per request.
"""

from __future__ import annotations

import time

from bench.upstream import sse_events


def meter_cost(deltas: int, *, seconds: float = 1.0) -> dict[str, float]:
    """CPU microseconds to meter one reply: as one chunk (a fast upstream) and as one chunk per event."""
    from gateway.metering import SSEMeter

    head, body, tail = sse_events(deltas)
    whole = [head + b"".join(body) + tail]
    per_event = [head, *body, tail]
    out = {}
    for name, chunks in (("one_chunk_us", whole), ("per_event_us", per_event)):
        meter = SSEMeter()
        for chunk in chunks:
            meter.feed(chunk)
        meter.finish()
        if meter.usage.output_tokens != deltas or meter.usage.cache_read_input_tokens is None:
            raise RuntimeError(f"SSEMeter did not read the benchmark's reply: {meter.usage}")
        runs = 0
        started = time.process_time()
        deadline = started + seconds / 2
        while time.process_time() < deadline:
            for _ in range(100):
                meter = SSEMeter()
                for chunk in chunks:
                    meter.feed(chunk)
                meter.finish()
            runs += 100
        out[name] = (time.process_time() - started) / runs * 1e6
    return out
