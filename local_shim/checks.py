"""What `claude-shim status` and `claude-shim doctor` check, each problem with its fix."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from local_shim.auth import IdToken, TokenProvider, build_provider
from local_shim.config import CONFIGURE_HINT, ShimSettings, config_dir
from local_shim.errors import ShimError
from local_shim.store import TokenStore, local_secret


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it is fine, and how to fix it if not."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


def check_configuration(settings: ShimSettings) -> list[Check]:
    """Is everything the shim needs configured?"""
    checks = [
        Check("gateway URL", True, settings.gateway_url)
        if settings.gateway_url
        else Check("gateway URL", False, "not set", CONFIGURE_HINT)
    ]
    if settings.credentials == "user":
        if settings.oauth_client_id and settings.oauth_client_secret:
            checks.append(Check("OAuth client", True, settings.oauth_client_id))
        else:
            checks.append(Check("OAuth client", False, "client id or secret not set", CONFIGURE_HINT))
    else:
        target = settings.impersonate_service_account
        detail = f"{settings.credentials}" + (f" as {target}" if target else "")
        checks.append(Check("credentials", True, detail))
    try:
        local_secret(config_dir(), create=False)
        checks.append(Check("local secret", True, "present and private"))
    except ShimError as error:
        checks.append(Check("local secret", False, error.message, "run `claude-shim configure` once"))
    return checks


def check_sign_in(settings: ShimSettings) -> Check:
    """Is there a stored sign-in (person's credentials only)?"""
    store = TokenStore(config_dir(), settings.token_store)
    try:
        login = store.load()
    except ShimError as error:
        return Check("sign-in", False, error.message, "run `claude-shim login`")
    if login is None:
        return Check("sign-in", False, "not signed in", "run `claude-shim login`")
    return Check("sign-in", True, f"{login.email or 'signed in'} (stored in {store.location()})")


async def check_id_token(provider: TokenProvider) -> tuple[Check, IdToken | None]:
    """Can an ID token for IAP be minted, and is it for the right audience?"""
    try:
        token = await provider.get()
    except ShimError as error:
        return Check("ID token", False, error.message, _fix_from(error.message)), None
    minutes = int(token.seconds_left() // 60)
    until = time.strftime("%H:%M", time.localtime(token.expires_at))
    detail = f"for {token.email or 'a service account'}, audience {token.audience}, valid until {until} ({minutes} min)"
    return Check("ID token", True, detail), token


def _fix_from(message: str) -> str | None:
    # Messages already end with what to do ("...: run `claude-shim login`."); no separate fix line needed.
    return None if "`" in message else "run `claude-shim doctor` after fixing the above"


async def check_gateway(settings: ShimSettings, token: IdToken, *, http: httpx.AsyncClient | None = None) -> Check:
    """Does the gateway answer through IAP with this token?"""
    url = settings.require_gateway() + settings.health_path
    headers = {}
    if settings.token_header in {"authorization", "both"}:
        headers["Authorization"] = f"Bearer {token.value}"
    if settings.token_header in {"proxy-authorization", "both"}:
        headers["Proxy-Authorization"] = f"Bearer {token.value}"
    client = http or httpx.AsyncClient(timeout=settings.connect_timeout)
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as error:
        return Check(
            "gateway", False, f"cannot reach {url} ({type(error).__name__})", "check your network or VPN and the URL"
        )
    finally:
        if http is None:
            await client.aclose()
    if response.status_code in {401, 403} and not _anthropic_error(response):
        if response.status_code == 401:
            return Check(
                "gateway",
                False,
                f"IAP rejected the ID token (HTTP 401: {_first_line(response)})",
                f"ask your admin to list OAuth client {token.audience} in IAP's programmatic clients",
            )
        return Check(
            "gateway",
            False,
            f"IAP denied {token.email or 'this account'} access (HTTP 403: {_first_line(response)})",
            "ask your admin to grant you roles/iap.httpsResourceAccessor on the gateway",
        )
    return Check("gateway", True, f"{url} answered HTTP {response.status_code}")


def _anthropic_error(response: httpx.Response) -> bool:
    try:
        data = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == "error"


def _first_line(response: httpx.Response) -> str:
    lines = response.text.strip().splitlines()
    return lines[0][:200] if lines else "no details"


async def run_checks(settings: ShimSettings, *, full: bool) -> list[Check]:
    """Status checks (sign-in, token, gateway); with `full`, configuration checks first (doctor)."""
    checks = check_configuration(settings) if full else []
    if full and not all(check.ok for check in checks if check.name != "local secret"):
        return checks
    if settings.credentials == "user":
        sign_in = check_sign_in(settings)
        checks.append(sign_in)
        if not sign_in.ok:
            return checks
    try:
        provider = build_provider(settings)
    except ShimError as error:
        checks.append(Check("ID token", False, error.message))
        return checks
    async with provider:
        token_check, token = await check_id_token(provider)
    checks.append(token_check)
    if token is not None and settings.gateway_url:
        checks.append(await check_gateway(settings, token))
    return checks
