"""The forwarding app: loopback only, local secret required, ID token added, response streamed back unchanged."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from local_shim.auth import IdToken, TokenProvider, build_provider
from local_shim.bearer import Bearers, Grant, InvalidBearer, looks_like_jwt
from local_shim.config import ShimSettings, config_dir, is_loopback_host
from local_shim.device_flow import DeviceFlow
from local_shim.errors import AuthError, ConfigError, ShimError, error_body
from local_shim.store import TokenStore

logger = logging.getLogger("local_shim.server")

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
# Claude Code's own credentials stop here: the gateway sees only the person's ID token.
CALLER_CREDENTIALS = frozenset({"authorization", "x-api-key", "proxy-authorization"})
_DROPPED_REQUEST = HOP_BY_HOP | CALLER_CREDENTIALS | {"host", "content-length"}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SECRET_HINT = "start Claude Code with `claude-shim run -- claude`, or set ANTHROPIC_AUTH_TOKEN from `claude-shim env`"
SIGN_IN_HINT = "run /login in Claude Code"
Endpoint = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> Response:
    # A 401 from the shim never heals by retrying: Claude Code should ask the person to sign in at once.
    headers = {"x-should-retry": "false"} if status == 401 else None
    return Response(error_body(status, message), status_code=status, media_type="application/json", headers=headers)


def _iap_text(response: httpx.Response) -> str:
    # IAP explains itself in a short plain-text body; keep one line of it.
    lines = response.text.strip().splitlines()
    return lines[0][:200] if lines else "no details"


def _is_gateway_error(response: httpx.Response) -> bool:
    """True if a (read) response is the gateway's own Anthropic-shaped error rather than IAP's."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == "error"


