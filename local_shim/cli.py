"""`claude-shim`: configure, login, logout, status, serve, run, env, doctor, token, usage, claude-settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import shlex
import sys
import threading
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from local_shim import claude_settings, usage
from local_shim.auth import build_provider
from local_shim.bearer import revoke_all_sign_ins
from local_shim.checks import Check, run_checks
from local_shim.config import DEFAULT_PORT, ShimSettings, config_dir, load_settings, read_config_file, write_config_file
from local_shim.errors import ConfigError, ShimError
from local_shim.login import login, logout
from local_shim.output import Output
from local_shim.run import run_command
from local_shim.server import bind_loopback, create_app, make_server
from local_shim.store import TokenStore, local_secret

LOG_FILE = "claude-shim.log"


# -- commands ----------------------------------------------------------------------------------------------------


def cmd_configure(args: argparse.Namespace, out: Output) -> int:
    updates = {
        "gateway_url": args.gateway_url,
        "oauth_client_id": args.oauth_client_id,
        "oauth_client_secret": args.oauth_client_secret,
        "audience": args.audience,
        "port": args.port,
        "credentials": args.credentials,
        "impersonate_service_account": args.impersonate_service_account,
        "token_header": args.token_header,
        "token_store": args.token_store,
    }
    if all(value is None for value in updates.values()):
        current = read_config_file()
        if not current:
            raise ConfigError(
                "Nothing configured yet: run the `claude-shim configure ...` command your admin gave you."
            )
        for key, value in sorted(current.items()):
            out.line(f"{key} = {'(set)' if 'secret' in key else value}")
        return 0
    path = write_config_file(updates)
    local_secret(config_dir())
    out.line(f"Saved settings to {path}.")
    settings = load_settings()
    if settings.credentials == "user":
        out.line("Next: `claude-shim login`, then `claude-shim run -- claude`.")
    else:
        out.line("Next: `claude-shim doctor`, then `claude-shim run -- claude`.")
    return 0


def cmd_login(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    if settings.credentials != "user":
        out.line(f"Credentials are {settings.credentials!r}: no browser sign-in needed. Checking them:")
        return _print_checks(asyncio.run(run_checks(settings, full=False)), out)

    def open_browser(url: str) -> None:
        redirect_uri = dict(parse_qsl(urlsplit(url).query)).get("redirect_uri", "")
        out.line("Sign in with Google in your browser. If it does not open, visit this URL:")
        out.line(f"  {url}")
        out.line(
            f"Google then sends the browser to {redirect_uri}. If that page cannot load (the browser runs on "
            "another machine), paste the address it ended up on here and press Enter."
        )
        threading.Thread(target=_relay_pasted_redirect, args=(redirect_uri, out), daemon=True).start()
        if not args.no_browser:
            webbrowser.open(url)

    store = TokenStore(config_dir(), settings.token_store)
    result = asyncio.run(login(settings, store, open_browser=open_browser))
    revoke_all_sign_ins(config_dir())  # a Claude Code sign-in approved for the previous account ends here
    out.line(f"Signed in as {result.email or 'your Google account'}; the sign-in is stored in {result.stored_in}.")
    out.line("Next: `claude-shim run -- claude`.")
    return 0


def _relay_pasted_redirect(redirect_uri: str, out: Output) -> None:
    """Hand a pasted redirect address to the login's own loopback listener, which checks its state."""
    try:
        for line in sys.stdin:
            pasted = line.strip()
            if not pasted:
                continue
            if not redirect_uri or not pasted.startswith(redirect_uri):
                out.note(f"That is not the sign-in address: it starts with {redirect_uri}")
                continue
            try:
                # Straight to 127.0.0.1, never through a proxy from the environment.
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                opener.open(pasted, timeout=10).close()
            except urllib.error.HTTPError as error:
                out.note(f"The sign-in address was refused (HTTP {error.code}); sign in again in the browser.")
            return
    except (OSError, ValueError):
        return  # no usable terminal input: the browser redirect is the only way in


