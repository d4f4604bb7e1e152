"""`claude-gateway`: run the gateway (`serve`), run it all on a laptop (`dev`), read or replay the audit log
(`audit`), set up the BigQuery audit table (`bq`), check the access policy (`policy`)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import uvicorn
from pydantic import ValidationError

from gateway import __version__
from gateway.config import Settings
from gateway.terminal import escape, escape_text, field

DEV_AUDIENCE = "/projects/000000000000/locations/local/services/claude-gateway"
MOCK_PREFIX = "/_mock_anthropic"


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


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise CLIError(f"invalid configuration: {reasons}") from None


def _uvicorn_config(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    graceful_seconds: float = 7.0,
    *,
    header_timeout: float = 10.0,
    max_connections: int | None = None,
) -> uvicorn.Config:
    from gateway.server import guarded_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,
        server_header=False,
        date_header=False,
        # The gateway reads X-Forwarded-For itself (the last entry, Google's); uvicorn's middleware would only
        # add a layer to every request.
        proxy_headers=False,
        # What still runs after this is cancelled (the gateway's own cut comes first, see GatewayServer).
        timeout_graceful_shutdown=graceful_seconds,  # type: ignore[arg-type]  # uvicorn takes any number
        lifespan="on",
        # Connections that never finish their headers are closed; past the cap, new requests get 503 (logged).
        http=guarded_protocol(header_timeout),
        limit_concurrency=max_connections,
    )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(f"port {port} on {host} is already in use; pick another with --port") from None
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class GatewayServer(uvicorn.Server):
    """uvicorn, telling the gateway when SIGTERM came, so that streams are cut (with an error the client retries,
    and a truthful row) and rows written inside the shutdown budget rather than cancelled at its end."""

    def __init__(self, config: uvicorn.Config, gateway: Any) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.signalled_at: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.begin_shutdown(self.signalled_at)
        await super().shutdown(sockets)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import STREAM_RESERVE, create_app
    from gateway.logs import configure_logging

    overrides: dict[str, Any] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    settings = load_settings(**overrides)
    if settings.policy_file:
        _load_policy(settings.policy_file)  # a bad file is refused here in one readable line, not in a traceback
    _check_port_free(settings.host, settings.port)
    configure_logging(settings.log_level, structured=True, project=settings.google_cloud_project)
    app = create_app(settings)
    # Half a second after the gateway's own cut, the server cancels whatever still runs (the rows still follow).
    graceful = settings.shutdown_seconds - STREAM_RESERVE + 0.5
    config = _uvicorn_config(
        app, settings.host, settings.port, settings.log_level, graceful,
        header_timeout=settings.header_timeout_seconds, max_connections=settings.max_connections,
    )
    GatewayServer(config, app.state.gateway).run()
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.dev.iap import AssertionSigner, Identity, LocalIAP, fixed_identity
    from gateway.dev.mock_upstream import create_mock_upstream
    from gateway.logs import configure_logging

    host, port = args.host, args.port
    base = f"http://{host}:{port}"
    signer = AssertionSigner()
    probe = load_settings(dev_mode=True)
    real_upstream = probe.anthropic_api_key is not None and not args.mock
    settings = load_settings(
        dev_mode=True,
        iap_audience=[DEV_AUDIENCE],
        iap_certs_url=f"{base}/_iap/public_key",
        upstream_url=probe.upstream_url if real_upstream else base + MOCK_PREFIX,
        audit_sink=f"sqlite:///{args.audit_db}",
    )
    _check_port_free(host, port)
    configure_logging(settings.log_level, structured=False)

    email = args.user
    gateway_app = create_app(settings)
    front = LocalIAP(
        gateway_app,
        signer=signer,
        audience=DEV_AUDIENCE,
        identify=fixed_identity(Identity(email=email, subject=f"dev:{email}", hd=email.rsplit("@", 1)[-1])),
    )
    mock = create_mock_upstream(deltas=24, delay=args.mock_delay)

    async def stack(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(MOCK_PREFIX + "/"):
            path = scope["path"][len(MOCK_PREFIX) :]
            await mock({**scope, "path": path, "raw_path": path.encode()}, receive, send)
        else:
            await front(scope, receive, send)

    server = uvicorn.Server(_uvicorn_config(stack, host, port, settings.log_level))
    say(f"claude-gateway {__version__} (dev): local IAP stand-in signing in as {email}")
    say(f"  gateway:  {base}  (IAP keys at {base}/_iap/public_key)")
    say(f"  upstream: {'Anthropic API at ' + settings.upstream_url if real_upstream else 'built-in mock Anthropic'}")
    say(f"  audit:    {args.audit_db}  (read it with: claude-gateway audit tail --db {args.audit_db})")
    say(f"  Claude Code: ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN=dev claude")
    say()

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        if not args.no_demo:
            while not server.started and not serving.done():
                await asyncio.sleep(0.05)
            if server.started:
                try:
                    await _demo(base, args.audit_db, settings.upstream_url if real_upstream else None)
                except (httpx.HTTPError, OSError, ValueError) as exc:
                    say(f"demo request failed: {exc}")
        await serving

    asyncio.run(main())
    return 0


async def _demo(base: str, audit_db: str, real_upstream: str | None) -> None:
    """One streamed request through the whole stack, printed as it arrives, then its audit row."""
    from gateway.audit import query
    from gateway.reports.command import dev_report

    model = "claude-haiku-5-5"
    request = {
        "model": model,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello to a new user of the Claude SSO gateway."}],
    }
    say(f"Demo: POST {base}/v1/messages (streaming) ...")
    # Keep the access log line from landing in the middle of the streamed reply.
    access = logging.getLogger("gateway.access")
    level, access.level = access.level, logging.WARNING
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        async with client.stream(
            "POST", f"{base}/v1/messages", json=request, headers={"anthropic-version": "2023-06-01"}
        ) as response:
            write("  reply: ")
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"text_delta"' in line:
                    write(json.loads(line[6:])["delta"]["text"])
                elif line.startswith("data: ") and '"error"' in line and response.status_code == 200:
                    write(f"\n  stream error: {field(line[6:], 500)}")
            if response.status_code != 200:
                await response.aread()
                write(f"HTTP {response.status_code}: {field(response.text, 500)}")
            say()
    await asyncio.sleep(0.5)  # the audit writer flushes in the background, off the response path
    access.setLevel(level)
    rows = query.tail(audit_db, 1)
    if rows:
        say("  audit row:")
        say(_format_row(rows[-1], indent="    "))
        say(f"  report: {await asyncio.to_thread(dev_report, load_settings(dev_mode=True), audit_db)}")
    say("\nThe gateway keeps running; Ctrl-C stops it.")


def _format_row(row: dict[str, Any], indent: str = "") -> str:
    shown = {k: v for k, v in row.items() if v not in (None, "", "[]")}
    return "\n".join(f"{indent}{key}: {field(value)}" for key, value in shown.items())


def _audit_db(args: argparse.Namespace) -> str:
    from gateway.audit import query

    sink = f"sqlite:///{args.db}" if args.db else load_settings(dev_mode=True).audit_sink
    try:
        return query.sqlite_path(sink)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from gateway.audit import query

    rows = query.tail(_audit_db(args), args.n)
    if args.json:
        for row in rows:
            say(json.dumps(row, default=str))
        return 0
    if not rows:
        say("no audit rows yet")
    for row in rows:
        tokens = f"in={row['input_tokens'] or 0} out={row['output_tokens'] or 0}"
        cost = f"${row['cost_usd']:.6f}" if row["cost_usd"] is not None else "-"
        # Every text column may hold what a caller sent (the path and model always do): each is escaped and cut.
        say(
            f"{field(row['timestamp'], 40)}  {field(row['user_email'], 80):<28} {field(row['method'], 16)} "
            f"{field(row['path'])}  {field(row['status_code'], 8)} {field(row['outcome'], 32):<17} "
            f"{field(row['served_model'] or row['requested_model'], 80)}  {tokens} {cost}  "
            f"{field(row['request_id'], 64)}"
        )
    return 0


def cmd_audit_summary(args: argparse.Namespace) -> int:
    from gateway.audit import query

    try:
        rows = query.summary(_audit_db(args), args.by, args.since)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        for row in rows:
            say(json.dumps(row))
        return 0
    say(f"{args.by:<32} {'requests':>8} {'refused':>7} {'failed':>6} {'input':>10} {'output':>10} "
        f"{'cache_w':>9} {'cache_r':>10} {'cost_usd':>11}")
    for row in rows:
        say(
            f"{field(row['key'], 80):<32} {row['requests']:>8} {row['refused']:>7} {row['failed']:>6} "
            f"{row['input_tokens']:>10} {row['output_tokens']:>10} {row['cache_creation_input_tokens']:>9} "
            f"{row['cache_read_input_tokens']:>10} {row['cost_usd']:>11.4f}"
        )
    return 0


def cmd_audit_replay(args: argparse.Namespace) -> int:
    from gateway.audit.kind import AUDIT_ROWS
    from gateway.audit.replay import distinct_rows, replay
    from gateway.audit.sinks import SinkConfigError, open_sink
    from gateway.audit.spill import load_rows
    from gateway.capture.schema import CONTENT_ROWS, CONTENT_TABLE

    settings = load_settings(dev_mode=True)
    try:
        rows, skipped = load_rows(args.file, CONTENT_ROWS if args.content else AUDIT_ROWS)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read {args.file}: {exc}") from None
    unique = distinct_rows(rows)
    try:
        sink = open_sink(
            args.sink or (settings.content_sink_url if args.content else settings.audit_sink),
            bigquery_endpoint=settings.bigquery_endpoint,
            bigquery_anonymous=settings.bigquery_anonymous,
            table=CONTENT_TABLE if args.content else None,
            setting="--sink",
        )
        result = asyncio.run(replay(sink, unique, batch_size=args.batch_size))
    except (SinkConfigError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    say(f"{args.file}: {len(rows)} rows, {len(unique)} requests ({skipped} other lines); "
        f"{result.written} written to {sink.name}")
    for request_id, reason in result.rejected:
        say(f"  rejected {field(request_id, 64)}: {field(reason, 500)}")
    if result.unsent:
        raise CLIError(
            f"{result.unsent} rows not sent ({result.error}); run the command again once the sink answers "
            "(rows already written carry their request id, so the sink can de-duplicate them)"
        )
    return 1 if result.rejected else 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.audit import export
    from gateway.audit.bigquery import TableRef
    from gateway.audit.sinks import SinkConfigError, check_sink_url
    from gateway.capture.schema import default_content_sink

    settings = load_settings(dev_mode=True)
    email = args.user.strip().lower()
    if email.count("@") != 1:
        raise CLIError(f"{args.user!r} is not an email address")
    try:
        window = export.Window(dt.date.fromisoformat(args.date_from), dt.date.fromisoformat(args.date_to))
    except ValueError as exc:
        raise CLIError(f"--from and --to take dates as YYYY-MM-DD ({exc})") from None
    if window.last < window.first:
        raise CLIError(f"--to {window.last} is before --from {window.first}")
    sink = args.sink or settings.audit_sink
    content_sink = args.content_sink or (settings.content_sink_url if not args.sink else default_content_sink(sink))
    try:
        check_sink_url(sink, "--sink")
        check_sink_url(content_sink, "--content-sink")
    except SinkConfigError as exc:
        raise CLIError(str(exc)) from None
    if sink.startswith("sqlite:///"):
        from gateway.audit import query

        try:
            path = query.sqlite_path(sink)
            content_path = query.sqlite_path(content_sink) if args.content else None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        found = export.from_sqlite(path, email, window, content_path=content_path)
    else:
        found = _export_bigquery(
            settings, TableRef.from_url(sink), email, window,
            TableRef.from_url(content_sink) if args.content else None,
        )
    # Faithful (non-ASCII kept) yet safe to show: JSON escapes C0 controls itself; `escape` adds the C1 and
    # bidirectional ones, as JSON escapes, so the file parses to the same values.
    lines = (escape(json.dumps(line, ensure_ascii=False, default=str)) for line in found.lines())
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as out:
                for line in lines:
                    out.write(line + "\n")
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    else:
        for line in lines:
            say(line)
    content = f", {found.content_rows} with captured content" if args.content else ""
    note(f"{email}: {len(found.requests)} requests from {window.first} to {window.last} (UTC){content}"
         + (f", written to {args.out}" if args.out else ""))
    return 0


def cmd_audit_report(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.reports.command import make_report, summary_line
    from gateway.reports.data import ReportError

    try:
        of = dt.date.fromisoformat(args.of) if args.of else None
    except ValueError as exc:
        raise CLIError(f"--of takes a date as YYYY-MM-DD ({exc})") from None
    try:
        written = make_report(load_settings(dev_mode=True), period=args.period, out=args.out, of=of, group=args.group,
                              sink=args.sink, max_scan_gb=args.max_scan_gb, say=note)
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    say(summary_line(written))
    return 0


def _export_bigquery(settings: Settings, table: Any, email: str, window: Any, content: Any) -> Any:
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    from gateway.audit import export
    from gateway.audit.bigquery import make_client
    from gateway.audit.sinks import SinkConfigError

    try:
        client = make_client(table.project, endpoint=settings.bigquery_endpoint, anonymous=settings.bigquery_anonymous)
        try:
            return export.from_bigquery(client, table, email, window, content_table=content)
        finally:
            client.close()  # type: ignore[no-untyped-call]
    except api.Forbidden as exc:
        what = "the content table" if content is not None else "the audit table"
        raise CLIError(f"BigQuery refused to read {what} ({exc.message}); reading content needs its own grant "
                       "(content_reader_groups in Terraform)") from None
    except api.GoogleAPICallError as exc:
        raise CLIError(f"BigQuery query failed: {exc.message}") from None
    except (SinkConfigError, requests.RequestException, google.auth.exceptions.GoogleAuthError) as exc:
        raise CLIError(f"cannot reach BigQuery: {exc}") from None


def _bigquery_target(sink: str | None) -> tuple[Any, Settings]:
    from gateway.audit.bigquery import TableRef
    from gateway.audit.sinks import SinkConfigError

    settings = load_settings(dev_mode=True)
    try:
        return TableRef.from_url(sink or settings.audit_sink), settings
    except SinkConfigError as exc:
        raise CLIError(f"{exc} (or pass --sink bigquery://PROJECT/DATASET/TABLE)") from None


def cmd_bq_schema(args: argparse.Namespace) -> int:
    from gateway.audit.schema import bigquery_schema_json
    from gateway.capture.schema import content_schema_json

    say(json.dumps(content_schema_json() if args.content else bigquery_schema_json(), indent=2))
    return 0


def cmd_bq_init(args: argparse.Namespace) -> int:
    import google.auth.exceptions
    import requests

    from gateway.audit import bq_admin
    from gateway.audit.bigquery import TableRef, make_client
    from gateway.audit.sinks import SinkConfigError
    from gateway.capture.schema import default_content_sink

    table, settings = _bigquery_target(args.sink)
    try:
        content = None
        if not args.no_content:
            content = TableRef.from_url(
                args.content_sink
                or (settings.content_sink if settings.content_sink and not args.sink else None)
                or default_content_sink(table.url),
                "--content-sink",
            )
        client = make_client(table.project, endpoint=settings.bigquery_endpoint, anonymous=settings.bigquery_anonymous)
        bq_admin.init(
            client,
            table,
            location=args.location,
            views_dataset=args.views_dataset or f"{table.dataset}_security",
            retention_days=args.retention_days,
            content=content,
            content_retention_days=args.content_retention_days,
            say=say,
        )
    except (bq_admin.InitError, SinkConfigError) as exc:
        raise CLIError(str(exc)) from None
    except (requests.RequestException, google.auth.exceptions.GoogleAuthError) as exc:
        raise CLIError(f"cannot reach BigQuery: {exc}") from None
    return 0

def _load_policy(path: str) -> Any:
    from gateway.policy.loader import PolicyFileError, load_policy

    try:
        return load_policy(path)
    except PolicyFileError as exc:
        raise CLIError(str(exc)) from None


def cmd_policy_validate(args: argparse.Namespace) -> int:
    from gateway.policy.explain import summary

    say(summary(_load_policy(args.file)))
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from gateway.managed_settings import settings_for
    from gateway.policy.counters import CountersUnavailable
    from gateway.policy.explain import explain
    from gateway.policy.factory import counters, group_resolver
    from gateway.policy.loader import PolicyFileError
    from gateway.policy.model import decide

    overrides: dict[str, Any] = {"dev_mode": True}
    if args.resolver:
        overrides["group_resolver"] = args.resolver
    settings = load_settings(**overrides)
    path = args.policy or settings.policy_file
    if not path:
        raise CLIError("no policy file: pass --policy FILE or set GATEWAY_POLICY_FILE")
    policy = _load_policy(path)
    email = args.user_email.strip().lower()
    if email.count("@") != 1:
        raise CLIError(f"{args.user_email!r} is not an email address")

    async def run() -> list[str]:
        try:
            resolver = group_resolver(policy, settings)
        except PolicyFileError as exc:
            raise CLIError(str(exc)) from None
        await resolver.start()
        try:
            decision = decide(policy, email, resolver.groups_of(email))
            usage = None
            if settings.redis_url is not None:
                store = counters(settings)
                try:
                    usage = await store.snapshot(email, time.time())
                except CountersUnavailable:
                    pass  # explained without usage; the error is logged
                finally:
                    await store.aclose()
            return explain(decision, resolver.source, usage, settings_for(policy, decision))
        finally:
            await resolver.aclose()

    for line in asyncio.run(run()):
        say(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claude-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (settings from GATEWAY_* environment variables)")
    serve.add_argument("--host", default=None, help="listen address (default 0.0.0.0, or GATEWAY_HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default $PORT or 8080)")
    serve.set_defaults(func=cmd_serve)

    dev = commands.add_parser("dev", help="run gateway, local IAP stand-in and mock upstream on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--user", default="developer@example.com", help="who the local IAP says is calling")
    dev.add_argument("--audit-db", default="gateway-audit.db", help="SQLite audit file")
    dev.add_argument("--mock", action="store_true", help="use the mock upstream even if ANTHROPIC_API_KEY is set")
    dev.add_argument("--mock-delay", type=float, default=0.03, help="seconds between mock text deltas")
    dev.add_argument("--no-demo", action="store_true", help="skip the streamed demo request at start-up")
    dev.set_defaults(func=cmd_dev)

    audit = commands.add_parser("audit", help="read the local SQLite audit log; replay rows into the audit sink")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_commands.add_parser("tail", help="the newest audit rows")
    tail.add_argument("-n", type=int, default=20, help="how many rows (default 20)")
    tail.add_argument("--db", default=None, help="SQLite file (default: GATEWAY_AUDIT_SINK or gateway-audit.db)")
    tail.add_argument("--json", action="store_true", help="one JSON object per row")
    tail.set_defaults(func=cmd_audit_tail)
    summary = audit_commands.add_parser("summary", help="requests, tokens and cost grouped")
    summary.add_argument("--by", default="user", choices=["user", "model", "day", "outcome", "session", "group"])
    summary.add_argument("--since", default=None, help="only rows on or after this date (YYYY-MM-DD)")
    summary.add_argument("--db", default=None, help="SQLite file (default: GATEWAY_AUDIT_SINK or gateway-audit.db)")
    summary.add_argument("--json", action="store_true", help="one JSON object per group")
    summary.set_defaults(func=cmd_audit_summary)
    replay = audit_commands.add_parser("replay", help="send spilled or audit_fallback rows to the audit sink")
    replay.add_argument("file", help="a spill file, or audit_fallback log entries (JSON lines or a JSON array)")
    replay.add_argument("--sink", default=None, help="sqlite:///PATH or bigquery://P/D/T (default: GATEWAY_AUDIT_SINK)")
    replay.add_argument("--batch-size", type=int, default=500, help="rows per write (default 500)")
    replay.add_argument("--content", action="store_true",
                        help="content rows (audit_content_fallback entries, content spill files) to the content sink")
    replay.set_defaults(func=cmd_audit_replay)
    export = audit_commands.add_parser(
        "export", help="one person's audit rows as JSON Lines (and captured content, with --content)"
    )
    export.add_argument("--user", required=True, help="the person's email")
    export.add_argument("--from", dest="date_from", required=True, metavar="DATE", help="first UTC day, YYYY-MM-DD")
    export.add_argument("--to", dest="date_to", required=True, metavar="DATE", help="last UTC day, YYYY-MM-DD")
    export.add_argument("--content", action="store_true",
                        help="add each request's captured prompt and response (needs read access to the content table)")
    export.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of standard output")
    export.add_argument("--sink", default=None, help="sqlite:///PATH or bigquery://P/D/T (default: GATEWAY_AUDIT_SINK)")
    export.add_argument("--content-sink", default=None,
                        help="where the content is (default: GATEWAY_CONTENT_SINK, or beside the audit sink)")
    export.set_defaults(func=cmd_audit_export)

    report = audit_commands.add_parser(
        "report", help="an HTML report with charts (cost and tokens by group, person, model, day) and a CSV"
    )
    report.add_argument("--period", required=True, choices=["month", "week"], help="a calendar month or a week")
    report.add_argument("--of", default=None, metavar="DATE", help="a UTC day in the period (default: today)")
    report.add_argument("--group", default=None, help="only the requests of people in this Workspace group")
    report.add_argument("--out", required=True, metavar="FILE", help="the HTML file; the CSV is written beside it")
    report.add_argument("--sink", default=None, help="sqlite:///PATH or bigquery://P/D/T (default: GATEWAY_AUDIT_SINK)")
    report.add_argument("--max-scan-gb", type=float, default=10.0,
                        help="refuse a BigQuery report that would scan more than this (default 10)")
    report.set_defaults(func=cmd_audit_report)

    bq = commands.add_parser("bq", help="the BigQuery audit table: its schema, and creating it")
    bq_commands = bq.add_subparsers(dest="bq_command", required=True)
    bq_schema = bq_commands.add_parser("schema", help="the table schema as JSON (terraform/audit_schema.json)")
    bq_schema.add_argument("--content", action="store_true",
                           help="the content table's schema instead (terraform/content_schema.json)")
    bq_schema.set_defaults(func=cmd_bq_schema)
    bq_init = bq_commands.add_parser("init", help="create or update the dataset, table and security views")
    bq_init.add_argument("--sink", default=None, help="bigquery://PROJECT/DATASET/TABLE (default: GATEWAY_AUDIT_SINK)")
    bq_init.add_argument("--location", default=None, help="dataset location for new datasets, e.g. EU or us-east5")
    bq_init.add_argument("--views-dataset", default=None, help="dataset for the views (default: DATASET_security)")
    bq_init.add_argument("--retention-days", type=int, default=0, help="days a partition is kept (0: forever)")
    bq_init.add_argument("--content-sink", default=None,
                         help="bigquery://P/D/T for captured prompts (default: GATEWAY_CONTENT_SINK, "
                         "else DATASET_content.audit_content)")
    bq_init.add_argument("--content-retention-days", type=int, default=30,
                         help="days a partition of captured prompts is kept (default 30; 0: forever)")
    bq_init.add_argument("--no-content", action="store_true", help="do not create the table for captured prompts")
    bq_init.set_defaults(func=cmd_bq_init)

    policy = commands.add_parser("policy", help="check the access policy file, and what it means for a person")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_commands.add_parser("validate", help="check a policy file; errors name the file and line")
    validate.add_argument("file", help="the policy YAML file")
    validate.set_defaults(func=cmd_policy_validate)
    explain = policy_commands.add_parser("explain", help="a person's groups and effective limits, and why")
    explain.add_argument("user_email", metavar="USER_EMAIL")
    explain.add_argument("--policy", default=None, help="policy file (default: GATEWAY_POLICY_FILE)")
    explain.add_argument(
        "--resolver", choices=["cloud_identity", "static"], default=None,
        help="where group membership comes from (default: GATEWAY_GROUP_RESOLVER, else cloud_identity)",
    )
    explain.set_defaults(func=cmd_policy_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except CLIError as exc:
        note(f"claude-gateway: {escape(str(exc))}")  # one line, whatever path or value it quotes
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

