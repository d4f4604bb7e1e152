"""The measured phases: one load-generator run with CPU readings, a path's phases, the soak, the profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import procs
from bench.procs import Proc

if TYPE_CHECKING:
    from bench.run import Bench


def say(text: str = "") -> None:
    print(text, flush=True)


def run_load(
    bench: Bench,
    port: int,
    mode: list[str],
    servers: list[Proc],
    on_progress: Callable[[int], None] | None = None,
    limit: float = 600.0,
    headers: dict[str, str] | None = None,
    body_file: Path | None = None,
) -> dict[str, Any]:
    """Run the load generator once; CPU of every process is read at its MEASURE_START and MEASURE_END lines."""
    argv = [
        sys.executable,
        "-m",
        "bench.load",
        "--port",
        str(port),
        "--body-file",
        str(body_file or bench.body_file),
        "--headers",
        json.dumps(headers or bench.headers),
        *mode,
    ]
    if bench.side_cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", bench.side_cpu, *argv]
    if bench.nice:
        argv = ["nice", "-n", str(bench.nice), *argv]
    with (bench.run_dir / "load.log").open("ab") as log:
        load = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=procs.BENCH_DIR.parent, env=bench.env()
        )
    killer = threading.Timer(limit, load.kill)
    killer.start()
    watched = {proc.name: proc for proc in servers}
    ours: set[int] = {os.getpid(), load.pid}
    for proc in [*servers, *([bench.upstream] if bench.upstream else [])]:
        ours.update(proc.pids())
    marks: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    try:
        assert load.stdout is not None
        for line in load.stdout:
            if line.startswith(("MEASURE_START", "MEASURE_END")):
                marks[line.strip()] = {
                    "servers": {name: proc.cpu() for name, proc in watched.items()},
                    "upstream": bench.upstream.cpu() if bench.upstream else 0.0,
                    "client": procs.cpu_seconds(load.pid),
                    "all": procs.all_cpu(),
                    "steal": procs.steal_seconds(),
                }
            elif line.startswith("PROGRESS") and on_progress is not None:
                on_progress(int(line.split()[1]))
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        load.wait()
    finally:
        killer.cancel()
        if load.poll() is None:
            load.kill()
            load.wait()
    if result is None or "MEASURE_START" not in marks or "MEASURE_END" not in marks:
        raise RuntimeError(f"load generator failed (exit {load.returncode}); see {bench.run_dir / 'load.log'}")
    start, end = marks["MEASURE_START"], marks["MEASURE_END"]
    other = sum(t - start["all"].get(pid, 0.0) for pid, t in end["all"].items() if pid not in ours)
    result["cpu"] = {
        "servers": {name: end["servers"][name] - start["servers"][name] for name in watched},
        "upstream": end["upstream"] - start["upstream"],
        "client": end["client"] - start["client"],
        "other": max(0.0, other),
        "steal": end["steal"] - start["steal"],
    }
    return result


def measure(
    bench: Bench, name: str, port: int, servers: list[Proc], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Every phase on one path; then, when the run has both reply shapes, c=1 and c=50 with per-event replies."""
    plan, args = bench.plan, bench.args

    def load(mode: list[str], body_file: Path | None = None) -> dict[str, Any]:
        return run_load(bench, port, mode, servers, headers=headers, body_file=body_file)

    load(["--mode", "count", "--concurrency", "10", "--requests", str(plan.warm_requests)])
    result: dict[str, Any] = {}
    result["c1"] = load(["--mode", "closed", "--concurrency", "1", "--warmup", "0.2", "--duration", str(plan.c1)])
    for key, concurrency in (("c50", 50), ("c200", 200)):
        result[key] = load(
            [
                "--mode",
                "closed",
                "--concurrency",
                str(concurrency),
                "--warmup",
                str(plan.closed_warmup),
                "--duration",
                str(plan.closed),
            ]
        )
    result["open"] = load(
        [
            "--mode",
            "open",
            "--rate",
            str(args.open_rate),
            "--warmup",
            str(plan.open_warmup),
            "--duration",
            str(plan.open_duration),
            "--drain",
            str(max(1.0, plan.open_duration / 3)),
        ]
    )
    result["peak_rss_kb"] = sum(proc.peak_rss_kb() for proc in servers) or None
    c1, c50 = result["c1"], result["c50"]
    say(
        f"  {name:<12} c=1 total p50 {c1['total'].get('p50', 0):.3f} ms p99 {c1['total'].get('p99', 0):.3f} ms"
        f" | c=50 {c50['rps']:,.0f} req/s | c=200 {result['c200']['rps']:,.0f} req/s"
        f" | open p99 {result['open']['total'].get('p99', 0):.3f} ms"
    )
    if bench.per_event_body is not None:
        body = bench.per_event_body
        events: dict[str, Any] = {}
        events["c1"] = load(
            ["--mode", "closed", "--concurrency", "1", "--warmup", "0.2", "--duration", str(plan.c1)], body
        )
        events["c50"] = load(
            [
                "--mode",
                "closed",
                "--concurrency",
                "50",
                "--warmup",
                str(plan.closed_warmup),
                "--duration",
                str(plan.closed),
            ],
            body,
        )
        result["per_event"] = events
        say(
            f"  {'':<12} per event: c=1 total p50 {events['c1']['total'].get('p50', 0):.3f} ms"
            f" | c=50 {events['c50']['rps']:,.0f} req/s"
        )
    return result


