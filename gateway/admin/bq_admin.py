"""`claude-gateway bq init`: the audit dataset, the partitioned table and the security views, idempotently."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from google.api_core import exceptions as api

from gateway.audit.bigquery import CLUSTERING_FIELDS, PARTITION_FIELD, TableRef
from gateway.audit.schema import AUDIT_TABLE, Table
from gateway.capture.schema import CONTENT_CLUSTERING_FIELDS, CONTENT_TABLE
from gateway.telemetry.schema import DEFAULT_TELEMETRY_TABLE, TELEMETRY_CLUSTERING_FIELDS, TELEMETRY_TABLE

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud import bigquery

PLACEHOLDER = "{audit_table}"
# Views over Claude Code's telemetry name its table so; it lives beside the audit table.
TELEMETRY_PLACEHOLDER = "{telemetry_table}"
DAY_MS = 24 * 60 * 60 * 1000
# Captured content is kept for a month unless said otherwise: long enough to investigate, short enough to hold
# little (terraform/variables.tf has the same default).
DEFAULT_CONTENT_RETENTION_DAYS = 30

# Bounded, so a wrong endpoint fails in seconds rather than after the client's default ten minutes.
TIMEOUT = 30.0

P = ParamSpec("P")
R = TypeVar("R")


class InitError(Exception):
    """`bq init` could not finish; the message says what to grant or change."""


def view_templates() -> dict[str, str]:
    """Each security view's SQL by view name (the file name), with `{audit_table}` still in it."""
    folder = resources.files("gateway.admin") / "views"
    files = sorted((entry for entry in folder.iterdir() if entry.name.endswith(".sql")), key=lambda e: e.name)
    return {entry.name.removesuffix(".sql"): entry.read_text(encoding="utf-8") for entry in files}


def render_view(template: str, table: TableRef) -> str:
    """The view's query over the given audit table (and the telemetry table beside it)."""
    return template.replace(PLACEHOLDER, table.sql).replace(TELEMETRY_PLACEHOLDER, telemetry_ref(table).sql)


def telemetry_ref(table: TableRef) -> TableRef:
    """The telemetry table: in the audit table's dataset, where the gateway writes it."""
    return TableRef(table.project, table.dataset, DEFAULT_TELEMETRY_TABLE)


def telemetry_table(table: TableRef, retention_days: int = 0) -> bigquery.Table:
    """The telemetry table as Terraform creates it: partitioned by day on `timestamp` (when it arrived)."""
    return _partitioned(
        table,
        TELEMETRY_TABLE,
        TELEMETRY_CLUSTERING_FIELDS,
        retention_days,
        "Claude Code's OpenTelemetry (metrics, events, spans), one row per data point, event or span, stamped with "
        "the verified sender. Queries must filter on timestamp.",
    )


def schema_fields(schema: Table = AUDIT_TABLE) -> list[bigquery.SchemaField]:
    from google.cloud import bigquery

    return [bigquery.SchemaField.from_api_repr(field) for field in schema.bigquery_schema_json()]


def audit_table(table: TableRef, retention_days: int = 0) -> bigquery.Table:
    """The table as Terraform creates it: partitioned by day on `timestamp`, clustered, partition filter required."""
    return _partitioned(
        table,
        AUDIT_TABLE,
        CLUSTERING_FIELDS,
        retention_days,
        "One row per request through the Claude gateway. Queries must filter on timestamp.",
    )


def content_table(table: TableRef, retention_days: int = DEFAULT_CONTENT_RETENTION_DAYS) -> bigquery.Table:
    """The content table as Terraform creates it: like the audit table, with its own partition expiration."""
    return _partitioned(
        table,
        CONTENT_TABLE,
        CONTENT_CLUSTERING_FIELDS,
        retention_days,
        "Captured prompts and responses (redacted), one row per captured request; the request_id is the audit "
        "table's. Queries must filter on timestamp.",
    )


def _partitioned(
    table: TableRef, schema: Table, clustering: tuple[str, ...], retention_days: int, description: str
) -> bigquery.Table:
    from google.cloud import bigquery

    spec = bigquery.Table(table.path, schema=schema_fields(schema))
    spec.description = description
    spec.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY,
        field=PARTITION_FIELD,
        expiration_ms=retention_days * DAY_MS if retention_days > 0 else None,
    )
    spec.clustering_fields = list(clustering)
    spec.require_partition_filter = True
    return spec


