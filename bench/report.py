"""The side-by-side table and the target checks, from the results the runner collected."""

from __future__ import annotations

from typing import Any

LABELS = {
    "direct": "direct",
    "nginx": "nginx",
    "relay": "relay",
    "relay+meter": "relay+meter",
    "relay-httpx2": "httpx2",
    "lean": "lean",
    "gateway": "gateway",
    "shim+gateway": "shim+gw",
    "peer": "anthropic",
    "peer+spend": "anth+spend",
}
# Extra columns: the gateway's value over another path's (for added times, the ratio of added times).
RATIOS = (("gw/nginx", "nginx"), ("gw/anth", "peer"))

# Targets from issue 17, for the full gateway.
C1_P50_MS = 0.5
C1_P99_OVER_NGINX_MS = 2.0
C50_RPS = 3000.0
PEER_RPS_FACTOR = 1.8  # over Anthropic's gateway without spend tracking
PEER_SPEND_RPS_FACTOR = 4.0  # over Anthropic's gateway with spend limits on
PER_EVENT_C50_RPS = 1000.0
PER_EVENT_CPU_MS = 1.5
OPEN_P99_MS = 5.0
METER_CPU_SHARE = 0.05
RSS_GROWTH_MB = 5.0


def _get(result: dict[str, Any] | None, *keys: str) -> float | None:
    value: Any = result
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def added(paths: dict[str, Any], name: str, phase: str, metric: str, pct: str) -> float | None:
    """A path's percentile minus direct's, in ms."""
    mine = _get(paths.get(name), phase, metric, pct)
    base = _get(paths.get("direct"), phase, metric, pct)
    if mine is None or base is None:
        return None
    return mine - base


def cpu_per_1k(paths: dict[str, Any], name: str, phase_name: str = "c50") -> float | None:
    """Server CPU seconds per 1,000 requests in a phase, concurrency 50 unless told (nginx: master and worker;
    shim+gw: both processes)."""
    phase = (paths.get(name) or {}).get(phase_name)
    if not phase or not phase.get("requests"):
        return None
    server = sum(phase["cpu"]["servers"].values())
    return server / phase["requests"] * 1000 if phase["cpu"]["servers"] else None


def _over_direct(paths: dict[str, Any], phase: str, metric: str, pct: str) -> dict[str, float | None]:
    """Direct's own value, and every other path's value added over it."""
    return {
        name: _get(paths[name], phase, metric, pct) if name == "direct" else added(paths, name, phase, metric, pct)
        for name in paths
    }


def rows(paths: dict[str, Any]) -> list[tuple[str, dict[str, float | None], str]]:
    """(label, value per path, format) for every row of the table."""
    table: list[tuple[str, dict[str, float | None], str]] = []
    for metric, title in (("ttfb", "TTFB"), ("total", "total")):
        for pct in ("p50", "p95", "p99"):
            table.append((f"c=1 {title} {pct}, ms (+ over direct)", _over_direct(paths, "c1", metric, pct), "ms"))
    for phase, title in (("c1", "c=1"), ("c50", "c=50"), ("c200", "c=200")):
        table.append((f"req/s, closed loop {title}", {n: _get(paths[n], phase, "rps") for n in paths}, "rps"))
    rate = next((p["open"].get("target_rate") for p in paths.values() if p.get("open")), 200)
    for metric, title in (("total", "total"), ("ttfb", "TTFB")):
        for pct in ("p50", "p99"):
            table.append((f"open {rate:.0f}/s {title} {pct}, ms (+)", _over_direct(paths, "open", metric, pct), "ms"))
    table.append((f"open {rate:.0f}/s achieved req/s", {n: _get(paths[n], "open", "rps") for n in paths}, "rps"))
    table.append(("CPU s per 1k req (c=1, server)", {n: cpu_per_1k(paths, n, "c1") for n in paths}, "cpu"))
    table.append(("CPU s per 1k req (c=50, server)", {n: cpu_per_1k(paths, n) for n in paths}, "cpu"))
    table.append(("req/s one free core could carry", {n: _capacity(paths, n) for n in paths}, "rps"))
    table.append(("peak RSS, MB (server)", {n: _peak_mb(paths[n]) for n in paths}, "mb"))
    table.append(("errors + open-loop unanswered", {n: float(_errors(paths[n])) for n in paths}, "int"))
    table.append(("client CPU s per 1k req (c=50)", {n: _client_cpu(paths[n]) for n in paths}, "cpu"))
    table.append(("other processes, cores busy (c=50)", {n: _other(paths[n]) for n in paths}, "cores"))
    table.append(("hypervisor steal, cores (c=50)", {n: _other(paths[n], "steal") for n in paths}, "cores"))
    return table


