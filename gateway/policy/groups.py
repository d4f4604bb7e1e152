"""Group membership: which of the policy's groups a person is in. Static (from the policy file) or Cloud Identity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from gateway.identity import fold_case


class GroupResolver(Protocol):
    """Answers from memory, so admission never waits on a directory; implementations refresh in the background."""

    @property
    def source(self) -> str:
        """Where the answers come from, for `policy explain` and logs."""
        ...

    async def start(self) -> None: ...

    def groups_of(self, email: str) -> frozenset[str]:
        """The policy groups `email` is a member of, directly or through nested groups."""
        ...

    async def aclose(self) -> None: ...


def expand(direct: Mapping[str, Iterable[str]], groups: Iterable[str]) -> dict[str, frozenset[str]]:
    """Invert group -> members into person -> groups for the named `groups`, following nested groups.

    `direct` maps a group to its direct members; a member that is itself a key of `direct` is a nested group.
    Cycles (a group inside itself, however deep) are harmless."""
    index: dict[str, set[str]] = {}
    for group in groups:
        seen: set[str] = set()
        pending = [group]
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            for member in direct.get(current, ()):
                if member in direct:
                    pending.append(member)
                else:
                    index.setdefault(member, set()).add(group)
    return {email: frozenset(found) for email, found in index.items()}


class StaticGroups:
    """Membership written in the policy file's `members:` section: for development and tests."""

    def __init__(self, members: Mapping[str, Iterable[str]], groups: Iterable[str], *, source: str = "") -> None:
        self._index = expand(members, groups)
        self._source = source

    @property
    def source(self) -> str:
        return f"static members in {self._source}" if self._source else "static members"

    async def start(self) -> None:
        return None

    def groups_of(self, email: str) -> frozenset[str]:
        return self._index.get(fold_case(email), frozenset())

    async def aclose(self) -> None:
        return None
