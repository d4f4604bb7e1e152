"""Group membership from the Cloud Identity Groups API, refreshed in the background, last good answer kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import google.auth.exceptions
import httpx

from gateway.google_http import GoogleCredentials, google_client
from gateway.identity import fold_case
from gateway.policy.groups import expand

logger = logging.getLogger("gateway.policy.groups")

CLOUD_IDENTITY_URL = "https://cloudidentity.googleapis.com/v1"
SCOPE = "https://www.googleapis.com/auth/cloud-identity.groups.readonly"
# FULL is the view that reports each membership's `type` (USER, SERVICE_ACCOUNT, GROUP, ...); 500 is its page cap.
_PAGE_SIZE = "500"
_MAX_PAGES = 10_000
# Kinds of member that can be the person IAP vouches for; shared drives, browsers and `OTHER` never are.
_PERSON_TYPES = frozenset(("USER", "SERVICE_ACCOUNT", "TYPE_UNSPECIFIED", None))


class GroupsAPIError(Exception):
    """The Cloud Identity API (or the credentials for it) did not give an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CloudIdentityGroups:
    """Members of each policy group, nested groups expanded, as the gateway's service account can read them.

    Uses `groups.lookup` and `groups.memberships.list`, which work on every Workspace and Cloud Identity edition
    (the transitive-membership methods need a premium edition). The account needs the Groups Reader admin role
    or to be a manager of the groups."""

    def __init__(
        self,
        groups: Iterable[str],
        *,
        client: httpx.AsyncClient | None = None,
        refresh_seconds: float = 300.0,
        retry_seconds: float = 30.0,
        base_url: str = CLOUD_IDENTITY_URL,
        timeout: float = 10.0,
    ) -> None:
        self._groups = sorted({fold_case(group) for group in groups})
        # The lifespan's client for Google's endpoints; without one, a client of its own, closed with it.
        self._client = client
        self._owns_client = client is None
        self._refresh_seconds = refresh_seconds
        self._retry_seconds = min(retry_seconds, refresh_seconds)
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._google: GoogleCredentials | None = None
        self._names: dict[str, str] = {}
        self._members: dict[str, frozenset[str]] = {}
        self._answered_at: dict[str, float] = {}
        self._index: dict[str, frozenset[str]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def source(self) -> str:
        if not self._answered_at:
            return "Cloud Identity Groups API (no answer yet)"
        oldest = min(self._answered_at.values())
        return f"Cloud Identity Groups API (answers from {_when(oldest)} or later)"

    async def start(self) -> None:
        """Load every group once, then keep refreshing in the background; failures are logged, never raised."""
        if self._client is None:
            self._client = google_client()
        self._google = GoogleCredentials(self._client, [SCOPE])
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="cloud-identity-groups")

    def groups_of(self, email: str) -> frozenset[str]:
        return self._index.get(fold_case(email), frozenset())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None and self._owns_client:
            await self._client.aclose()

    async def refresh(self) -> bool:
        """Fetch every group again; True if all answered. A group that fails keeps its last good members."""
        fetched: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        complete = True
        for group in self._groups:
            try:
                direct = await self._tree(group, fetched)
            except GroupsAPIError as exc:
                complete = False
                if group in self._answered_at:
                    logger.warning(
                        "Cloud Identity: could not refresh the members of %s (%s); keeping the answer from %s",
                        group,
                        exc,
                        _when(self._answered_at[group]),
                    )
                else:
                    logger.error(
                        "Cloud Identity: could not read the members of %s (%s); nobody gets its rule until a "
                        "refresh succeeds (next try in %.0f s)",
                        group,
                        exc,
                        self._retry_seconds,
                    )
                continue
            members = expand(direct, [group])
            self._members[group] = frozenset(person for person, found in members.items() if group in found)
            self._answered_at[group] = time.time()
        index: dict[str, set[str]] = {}
        for group, people in self._members.items():
            for person in people:
                index.setdefault(person, set()).add(group)
        self._index = {person: frozenset(found) for person, found in index.items()}
        if complete:
            logger.info("Cloud Identity: members of %d groups loaded (%d people)", len(self._groups), len(index))
        return complete

    async def _run(self) -> None:
        complete = bool(self._groups) and len(self._answered_at) == len(self._groups)
        while True:
            await asyncio.sleep(self._refresh_seconds if complete else self._retry_seconds)
            try:
                complete = await self.refresh()
            except Exception:  # the refresher must outlive any surprise; the last answers stay in place
                logger.exception("Cloud Identity: unexpected error refreshing group members")
                complete = False

    async def _tree(
        self, group: str, fetched: dict[str, tuple[frozenset[str], frozenset[str]]]
    ) -> dict[str, frozenset[str]]:
        """Direct members of `group` and of every group nested in it: group -> people and groups."""
        direct: dict[str, frozenset[str]] = {}
        pending = [group]
        while pending:
            current = pending.pop()
            if current in direct:
                continue
            if current not in fetched:
                try:
                    fetched[current] = await self._direct_members(current)
                except GroupsAPIError as exc:
                    if current == group or exc.status != 403:
                        raise
                    # A nested group the account may not read (often one from another organisation) stays
                    # unreadable; holding the whole parent at an old answer forever would be worse.
                    logger.warning(
                        "Cloud Identity: cannot read %s, nested in %s (%s); its members are not counted",
                        current,
                        group,
                        exc,
                    )
                    fetched[current] = (frozenset(), frozenset())
            people, nested = fetched[current]
            direct[current] = people | nested
            pending.extend(nested)
        return direct

    async def _direct_members(self, group: str) -> tuple[frozenset[str], frozenset[str]]:
        """(people, nested groups) directly in `group`; a group that does not exist has none."""
        name = await self._lookup(group)
        if name is None:
            return frozenset(), frozenset()
        people: set[str] = set()
        nested: set[str] = set()
        params = {"view": "FULL", "pageSize": _PAGE_SIZE}
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            try:
                data = await self._get(f"/{name}/memberships", params)
            except _NotFound:
                del self._names[group]  # deleted and perhaps re-created: look the name up again next time
                raise
            for membership in data.get("memberships") or []:
                key = membership.get("preferredMemberKey") or {}
                member = key.get("id")
                # A namespaced key is an identity from an external source, never the email IAP reports.
                if not isinstance(member, str) or key.get("namespace"):
                    continue
                kind = membership.get("type")
                if kind == "GROUP":
                    nested.add(fold_case(member))
                elif kind in _PERSON_TYPES:
                    people.add(fold_case(member))
            token = data.get("nextPageToken")
            if not token or token in seen_tokens:
                break
            seen_tokens.add(token)
            params = {**params, "pageToken": token}
        return frozenset(people), frozenset(nested)

    async def _lookup(self, group: str) -> str | None:
        if group not in self._names:
            try:
                data = await self._get("/groups:lookup", {"groupKey.id": group})
            except _NotFound:
                logger.warning("Cloud Identity: group %s does not exist; it has no members", group)
                return None
            name = data.get("name")
            if not isinstance(name, str) or not name.startswith("groups/"):
                raise GroupsAPIError(f"groups.lookup for {group} gave no group name")
            self._names[group] = name
        return self._names[group]

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        assert self._client is not None, "start() first"
        for attempt in (1, 2):
            headers = {"authorization": f"Bearer {await self._token(force=attempt == 2)}"}
            try:
                response = await self._client.get(
                    self._base_url + path, params=params, headers=headers, timeout=self._timeout
                )
            except httpx.HTTPError as exc:
                raise GroupsAPIError(f"{path}: {exc or type(exc).__name__}") from None
            if response.status_code == 401 and attempt == 1:
                continue  # the token expired early or was revoked: one fresh token, then give up
            if response.status_code == 404:
                raise _NotFound(f"{path}: HTTP 404: {_api_message(response)}", 404)
            if response.status_code >= 400:
                message = f"{path}: HTTP {response.status_code}: {_api_message(response)}"
                raise GroupsAPIError(message, response.status_code)
            try:
                data = response.json()
            except ValueError:
                raise GroupsAPIError(f"{path}: the answer is not JSON") from None
            if not isinstance(data, dict):
                raise GroupsAPIError(f"{path}: the answer is not a JSON object")
            return data
        raise AssertionError("unreachable")

    async def _token(self, *, force: bool) -> str:
        assert self._google is not None, "start() first"
        try:
            return await self._google.token(force=force)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise GroupsAPIError(f"no credentials for the Cloud Identity API: {exc}") from None


class _NotFound(GroupsAPIError):
    pass


def _api_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        message = str(error.get("message") or error.get("status") or "")
    except (ValueError, AttributeError):
        message = ""
    if response.status_code == 403:
        message += " (give the gateway's service account the Groups Reader admin role, or make it a group manager)"
    return message.strip() or response.reason_phrase


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
