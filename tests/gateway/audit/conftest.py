"""What the audit tests that run `claude-gateway serve` against the BigQuery emulator share: the emulator, a relay
in front of it that a test can take down (an outage), and the gateway's environment for that sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.audit.bigquery import TableRef
from gateway.dev.iap import AssertionSigner
from tests.gateway.conftest import API_KEY, AUDIENCE
from tests.support.bqemulator import Emulator, Relay, shared_emulator


@pytest.fixture
def emulator() -> Emulator:
    return shared_emulator()


@pytest.fixture
def relay(emulator: Emulator) -> Iterator[Relay]:
    relay = Relay(("127.0.0.1", int(emulator.url.rsplit(":", 1)[1])))
    relay.up()
    yield relay
    relay.down()


def bigquery_env(table: TableRef, bigquery_url: str, upstream_url: str, **extra: str) -> dict[str, str]:
    """GATEWAY_* for a gateway whose audit sink is `table`, reached at `bigquery_url` (the relay)."""
    return {
        "GATEWAY_IAP_AUDIENCE": AUDIENCE,
        "GATEWAY_IAP_CERTS_URL": f"{upstream_url}/iap/public_key",
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_ANTHROPIC_API_KEY": API_KEY,
        "GATEWAY_AUDIT_SINK": f"bigquery://{table.project}/{table.dataset}/{table.table}",
        "GATEWAY_BIGQUERY_ENDPOINT": bigquery_url,
        "GATEWAY_BIGQUERY_ANONYMOUS": "1",
        **extra,
    }


def iap_headers(signer: AssertionSigner) -> dict[str, str]:
    assertion = signer.sign("ada@example.com", audience=AUDIENCE, hd="example.com")
    return {"x-goog-iap-jwt-assertion": assertion, "anthropic-version": "2023-06-01"}
