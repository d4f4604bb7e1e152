from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.google_http import google_client
from gateway.policy.cloud_identity import CloudIdentityGroups
from gateway.policy.groups import StaticGroups

pytestmark = pytest.mark.anyio

API = "https://cloudidentity.googleapis.com/v1"
TOKEN_URI = "https://oauth2.googleapis.com/token"
ACCESS_TOKEN = "ya29.test-access-token"


def test_static_members_expand_nested_groups_and_survive_cycles() -> None:
    members = {
        "eng@example.com": ["ada@example.com", "platform@example.com"],
        "platform@example.com": ["linus@example.com", "eng@example.com"],
        "ml@example.com": ["ADA@example.com"],
    }
    groups = StaticGroups(
        {group: [m.lower() for m in people] for group, people in members.items()},
        ["eng@example.com", "ml@example.com"],
    )

    assert groups.groups_of("Ada@Example.com") == {"eng@example.com", "ml@example.com"}
    assert groups.groups_of("linus@example.com") == {"eng@example.com"}
    assert groups.groups_of("platform@example.com") == frozenset()
    assert groups.groups_of("nobody@example.com") == frozenset()


class FakeCloudIdentity:
    """The two Cloud Identity methods the resolver uses, paginated two memberships a page."""

    def __init__(self, groups: dict[str, list[tuple[str, str]]]) -> None:
        self.groups = groups
        self.failures: dict[str, int] = {}  # group email -> HTTP status its memberships answer with
        self.lookup_failures: dict[str, int] = {}
        self.unauthorized_once = False
        self.seen: list[httpx.Request] = []

    def _auth(self, request: httpx.Request) -> httpx.Response | None:
        self.seen.append(request)
        if self.unauthorized_once:
            self.unauthorized_once = False
            return _error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")
        assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
        return None

    def lookup(self, request: httpx.Request) -> httpx.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        email = request.url.params["groupKey.id"]
        if email in self.lookup_failures:
            return _error(self.lookup_failures[email], "Error(2028): Permission denied", "PERMISSION_DENIED")
        if email not in self.groups:
            return _error(404, "Not found", "NOT_FOUND")
        return httpx.Response(200, json={"name": f"groups/id-{email.split('@')[0]}"})

    def memberships(self, request: httpx.Request, group_id: str) -> httpx.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        email = next(g for g in self.groups if f"id-{g.split('@')[0]}" == group_id)
        if email in self.failures:
            return _error(self.failures[email], "Backend Error", "UNAVAILABLE")
        assert request.url.params["view"] == "FULL"
        start = int(request.url.params.get("pageToken", "0") or 0)
        page = self.groups[email][start : start + 2]
        body: dict[str, object] = {
            "memberships": [
                {
                    "name": f"groups/{group_id}/memberships/m{start + i}",
                    "preferredMemberKey": _member_key(member, kind),
                    "roles": [{"name": "MEMBER"}],
                    "type": "USER" if kind == "EXT" else kind,
                }
                for i, (member, kind) in enumerate(page)
            ]
        }
        if start + 2 < len(self.groups[email]):
            body["nextPageToken"] = str(start + 2)
        return httpx.Response(200, json=body)


def _member_key(member: str, kind: str) -> dict[str, str]:
    # `EXT` stands for a member from an external identity source, whose key carries a namespace.
    return {"id": member, "namespace": "identitysources/x"} if kind == "EXT" else {"id": member}