class _Relay(Response):
    """Streams the upstream response to the client as it arrives and always closes it."""

    def __init__(self, upstream: httpx.Response) -> None:
        self.status_code = upstream.status_code
        self.background = None
        self.raw_headers = [
            (name, value) for name, value in upstream.headers.raw if name.lower().decode("latin-1") not in HOP_BY_HOP
        ]
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._cancel_on_disconnect, receive, group.cancel_scope)
                await self._stream(send)
                group.cancel_scope.cancel()
        finally:
            # Starlette does not close the iterator on disconnect: closing here frees the gateway connection.
            await self._upstream.aclose()

    @staticmethod
    async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        logger.info("client went away; closing the gateway stream")
        scope.cancel()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self._upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as error:
            logger.warning("the gateway stream broke off: %s", type(error).__name__)
            if self._upstream.headers.get("content-type", "").startswith("text/event-stream"):
                # Claude Code shows an SSE error event to the person; a silent cut would look like a finished reply.
                event = error_body(502, f"The connection to the gateway broke off ({type(error).__name__}).")
                await send({"type": "http.response.body", "body": b"event: error\ndata: " + event + b"\n\n"})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Forwarder:
    """Checks that a request is the person's own, then relays it to the gateway with their ID token."""

    def __init__(
        self,
        settings: ShimSettings,
        *,
        port: int,
        secret: str,
        provider: TokenProvider | None,
        state_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.gateway_url = settings.require_gateway()
        self.port = port
        self._secret = secret.encode()
        self._given_provider = provider
        self.provider: TokenProvider | None = provider
        self.client: httpx.AsyncClient | None = None
        hosts = {settings.host, "127.0.0.1", "localhost", "[::1]"}
        self.allowed_hosts = {f"{host}:{port}".lower() for host in hosts}
        self.bearers = Bearers(secret, state_dir or config_dir())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(
            connect=self.settings.connect_timeout,
            read=self.settings.read_timeout,
            write=self.settings.write_timeout,
            pool=self.settings.connect_timeout,
        )
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        for name in list(self.client.headers):
            del self.client.headers[name]  # carry the caller's headers, not httpx's defaults
        # One client for the gateway and Google's token endpoint: each TLS context costs start-up time.
        self.provider = self._given_provider or build_provider(self.settings, http=self.client)
        try:
            yield
        finally:
            await self.client.aclose()
            if self._given_provider is None:
                await self.provider.aclose()

    def host_refusal(self, request: Request) -> Response | None:
        """A 403 unless the request names this shim's own loopback address as its Host."""
        host = request.headers.get("host", "").lower()
        if host in self.allowed_hosts:
            return None
        # A page in the browser that rebinds a DNS name to 127.0.0.1 arrives with its own name as Host.
        logger.warning("refused a request with Host %r", host[:100])
        return _error(403, f"Refused: Host {host[:100]!r} is not this shim's loopback address.")

    def host_checked(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint`, answered only for requests addressed to this shim's loopback address."""

        async def checked(request: Request) -> Response:
            return self.host_refusal(request) or await endpoint(request)

        return checked

    def admit(self, request: Request) -> Response | Grant | None:
        """A refusal, or who is calling: None for the local secret, a Grant for a Claude Code sign-in's bearer."""
        refusal = self.host_refusal(request)
        if refusal is not None:
            return refusal
        offered = [request.headers.get("x-api-key", "")]
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        offered = [item for item in offered if item]
        if any(secrets.compare_digest(item.encode(), self._secret) for item in offered):
            return None
        if not offered:
            logger.warning("refused a request without credentials: %s %s", request.method, request.url.path)
            return _error(
                401, f"Missing claude-shim local secret: {SECRET_HINT}; for the gateway sign-in, {SIGN_IN_HINT}."
            )
        try:
            return self.bearers.verify(offered[-1], "access")
        except InvalidBearer as error:
            logger.warning("refused a credential (%s): %s %s", error, request.method, request.url.path)
            if looks_like_jwt(offered[-1]):
                return _error(401, f"Your Claude Code sign-in to claude-shim is not valid ({error}): {SIGN_IN_HINT}.")
            return _error(
                401, f"Wrong claude-shim local secret: {SECRET_HINT}; for the gateway sign-in, {SIGN_IN_HINT}."
            )

    async def identity(self) -> str:
        """The Google account the shim is signed in as now, or AuthError; a sign-out is noticed at once."""
        assert self.provider is not None
        stored = None
        if self.settings.credentials == "user":
            store = TokenStore(config_dir(), self.settings.token_store)
            stored = await anyio.to_thread.run_sync(store.load)
            if stored is None:
                raise AuthError("claude-shim is not signed in to Google: run `claude-shim login`.")
        token = await self.provider.get()
        if stored is not None and stored.email and token.email != stored.email:
            token = await self.provider.get(rejected=token.value)  # the person signed in again as someone else
        if not token.email:
            raise AuthError("claude-shim's Google credentials name no email address, so no one can approve a sign-in.")
        return token.email

    def _upstream_request(self, request: Request, body: bytes, token: IdToken) -> httpx.Request:
        assert self.client is not None
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        url = self.gateway_url + raw_path.decode("latin-1")
        if request.scope.get("query_string"):
            url += "?" + request.scope["query_string"].decode("latin-1")
        connection_tokens = {item.strip().lower() for item in request.headers.get("connection", "").split(",")}
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if name.decode("latin-1").lower() not in _DROPPED_REQUEST
            and name.decode("latin-1").lower() not in connection_tokens
        ]
        if "accept-encoding" not in request.headers:
            headers.append((b"accept-encoding", b"identity"))  # bytes go back unchanged, so ask for none
        bearer = f"Bearer {token.value}".encode()
        if self.settings.token_header in {"authorization", "both"}:
            headers.append((b"authorization", bearer))
        if self.settings.token_header in {"proxy-authorization", "both"}:
            headers.append((b"proxy-authorization", bearer))
        return self.client.build_request(request.method, url, headers=headers, content=body)

    async def _send(self, request: Request, body: bytes, token: IdToken) -> httpx.Response:
        assert self.client is not None
        return await self.client.send(self._upstream_request(request, body, token), stream=True)

    async def forward(self, request: Request) -> Response:
        """Relay one request, or refuse it with an Anthropic-shaped error."""
        caller = self.admit(request)
        if isinstance(caller, Response):
            return caller
        assert self.provider is not None
        body = await request.body()  # small (a Messages request), and needed again for a retry
        try:
            token = await self.provider.get()
            if caller is not None and (token.email or "").lower() != caller.email.lower():
                message = (
                    f"Claude Code signed in to claude-shim as {caller.email}, but claude-shim is now signed in to "
                    f"Google as {token.email or 'a service account'}: {SIGN_IN_HINT}."
                )
                logger.warning("%s", message)
                return _error(401, message)
            upstream = await self._send(request, body, token)
            if upstream.status_code == 401 and not _is_gateway_error(await _read(upstream)):
                logger.info("IAP answered 401; refreshing the ID token and retrying once")
                token = await self.provider.get(rejected=token.value)
                upstream = await self._send(request, body, token)
        except ShimError as error:
            logger.warning("%s", error.message)
            return _error(error.status, error.message)
        except httpx.TimeoutException as error:
            message = f"The gateway at {self.gateway_url} did not answer in time ({type(error).__name__})."
            logger.warning("%s", message)
            return _error(504, message)
        except httpx.HTTPError as error:
            message = (
                f"Cannot reach the gateway at {self.gateway_url} ({type(error).__name__}): check your network or VPN, "
                "and the URL with `claude-shim status`."
            )
            logger.warning("%s", message)
            return _error(502, message)
        if upstream.status_code in {401, 403}:
            if not _is_gateway_error(await _read(upstream)):
                return self._iap_refusal(upstream, token)
            return _buffered(upstream)
        return _Relay(upstream)

    def _iap_refusal(self, upstream: httpx.Response, token: IdToken) -> Response:
        who = token.email or "your account"
        if upstream.status_code == 401:
            message = (
                f"IAP rejected the ID token for {who} ({_iap_text(upstream)}): ask your admin to list OAuth client "
                f"{token.audience} in IAP's programmatic clients, then run `claude-shim doctor`."
            )
        else:
            message = (
                f"IAP denied {who} access to the gateway ({_iap_text(upstream)}): ask your admin to grant you "
                "roles/iap.httpsResourceAccessor on it."
            )
        logger.warning("%s", message)
        return _error(upstream.status_code, message)


def _buffered(upstream: httpx.Response) -> Response:
    """A response already read whole (and so decoded), passed on as it is."""
    response = Response(upstream.content, status_code=upstream.status_code)
    dropped = HOP_BY_HOP | {"content-encoding", "content-length"}
    response.raw_headers = [
        (name, value) for name, value in upstream.headers.raw if name.lower().decode("latin-1") not in dropped
    ] + [(b"content-length", str(len(upstream.content)).encode())]
    return response


async def _read(response: httpx.Response) -> httpx.Response:
    """Read a (small, refusal) response whole and release its connection."""
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


def create_app(
    settings: ShimSettings,
    *,
    port: int,
    secret: str,
    provider: TokenProvider | None = None,
    state_dir: Path | None = None,
) -> Starlette:
    """The shim's ASGI app for a listener on `port`: Claude Code's sign-in endpoints, and every other path and
    method forwarded."""
    forwarder = Forwarder(settings, port=port, secret=secret, provider=provider, state_dir=state_dir)
    sign_in = DeviceFlow(
        forwarder.bearers,
        forwarder.identity,
        allowed_hosts=forwarder.allowed_hosts,
        code_seconds=settings.sign_in_code_seconds,
        poll_seconds=settings.sign_in_poll_seconds,
    )
    routes = [
        Route(route.path, forwarder.host_checked(route.endpoint), methods=sorted(route.methods or ()))
        for route in sign_in.routes()
    ]
    return Starlette(
        routes=[*routes, Route("/{path:path}", forwarder.forward, methods=ALL_METHODS)], lifespan=forwarder.lifespan
    )


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening socket on a loopback address; anything else is refused."""
    if not is_loopback_host(host):
        raise ConfigError(f"Refusing to listen on {host}: the shim adds your identity to what it forwards.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEADDR") and socket.SO_REUSEADDR and family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"Port {port} on {host} is in use: is a `claude-shim serve` already running? Choose one with --port."
            ) from None
        raise ConfigError(f"Cannot listen on {host}:{port}: {error.strerror}") from None
    # Listening now means a client that starts right after this returns is queued, not refused.
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ShimServer(uvicorn.Server):
    """uvicorn, optionally without its signal handlers (`claude-shim run` lets its child handle Ctrl-C)."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool = True) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self._handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


def make_server(app: Starlette, *, access_log: bool, handle_signals: bool = True) -> ShimServer:
    """A uvicorn server for the shim app that adds no headers of its own."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        access_log=access_log,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )
    return ShimServer(config, handle_signals=handle_signals)
