"""Claude Code's gateway sign-in, served by the shim on loopback: discovery, RFC 8628 device flow, token, revocation.

The person approves in a page the shim serves, which names the Google account the shim is signed in as. Approval is
a same-origin form POST carrying a secret only that page holds, so no other web page can approve a code.
"""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from local_shim.bearer import Bearers, InvalidBearer
from local_shim.errors import ShimError

logger = logging.getLogger("local_shim.device_flow")

DISCOVERY_PATH = "/.well-known/oauth-authorization-server"
DEVICE_AUTHORIZATION_PATH = "/oauth/device_authorization"
TOKEN_PATH = "/oauth/token"
REVOCATION_PATH = "/oauth/revoke"
VERIFICATION_PATH = "/device"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 6.1: consonants only, so a code never spells a word and is easy to compare by eye.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
LOGIN_NOTICE = "The browser page names the Google account claude-shim is signed in as: approve only if it is yours."
MAX_PENDING = 16
MAX_FORM_BYTES = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# The page is the shim's own: nothing may frame it (clickjacking), load from elsewhere, or post elsewhere.
PAGE_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}

Status = Literal["pending", "approved", "denied"]
Identity = Callable[[], Awaitable[str]]


@dataclass
class Flow:
    """One sign-in waiting for the person: the codes, the page's secret, and what they decided."""

    device_code: str = field(repr=False)
    user_code: str
    page_secret: str = field(repr=False)
    expires_at: float
    interval: float
    status: Status = "pending"
    email: str | None = None
    shown_to: str | None = None
    last_poll: float = 0.0


def oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    """RFC 6749 5.2's error shape."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=NO_STORE)


def _user_code() -> str:
    letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{letters[:4]}-{letters[4:]}"


def _normalise(code: str) -> str:
    letters = "".join(character for character in code.upper() if character.isalnum())
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else letters


async def _form(request: Request) -> dict[str, str]:
    """The form fields (unknown ones included, for the caller to ignore); an unreadable body gives none."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return {}