def init(
    client: bigquery.Client,
    table: TableRef,
    *,
    location: str | None,
    views_dataset: str,
    retention_days: int = 0,
    content: TableRef | None = None,
    content_retention_days: int = DEFAULT_CONTENT_RETENTION_DAYS,
    say: Callable[[str], None],
) -> None:
    """Create what is missing and bring what exists up to date; safe to run again. `content` is the table for
    captured prompts (none: not created)."""
    from google.cloud import bigquery

    for dataset_id, description in (
        (table.dataset, "Audit log of requests through the Claude gateway."),
        (views_dataset, "Security views over the Claude gateway audit table."),
    ):
        # The views must live where the table does: once the audit dataset exists, its location is the one.
        location = _ensure_dataset(client, f"{table.project}.{dataset_id}", description, location, say)

    _ensure_table(client, table, audit_table(table, retention_days), AUDIT_TABLE, CLUSTERING_FIELDS, say)
    telemetry = telemetry_ref(table)
    _ensure_table(
        client,
        telemetry,
        telemetry_table(telemetry, retention_days),
        TELEMETRY_TABLE,
        TELEMETRY_CLUSTERING_FIELDS,
        say,
    )
    if content is not None:
        if content.dataset != table.dataset:
            location = _ensure_dataset(
                client, f"{content.project}.{content.dataset}", "Captured prompts and responses.", location, say
            )
        _ensure_table(
            client,
            content,
            content_table(content, content_retention_days),
            CONTENT_TABLE,
            CONTENT_CLUSTERING_FIELDS,
            say,
        )

    for name, template in view_templates().items():
        view = bigquery.Table(f"{table.project}.{views_dataset}.{name}")
        view.view_query = render_view(template, table)
        view.description = f"Generated from gateway/admin/views/{name}.sql."
        try:
            client.create_table(view, retry=_retry(), timeout=TIMEOUT)
            say(f"view {table.project}.{views_dataset}.{name} created")
        except api.Conflict:
            _step(
                f"update view {name}",
                client.update_table,
                view,
                ["view_query", "description"],
                retry=_retry(),
                timeout=TIMEOUT,
            )
            say(f"view {table.project}.{views_dataset}.{name} updated")
        except api.Forbidden as exc:
            raise _denied(f"create view {name} in {views_dataset}", exc) from None
        except api.BadRequest as exc:
            raise InitError(f"view {name} was refused: {exc.message}") from None

    _authorise_views(client, table, views_dataset, say)
    say(
        f"done. The gateway's service account needs roles/bigquery.dataEditor on {table.path}; readers of the "
        f"views need roles/bigquery.dataViewer on {table.project}.{views_dataset} and roles/bigquery.jobUser "
        f"on a project to run queries."
    )
    if content is not None:
        say(
            f"Captured prompts go to {content.path}: the gateway needs roles/bigquery.dataEditor on it too; grant "
            "roles/bigquery.dataViewer on that table alone to the people who may read prompts."
        )


def _ensure_dataset(
    client: bigquery.Client, dataset_id: str, description: str, location: str | None, say: Callable[[str], None]
) -> str | None:
    """The dataset's location, creating the dataset only if it is missing: an operator who owns existing
    datasets needs no right to create one."""
    from google.cloud import bigquery

    try:
        existing = _step(f"read dataset {dataset_id}", client.get_dataset, dataset_id, retry=_retry(), timeout=TIMEOUT)
    except api.NotFound:
        dataset = bigquery.Dataset(dataset_id)
        dataset.description = description
        dataset.location = location
        created = _step(f"create dataset {dataset_id}", client.create_dataset, dataset, retry=_retry(), timeout=TIMEOUT)
        say(f"dataset {dataset_id} created ({created.location or 'default location'})")
        return location or created.location
    if location and existing.location and location.lower() != existing.location.lower():
        say(f"warning: dataset {dataset_id} is in {existing.location}, not {location}; a location cannot change")
    say(f"dataset {dataset_id} exists ({existing.location or 'default location'})")
    return existing.location or location