def _peak_mb(path: dict[str, Any]) -> float | None:
    peak = path.get("peak_rss_kb")
    return peak / 1024 if peak else None


def _capacity(paths: dict[str, Any], name: str) -> float | None:
    """1,000 / CPU seconds per 1k requests: the c=50 rate if the relay had a core to itself (ignores the other
    processes on the machine, which the measured req/s do not)."""
    per_1k = cpu_per_1k(paths, name)
    return 1000 / per_1k if per_1k else None


def _errors(path: dict[str, Any]) -> int:
    """Non-200 replies and broken connections, plus open-loop requests still unanswered at the end."""
    return sum(
        int(phase.get("errors", 0)) + int(phase.get("unfinished", 0))
        for phase in path.values()
        if isinstance(phase, dict)
    )


def _client_cpu(path: dict[str, Any]) -> float | None:
    phase = path.get("c50")
    if not phase or not phase.get("requests"):
        return None
    return float(phase["cpu"]["client"]) / phase["requests"] * 1000


def _other(path: dict[str, Any], key: str = "other") -> float | None:
    phase = path.get("c50")
    if not phase or not phase.get("elapsed") or key not in phase["cpu"]:
        return None
    return float(phase["cpu"][key]) / phase["elapsed"]


def _fmt(value: float | None, kind: str, *, signed: bool) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    if kind == "rps":
        return f"{value:,.0f}"
    if kind == "cpu":
        return f"{value:.3f}"
    if kind == "mb":
        return f"{value:.1f}"
    if kind == "cores":
        return f"{value:.2f}"
    return f"{value:.0f}"


def per_event_paths(paths: dict[str, Any]) -> dict[str, Any]:
    """The per-event phases of every path that has them, shaped like `paths` (for render_table)."""
    return {name: path["per_event"] for name, path in paths.items() if path.get("per_event")}


def render_table(paths: dict[str, Any]) -> str:
    """One column per path; rows no path has a value for (phases not run) are left out."""
    names = list(paths)
    header = ["", *[LABELS.get(n, n) for n in names]]
    ratios = [(title, other) for title, other in RATIOS if "gateway" in paths and other in paths]
    header += [title for title, _ in ratios]
    lines = []
    for label, values, kind in rows(paths):
        if all(values.get(name) is None for name in names if name != "direct"):
            continue
        cells = [label]
        for name in names:
            cells.append(_fmt(values.get(name), kind, signed=kind == "ms" and name != "direct"))
        for _, other in ratios:
            gw, them = values.get("gateway"), values.get(other)
            cells.append(f"{gw / them:.1f}x" if gw is not None and them and kind in ("ms", "rps", "cpu", "mb") else "")
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(header))]
    out.append("  ".join("-" * w for w in widths))
    for row in lines:
        out.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
    return "\n".join(out)