def soak(bench: Bench, gateway: Proc, port: int, requests: int, seconds: float) -> dict[str, Any]:
    step = max(1, requests // 40)
    samples: list[tuple[int, int]] = [(0, gateway.rss_kb())]

    def on_progress(done: int) -> None:
        samples.append((done, gateway.rss_kb()))

    result = run_load(
        bench,
        port,
        [
            "--mode",
            "count",
            "--concurrency",
            "50",
            "--requests",
            str(requests),
            "--progress",
            str(step),
            "--max-seconds",
            str(seconds),
        ],
        [gateway],
        on_progress=on_progress,
        limit=seconds + 120,
    )
    done = result["requests"] + result["errors"]
    samples.append((done, gateway.rss_kb()))
    # Warm-up is the first tenth of the soak; growth is measured from there.
    base = next((kb for count, kb in samples if count >= done // 10), samples[0][1])
    after = [kb for count, kb in samples if count >= done // 10]
    return {
        "requests": done,
        "asked": requests,
        "errors": result["errors"],
        "rps": result["rps"],
        "concurrency": 50,
        "samples": samples,
        "growth_mb": (samples[-1][1] - base) / 1024,
        "max_growth_mb": (max(after) - base) / 1024 if after else 0.0,
    }


def profile(bench: Bench, gateway: Proc, port: int, seconds: float, concurrency: int) -> dict[str, Any] | None:
    from bench import profile as summariser

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        say("  py-spy not found: `.venv/bin/pip install py-spy` to profile; skipped")
        return None
    out = bench.run_dir / "gateway.collapsed"
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(gateway.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(bench.run_dir / "py-spy.log").open("ab"),
    )
    time.sleep(1.0)  # py-spy attaches
    load = run_load(
        bench,
        port,
        ["--mode", "closed", "--concurrency", str(concurrency), "--warmup", "0", "--duration", str(seconds - 1)],
        [gateway],
    )
    spy.wait(timeout=60)
    if not out.exists():
        say(f"  py-spy wrote no profile: {(bench.run_dir / 'py-spy.log').read_text()[-500:]}")
        return None
    stacks = summariser.parse_collapsed(out.read_text())
    cpu = load["cpu"]["servers"]["gateway"]
    return {
        "summary": summariser.summarise(stacks),
        "stacks": dict(stacks),
        "concurrency": concurrency,
        "cpu_us_per_request": cpu / load["requests"] * 1e6 if load["requests"] else None,
        "rps_while_profiled": load["rps"],
    }
