"""Where the gateway's CPU goes: py-spy's collapsed stacks summed into areas and functions."""

from __future__ import annotations

import re
from collections import Counter

# A sample is charged to the first area whose pattern matches a frame, walking from the root of the stack to
# its leaf; feature areas (what the gateway adds) come first, so JSON encoding inside the access log counts
# as access log, not as JSON.
AREAS: list[tuple[str, re.Pattern[str]]] = [
    ("access log (logging + google-cloud-logging)", re.compile(r"_log_access|\((logging|google/cloud/logging)/")),
    ("audit (record, writer, SQLite sink)", re.compile(r"\(gateway/audit/|sqlite3")),
    ("identity (IAP assertion check)", re.compile(r"\(gateway/identity\.py|\(google/auth/")),
    ("metering (SSE parse, usage, pricing)", re.compile(r"\(gateway/(metering|pricing)\.py")),
    ("policy", re.compile(r"\(gateway/policy/")),
]
# Otherwise the leaf's library decides. py-spy names files relative to their sys.path entry: `(httpx/_client.py:1)`.
LEAF_AREAS: list[tuple[str, re.Pattern[str]]] = [
    ("upstream client (httpx, httpcore, h11)", re.compile(r"\((httpx|httpcore|h11)/")),
    ("anyio (cancel scopes, streams, threads)", re.compile(r"\(anyio/")),
    ("server (uvicorn, httptools)", re.compile(r"\((uvicorn|httptools)/")),
    ("framework (starlette, fastapi)", re.compile(r"\((starlette|fastapi)/")),
    ("event loop (asyncio, uvloop)", re.compile(r"\((asyncio|uvloop)/|selectors\.py")),
    ("gateway relay (proxy, headers, upstreams)", re.compile(r"\(gateway/")),
]
# Worker threads blocked on a lock are not using CPU, whatever py-spy thought.
_IDLE = re.compile(r"^(Condition\.wait|Event\.wait|Thread\.join|Thread\._wait_for_tstate_lock) \(threading\.py")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(text: str) -> Counter[str]:
    """py-spy `--format raw` output: one `frame;frame;... count` line per distinct stack."""
    stacks: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3.", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{match.group('func')} ({path})"


def _area(frames: list[str]) -> str:
    for name, pattern in AREAS:
        if any(pattern.search(frame) for frame in frames):
            return name
    leaf = frames[-1] if frames else ""
    for name, pattern in LEAF_AREAS:
        if pattern.search(leaf):
            return name
    for frame in reversed(frames):
        for name, pattern in LEAF_AREAS:
            if pattern.search(frame):
                return name
    return "other"


def summarise(stacks: Counter[str], *, top: int = 25) -> dict[str, object]:
    """Share of samples by area, by leaf function (self) and by function anywhere on the stack (inclusive)."""
    stacks = Counter({stack: count for stack, count in stacks.items() if not _IDLE.search(stack.rsplit(";", 1)[-1])})
    total = sum(stacks.values())
    areas: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        # py-spy puts the thread name first when it records several threads: not a frame.
        frames = [f for f in stack.split(";") if "(" in f]
        areas[_area(frames)] += count
        if frames:
            self_time[_short(frames[-1])] += count
        for name in {_short(frame) for frame in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(limit)] if total else []

    return {
        "samples": total,
        "areas": shares(areas, len(areas)),
        "self": shares(self_time, top),
        "inclusive": shares(inclusive, top),
    }


def render(summary: dict[str, object], cpu_us_per_request: float | None) -> str:
    """Text tables: area, share and, given the CPU per request, microseconds per request."""
    lines = [f"py-spy samples: {summary['samples']}"]

    def table(title: str, rows: object) -> None:
        lines.append("")
        lines.append(title)
        for name, share in rows:  # type: ignore[attr-defined]
            per = f"{share * cpu_us_per_request:8.0f} us/req" if cpu_us_per_request else ""
            lines.append(f"  {share * 100:5.1f}%  {per}  {name}")

    table("By area (first matching feature on the stack, else the leaf's library):", summary["areas"])
    table("Top functions by self time:", summary["self"])
    table("Top functions by inclusive time:", summary["inclusive"])
    return "\n".join(lines)
