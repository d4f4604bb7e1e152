"""OTLP/HTTP export requests (protobuf or JSON) decoded with OpenTelemetry's own generated messages, and turned into
telemetry rows: one per metric data point, log record or span, stamped with the verified sender."""

from __future__ import annotations

import base64
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from gateway.audit.record import rfc3339
from gateway.endpoints import Endpoint

SIGNALS: dict[str, type[Message]] = {
    Endpoint.TELEMETRY_METRICS: ExportMetricsServiceRequest,
    Endpoint.TELEMETRY_LOGS: ExportLogsServiceRequest,
    Endpoint.TELEMETRY_TRACES: ExportTraceServiceRequest,
}
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# OTLP/JSON writes these ids as hex, where protobuf's JSON mapping expects base64.
_HEX_IDS = frozenset(("traceId", "spanId", "parentSpanId"))
# Rows kept from one export; an exporter sends far fewer (Claude Code batches at most 512 records).
MAX_ROWS = 10_000
_MAX_TEXT = 16_384


class OTLPError(ValueError):
    """An export that is not OTLP: answered 400 with the reason."""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent the export, as the gateway verified it, and the request that carried it."""

    email: str
    groups: tuple[str, ...]
    request_id: str
    user_agent: str | None


def decode(path: str, content_type: str, content_encoding: str, body: bytes, max_bytes: int) -> Message:
    """The export request `body` holds, or OTLPError saying why it is not one."""
    kind = SIGNALS[path]
    if content_encoding == "gzip":
        body = _gunzip(body, max_bytes)
    elif content_encoding not in ("", "identity"):
        raise OTLPError(f"Content-Encoding {content_encoding} is not supported; send gzip or none.")
    message = kind()
    if content_type == PROTOBUF:
        try:
            message.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise OTLPError(f"Not an OTLP {kind.__name__} in protobuf: {exc}") from None
    elif content_type == JSON:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OTLPError(f"Not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise OTLPError(f"An OTLP/JSON {kind.__name__} is a JSON object.")
        try:
            json_format.ParseDict(_hex_ids_to_base64(document), message, ignore_unknown_fields=True)
        except (json_format.ParseError, RecursionError, ValueError) as exc:
            raise OTLPError(f"Not an OTLP {kind.__name__} in JSON: {exc}") from None
    else:
        shown = content_type or "none"
        raise OTLPError(f"Content-Type must be {PROTOBUF} or {JSON} for OTLP/HTTP, not {shown}.")
    return message


def rows(path: str, message: Message, sender: Sender, received_at: datetime) -> list[dict[str, Any]]:
    """Telemetry rows for an export, at most MAX_ROWS."""
    signal = path.rsplit("/", 1)[1]
    found = {"metrics": _metric_rows, "logs": _log_rows, "traces": _span_rows}[signal](message)
    result: list[dict[str, Any]] = []
    for resource, scope, fields, attributes in found:
        if len(result) >= MAX_ROWS:
            break
        merged = {**resource, **attributes}
        result.append(
            {
                "telemetry_id": str(uuid.uuid4()),
                "timestamp": rfc3339(received_at),
                "signal": signal,
                "user_email": sender.email,
                "groups": list(sender.groups),
                "request_id": sender.request_id,
                "user_agent": sender.user_agent,
                "reported_email": _text(merged.get("user.email")),
                "session_id": _text(merged.get("session.id")),
                "attributes": _json(attributes),
                "resource": _json(resource),
                "scope": scope or None,
                **fields,
            }
        )
    return result


Found = Iterator[tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]]


def _metric_rows(message: Any) -> Found:
    for resource_metrics in message.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                for point in getattr(metric, kind).data_points:
                    if kind in ("gauge", "sum"):
                        value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
                    else:
                        value = point.sum  # histograms and summaries: the sum of what was observed
                    fields = {
                        "event_time": _time(point.time_unix_nano),
                        "name": metric.name,
                        "value": value,
                        "unit": metric.unit or None,
                    }
                    yield resource, scope_metrics.scope.name, fields, _attributes(point.attributes)


def _log_rows(message: Any) -> Found:
    for resource_logs in message.resource_logs:
        resource = _attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = _attributes(record.attributes)
                body = _value(record.body) if record.HasField("body") else None
                name = record.event_name or _text(attributes.get("event.name")) or None
                fields = {
                    "event_time": _time(record.time_unix_nano or record.observed_time_unix_nano),
                    "name": name,
                    "body": _clip(body if isinstance(body, str) or body is None else _json(body)),
                    "severity": record.severity_text or None,
                    "trace_id": record.trace_id.hex() or None,
                    "span_id": record.span_id.hex() or None,
                }
                yield resource, scope_logs.scope.name, fields, attributes


def _span_rows(message: Any) -> Found:
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                duration = (
                    (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6 if span.end_time_unix_nano else None
                )
                fields = {
                    "event_time": _time(span.start_time_unix_nano),
                    "name": span.name,
                    "trace_id": span.trace_id.hex() or None,
                    "span_id": span.span_id.hex() or None,
                    "duration_ms": duration,
                }
                yield resource, scope_spans.scope.name, fields, _attributes(span.attributes)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _time(nanos: int) -> str | None:
    return rfc3339(datetime.fromtimestamp(nanos / 1e9, UTC)) if nanos else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _id(value) if key in _HEX_IDS else _hex_ids_to_base64(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


def _id(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise OTLPError(f"trace and span ids are hex in OTLP/JSON, not {value[:40]!r}") from None


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise OTLPError(f"Body is not valid gzip: {exc}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise OTLPError(f"Body is larger than {max_bytes} bytes once decompressed.")
    return out
