"""The BigQuery audit sink: streaming inserts with the request id as insertId, the blocking client off the loop."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import google.auth.exceptions
import requests
from google.api_core import exceptions as api

from gateway.audit.record import insert_id
from gateway.audit.schema import AUDIT_TABLE, Table
from gateway.audit.sink_base import BatchRefused, RowsRejected, SinkConfigError, SinkServerError, SinkUnavailable

if TYPE_CHECKING:
    from google.cloud import bigquery

logger = logging.getLogger("gateway.audit")

# The table's layout, kept here beside the schema's other consumers; terraform/bigquery.tf says the same (tested).
PARTITION_FIELD = "timestamp"
CLUSTERING_FIELDS = ("user_email", "requested_model", "outcome")

_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{1,61}[a-z0-9]$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")

# Errors that mean "could not talk to BigQuery" rather than "BigQuery said no".
_UNREACHABLE = (requests.RequestException, google.auth.exceptions.TransportError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class TableRef:
    """`bigquery://PROJECT/DATASET/TABLE`, parsed and checked."""

    project: str
    dataset: str
    table: str

    @classmethod
    def from_url(cls, url: str, setting: str = "GATEWAY_AUDIT_SINK") -> TableRef:
        parts = url.removeprefix("bigquery://").split("/")
        if not url.startswith("bigquery://") or len(parts) != 3 or not all(parts):
            raise SinkConfigError(f"{setting}={url!r}: expected bigquery://PROJECT/DATASET/TABLE")
        project, dataset, table = parts
        if not _PROJECT.match(project):
            raise SinkConfigError(f"{setting}={url!r}: {project!r} is not a Google Cloud project id")
        for what, name in (("dataset", dataset), ("table", table)):
            if not _NAME.match(name):
                raise SinkConfigError(f"{setting}={url!r}: {what} {name!r} must be letters, digits and underscores")
        return cls(project, dataset, table)

    @property
    def url(self) -> str:
        return f"bigquery://{self.project}/{self.dataset}/{self.table}"

    @property
    def path(self) -> str:
        """`project.dataset.table`, as the client takes it."""
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def sql(self) -> str:
        """The backquoted name SQL uses."""
        return f"`{self.path}`"


def make_client(project: str, *, endpoint: str | None = None, anonymous: bool = False) -> bigquery.Client:
    """A BigQuery client; `endpoint` and `anonymous` point it at an emulator (tests, local runs)."""
    from google.api_core.client_info import ClientInfo
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    from gateway import __version__

    try:
        return bigquery.Client(
            project=project,
            credentials=AnonymousCredentials() if anonymous else None,  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoint} if endpoint else None,
            client_info=ClientInfo(user_agent=f"claude-sso-gateway/{__version__}"),  # type: ignore[no-untyped-call]
        )
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise SinkConfigError(
            f"no Google credentials for BigQuery ({exc}); on Google Cloud the service account provides them, "
            "locally run `gcloud auth application-default login`"
        ) from None


class BigQuerySink:
    """Streams rows with `insertAll`: the request id is the insertId (a started row's is apart) for best-effort
    de-duplication, invalid rows are skipped and reported one by one, and the client's own retries are off: the
    writer owns retrying."""

    name = "bigquery"

    def __init__(
        self,
        table: TableRef,
        *,
        endpoint: str | None = None,
        anonymous: bool = False,
        timeout: float = 30.0,
        schema: Table = AUDIT_TABLE,
    ) -> None:
        self.table = table
        self.schema = schema
        self._endpoint = endpoint
        self._anonymous = anonymous
        self._timeout = timeout
        self._client: bigquery.Client | None = None

    async def open(self) -> None:
        """Fail at start-up on a missing table or a permission error; only warn if BigQuery is unreachable,
        since the writer queues, spills and logs rows until it answers."""
        self._client = await anyio.to_thread.run_sync(
            partial(make_client, self.table.project, endpoint=self._endpoint, anonymous=self._anonymous)
        )
        try:
            table = await anyio.to_thread.run_sync(
                partial(self._client.get_table, self.table.path, timeout=self._timeout, retry=None)  # type: ignore[arg-type]
            )
        except api.NotFound:
            if self.schema.key != AUDIT_TABLE.key:  # the telemetry table: bq init makes it beside the audit table
                how = "`claude-gateway bq init --sink AUDIT_TABLE_URL`"
            else:
                flag = "--content-sink" if self.schema is not AUDIT_TABLE else "--sink"
                how = f"`claude-gateway bq init {flag} {self.table.url}`"
            raise SinkConfigError(
                f"BigQuery table {self.table.path} does not exist: create it with {how} or Terraform"
            ) from None
        except api.Forbidden as exc:
            raise SinkConfigError(
                f"BigQuery refused access to {self.table.path} ({_reason(exc)}): grant the gateway's service "
                "account roles/bigquery.dataEditor on the table (Terraform does this)"
            ) from None
        except (api.GoogleAPICallError, *_UNREACHABLE) as exc:
            logger.warning(
                "BigQuery did not answer at start-up (%s); audit rows are queued, spilled and logged as "
                "audit_fallback until it does",
                _reason(exc),
            )
            return
        missing = [name for name in self.schema.names if name not in {field.name for field in table.schema}]
        if missing:
            raise SinkConfigError(
                f"BigQuery table {self.table.path} lacks the columns {', '.join(missing)}: "
                "add them with `claude-gateway bq init` or Terraform"
            )

    async def write(self, rows: list[dict[str, Any]]) -> None:
        client = self._client
        if client is None:
            raise RuntimeError("BigQuery audit sink used before open()")
        call = partial(
            client.insert_rows_json,
            self.table.path,
            rows,
            row_ids=[insert_id(row, self.schema.key) for row in rows],
            skip_invalid_rows=True,
            retry=None,  # type: ignore[arg-type]  # None turns the client's retries off, as documented
            timeout=self._timeout,
        )
        try:
            # Abandoned on cancellation (shutdown): the writer logs the rows, so a late success only duplicates.
            errors = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except api.BadRequest as exc:
            raise BatchRefused(f"BigQuery refused the request: {_reason(exc)}") from exc
        except api.GoogleAPICallError as exc:
            raise SinkServerError(f"BigQuery answered {exc.code}: {_reason(exc)}") from exc
        except _UNREACHABLE as exc:
            raise SinkUnavailable(f"BigQuery unreachable: {_reason(exc)}") from exc
        if errors:
            raise RowsRejected([(int(entry["index"]), _row_errors(entry)) for entry in errors])

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await anyio.to_thread.run_sync(client.close)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, api.GoogleAPICallError):
        return str(exc.message).split("\n", 1)[0]
    return str(exc).split("\n", 1)[0] or type(exc).__name__


def _row_errors(entry: dict[str, Any]) -> str:
    return (
        "; ".join(
            f"{error.get('reason', 'invalid')}: {error.get('message', '')}".strip() for error in entry.get("errors", [])
        )
        or "invalid"
    )
