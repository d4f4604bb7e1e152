from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.dev.iap import AssertionSigner
from tests.support.audit import wait_for_rows
from tests.support.servers import FakeUpstream, serve

AUDIENCE = "/projects/123456789/locations/europe-west1/services/claude-gateway"
API_KEY = "sk-ant-api03-test-secret-key-never-leaks"


@dataclass
class Stack:
    """A gateway under uvicorn on loopback, with the fake upstream and IAP key endpoint behind it."""

    url: str
    upstream: FakeUpstream
    signer: AssertionSigner
    audit_db: Path

    def assertion(self, email: str = "ada@example.com", **options: Any) -> str:
        options.setdefault("audience", AUDIENCE)
        options.setdefault("hd", "example.com")
        return self.signer.sign(email, **options)

    def headers(self, email: str = "ada@example.com", **extra: str) -> dict[str, str]:
        return {"x-goog-iap-jwt-assertion": self.assertion(email), "anthropic-version": "2023-06-01", **extra}

    def rows(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The audit rows, once at least `count` have been written (the writer flushes in the background)."""
        return wait_for_rows(self.audit_db, count, timeout)


@pytest.fixture
def signer() -> AssertionSigner:
    return AssertionSigner(kid="test-key-1")


@pytest.fixture
def upstream(signer: AssertionSigner) -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    fake.keys = signer.public_key_map()
    with serve(fake) as url:
        yield fake, url


def gateway_settings(fake_url: str, audit_db: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "iap_audience": [AUDIENCE],
        "iap_certs_url": f"{fake_url}/iap/public_key",
        "upstream_url": fake_url,
        "anthropic_api_key": API_KEY,
        "audit_sink": f"sqlite:///{audit_db}",
        "upstream_read_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


StackFactory = Callable[..., AbstractContextManager[Stack]]


@pytest.fixture
def make_stack(upstream: tuple[FakeUpstream, str], signer: AssertionSigner, tmp_path: Path) -> StackFactory:
    """Start a gateway with settings overridden, e.g. `with make_stack(upstream_read_timeout=0.3) as stack:`."""
    fake, fake_url = upstream

    @contextmanager
    def start(**overrides: Any) -> Iterator[Stack]:
        audit_db = tmp_path / "audit.db"
        with serve(create_app(gateway_settings(fake_url, audit_db, **overrides))) as url:
            yield Stack(url=url, upstream=fake, signer=signer, audit_db=audit_db)

    return start


@pytest.fixture
def stack(make_stack: StackFactory) -> Iterator[Stack]:
    with make_stack() as running:
        yield running
