"""The parts of the access policy the settings choose: the group resolver and the counters."""

from __future__ import annotations

import logging

import httpx

from gateway.config import Settings
from gateway.policy.cloud_identity import CloudIdentityGroups
from gateway.policy.counters import Counters, InProcessCounters
from gateway.policy.groups import GroupResolver, StaticGroups
from gateway.policy.loader import PolicyFileError
from gateway.policy.model import Policy
from gateway.policy.redis_counters import RedisCounters

logger = logging.getLogger("gateway.policy")


def group_resolver(policy: Policy, settings: Settings, google: httpx.AsyncClient | None = None) -> GroupResolver:
    """The membership source `GATEWAY_GROUP_RESOLVER` names, for the groups the policy has rules for (Cloud
    Identity over `google`, the gateway's client for Google's endpoints, or a client of its own without one)."""
    if settings.group_resolver == "static":
        if policy.members is None:
            raise PolicyFileError(
                [f"{policy.source}: GATEWAY_GROUP_RESOLVER=static needs a `members:` section in the policy file"]
            )
        return StaticGroups(policy.members, policy.groups, source=policy.source)
    if policy.members is not None:
        logger.warning(
            "policy: the `members:` section of %s is ignored; membership comes from Cloud Identity "
            "(set GATEWAY_GROUP_RESOLVER=static to use it)",
            policy.source,
        )
    if not policy.groups:
        return StaticGroups({}, [], source=policy.source)  # no group rules: nothing to ask Cloud Identity
    return CloudIdentityGroups(policy.groups, client=google, refresh_seconds=settings.groups_refresh_seconds)


def counters(settings: Settings) -> Counters:
    """The policy's counters: shared in Redis with `GATEWAY_REDIS_URL`, else this instance's own."""
    if settings.redis_url is None:
        return InProcessCounters()
    return RedisCounters(
        settings.redis_url.get_secret_value(),
        prefix=settings.redis_key_prefix,
        timeout=settings.redis_timeout_seconds,
    )
