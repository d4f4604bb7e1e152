"""`claude-gateway policy validate|explain`: check the access policy file, and what it means for a person."""

from __future__ import annotations

import argparse
import asyncio
import time

from gateway.cli.output import CLIError, say
from gateway.cli.settings import load_settings
from gateway.managed_settings import settings_for
from gateway.policy.counters import CountersUnavailable
from gateway.policy.explain import explain, summary
from gateway.policy.loader import PolicyFileError, load_policy
from gateway.policy.model import Policy, decide


def read_policy(path: str) -> Policy:
    """The policy file, or its first error in one line."""
    try:
        return load_policy(path)
    except PolicyFileError as exc:
        raise CLIError(str(exc)) from None


def cmd_policy_validate(args: argparse.Namespace) -> int:
    say(summary(read_policy(args.file)))
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    # The group resolvers and counters bring in redis and Cloud Identity's client, which `validate` does without.
    from gateway.policy.factory import counters, group_resolver

    overrides: dict[str, object] = {"dev_mode": True}
    if args.resolver:
        overrides["group_resolver"] = args.resolver
    settings = load_settings(**overrides)
    path = args.policy or settings.policy_file
    if not path:
        raise CLIError("no policy file: pass --policy FILE or set GATEWAY_POLICY_FILE")
    policy = read_policy(path)
    email = args.user_email.strip().lower()
    if email.count("@") != 1:
        raise CLIError(f"{args.user_email!r} is not an email address")

    async def run() -> list[str]:
        try:
            resolver = group_resolver(policy, settings)
        except PolicyFileError as exc:
            raise CLIError(str(exc)) from None
        await resolver.start()
        try:
            decision = decide(policy, email, resolver.groups_of(email))
            usage = None
            if settings.redis_url is not None:
                store = counters(settings)
                try:
                    usage = await store.snapshot(email, time.time())
                except CountersUnavailable:
                    pass  # explained without usage; the error is logged
                finally:
                    await store.aclose()
            return explain(decision, resolver.source, usage, settings_for(policy, decision))
        finally:
            await resolver.aclose()

    for line in asyncio.run(run()):
        say(line)
    return 0
