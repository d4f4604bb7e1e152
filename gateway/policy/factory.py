"""Building the access policy the settings ask for: the file, the group resolver and the counters."""

from __future__ import annotations

import logging

from gateway.config import Settings
from gateway.policy.base import AccessPolicy, AllowAll
from gateway.policy.cloud_identity import CloudIdentityGroups
from gateway.policy.counters import Counters, InProcessCounters
from gateway.policy.engine import GroupPolicy
from gateway.policy.groups import GroupResolver, StaticGroups
from gateway.policy.loader import PolicyFileError, load_policy
from gateway.policy.model import Policy
from gateway.policy.redis_counters import RedisCounters

logger = logging.getLogger("gateway.policy")


def group_resolver(policy: Policy, settings: Settings) -> GroupResolver:
    """The membership source `GATEWAY_GROUP_RESOLVER` names, for the groups the policy has rules for."""
    if settings.group_resolver == "static":
        if policy.members is None:
            raise PolicyFileError(
                [f"{policy.source}: GATEWAY_GROUP_RESOLVER=static needs a `members:` section in the policy file"]
            )
        return StaticGroups(policy.members, policy.groups, source=policy.source)
    if policy.members is not None:
        logger.warning(
            "policy: the `members:` section of %s is ignored; membership comes from Cloud Identity "
            "(set GATEWAY_GROUP_RESOLVER=static to use it)", policy.source,
        )
    if not policy.groups:
        return StaticGroups({}, [], source=policy.source)  # no group rules: nothing to ask Cloud Identity
    return CloudIdentityGroups(policy.groups, refresh_seconds=settings.groups_refresh_seconds)


def counters(settings: Settings) -> Counters:
    if settings.redis_url is None:
        return InProcessCounters()
    return RedisCounters(
        settings.redis_url.get_secret_value(),
        prefix=settings.redis_key_prefix,
        timeout=settings.redis_timeout_seconds,
    )


async def open_policy(settings: Settings) -> AccessPolicy:
    """The started policy, or `AllowAll` without `GATEWAY_POLICY_FILE`. A bad file raises `PolicyFileError`."""
    if not settings.policy_file:
        logger.info("policy: no GATEWAY_POLICY_FILE; everyone IAP lets through may use every model without limits")
        return AllowAll()
    policy = load_policy(settings.policy_file)
    engine = GroupPolicy(
        policy, group_resolver(policy, settings), counters(settings), fail_open=settings.policy_fail_mode == "open"
    )
    await engine.start()
    logger.info(
        "policy: %s loaded: %d group rules, %d user overrides, %s; membership from %s; counters %s, fail-%s",
        policy.source, len(policy.groups), len(policy.users),
        "a default rule" if policy.default else "no default rule (people in no group are refused)",
        engine.groups.source, engine.counters.name, settings.policy_fail_mode,
    )
    if settings.redis_url is None:
        logger.warning(
            "policy: limits are counted in this instance only; with more than one instance each allows the full "
            "limits. Set GATEWAY_REDIS_URL to share them."
        )
    return engine