def cmd_logout(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    store = TokenStore(config_dir(), settings.token_store)
    was_signed_in, revoked = asyncio.run(logout(settings, store))
    revoke_all_sign_ins(config_dir())  # Claude Code's sign-ins to this shim end with the Google one
    if not was_signed_in:
        out.line("Not signed in.")
    elif revoked:
        out.line("Signed out: the stored sign-in is removed and revoked at Google.")
    else:
        out.line("Signed out: the stored sign-in is removed (Google could not be asked to revoke it).")
    return 0


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    out.line(f"gateway:     {settings.gateway_url or '(not configured)'}")
    mode = settings.credentials + (
        f" as {settings.impersonate_service_account}" if settings.impersonate_service_account else ""
    )
    out.line(f"credentials: {mode}")
    out.line(f"shim port:   {settings.port}")
    return _print_checks(asyncio.run(run_checks(settings, full=False)), out)


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    checks = asyncio.run(run_checks(settings, full=True))
    if claude_settings.configured_mode() == "helper":
        # Claude Code calls the gateway itself and never presents the local secret.
        checks = [
            Check(c.name, True, "not needed by the apiKeyHelper set-up") if c.name == "local secret" else c
            for c in checks
        ]
    if all(item.ok for item in checks):
        checks += claude_settings.check(settings)
    status = _print_checks(checks, out)
    out.line(
        "Everything looks right." if status == 0 else "Fix the problems above, then run `claude-shim doctor` again."
    )
    return status


def cmd_env(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    secret = local_secret(config_dir())
    out.line(f"export ANTHROPIC_BASE_URL={shlex.quote(f'http://127.0.0.1:{settings.port}')}")
    out.line(f"export ANTHROPIC_AUTH_TOKEN={shlex.quote(secret)}")
    out.note('# With `claude-shim serve` running: eval "$(claude-shim env)" and then start claude.')
    return 0


def cmd_token(args: argparse.Namespace, out: Output) -> int:
    """Claude Code's apiKeyHelper: a fresh ID token on stdout and nothing else there."""
    settings = _settings(args)

    async def fresh() -> str:
        async with build_provider(settings) as provider:
            return (await provider.get()).value

    out.line(asyncio.run(fresh()))
    return 0


def cmd_usage(args: argparse.Namespace, out: Output) -> int:
    """The person's own spend and budgets, from the gateway, with the figures Claude Code shows."""
    found = asyncio.run(usage.fetch_usage(_settings(args)))
    for line in usage.table(found):
        out.line(line)
    return 0


def cmd_claude_settings(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    path = claude_settings.write(args.mode, settings)
    out.line(f"Wrote Claude Code's settings for the {args.mode} set-up to {path}.")
    if args.mode == "gateway":
        out.line(
            f"Next: keep `claude-shim serve --port {settings.port}` running, start `claude`, and sign in with /login."
        )
    else:
        out.line(f"Next: start `claude`: it calls {settings.gateway_url} itself with a token from `claude-shim token`.")
    return 0


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    settings = _settings(args)
    settings.require_gateway()
    secret = local_secret(config_dir())
    _log_to(logging.StreamHandler(sys.stderr))
    sock = bind_loopback(settings.host, settings.port)
    port = sock.getsockname()[1]
    server = make_server(create_app(settings, port=port, secret=secret), access_log=True)
    out.line(f"claude-shim: forwarding http://{settings.host}:{port} to {settings.gateway_url} (Ctrl-C stops)")
    out.line(f'In another shell: eval "$(claude-shim env --port {port})", then run claude.')
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn stopped gracefully, then re-raised the Ctrl-C it caught: that is the normal way out
    out.line("claude-shim: stopped")
    return 0


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("Nothing to run: use `claude-shim run -- claude` (or any command after `--`).")
    settings = _settings(args, port=args.port if args.port is not None else 0)
    settings.require_gateway()
    secret = local_secret(config_dir())
    # The child owns the terminal (Claude Code draws a full-screen UI), so the shim logs to a file.
    log_path = config_dir() / LOG_FILE
    _log_to(logging.handlers.RotatingFileHandler(log_path, maxBytes=1_000_000, backupCount=1))
    return asyncio.run(run_command(settings, secret, command, out, log_path))


# -- plumbing ----------------------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **extra: Any) -> ShimSettings:
    flags = {
        "gateway_url": getattr(args, "gateway_url", None),
        "credentials": getattr(args, "credentials", None),
        "impersonate_service_account": getattr(args, "impersonate_service_account", None),
        "audience": getattr(args, "audience", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    return load_settings(**{**flags, **extra})


def _print_checks(checks: list[Check], out: Output) -> int:
    for check in checks:
        out.check(check)
    return 0 if all(check.ok for check in checks) else 1


def _log_to(handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("local_shim", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.getLogger("uvicorn.access").propagate = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-shim",
        description="Sign in with Google and carry Claude Code through IAP to the company's Claude gateway.",
    )
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND")

    credentials = argparse.ArgumentParser(add_help=False)
    credentials.add_argument("--credentials", choices=["user", "adc", "impersonate"], help="whose identity to use")
    credentials.add_argument("--impersonate-service-account", metavar="EMAIL")
    credentials.add_argument("--audience", metavar="AUD", help="ID token audience for service accounts")
    credentials.add_argument("--gateway-url", metavar="URL")
    port = argparse.ArgumentParser(add_help=False)
    port.add_argument("--port", type=int, metavar="N", help=f"the shim's port (default {DEFAULT_PORT})")

    configure = commands.add_parser("configure", parents=[credentials, port], help="save the gateway and OAuth client")
    configure.add_argument("--oauth-client-id", metavar="ID")
    configure.add_argument("--oauth-client-secret", metavar="SECRET")
    configure.add_argument("--token-header", choices=["authorization", "proxy-authorization", "both"])
    configure.add_argument("--token-store", choices=["auto", "keyring", "file"])
    configure.set_defaults(handler=cmd_configure)

    login_parser = commands.add_parser("login", parents=[credentials], help="sign in with Google in the browser")
    login_parser.add_argument("--no-browser", action="store_true", help="only print the sign-in URL")
    login_parser.set_defaults(handler=cmd_login)
    commands.add_parser("logout", help="forget and revoke the sign-in").set_defaults(handler=cmd_logout)
    commands.add_parser("status", parents=[credentials], help="who is signed in; does the gateway answer").set_defaults(
        handler=cmd_status
    )
    commands.add_parser("doctor", parents=[credentials], help="find problems and say how to fix them").set_defaults(
        handler=cmd_doctor
    )
    commands.add_parser("env", parents=[port], help="print export lines for a shell").set_defaults(handler=cmd_env)
    commands.add_parser(
        "token", parents=[credentials], help="print a fresh Google ID token (Claude Code's apiKeyHelper)"
    ).set_defaults(handler=cmd_token)
    commands.add_parser(
        "usage", parents=[credentials], help="your spend and what is left of your budgets, from the gateway"
    ).set_defaults(handler=cmd_usage)
    settings_parser = commands.add_parser(
        "claude-settings", parents=[port], help="write Claude Code's settings: gateway sign-in via the shim, or helper"
    )
    settings_parser.add_argument(
        "mode", choices=["gateway", "helper"], help="gateway: /login to the shim; helper: none"
    )
    settings_parser.set_defaults(handler=cmd_claude_settings)
    serve = commands.add_parser("serve", parents=[credentials, port], help="run the shim in the foreground")
    serve.add_argument("--host", help="a loopback address (default 127.0.0.1)")
    serve.set_defaults(handler=cmd_serve)
    run = commands.add_parser(
        "run", parents=[credentials, port], help="run a command (e.g. claude) through a shim on a free port"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    run.set_defaults(handler=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: one readable line on failure, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output()
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args, out))
    except ShimError as error:
        out.error(error.message)
        return 1
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except Exception as error:
        if os.environ.get("CLAUDE_SHIM_DEBUG"):
            raise
        detail = str(error).strip().splitlines()
        out.error(
            f"unexpected {type(error).__name__}{': ' + detail[0][:300] if detail else ''} "
            "(set CLAUDE_SHIM_DEBUG=1 for details)"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
