"""`claude-gateway dev`: the gateway, a local IAP stand-in and a mock upstream on this machine, and a demo request."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

import httpx
import uvicorn

from gateway import __version__
from gateway.admin import query
from gateway.app import create_app
from gateway.cli.output import say, write
from gateway.cli.serve import check_port_free, uvicorn_config
from gateway.cli.settings import load_settings
from gateway.dev.iap import AssertionSigner, Identity, LocalIAP, fixed_identity
from gateway.dev.mock_upstream import create_mock_upstream
from gateway.logs import configure_logging
from gateway.terminal import field

DEV_AUDIENCE = "/projects/000000000000/locations/local/services/claude-gateway"
MOCK_PREFIX = "/_mock_anthropic"


def cmd_dev(args: argparse.Namespace) -> int:
    host, port = args.host, args.port
    base = f"http://{host}:{port}"
    signer = AssertionSigner()
    probe = load_settings(dev_mode=True)
    real_upstream = probe.anthropic_api_key is not None and not args.mock
    settings = load_settings(
        dev_mode=True,
        iap_audience=[DEV_AUDIENCE],
        iap_certs_url=f"{base}/_iap/public_key",
        upstream_url=probe.upstream_url if real_upstream else base + MOCK_PREFIX,
        audit_sink=f"sqlite:///{args.audit_db}",
    )
    check_port_free(host, port)
    configure_logging(settings.log_level, structured=False)

    email = args.user
    gateway_app = create_app(settings)
    front = LocalIAP(
        gateway_app,
        signer=signer,
        audience=DEV_AUDIENCE,
        identify=fixed_identity(Identity(email=email, subject=f"dev:{email}", hd=email.rsplit("@", 1)[-1])),
    )
    mock = create_mock_upstream(deltas=24, delay=args.mock_delay)

    async def stack(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(MOCK_PREFIX + "/"):
            path = scope["path"][len(MOCK_PREFIX) :]
            await mock({**scope, "path": path, "raw_path": path.encode()}, receive, send)
        else:
            await front(scope, receive, send)

    server = uvicorn.Server(uvicorn_config(stack, host, port, settings.log_level))
    say(f"claude-gateway {__version__} (dev): local IAP stand-in signing in as {email}")
    say(f"  gateway:  {base}  (IAP keys at {base}/_iap/public_key)")
    say(f"  upstream: {'Anthropic API at ' + settings.upstream_url if real_upstream else 'built-in mock Anthropic'}")
    say(f"  audit:    {args.audit_db}  (read it with: claude-gateway audit tail --db {args.audit_db})")
    say(f"  Claude Code: ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN=dev claude")
    say()

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        if not args.no_demo:
            while not server.started and not serving.done():
                await asyncio.sleep(0.05)
            if server.started:
                try:
                    await _demo(base, args.audit_db, settings.upstream_url if real_upstream else None)
                except (httpx.HTTPError, OSError, ValueError) as exc:
                    say(f"demo request failed: {exc}")
        await serving

    asyncio.run(main())
    return 0


async def _demo(base: str, audit_db: str, real_upstream: str | None) -> None:
    """One streamed request through the whole stack, printed as it arrives, then its audit row."""
    # The report draws with matplotlib, whose import is slow: paid once the gateway is serving, not before.
    from gateway.reports.command import dev_report

    model = "claude-haiku-5-5"
    request = {
        "model": model,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello to a new user of the Claude SSO gateway."}],
    }
    say(f"Demo: POST {base}/v1/messages (streaming) ...")
    # Keep the access log line from landing in the middle of the streamed reply.
    access = logging.getLogger("gateway.access")
    level, access.level = access.level, logging.WARNING
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        async with client.stream(
            "POST", f"{base}/v1/messages", json=request, headers={"anthropic-version": "2023-06-01"}
        ) as response:
            write("  reply: ")
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"text_delta"' in line:
                    write(json.loads(line[6:])["delta"]["text"])
                elif line.startswith("data: ") and '"error"' in line and response.status_code == 200:
                    write(f"\n  stream error: {field(line[6:], 500)}")
            if response.status_code != 200:
                await response.aread()
                write(f"HTTP {response.status_code}: {field(response.text, 500)}")
            say()
    await asyncio.sleep(0.5)  # the audit writer flushes in the background, off the response path
    access.setLevel(level)
    rows = query.tail(audit_db, 1)
    if rows:
        say("  audit row:")
        say(_format_row(rows[-1], indent="    "))
        say(f"  report: {await asyncio.to_thread(dev_report, load_settings(dev_mode=True), audit_db)}")
    say("\nThe gateway keeps running; Ctrl-C stops it.")


def _format_row(row: dict[str, Any], indent: str = "") -> str:
    shown = {k: v for k, v in row.items() if v not in (None, "", "[]")}
    return "\n".join(f"{indent}{key}: {field(value)}" for key, value in shown.items())
