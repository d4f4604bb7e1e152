"""The audit table's columns: the one source of truth for BigQuery, SQLite, Terraform and the tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # BigQuery standard type: STRING, INT64, FLOAT64, BOOL, TIMESTAMP
    description: str
    mode: str = "NULLABLE"  # NULLABLE, REQUIRED or REPEATED


AUDIT_COLUMNS: tuple[Column, ...] = (
    Column("request_id", "STRING", "Gateway request id, unique per request (BigQuery insertId).", "REQUIRED"),
    Column(
        "timestamp",
        "TIMESTAMP",
        "When the gateway received the request (UTC); the partitioning column: filter on it in every query.",
        "REQUIRED",
    ),
    Column("duration_ms", "FLOAT64", "Milliseconds from receipt to the last byte sent or the refusal."),
    Column("ttfb_ms", "FLOAT64", "Milliseconds from receipt to the first response byte sent to the client."),
    Column("user_email", "STRING", "Verified Workspace email from the IAP assertion; null if unauthenticated."),
    Column("user_subject", "STRING", "Stable Google account id (IAP `sub`): survives a change of email address."),
    Column("user_domain", "STRING", "Hosted domain (IAP `hd`) or the email's domain."),
    Column(
        "groups",
        "STRING",
        "Workspace groups that matched the user's policy (empty without a policy file); GROUPS is reserved in "
        "BigQuery: write `groups`.",
        "REPEATED",
    ),
    Column("policy_rule", "STRING", "Policy rule applied to the request (the one that refused it, when one did)."),
    Column("session_id", "STRING", "Claude Code session (X-Claude-Code-Session-Id)."),
    Column("agent_id", "STRING", "Claude Code subagent (X-Claude-Code-Agent-Id)."),
    Column("parent_agent_id", "STRING", "Parent of the subagent (X-Claude-Code-Parent-Agent-Id)."),
    Column("user_agent", "STRING", "Client User-Agent, e.g. claude-cli/2.1.328."),
    Column("client_ip", "STRING", "Caller address: the hop Google's front end appended to X-Forwarded-For (the last)."),
    Column("method", "STRING", "HTTP method.", "REQUIRED"),
    Column("path", "STRING", "Request path, without the query string.", "REQUIRED"),
    Column("requested_model", "STRING", "Model named in the request body."),
    Column("served_model", "STRING", "Model the upstream reports having served."),
    Column("upstream", "STRING", "Upstream that served the request (anthropic, vertex, ...)."),
    Column("attempts", "INT64", "Upstream attempts made (more than 1 after failover)."),
    Column("upstream_failures", "STRING", "Why earlier attempts failed (upstream: reason; ...), when any did."),
    Column("stream", "BOOL", "Whether the client asked for a streamed reply."),
    Column(
        "status_code", "INT64", "HTTP status returned to the client (499: the client left before a status).", "REQUIRED"
    ),
    Column(
        "outcome",
        "STRING",
        "ok, client_disconnect, upstream_error, denied, rate_limited, unauthenticated, bad_request, "
        "not_found, gateway_error, gateway_busy (the instance shed it: too many request bytes in flight), shutdown "
        "(cut short as the instance stopped); started for the row written while "
        "a request runs, which its final row (same request_id) supersedes.",
        "REQUIRED",
    ),
    Column("error_type", "STRING", "Anthropic error type when the request failed."),
    Column("error_message", "STRING", "Error message when the request failed (truncated)."),
    Column("upstream_request_id", "STRING", "Upstream `request-id` header: quote it to Anthropic support."),
    Column("message_id", "STRING", "Anthropic message id (msg_...)."),
    Column("stop_reason", "STRING", "end_turn, max_tokens, tool_use, stop_sequence, ..."),
    Column("input_tokens", "INT64", "Uncached input tokens."),
    Column(
        "output_tokens",
        "INT64",
        "Output tokens (cumulative, as last reported: a stream cut short counts what was sent).",
    ),
    Column("cache_creation_input_tokens", "INT64", "Input tokens written to the prompt cache."),
    Column("cache_read_input_tokens", "INT64", "Input tokens read from the prompt cache."),
    Column(
        "cost_usd",
        "FLOAT64",
        "Cost in USD at list prices, computed as Anthropic bills it (price_source and price_rule say how); 0 for "
        "answers that are not billed (count_tokens, model lists); null for refused requests.",
    ),
    Column("request_bytes", "INT64", "Request body size in bytes."),
    Column("response_bytes", "INT64", "Response body bytes sent to the client."),
    Column("trace_id", "STRING", "Cloud Trace id from X-Cloud-Trace-Context."),
    Column(
        "capture_level",
        "STRING",
        "Prompt capture applied by policy: none, metadata+ or full (the content is in the content table).",
    ),
    Column("capture_error", "STRING", "Why prompt capture failed or is incomplete; null when it worked or was off."),
    Column("redaction_count", "INT64", "Secrets redacted from the captured content (0 when nothing was found)."),
    Column("cache_creation_1h_input_tokens", "INT64", "Of the cache write tokens, those with a 1-hour TTL."),
    Column("web_search_requests", "INT64", "Server-side web searches the request ran (usage.server_tool_use)."),
    Column("inference_geo", "STRING", "Where the upstream ran inference (usage.inference_geo); `us` costs 1.1x."),
    Column("speed", "STRING", "`fast` when fast mode served the request (its own prices); else standard or null."),
    Column("priced_as", "STRING", "Model id whose prices costed the row (differs from served_model on a fallback)."),
    Column(
        "price_rule",
        "STRING",
        "list (the model's own price), family_max or overall_max (no price known: the highest list price of its "
        "family, or of any model, was charged).",
    ),
    Column(
        "price_source",
        "STRING",
        "Price data that costed the row, with its version, e.g. genai-prices 0.2.3, packaged gap table 2026-12-01, "
        "or the operator's pricing file; null for requests not priced (refused).",
    ),
    Column(
        "usage_estimated",
        "BOOL",
        "True when token counts are the gateway's estimate: the reply was cut (client hang-up, shutdown) before "
        "the upstream reported them; output from the text relayed, input from the request size.",
    ),
)

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in AUDIT_COLUMNS)


@dataclass(frozen=True, slots=True)
class Table:
    """A table the audit pipeline writes: its columns, and its name in the SQLite file."""

    sqlite_name: str
    columns: tuple[Column, ...]
    key: str = "request_id"
    """The column that is unique per row: BigQuery's insertId, SQLite's primary key."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def bigquery_schema_json(self) -> list[dict[str, str]]:
        """The schema in BigQuery's JSON form (as `bq` and Terraform's `google_bigquery_table.schema` take it)."""
        return [{"name": c.name, "type": c.type, "mode": c.mode, "description": c.description} for c in self.columns]


AUDIT_TABLE = Table("audit_log", AUDIT_COLUMNS)


def bigquery_schema_json() -> list[dict[str, str]]:
    """The audit table's schema in BigQuery's JSON form (terraform/audit_schema.json)."""
    return AUDIT_TABLE.bigquery_schema_json()
