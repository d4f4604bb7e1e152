"""The content table's columns: what prompt capture keeps, apart from the metadata table and its readers."""

from __future__ import annotations

from gateway.audit.kind import RowKind
from gateway.audit.schema import Column, Table

CONTENT_COLUMNS: tuple[Column, ...] = (
    Column("request_id", "STRING", "Gateway request id: the metadata row this content belongs to.", "REQUIRED"),
    Column(
        "timestamp", "TIMESTAMP", "When the gateway received the request (UTC), as in its metadata row.", "REQUIRED"
    ),
    Column("user_email", "STRING", "Verified Workspace email of the person who sent the request."),
    Column(
        "capture_level",
        "STRING",
        "metadata+ (facts only) or full (the request's messages and the response).",
        "REQUIRED",
    ),
    Column("request", "STRING", "full: the system prompt and messages sent, as JSON, redacted and capped."),
    Column("response", "STRING", "full: the response as the client received it, as JSON, redacted and capped."),
    Column("system_sha256", "STRING", "SHA-256 of the system prompt's text."),
    Column("message_count", "INT64", "Messages in the request."),
    Column("tools_offered", "STRING", "Names of the tools the request offered the model.", "REPEATED"),
    Column("tools_used", "STRING", "Names of the tools called in the conversation the request carries.", "REPEATED"),
    Column("has_images", "BOOL", "Whether the request carries an image (in a message or a tool result)."),
    Column("has_documents", "BOOL", "Whether the request carries a document (PDF or text document block)."),
    Column("redactions", "STRING", "Secrets redacted, as JSON: pattern name -> count."),
    Column("redaction_count", "INT64", "Secrets redacted in total."),
    Column("truncated", "BOOL", "Whether the request or the response was cut at the capture cap."),
    Column("capture_error", "STRING", "What went wrong while capturing, when something did."),
)

CONTENT_TABLE = Table("audit_content", CONTENT_COLUMNS)
CONTENT_COLUMN_NAMES: tuple[str, ...] = CONTENT_TABLE.names
# The BigQuery layout, beside PARTITION_FIELD and CLUSTERING_FIELDS of the metadata table; Terraform says the same.
CONTENT_CLUSTERING_FIELDS = ("user_email",)
DEFAULT_CONTENT_TABLE = "audit_content"
CONTENT_ROWS = RowKind(
    CONTENT_TABLE,
    "audit content writer",
    "audit_content_fallback",
    spill_folder="content",
    replay_command="claude-gateway audit replay --content",
)


def default_content_sink(audit_sink: str) -> str:
    """Where content goes unless GATEWAY_CONTENT_SINK says: the SQLite file of the audit sink, or a dataset of its
    own beside the audit dataset, so that no grant on the audit dataset (nor the views authorised on it) reaches
    the content."""
    if not audit_sink.startswith("bigquery://"):
        return audit_sink
    project, dataset, _ = audit_sink.removeprefix("bigquery://").split("/")
    return f"bigquery://{project}/{dataset}_content/{DEFAULT_CONTENT_TABLE}"


def content_schema_json() -> list[dict[str, str]]:
    """The content table's schema in BigQuery's JSON form (terraform/content_schema.json)."""
    return CONTENT_TABLE.bigquery_schema_json()
