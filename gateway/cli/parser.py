"""`claude-gateway`: run the gateway (`serve`), run it all on a laptop (`dev`), read or replay the audit log
(`audit`), set up the BigQuery audit table (`bq`), check the access policy (`policy`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from gateway import __version__


@dataclass(frozen=True, slots=True)
class Command:
    """A command's function, by module and name: only the chosen command's module is imported, so `policy validate`
    and `audit tail` do not wait for the web server's imports, nor `serve` for the report's."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        run: Callable[[argparse.Namespace], int] = getattr(import_module(f"gateway.cli.{self.module}"), self.function)
        return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claude-gateway", description=__doc__)  # this module's docstring
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (settings from GATEWAY_* environment variables)")
    serve.add_argument("--host", default=None, help="listen address (default 0.0.0.0, or GATEWAY_HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default $PORT or 8080)")
    serve.set_defaults(func=Command("serve", "cmd_serve"))

    dev = commands.add_parser("dev", help="run gateway, local IAP stand-in and mock upstream on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--user", default="developer@example.com", help="who the local IAP says is calling")
    dev.add_argument("--audit-db", default="gateway-audit.db", help="SQLite audit file")
    dev.add_argument("--mock", action="store_true", help="use the mock upstream even if ANTHROPIC_API_KEY is set")
    dev.add_argument("--mock-delay", type=float, default=0.03, help="seconds between mock text deltas")
    dev.add_argument("--no-demo", action="store_true", help="skip the streamed demo request at start-up")
    dev.set_defaults(func=Command("dev", "cmd_dev"))

    audit = commands.add_parser("audit", help="read the local SQLite audit log; replay rows into the audit sink")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_commands.add_parser("tail", help="the newest audit rows")
    tail.add_argument("-n", type=int, default=20, help="how many rows (default 20)")
    tail.add_argument("--db", default=None, help="SQLite file (default: GATEWAY_AUDIT_SINK or gateway-audit.db)")
    tail.add_argument("--json", action="store_true", help="one JSON object per row")
    tail.set_defaults(func=Command("audit", "cmd_audit_tail"))
    summary = audit_commands.add_parser("summary", help="requests, tokens and cost grouped")
    summary.add_argument("--by", default="user", choices=["user", "model", "day", "outcome", "session", "group"])
    summary.add_argument("--since", default=None, help="only rows on or after this date (YYYY-MM-DD)")
    summary.add_argument("--db", default=None, help="SQLite file (default: GATEWAY_AUDIT_SINK or gateway-audit.db)")
    summary.add_argument("--json", action="store_true", help="one JSON object per group")
    summary.set_defaults(func=Command("audit", "cmd_audit_summary"))
    replay = audit_commands.add_parser("replay", help="send spilled or audit_fallback rows to the audit sink")
    replay.add_argument("file", help="a spill file, or audit_fallback log entries (JSON lines or a JSON array)")
    replay.add_argument("--sink", default=None, help="sqlite:///PATH or bigquery://P/D/T (default: GATEWAY_AUDIT_SINK)")
    replay.add_argument("--batch-size", type=int, default=500, help="rows per write (default 500)")
    replay.add_argument(
        "--content",
        action="store_true",
        help="content rows (audit_content_fallback entries, content spill files) to the content sink",
    )
    replay.set_defaults(func=Command("audit", "cmd_audit_replay"))
    export = audit_commands.add_parser(
        "export", help="one person's audit rows as JSON Lines (and captured content, with --content)"
    )
    export.add_argument("--user", required=True, help="the person's email")
    export.add_argument("--from", dest="date_from", required=True, metavar="DATE", help="first UTC day, YYYY-MM-DD")
    export.add_argument("--to", dest="date_to", required=True, metavar="DATE", help="last UTC day, YYYY-MM-DD")
    export.add_argument(
        "--content",
        action="store_true",
        help="add each request's captured prompt and response (needs read access to the content table)",
    )
    export.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of standard output")
    export.add_argument("--sink", default=None, help="sqlite:///PATH or bigquery://P/D/T (default: GATEWAY_AUDIT_SINK)")
    export.add_argument(
        "--content-sink",
        default=None,
        help="where the content is (default: GATEWAY_CONTENT_SINK, or beside the audit sink)",
    )
    export.set_defaults(func=Command("audit", "cmd_audit_export"))

    report = audit_commands.add_parser(
        "report", help="an HTML report with charts (cost and tokens by group, person, model, day) and a CSV"
    )
    report.add_argument("--period", required=True, choices=["month", "week"], help="a calendar month or a week")
    report.add_argument("--of", default=None, metavar="DATE", help="a UTC day in the period (default: today)")
    report.add_argument("--group", default=None, help="only the requests of people in this Workspace group")
    report.add_argument("--out", required=True, metavar="FILE", help="the HTML file; the CSV is written beside it")
    report.add_argument("--sink", default=None, help="sqlite:///PATH or bigquery://P/D/T (default: GATEWAY_AUDIT_SINK)")
    report.add_argument(
        "--max-scan-gb",
        type=float,
        default=10.0,
        help="refuse a BigQuery report that would scan more than this (default 10)",
    )
    report.set_defaults(func=Command("audit", "cmd_audit_report"))

    bq = commands.add_parser("bq", help="the BigQuery audit table: its schema, and creating it")
    bq_commands = bq.add_subparsers(dest="bq_command", required=True)
    bq_schema = bq_commands.add_parser("schema", help="the table schema as JSON (terraform/audit_schema.json)")
    bq_schema.add_argument(
        "--content", action="store_true", help="the content table's schema instead (terraform/content_schema.json)"
    )
    bq_schema.set_defaults(func=Command("bq", "cmd_bq_schema"))
    bq_init = bq_commands.add_parser("init", help="create or update the dataset, table and security views")
    bq_init.add_argument("--sink", default=None, help="bigquery://PROJECT/DATASET/TABLE (default: GATEWAY_AUDIT_SINK)")
    bq_init.add_argument("--location", default=None, help="dataset location for new datasets, e.g. EU or us-east5")
    bq_init.add_argument("--views-dataset", default=None, help="dataset for the views (default: DATASET_security)")
    bq_init.add_argument("--retention-days", type=int, default=0, help="days a partition is kept (0: forever)")
    bq_init.add_argument(
        "--content-sink",
        default=None,
        help="bigquery://P/D/T for captured prompts (default: GATEWAY_CONTENT_SINK, "
        "else DATASET_content.audit_content)",
    )
    bq_init.add_argument(
        "--content-retention-days",
        type=int,
        default=30,
        help="days a partition of captured prompts is kept (default 30; 0: forever)",
    )
    bq_init.add_argument("--no-content", action="store_true", help="do not create the table for captured prompts")
    bq_init.set_defaults(func=Command("bq", "cmd_bq_init"))

    policy = commands.add_parser("policy", help="check the access policy file, and what it means for a person")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_commands.add_parser("validate", help="check a policy file; errors name the file and line")
    validate.add_argument("file", help="the policy YAML file")
    validate.set_defaults(func=Command("policy", "cmd_policy_validate"))
    explain = policy_commands.add_parser("explain", help="a person's groups and effective limits, and why")
    explain.add_argument("user_email", metavar="USER_EMAIL")
    explain.add_argument("--policy", default=None, help="policy file (default: GATEWAY_POLICY_FILE)")
    explain.add_argument(
        "--resolver",
        choices=["cloud_identity", "static"],
        default=None,
        help="where group membership comes from (default: GATEWAY_GROUP_RESOLVER, else cloud_identity)",
    )
    explain.set_defaults(func=Command("policy", "cmd_policy_explain"))
    return parser
