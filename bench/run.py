"""The one benchmark command: start everything, drive every path with the same load, print one table.

.venv/bin/python -m bench            # full run, a few minutes
.venv/bin/python -m bench --quick    # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import micro, peer, procs, report
from bench.phases import measure, profile, say, soak
from bench.procs import Proc
from bench.upstream import PER_EVENT_MARKER

# peer, peer+spend: Anthropic's own gateway (`claude gateway`), without and with its spend tracking (peer.py).
ALL_PATHS = ["direct", "nginx", "relay", "relay+meter", "lean", "gateway", "shim+gateway", *peer.PATHS]
# Measured only when named in --paths: the bare relay on httpx2 (pydantic's fork, linear-time pool).
EXTRA_PATHS = ["relay-httpx2"]
AUDIENCE = "/projects/123456789/locations/us-central1/services/claude-gateway"
NGINX_HINT = "apt-get install -y nginx-light   (or: apt-get install -y nginx)"


@dataclass
class Plan:
    """How long each phase runs."""

    c1: float
    closed: float
    closed_warmup: float
    open_duration: float
    open_warmup: float
    warm_requests: int
    soak: int
    soak_seconds: float


FULL = Plan(
    c1=4.0,
    closed=4.0,
    closed_warmup=1.0,
    open_duration=8.0,
    open_warmup=0.5,
    warm_requests=500,
    soak=100_000,
    soak_seconds=150.0,
)
QUICK = Plan(
    c1=0.8,
    closed=0.8,
    closed_warmup=0.3,
    open_duration=1.5,
    open_warmup=0.2,
    warm_requests=50,
    soak=3_000,
    soak_seconds=5.0,
)


@dataclass
class Bench:
    """Everything a run shares: options, the run directory, the processes started so far."""

    args: argparse.Namespace
    plan: Plan
    run_dir: Path
    body_file: Path
    headers: dict[str, str]
    sut_cpu: str | None
    side_cpu: str | None
    nice: int = 0
    upstream: Proc | None = None
    upstream_port: int = 0
    started: list[Proc] = field(default_factory=list)
    # The same request asking for its reply one SSE event per write; None when the run has one shape only.
    per_event_body: Path | None = None
    # Anthropic's gateway: (binary, OIDC mock command) once found, the mock once started, databases to drop.
    peer_tools: tuple[Path, Path] | None = None
    oidc: tuple[Proc, int] | None = None
    databases: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment without anything that could change the gateway's or shim's settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GATEWAY_", "CLAUDE_SHIM_", "ANTHROPIC_", "GOOGLE_"))
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "port")
        }
        env["CLAUDE_SHIM_CONFIG_DIR"] = str(self.run_dir / "shim-config")
        env.update(extra)
        return env

    def start(self, name: str, argv: list[str], *, cpu: str | None, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, env=env or self.env(), log=self.run_dir / f"{name}.log", cpu=cpu, nice=self.nice)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def ready_request(self) -> tuple[str, str, bytes, dict[str, str]]:
        return (
            "POST",
            "/v1/messages",
            self.body_file.read_bytes(),
            {**self.headers, "content-type": "application/json"},
        )


def start_upstream(bench: Bench, keys: dict[str, str]) -> None:
    keys_file = bench.run_dir / "iap-keys.json"
    keys_file.write_text(json.dumps(keys))
    bench.upstream_port = procs.free_port()
    bench.upstream = bench.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "bench.upstream",
            "--port",
            str(bench.upstream_port),
            "--deltas",
            str(bench.args.deltas),
            "--delay-ms",
            str(bench.args.delay_ms),
            "--keys",
            str(keys_file),
            *(["--per-event"] if bench.args.per_event else []),
        ],
        cpu=bench.side_cpu,
    )
    procs.wait_ready(bench.upstream, bench.upstream_port, bench.ready_request())


def start_gateway(bench: Bench) -> tuple[Proc, int]:
    port = procs.free_port()
    upstream = f"http://127.0.0.1:{bench.upstream_port}"
    env = bench.env(
        GATEWAY_IAP_AUDIENCE=AUDIENCE,
        GATEWAY_IAP_CERTS_URL=f"{upstream}/iap/public_key",
        GATEWAY_UPSTREAM_URL=upstream,
        GATEWAY_AUDIT_SINK=f"sqlite:///{bench.run_dir / 'audit.db'}",
        GATEWAY_ANTHROPIC_API_KEY="sk-ant-bench-not-a-real-key",
        GATEWAY_ACCESS_LOG="true" if bench.args.access_log == "on" else "false",
        GATEWAY_LOG_LEVEL="INFO",
    )
    code = "import sys; from gateway.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = bench.start("gateway", argv, cpu=bench.sut_cpu, env=env)
    procs.wait_ready(proc, port, bench.ready_request())
    return proc, port


def start_path(
    bench: Bench, name: str, gateway: tuple[Proc, int] | None
) -> tuple[int, list[Proc], dict[str, str] | None]:
    """Start what a path needs; returns the port the load goes to, the processes whose cost is counted and the
    path's own request headers (None: the bench's)."""
    if name in peer.PATHS:
        return peer.start_column(bench, name)
    port, servers = _start_ours(bench, name, gateway)
    return port, servers, None


def _start_ours(bench: Bench, name: str, gateway: tuple[Proc, int] | None) -> tuple[int, list[Proc]]:
    upstream = f"http://127.0.0.1:{bench.upstream_port}"
    if name == "direct":
        return bench.upstream_port, []
    if name == "nginx":
        binary = procs.nginx_binary()
        assert binary is not None
        port = procs.free_port()
        conf = procs.write_nginx_conf(bench.run_dir, port, bench.upstream_port)
        proc = bench.start(
            "nginx",
            [binary, "-e", str(bench.run_dir / "nginx-error.log"), "-c", str(conf), "-g", "daemon off;"],
            cpu=bench.sut_cpu,
        )
        procs.wait_ready(proc, port, bench.ready_request())
        return port, [proc]
    if name in ("relay", "relay+meter", "relay-httpx2", "lean"):
        port = procs.free_port()
        if name == "lean":
            argv = [
                sys.executable,
                "-m",
                "bench.lean_relay",
                "--port",
                str(port),
                "--upstream",
                f"127.0.0.1:{bench.upstream_port}",
            ]
        else:
            argv = [sys.executable, "-m", "bench.relay", "--port", str(port), "--upstream", upstream]
        if name == "relay+meter":
            argv.append("--meter")
        elif name == "relay-httpx2":
            argv += ["--client", "httpx2"]
        proc = bench.start(name, argv, cpu=bench.sut_cpu)
        procs.wait_ready(proc, port, bench.ready_request())
        return port, [proc]
    assert gateway is not None
    if name == "gateway":
        return gateway[1], [gateway[0]]
    port = procs.free_port()
    shim = bench.start(
        "shim",
        [
            sys.executable,
            "-m",
            "bench.shim",
            "--port",
            str(port),
            "--gateway",
            f"http://127.0.0.1:{gateway[1]}",
            "--secret",
            bench.headers["x-api-key"],
        ],
        cpu=bench.side_cpu,
    )
    procs.wait_ready(shim, port, bench.ready_request())
    return port, [gateway[0], shim]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases and a 3,000-request soak (~1 minute)")
    parser.add_argument(
        "--paths",
        help="comma list of " + ", ".join(ALL_PATHS + EXTRA_PATHS) + " (default: all "
        "but relay-httpx2; quick: also not relay+meter, whose cost the in-process metering "
        "measurement gives exactly)",
    )
    parser.add_argument("--soak", type=int, help="requests in the memory soak (default 100,000; quick 3,000; 0 off)")
    parser.add_argument("--soak-seconds", type=float, help="stop the soak after this long (default 150; quick 5)")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the gateway for this long, after the measured phases",
    )
    parser.add_argument("--profile-concurrency", type=int, default=50, help="closed-loop concurrency while profiling")
    parser.add_argument("--deltas", type=int, default=50, help="text deltas in each streamed reply")
    parser.add_argument(
        "--per-event",
        action="store_true",
        help="every phase with replies written one SSE event per write (default: the phases with "
        "whole replies, then c=1 and c=50 again with per-event replies)",
    )
    parser.add_argument("--whole-only", action="store_true", help="skip the per-event phases (the old default)")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="upstream pause between deltas (implies --per-event; 1 ms timer resolution)",
    )
    parser.add_argument("--body-bytes", type=int, default=2000, help="approximate request body size")
    parser.add_argument("--open-rate", type=float, default=200.0, help="open-loop request rate")
    parser.add_argument("--access-log", choices=["on", "off"], default="on", help="the gateway's access log")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run every benchmark process at this nice level (e.g. -10 on a shared machine, as root)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, audit.db)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/TIMESTAMP.json)")
    args = parser.parse_args(argv)
    if args.paths is None:
        args.paths = ",".join(p for p in ALL_PATHS if not (args.quick and p == "relay+meter"))
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(args.paths) - set(ALL_PATHS) - set(EXTRA_PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    if "direct" not in args.paths:
        args.paths.insert(0, "direct")  # everything is reported relative to it
    return args


def request_body(size: int, *, per_event: bool = False) -> bytes:
    """A streamed Messages request of about `size` bytes (asking the fake upstream for a per-event reply)."""
    system = "You are Claude Code." + (f" ({PER_EVENT_MARKER.decode()})" if per_event else "")
    base = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 4096,
        "stream": True,
        "metadata": {"user_id": "bench"},
        "system": system,
        "messages": [{"role": "user", "content": ""}],
    }
    filler = max(0, size - len(json.dumps(base)))
    base["messages"][0]["content"] = ("Please refactor the relay. " * (filler // 27 + 1))[:filler]
    return json.dumps(base).encode()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    soak_requests = plan.soak if args.soak is None else args.soak
    try:
        from gateway.dev.iap import AssertionSigner
    except ImportError:
        say("The gateway package is not importable: run with the project's venv, `.venv/bin/python -m bench`.")
        return 2
    if "nginx" in args.paths and procs.nginx_binary() is None:
        say(f"nginx is not installed: the nginx column is skipped. To include it: {NGINX_HINT}")
        args.paths.remove("nginx")
    peer_tools = None
    if any(name in peer.PATHS for name in args.paths):
        try:
            peer_tools = peer.prepare()
        except peer.PeerUnavailable as exc:
            say(f"Anthropic's gateway columns are skipped: {exc}")
            args.paths = [name for name in args.paths if name not in peer.PATHS]
    cpus = os.cpu_count() or 1
    pin = not args.no_pin and cpus >= 2 and shutil.which("taskset") is not None
    # Two cores: the system under test gets CPU 1 to itself; the client, the fake upstream and the shim share 0.
    sut_cpu, side_cpu = (str(cpus - 1), ",".join(str(c) for c in range(cpus - 1))) if pin else (None, None)

    # SIGINT too: a shell starts background jobs with it ignored, and then Python would not raise on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    run_dir = Path(tempfile.mkdtemp(prefix="claude-gw-bench-"))
    signer = AssertionSigner()
    assertion = signer.sign(
        "dev@example.com", audience=AUDIENCE, subject="accounts.google.com:1234567890", hd="example.com", lifetime=3600
    )
    body_file = run_dir / "body.json"
    body_file.write_bytes(request_body(args.body_bytes))
    headers = {
        "x-api-key": "bench-local-secret-" + uuid.uuid4().hex,  # the shim's local secret; the gateway drops it
        "anthropic-version": "2023-06-01",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
        "x-claude-code-session-id": str(uuid.uuid4()),
        "x-goog-iap-jwt-assertion": assertion,
    }
    bench = Bench(args, plan, run_dir, body_file, headers, sut_cpu, side_cpu, nice=args.nice, peer_tools=peer_tools)
    per_event = args.per_event or args.delay_ms > 0
    if not per_event and not args.whole_only:
        bench.per_event_body = run_dir / "body-per-event.json"
        bench.per_event_body.write_bytes(request_body(args.body_bytes, per_event=True))
    info = machine()
    say(
        f"claude-sso-gateway benchmark ({'quick' if args.quick else 'full'}): {info['nproc']} CPUs, "
        f"{info['cpu_model']}, Python {info['python']}"
    )
    placement = f"system under test on CPU {sut_cpu}, client + upstream + shim on CPU {side_cpu}" if pin else "off"
    say(f"  pinning: {placement}; nice {args.nice}")
    shape = "one write" if not per_event else f"one write per event, {args.delay_ms} ms apart"
    if bench.per_event_body:
        shape += "; then c=1 and c=50 with one write per event"
    say(
        f"  reply: {args.deltas} deltas, {shape}; request body {body_file.stat().st_size} bytes; "
        f"gateway access log {args.access_log}; run dir {run_dir}"
    )
    results: dict[str, Any] = {
        "machine": info,
        "options": {k: str(v) for k, v in vars(args).items()},
        "plan": vars(plan),
        "paths": {},
        "soak": None,
        "profile": None,
    }
    began = time.monotonic()
    results["meter"] = micro.meter_cost(args.deltas, seconds=0.4 if args.quick else 2.0)
    # The cost that matches how this run's replies arrive.
    results["meter"]["bench_us"] = results["meter"]["per_event_us" if per_event else "one_chunk_us"]
    gateway: tuple[Proc, int] | None = None
    try:
        start_upstream(bench, signer.public_key_map())
        for name in args.paths:
            path_began = time.monotonic()
            if name in ("gateway", "shim+gateway") and gateway is None:
                gateway = start_gateway(bench)
            try:
                port, servers, path_headers = start_path(bench, name, gateway)
            except peer.PeerUnavailable as exc:
                reason = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                say(f"  {name:<12} skipped: Anthropic's gateway did not start: {reason[:400]}")
                continue
            results["paths"][name] = measure(bench, name, port, servers, path_headers)
            results["paths"][name]["seconds"] = time.monotonic() - path_began
            results["paths"][name]["shape"] = "per-event" if per_event else "whole"
            for proc in servers:
                if isinstance(proc, Proc) and (gateway is None or proc is not gateway[0]):
                    bench.stop(proc)
            for database in bench.databases:
                peer.drop_database(database)
            bench.databases.clear()
        if soak_requests > 0 or args.profile > 0:
            if gateway is None:
                gateway = start_gateway(bench)
            if soak_requests > 0:
                seconds = plan.soak_seconds if args.soak_seconds is None else args.soak_seconds
                say(f"  soak: {soak_requests:,} requests through the gateway (at most {seconds:.0f} s) ...")
                results["soak"] = soak(bench, gateway[0], gateway[1], soak_requests, seconds)
            if args.profile > 0:
                say(f"  profiling the gateway at c={args.profile_concurrency} for {args.profile:.0f} s with py-spy ...")
                results["profile"] = profile(bench, gateway[0], gateway[1], args.profile, args.profile_concurrency)
    except KeyboardInterrupt:
        say("interrupted: stopping what was started")
        return 130
    finally:
        for proc in reversed(list(bench.started)):
            proc.stop()
        for database in bench.databases:
            peer.drop_database(database)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - began
    print_results(results)
    out = args.out or procs.BENCH_DIR / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    say(f"\nresults: {out} ({results['elapsed_s']:.0f} s)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def print_results(results: dict[str, Any]) -> None:
    paths = results["paths"]
    say()
    say(report.render_table(paths))
    say()
    say("Direct column: absolute times; other columns: added over direct (same percentile). CPU and RSS: the")
    say("relay's own processes (nginx master+worker; shim+gw = gateway + shim). Other processes: CPU used on this")
    say("machine by processes that are not the benchmark's, and hypervisor steal, during the c=50 phase.")
    if any(name in paths for name in peer.PATHS):
        say("anthropic / anth+spend: Anthropic's gateway (`claude gateway`) without / with spend limits; its CPU")
        say("includes its PostgreSQL backends' (spend rows are written per request).")
    events = report.per_event_paths(paths)
    if events:
        say()
        say("The same request with the reply written one SSE event per write (53 events), c=1 and c=50:")
        say(report.render_table(events))
    if results["soak"]:
        say()
        say(report.render_soak(results["soak"]))
    say()
    say("Targets (full gateway):")
    say(report.render_targets(paths, results["soak"], results.get("meter")))
    if results.get("profile"):
        from bench import profile as summariser

        prof = results["profile"]
        say()
        say(
            f"Gateway profile at c={prof['concurrency']} ({prof['rps_while_profiled']:,.0f} req/s while sampled; "
            f"us/req below are shares of the {prof['cpu_us_per_request'] or 0:,.0f} us of CPU each request took "
            "then, py-spy's own pauses included):"
        )
        say(summariser.render(prof["summary"], prof["cpu_us_per_request"]))
