"""`claude-gateway serve`: the gateway under uvicorn, cutting its streams in time when Cloud Run sends SIGTERM."""

from __future__ import annotations

import argparse
import errno
import socket
import time
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.cli.output import CLIError
from gateway.cli.policy import read_policy
from gateway.cli.settings import load_settings
from gateway.logs import configure_logging
from gateway.server import guarded_protocol
from gateway.trail import STREAM_RESERVE


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    graceful_seconds: float = 7.0,
    *,
    header_timeout: float = 10.0,
    max_connections: int | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,
        server_header=False,
        date_header=False,
        # The gateway reads X-Forwarded-For itself (the last entry, Google's); uvicorn's middleware would only
        # add a layer to every request.
        proxy_headers=False,
        # What still runs after this is cancelled (the gateway's own cut comes first, see GatewayServer).
        timeout_graceful_shutdown=graceful_seconds,  # type: ignore[arg-type]  # uvicorn takes any number
        lifespan="on",
        # Connections that never finish their headers are closed; past the cap, new requests get 503 (logged).
        http=guarded_protocol(header_timeout),
        limit_concurrency=max_connections,
    )


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(f"port {port} on {host} is already in use; pick another with --port") from None
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class GatewayServer(uvicorn.Server):
    """uvicorn, telling the gateway when SIGTERM came, so that streams are cut (with an error the client retries,
    and a truthful row) and rows written inside the shutdown budget rather than cancelled at its end."""

    def __init__(self, config: uvicorn.Config, gateway: Any) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.signalled_at: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.begin_shutdown(self.signalled_at)
        await super().shutdown(sockets)


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    settings = load_settings(**overrides)
    if settings.policy_file:
        read_policy(settings.policy_file)  # a bad file is refused here in one readable line, not in a traceback
    check_port_free(settings.host, settings.port)
    configure_logging(settings.log_level, structured=True, project=settings.google_cloud_project)
    app = create_app(settings)
    # Half a second after the gateway's own cut, the server cancels whatever still runs (the rows still follow).
    graceful = settings.shutdown_seconds - STREAM_RESERVE + 0.5
    config = uvicorn_config(
        app,
        settings.host,
        settings.port,
        settings.log_level,
        graceful,
        header_timeout=settings.header_timeout_seconds,
        max_connections=settings.max_connections,
    )
    GatewayServer(config, app.state.gateway).run()
    return 0