def _error(status: int, message: str, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": status, "message": message, "status": code}})


@pytest.fixture
def service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.Route]:
    """Real service-account credentials from GOOGLE_APPLICATION_CREDENTIALS; Google's token endpoint is faked."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "gateway-test",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": "claude-gateway@gateway-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": TOKEN_URI,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with respx.mock(assert_all_called=False) as google:
        yield google.post(TOKEN_URI).respond(
            json={"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        )


@pytest.fixture
def directory(service_account: respx.Route) -> Iterator[FakeCloudIdentity]:
    fake = FakeCloudIdentity(
        {
            "eng@example.com": [
                ("ada@example.com", "USER"),
                ("platform@example.com", "GROUP"),
                ("drive-123@example.com", "SHARED_DRIVE"),
                ("external-ada", "EXT"),
                ("Grace@Example.com", "USER"),
            ],
            "platform@example.com": [
                ("linus@example.com", "USER"),
                ("deploy@gateway-test.iam.gserviceaccount.com", "SERVICE_ACCOUNT"),
                ("eng@example.com", "GROUP"),  # a cycle
            ],
            "ml@example.com": [("ada@example.com", "USER")],
            "partners@example.com": [("pat@partner.example", "USER")],
        }
    )
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{API}/groups:lookup").mock(side_effect=fake.lookup)
        mock.get(url__regex=rf"{API}/groups/(?P<group_id>[^/]+)/memberships").mock(side_effect=fake.memberships)
        yield fake


async def test_members_are_read_per_policy_group_with_nested_groups_and_pages(directory: FakeCloudIdentity) -> None:
    resolver = CloudIdentityGroups(["eng@example.com", "ML@example.com"])
    await resolver.start()
    try:
        assert resolver.groups_of("ada@example.com") == {"eng@example.com", "ml@example.com"}
        assert resolver.groups_of("grace@example.com") == {"eng@example.com"}
        assert resolver.groups_of("linus@example.com") == {"eng@example.com"}
        assert resolver.groups_of("deploy@gateway-test.iam.gserviceaccount.com") == {"eng@example.com"}
        assert resolver.groups_of("drive-123@example.com") == frozenset()
        assert resolver.groups_of("external-ada") == frozenset()
        assert resolver.groups_of("platform@example.com") == frozenset()
        page_tokens = [r.url.params.get("pageToken") for r in directory.seen if "id-eng" in r.url.path]
        assert page_tokens == [None, "2", "4"]
        assert "Cloud Identity Groups API (answers from" in resolver.source
    finally:
        await resolver.aclose()


async def test_api_failure_keeps_the_last_good_answer_and_says_so(
    directory: FakeCloudIdentity, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = CloudIdentityGroups(["eng@example.com", "ml@example.com"])
    await resolver.start()
    try:
        directory.failures["platform@example.com"] = 503
        directory.groups["ml@example.com"] = []

        assert await resolver.refresh() is False

        assert resolver.groups_of("linus@example.com") == {"eng@example.com"}  # kept from the last good answer
        assert resolver.groups_of("ada@example.com") == {"eng@example.com"}  # ml answered: ada has left it
        assert "could not refresh the members of eng@example.com" in caplog.text
        assert "HTTP 503: Backend Error" in caplog.text
        assert "keeping the answer from" in caplog.text
    finally:
        await resolver.aclose()


async def test_a_group_never_read_gives_nobody_its_rule_and_logs_why(
    directory: FakeCloudIdentity, caplog: pytest.LogCaptureFixture
) -> None:
    directory.lookup_failures["eng@example.com"] = 403
    resolver = CloudIdentityGroups(["eng@example.com", "ml@example.com"])
    await resolver.start()
    try:
        assert resolver.groups_of("ada@example.com") == {"ml@example.com"}
        assert resolver.groups_of("grace@example.com") == frozenset()
        assert "could not read the members of eng@example.com" in caplog.text
        assert "Groups Reader" in caplog.text
    finally:
        await resolver.aclose()


async def test_an_unreadable_nested_group_is_skipped_not_the_whole_group(
    directory: FakeCloudIdentity, caplog: pytest.LogCaptureFixture
) -> None:
    directory.lookup_failures["platform@example.com"] = 403
    resolver = CloudIdentityGroups(["eng@example.com"])
    await resolver.start()
    try:
        assert resolver.groups_of("ada@example.com") == {"eng@example.com"}
        assert resolver.groups_of("linus@example.com") == frozenset()
        assert "cannot read platform@example.com, nested in eng@example.com" in caplog.text
    finally:
        await resolver.aclose()


async def test_a_group_that_does_not_exist_has_no_members(
    directory: FakeCloudIdentity, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = CloudIdentityGroups(["typo@example.com", "ml@example.com"])
    await resolver.start()
    try:
        assert resolver.groups_of("ada@example.com") == {"ml@example.com"}
        assert "group typo@example.com does not exist" in caplog.text
    finally:
        await resolver.aclose()


async def test_credentials_come_from_the_token_endpoint_and_a_rejected_token_is_replaced_once(
    directory: FakeCloudIdentity, service_account: respx.Route
) -> None:
    resolver = CloudIdentityGroups(["ml@example.com"])
    await resolver.start()
    try:
        assert len(service_account.calls) == 1
        token_request = service_account.calls[0].request
        assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in token_request.content.decode()

        directory.unauthorized_once = True
        directory.groups["ml@example.com"].append(("katherine@example.com", "USER"))
        assert await resolver.refresh() is True

        assert len(service_account.calls) == 2
        assert resolver.groups_of("katherine@example.com") == {"ml@example.com"}
    finally:
        await resolver.aclose()


async def test_the_lifespan_client_for_google_is_used_for_tokens_and_the_api_and_left_open(
    directory: FakeCloudIdentity, service_account: respx.Route
) -> None:
    async with google_client() as client:
        resolver = CloudIdentityGroups(["ml@example.com"], client=client)
        await resolver.start()
        await resolver.aclose()

        assert resolver.groups_of("ada@example.com") == {"ml@example.com"}
        assert service_account.call_count == 1 and directory.seen
        assert not client.is_closed  # the lifespan closes it, after everything that uses it


async def test_membership_is_refreshed_in_the_background(directory: FakeCloudIdentity) -> None:
    resolver = CloudIdentityGroups(["ml@example.com"], refresh_seconds=0.05)
    await resolver.start()
    try:
        assert resolver.groups_of("katherine@example.com") == frozenset()
        directory.groups["ml@example.com"].append(("katherine@example.com", "USER"))

        for _ in range(100):
            if resolver.groups_of("katherine@example.com"):
                break
            await asyncio.sleep(0.02)
        assert resolver.groups_of("katherine@example.com") == {"ml@example.com"}
    finally:
        await resolver.aclose()


async def test_missing_credentials_are_an_api_failure_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    resolver = CloudIdentityGroups(["ml@example.com"])
    await resolver.start()
    try:
        assert resolver.groups_of("ada@example.com") == frozenset()
        assert "no credentials for the Cloud Identity API" in caplog.text
        assert resolver.source == "Cloud Identity Groups API (no answer yet)"
    finally:
        await resolver.aclose()