def _ensure_table(
    client: bigquery.Client,
    table: TableRef,
    spec: bigquery.Table,
    schema: Table,
    clustering: tuple[str, ...],
    say: Callable[[str], None],
) -> None:
    try:
        existing = _step(f"read table {table.path}", client.get_table, table.path, retry=_retry(), timeout=TIMEOUT)
    except api.NotFound:
        _step(f"create table {table.path}", client.create_table, spec, retry=_retry(), timeout=TIMEOUT)
        expiry = spec.time_partitioning.expiration_ms if spec.time_partitioning else None
        kept = f", partitions kept {expiry // DAY_MS} days" if expiry else ""
        say(
            f"table {table.path} created: partitioned by day on {PARTITION_FIELD}, clustered by "
            f"{', '.join(clustering)}, partition filter required{kept}"
        )
    else:
        _upgrade_table(client, existing, table, schema, clustering, say)


def _upgrade_table(
    client: bigquery.Client,
    existing: bigquery.Table,
    table: TableRef,
    schema: Table,
    clustering: tuple[str, ...],
    say: Callable[[str], None],
) -> None:
    """Add missing columns (BigQuery only lets a schema grow) and report what cannot be changed."""
    have = {field.name: field for field in existing.schema}
    wanted = schema_fields(schema)
    problems = [
        f"{field.name} is {have[field.name].field_type} {have[field.name].mode}, "
        f"expected {field.field_type} {field.mode}"
        for field in wanted
        if field.name in have
        and (_type(have[field.name].field_type), have[field.name].mode) != (_type(field.field_type), field.mode)
    ]
    missing = [field for field in wanted if field.name not in have]
    required = [field.name for field in missing if field.mode == "REQUIRED"]
    if problems or required:
        raise InitError(
            f"table {table.path} does not match the schema and cannot be altered in place: "
            + "; ".join(problems + [f"{name} is missing and REQUIRED" for name in required])
        )
    fields = ["clustering_fields", "require_partition_filter"]
    existing.clustering_fields = list(clustering)
    existing.require_partition_filter = True
    if missing:
        existing.schema = [*existing.schema, *missing]
        fields.append("schema")
    _step(f"update table {table.path}", client.update_table, existing, fields, retry=_retry(), timeout=TIMEOUT)
    added = f"; added columns {', '.join(field.name for field in missing)}" if missing else ""
    say(f"table {table.path} exists{added}")
    partitioning = existing.time_partitioning
    if partitioning is None or partitioning.field != PARTITION_FIELD:
        say(f"warning: {table.path} is not partitioned by day on {PARTITION_FIELD}; that cannot change in place")


def _authorise_views(client: bigquery.Client, table: TableRef, views_dataset: str, say: Callable[[str], None]) -> None:
    """Let the views read the audit table on their readers' behalf, as Terraform's dataset_access entry does."""
    from google.cloud.bigquery import AccessEntry

    dataset = _step(
        f"read dataset {table.dataset}",
        client.get_dataset,
        f"{table.project}.{table.dataset}",
        retry=_retry(),
        timeout=TIMEOUT,
    )
    wanted = {"dataset": {"projectId": table.project, "datasetId": views_dataset}, "targetTypes": ["VIEWS"]}
    if any(entry.entity_type == "dataset" and entry.entity_id == wanted for entry in dataset.access_entries):
        return
    dataset.access_entries = [*dataset.access_entries, AccessEntry(None, "dataset", wanted)]
    _step(
        f"authorise {views_dataset} on {table.dataset}",
        client.update_dataset,
        dataset,
        ["access_entries"],
        retry=_retry(),
        timeout=TIMEOUT,
    )
    say(f"views in {table.project}.{views_dataset} authorised to read {table.project}.{table.dataset}")


def _retry() -> Retry:
    from google.cloud.bigquery import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(TIMEOUT)


def _type(name: str) -> str:
    """Legacy and standard names for the same type (the API answers INTEGER for INT64)."""
    return {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}.get(name, name)


def _step(what: str, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return call(*args, **kwargs)
    except api.Forbidden as exc:
        raise _denied(what, exc) from None
    except api.NotFound:
        raise
    except api.GoogleAPICallError as exc:
        raise InitError(f"could not {what}: {exc.message}") from None
    except api.RetryError as exc:
        raise InitError(f"could not {what}: BigQuery did not answer within {TIMEOUT:.0f}s ({exc.cause})") from None


def _denied(what: str, exc: api.GoogleAPICallError) -> InitError:
    return InitError(
        f"permission denied to {what} ({exc.message}). Whoever runs `bq init` needs roles/bigquery.admin on the "
        "project, or roles/bigquery.dataOwner on both datasets if they already exist."
    )
