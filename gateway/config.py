"""Gateway settings: one pydantic-settings class, read from `GATEWAY_*` environment variables."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
ANTHROPIC_URL = "https://api.anthropic.com"
# `anthropic-beta` values Vertex AI accepts on messages. Vertex answers 400 ("Unexpected value(s) ... for the
# `anthropic-beta` header") for the whole request when one is unknown to it, so the others are dropped instead.
# Collected from Vertex's Claude feature pages and public integration tables (LiteLLM's per-provider beta map),
# not from a live project: override with GATEWAY_VERTEX_BETAS.
VERTEX_BETAS: tuple[str, ...] = (
    "interleaved-thinking-2025-05-14",
    "context-management-2025-06-27",
    "context-1m-2025-08-07",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "tool-search-tool-2025-10-19",
    "web-search-2025-03-05",
    "compact-2026-01-12",
)

CommaList = Annotated[list[str], NoDecode]
_UPSTREAM_NAME = re.compile(r"^(anthropic|vertex(:[a-z0-9-]+)?)$")


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Everything the gateway reads from its environment, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)

    dev_mode: bool = False
    """Development mode: allows running without an IAP audience. Never set in production."""

    iap_audience: CommaList = Field(default_factory=list)
    iap_certs_url: str = IAP_CERTS_URL
    iap_clock_skew_seconds: int = 30
    allowed_domains: CommaList = Field(default_factory=list)

    upstream_url: str = ANTHROPIC_URL
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GATEWAY_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    upstream_write_timeout: float = 60.0
    upstream_pool_timeout: float = 10.0
    upstream_max_connections: int = 512

    upstream: CommaList = Field(default_factory=lambda: ["anthropic"])
    """Upstreams in failover order: `anthropic`, `vertex`, or `vertex:REGION` for another Vertex AI region."""
    vertex_project: str | None = None
    """Project that calls Vertex AI; defaults to GOOGLE_CLOUD_PROJECT, then the credentials' own project."""
    vertex_region: str = "global"
    vertex_base_url: str | None = None
    """Overrides Google's endpoint for every Vertex upstream (Private Service Connect, tests)."""
    vertex_betas: CommaList = Field(default_factory=lambda: list(VERTEX_BETAS))
    """`anthropic-beta` values passed to Vertex AI (others are dropped); `*` passes every one."""
    models: dict[str, str | dict[str, str]] | None = Field(
        default=None, validation_alias=AliasChoices("GATEWAY_MODELS", "GATEWAY_VERTEX_MODELS")
    )
    """The model table as JSON (Anthropic id -> Vertex id); replaces the packaged gateway/data/models.json."""
    breaker_failures: int = Field(default=5, ge=0)
    """Failures in a row that open an upstream's circuit; 0 never opens it."""
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    retry_after_max_seconds: float = Field(default=60.0, ge=0)
    """The longest an upstream's `retry-after` keeps the gateway away from it."""

    audit_sink: str = "sqlite:///gateway-audit.db"
    """sqlite:///PATH, or bigquery://PROJECT/DATASET/TABLE (create it with `claude-gateway bq init` or Terraform)."""
    audit_queue_size: int = Field(default=10_000, gt=0)
    """Rows held in memory; beyond it rows are spilled to audit_spill_dir (and logged as audit_fallback)."""
    audit_batch_size: int = Field(default=500, gt=0, le=10_000)
    """Rows per write: a batch is sent once this many are queued, or every audit_flush_ms."""
    audit_flush_ms: int = Field(default=200, gt=0)
    audit_retry_max_seconds: float = Field(default=1.5, gt=0)
    """The longest a row waits in memory for the sink; then it goes to the audit_fallback log (durable in Cloud
    Logging) and the spill. At the default a row is durable within 2 s of its request's end."""
    audit_spill_dir: str | None = None
    """Where rows wait while the sink is down; default $TMPDIR/claude-gateway-audit."""
    bigquery_endpoint: str | None = None
    """Another BigQuery API endpoint (an emulator, or Private Service Connect)."""
    bigquery_anonymous: bool = False
    """Send no credentials to BigQuery: only for an emulator."""

    content_sink: str | None = None
    """Where captured prompts go: sqlite:///PATH (table audit_content) or bigquery://PROJECT/DATASET/TABLE.
    Default: the audit sink's SQLite file, or bigquery://PROJECT/DATASET_content/audit_content."""
    capture_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=2 * 1024 * 1024)
    """The most bytes of a request, and of a response, a capture keeps; beyond it the capture is cut and marked."""
    capture_max_pending: int = Field(default=128, gt=0)
    """Captures waiting to be written; beyond it a request is audited without content (and says so)."""
    redaction_patterns: str | None = None
    """More redaction patterns: JSON ({"name": "regex"} or [{"name", "pattern"}]) or the path of such a file."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)
    """A request body must arrive within this long, or the request is refused (408) and its memory freed."""
    max_inflight_body_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    """Request-body bytes all requests in flight may hold together (503 past it): sized for a 1 GiB instance."""
    max_inflight_body_bytes_per_user: int = Field(default=64 * 1024 * 1024, gt=0)
    """Request-body bytes one person's requests in flight may hold together (429 past it)."""
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection must send a request's complete headers within this long (from opening, or from the request's
    first byte), or it is closed: idle and slow-header connections cannot pile up."""
    max_connections: int = Field(default=1000, gt=0)
    """Connections and requests the server takes at once; past it new requests get 503 (and a warning is logged)."""
    pricing_file: str | None = None

    policy_file: str | None = None
    """Access policy by Workspace group (YAML, see docs/policy.md); without one, everyone IAP admits may use all."""
    group_resolver: Literal["cloud_identity", "static"] = "cloud_identity"
    """Where group membership comes from: the Cloud Identity Groups API, or the policy file's `members:`."""
    groups_refresh_seconds: float = Field(default=300.0, ge=10)
    redis_url: SecretStr | None = None
    """Shared counters for the policy's limits (Memorystore); without it each instance counts on its own."""
    redis_key_prefix: str = Field(default="claude-gateway", min_length=1)
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    policy_fail_mode: Literal["open", "closed"] = "open"
    """When the shared counters are unreachable: let requests through unchecked (open) or refuse them (closed)."""

    shutdown_seconds: float = Field(default=8.0, ge=3.0, le=60.0)
    """From SIGTERM to exit: streams run until 2.5 s before the end and are then cut with an overloaded_error;
    audit rows are in the sink or the log 1 s before the end. Cloud Run allows 10 s; keep it at 8.5 or below."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, validation_alias=AliasChoices("PORT", "GATEWAY_PORT"))
    log_level: str = "INFO"
    access_log: bool = True
    google_cloud_project: str | None = Field(
        default=None, validation_alias=AliasChoices("GATEWAY_PROJECT", "GOOGLE_CLOUD_PROJECT")
    )

    _split = field_validator("iap_audience", "allowed_domains", "upstream", "vertex_betas", mode="before")(
        _split_commas
    )

    @field_validator("audit_sink")
    @classmethod
    def _known_sink(cls, value: str) -> str:
        from gateway.audit.sinks import check_sink_url

        return check_sink_url(value)

    @field_validator("content_sink")
    @classmethod
    def _known_content_sink(cls, value: str | None) -> str | None:
        from gateway.audit.sinks import check_sink_url

        return None if not value else check_sink_url(value, "GATEWAY_CONTENT_SINK")

    @field_validator("redaction_patterns")
    @classmethod
    def _patterns_compile(cls, value: str | None) -> str | None:
        from gateway.capture.patterns import load_redactor

        load_redactor(value)  # a bad pattern stops the gateway at start-up, named
        return value or None

    @property
    def content_sink_url(self) -> str:
        """GATEWAY_CONTENT_SINK, or the audit sink's place with the content table."""
        from gateway.capture.schema import default_content_sink

        return self.content_sink or default_content_sink(self.audit_sink)

    @field_validator("allowed_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [domain.lower() for domain in value]

    @field_validator("upstream")
    @classmethod
    def _known_upstreams(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("GATEWAY_UPSTREAM names no upstream")
        for name in value:
            if not _UPSTREAM_NAME.match(name):
                raise ValueError(f"unknown upstream {name!r}: use anthropic, vertex or vertex:REGION")
        if len(set(value)) != len(value):
            raise ValueError(f"GATEWAY_UPSTREAM lists an upstream twice: {value}")
        return value

    @field_validator("upstream_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        if not self.dev_mode and not self.iap_audience:
            raise ValueError(
                "GATEWAY_IAP_AUDIENCE is not set: refusing to start a gateway that would accept any IAP "
                "audience. Set it to /projects/NUMBER/locations/REGION/services/NAME (IAP on Cloud Run) or "
                "/projects/NUMBER/global/backendServices/ID (load balancer), or set GATEWAY_DEV_MODE=1 "
                "for local development."
            )
        return self