class DeviceFlow:
    """The sign-in endpoints; `identity` says which Google account the shim is signed in as (or raises ShimError)."""

    def __init__(
        self,
        bearers: Bearers,
        identity: Identity,
        *,
        allowed_hosts: set[str],
        code_seconds: float = 600.0,
        poll_seconds: float = 5.0,
    ) -> None:
        self.bearers = bearers
        self.identity = identity
        self.allowed_origins = {f"http://{host}" for host in allowed_hosts}
        self.code_seconds = code_seconds
        self.poll_seconds = poll_seconds
        self._flows: dict[str, Flow] = {}

    def routes(self) -> list[Route]:
        return [
            Route(DISCOVERY_PATH, self.discovery, methods=["GET"]),
            Route(DEVICE_AUTHORIZATION_PATH, self.device_authorization, methods=["POST"]),
            Route(TOKEN_PATH, self.token, methods=["POST"]),
            Route(REVOCATION_PATH, self.revoke, methods=["POST"]),
            Route(VERIFICATION_PATH, self.verification_page, methods=["GET"]),
            Route(VERIFICATION_PATH, self.verification_answer, methods=["POST"]),
        ]

    # -- the client's endpoints ------------------------------------------------------------------------------------

    async def discovery(self, request: Request) -> Response:
        base = _base(request)
        return JSONResponse(
            {
                "issuer": base,
                "device_authorization_endpoint": base + DEVICE_AUTHORIZATION_PATH,
                "token_endpoint": base + TOKEN_PATH,
                "revocation_endpoint": base + REVOCATION_PATH,
                "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
            },
            headers=NO_STORE,
        )

    def _web_page_refusal(self, request: Request) -> Response | None:
        """Claude Code sends no Origin; a browser does on every cross-origin POST, so a web page is refused here."""
        origin = request.headers.get("origin")
        if origin is None or origin.lower() in self.allowed_origins:
            return None
        logger.warning("refused a sign-in request from web origin %r", origin[:100])
        return oauth_error("invalid_request", "Sign-in requests from web pages are not accepted.", 403)

    async def device_authorization(self, request: Request) -> Response:
        refusal = self._web_page_refusal(request)
        if refusal is not None:
            return refusal
        await _form(request)  # `surface=claude_code` and anything else: recorded nowhere, never required
        self._forget_expired()
        if len(self._flows) >= MAX_PENDING:
            return oauth_error("slow_down", "Too many sign-ins are waiting; finish or cancel one first.", 429)
        flow = Flow(
            device_code=secrets.token_urlsafe(32),
            user_code=_user_code(),
            page_secret=secrets.token_urlsafe(32),
            expires_at=time.time() + self.code_seconds,
            interval=self.poll_seconds,
        )
        self._flows[flow.device_code] = flow
        base = _base(request)
        verification = base + VERIFICATION_PATH
        return JSONResponse(
            {
                "device_code": flow.device_code,
                "user_code": flow.user_code,
                "verification_uri": verification,
                "verification_uri_complete": f"{verification}?{urlencode({'user_code': flow.user_code})}",
                "expires_in": int(self.code_seconds),
                "interval": max(1, int(self.poll_seconds)),
                "login_notice": LOGIN_NOTICE,
            },
            headers=NO_STORE,
        )

    async def token(self, request: Request) -> Response:
        refusal = self._web_page_refusal(request)
        if refusal is not None:
            return refusal
        form = await _form(request)
        grant_type = form.get("grant_type", "")
        if grant_type == DEVICE_GRANT:
            return await self._device_grant(form.get("device_code", ""))
        if grant_type == "refresh_token":
            return await self._refresh_grant(form.get("refresh_token", ""))
        if not grant_type:
            return oauth_error("invalid_request", "grant_type is missing.")
        return oauth_error("unsupported_grant_type", "Use the device_code or refresh_token grant.")

    async def _device_grant(self, device_code: str) -> Response:
        if not device_code:
            return oauth_error("invalid_request", "device_code is missing.")
        flow = self._flows.get(device_code)
        if flow is None:
            # As Anthropic's own gateway answers: the client then says the sign-in timed out and to try again.
            return oauth_error("expired_token", "This device code is unknown, used or expired: sign in again.")
        now = time.time()
        if flow.expires_at <= now:
            del self._flows[device_code]
            return oauth_error("expired_token", "The sign-in code expired before it was approved: sign in again.")
        if flow.status == "denied":
            del self._flows[device_code]
            return oauth_error("access_denied", "The sign-in was denied in the browser.")
        if flow.status == "pending":
            too_soon = now - flow.last_poll < flow.interval
            flow.last_poll = now
            if too_soon:
                return oauth_error("slow_down", f"Poll at most every {flow.interval:g} s.")
            return oauth_error("authorization_pending", "Waiting for approval in the browser.")
        del self._flows[device_code]  # single use
        assert flow.email is not None
        try:
            current = await self.identity()
        except ShimError as error:
            return oauth_error("access_denied", error.message)
        if current != flow.email:
            return oauth_error("access_denied", f"claude-shim is now signed in as {current}, not {flow.email}.")
        logger.info("Claude Code signed in to the shim as %s", flow.email)
        return JSONResponse(self.bearers.issue(flow.email), headers=NO_STORE)

    async def _refresh_grant(self, refresh_token: str) -> Response:
        if not refresh_token:
            return oauth_error("invalid_request", "refresh_token is missing.")
        try:
            grant = self.bearers.verify(refresh_token, "refresh")
        except InvalidBearer as error:
            return oauth_error("invalid_grant", f"This refresh token is not valid: {error}; sign in again.", 401)
        try:
            current = await self.identity()
        except ShimError as error:
            return oauth_error("invalid_grant", error.message, 401)
        if current != grant.email:
            self.bearers.revoke(refresh_token)
            return oauth_error("invalid_grant", f"claude-shim is now signed in as {current}: sign in again.", 401)
        return JSONResponse(self.bearers.issue(grant.email, session=grant.session), headers=NO_STORE)

    async def revoke(self, request: Request) -> Response:
        refusal = self._web_page_refusal(request)
        if refusal is not None:
            return refusal
        form = await _form(request)
        if self.bearers.revoke(form.get("token", "")):
            logger.info("a Claude Code sign-in was revoked")
        return JSONResponse({}, headers=NO_STORE)  # RFC 7009 2.2: the same answer for any token

    # -- the browser's page ----------------------------------------------------------------------------------------

    async def verification_page(self, request: Request) -> Response:
        typed = request.query_params.get("user_code", "")
        if not typed:
            return _page("Sign in Claude Code", _CODE_FORM)
        flow = self._flow_for(typed)
        if flow is None:
            return _page(
                "Unknown code",
                "<p>This code is unknown or has expired. Start the sign-in again in Claude Code.</p>",
                404,
            )
        try:
            email = await self.identity()
        except ShimError as error:
            return _page(
                "claude-shim is not signed in",
                f"<p>{html.escape(error.message)}</p><p>Then reload this page.</p>",
                409,
            )
        flow.shown_to = email
        body = (
            f"<p>Claude Code asks to use this computer's claude-shim, which is signed in to Google as</p>"
            f'<p class="who">{html.escape(email)}</p>'
            f'<p>Check that Claude Code shows the code <b class="code">{html.escape(flow.user_code)}</b>.</p>'
            f'<form method="post" action="{VERIFICATION_PATH}">'
            f'<input type="hidden" name="user_code" value="{html.escape(flow.user_code)}">'
            f'<input type="hidden" name="page_secret" value="{html.escape(flow.page_secret)}">'
            '<button name="decision" value="approve">Yes, this is me: sign in Claude Code</button> '
            '<button name="decision" value="deny">No, deny</button></form>'
        )
        return _page("Confirm the Claude Code sign-in", body)

    async def verification_answer(self, request: Request) -> Response:
        origin = request.headers.get("origin", "")
        fetch_site = request.headers.get("sec-fetch-site", "same-origin")
        if origin.lower() not in self.allowed_origins or fetch_site != "same-origin":
            logger.warning("refused a sign-in approval from origin %r", origin[:100])
            return _page("Refused", "<p>Approvals are accepted only from claude-shim's own page.</p>", 403)
        form = await _form(request)
        flow = self._flow_for(form.get("user_code", ""))
        if flow is None:
            return _page("Unknown code", "<p>This code is unknown or has expired. Start the sign-in again.</p>", 404)
        if flow.shown_to is None or not secrets.compare_digest(
            form.get("page_secret", "").encode(), flow.page_secret.encode()
        ):
            return _page("Refused", "<p>This approval did not come from claude-shim's page: reload it.</p>", 403)
        if flow.status != "pending":
            return _page("Already answered", "<p>This sign-in was already answered. Return to Claude Code.</p>", 409)
        if form.get("decision") != "approve":
            flow.status = "denied"
            return _page("Sign-in denied", "<p>Claude Code will not be signed in. You can close this page.</p>")
        try:
            email = await self.identity()
        except ShimError as error:
            return _page("claude-shim is not signed in", f"<p>{html.escape(error.message)}</p>", 409)
        if email != flow.shown_to:
            return _page("Account changed", "<p>claude-shim's Google account changed: reload this page.</p>", 409)
        flow.status, flow.email = "approved", email
        return _page("Claude Code is signed in", f"<p>Approved for {html.escape(email)}. Return to Claude Code.</p>")

    # -- state -----------------------------------------------------------------------------------------------------

    def _flow_for(self, user_code: str) -> Flow | None:
        self._forget_expired()
        wanted = _normalise(user_code)
        for flow in self._flows.values():
            if secrets.compare_digest(flow.user_code.encode(), wanted.encode()):
                return flow
        return None

    def _forget_expired(self) -> None:
        now = time.time()
        for code in [code for code, flow in self._flows.items() if flow.expires_at <= now]:
            del self._flows[code]


def _base(request: Request) -> str:
    # The Host was checked against the shim's own loopback addresses before any route ran.
    return f"http://{request.headers.get('host', '')}"


_CODE_FORM = (
    f'<form method="get" action="{VERIFICATION_PATH}"><label>Code shown by Claude Code: '
    '<input name="user_code" autocomplete="off" autofocus></label> <button>Continue</button></form>'
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · claude-shim</title>"
        "<style>body{font:16px system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}"
        ".who,.code{font-size:1.3em;font-weight:600}button{font-size:1em;padding:.5em 1em;margin-top:1em}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=PAGE_HEADERS)