def targets(
    paths: dict[str, Any], soak: dict[str, Any] | None, meter: dict[str, float] | None = None
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets; met is None when not measured."""
    checks: list[tuple[str, str, bool | None]] = []
    p50 = added(paths, "gateway", "c1", "total", "p50")
    p99 = added(paths, "gateway", "c1", "total", "p99")
    nginx_p99 = added(paths, "nginx", "c1", "total", "p99")
    checks.append((f"c=1 added total p50 <= {C1_P50_MS} ms", _ms(p50), None if p50 is None else p50 <= C1_P50_MS))
    if nginx_p99 is None:
        checks.append((f"c=1 added total p99 <= nginx's + {C1_P99_OVER_NGINX_MS} ms", _ms(p99) + " (no nginx)", None))
    else:
        checks.append(
            (
                f"c=1 added total p99 <= nginx's + {C1_P99_OVER_NGINX_MS} ms",
                f"{_ms(p99)} against nginx {_ms(nginx_p99)}",
                None if p99 is None else p99 <= nginx_p99 + C1_P99_OVER_NGINX_MS,
            )
        )
    rps = _get(paths.get("gateway"), "c50", "rps")
    checks.append(
        (
            f"c=50 closed loop >= {C50_RPS:,.0f} req/s",
            "-" if rps is None else f"{rps:,.0f} req/s",
            None if rps is None else rps >= C50_RPS,
        )
    )
    for other, factor in (("peer", PEER_RPS_FACTOR), ("peer+spend", PEER_SPEND_RPS_FACTOR)):
        theirs = _get(paths.get(other), "c50", "rps")
        if theirs and rps is not None:
            checks.append(
                (
                    f"c=50 req/s >= {factor}x {LABELS[other]}'s",
                    f"{rps / theirs:.2f}x ({rps:,.0f} against {theirs:,.0f})",
                    rps >= factor * theirs,
                )
            )
        else:
            checks.append((f"c=50 req/s >= {factor}x {LABELS[other]}'s", "not run", None))
    events = per_event_paths(paths) or (paths if _per_event_run(paths) else {})
    event_rps = _get(events.get("gateway"), "c50", "rps")
    event_cpu = cpu_per_1k(events, "gateway")
    checks.append(
        (
            f"per-event c=50 >= {PER_EVENT_C50_RPS:,.0f} req/s",
            "not run" if event_rps is None else f"{event_rps:,.0f} req/s",
            None if event_rps is None else event_rps >= PER_EVENT_C50_RPS,
        )
    )
    checks.append(
        (
            f"per-event c=50 CPU <= {PER_EVENT_CPU_MS} ms per request",
            "not run" if event_cpu is None else f"{event_cpu:.2f} ms",
            None if event_cpu is None else event_cpu <= PER_EVENT_CPU_MS,
        )
    )
    open_p99 = added(paths, "gateway", "open", "total", "p99")
    checks.append(
        (
            f"open loop added total p99 < {OPEN_P99_MS} ms",
            _ms(open_p99),
            None if open_p99 is None else open_p99 < OPEN_P99_MS,
        )
    )
    if soak and soak.get("samples"):
        growth = soak["growth_mb"]
        checks.append(
            (
                f"memory flat over {soak['requests']:,} of {soak['asked']:,} requests (growth <= {RSS_GROWTH_MB} MB)",
                f"{growth:+.1f} MB after warm-up",
                growth <= RSS_GROWTH_MB,
            )
        )
    else:
        checks.append(("memory flat over the soak", "not run", None))
    relay = cpu_per_1k(paths, "relay")
    if relay and meter:
        # Metering's own cost (in-process, exact) over the bare relay's measured CPU per request.
        share = meter["bench_us"] / (relay * 1000)
        checks.append(
            (
                f"SSE metering adds < {METER_CPU_SHARE:.0%} CPU over a bare relay",
                f"{meter['bench_us']:.0f} us per reply = {share:.1%} of the bare relay's "
                f"{relay * 1000:.0f} us per request",
                share < METER_CPU_SHARE,
            )
        )
    else:
        checks.append(("SSE metering adds < 5% CPU over a bare relay", "not run", None))
    return checks


def _per_event_run(paths: dict[str, Any]) -> bool:
    """Whether the main phases themselves had per-event replies (`--per-event`): set by the runner."""
    return any(path.get("shape") == "per-event" for path in paths.values())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f} ms"


def render_targets(paths: dict[str, Any], soak: dict[str, Any] | None, meter: dict[str, float] | None) -> str:
    lines = []
    for target, measured, met in targets(paths, soak, meter):
        verdict = "n/a " if met is None else ("MET " if met else "MISS")
        lines.append(f"  [{verdict}] {target}: {measured}")
    gw, relay, lean = cpu_per_1k(paths, "gateway"), cpu_per_1k(paths, "relay"), cpu_per_1k(paths, "lean")
    metered = cpu_per_1k(paths, "relay+meter")
    if relay and metered:
        lines.append(
            f"  (info) relay+meter over relay end to end: {metered / relay - 1:+.0%} CPU per request "
            "(noise at this size)"
        )
    if meter:
        lines.append(
            f"  (info) metering one reply in process: {meter['one_chunk_us']:.0f} us as one chunk, "
            f"{meter['per_event_us']:.0f} us fed one event per chunk"
        )
    if meter and lean:
        lines.append(
            f"  (info) metering over the lean relay's {lean * 1000:.0f} us per request: "
            f"{meter['one_chunk_us'] / (lean * 1000):.0%} (one chunk), "
            f"{meter['per_event_us'] / (lean * 1000):.0%} (per event)"
        )
    if gw and relay:
        lines.append(f"  (info) full gateway CPU over the bare relay: {gw / relay - 1:+.0%} per request")
    if gw and lean:
        lines.append(f"  (info) full gateway CPU over the lean relay: {gw / lean:.1f}x per request")
    return "\n".join(lines)


def render_soak(soak: dict[str, Any]) -> str:
    lines = [
        f"Memory over {soak['requests']:,} gateway requests (c={soak['concurrency']}, "
        f"{soak['rps']:,.0f} req/s, {soak['errors']} errors): RSS in MB"
    ]
    if soak["requests"] < soak["asked"]:
        lines.append(f"  (stopped by the time limit before the {soak['asked']:,} asked for)")
    for count, kb in soak["samples"]:
        lines.append(f"  {count:>9,}  {kb / 1024:7.1f}")
    lines.append(f"  growth after warm-up: {soak['growth_mb']:+.1f} MB (max {soak['max_growth_mb']:+.1f} MB)")
    return "\n".join(lines)
