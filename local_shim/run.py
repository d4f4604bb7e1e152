"""`claude-shim run -- COMMAND`: the shim served on a free loopback port for as long as the command runs, the
command's Anthropic clients pointed at it, and the terminal's signals passed on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from local_shim.auth import build_provider
from local_shim.config import ShimSettings
from local_shim.errors import ShimError
from local_shim.output import Output
from local_shim.server import bind_loopback, create_app, make_server


async def run_command(settings: ShimSettings, secret: str, command: list[str], out: Output, log_path: Path) -> int:
    """Serve the shim on a free loopback port while `command` runs with Anthropic clients pointed at it; the
    command's exit code (128 + N for a signal N)."""
    async with build_provider(settings) as provider:
        await provider.get()  # say now, not inside Claude Code, if the sign-in is missing
        sock = bind_loopback(settings.host, settings.port)
        port = sock.getsockname()[1]
        server = make_server(
            create_app(settings, port=port, secret=secret, provider=provider), access_log=False, handle_signals=False
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if serving.done():
                    await serving
                    raise ShimError(f"The shim did not start; see {log_path}.")
                await asyncio.sleep(0.01)
            try:
                child = await asyncio.create_subprocess_exec(*command, env=child_environment(port, secret))
            except FileNotFoundError:
                out.error(f"command not found: {command[0]}")
                return 127
            except PermissionError:
                out.error(f"permission denied: {command[0]}")
                return 126
            with signals_go_to(child):
                code = await child.wait()
        finally:
            server.should_exit = True
            await serving
    return code if code >= 0 else 128 - code


def child_environment(port: int, secret: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `claude-shim run`'s command: Anthropic clients pointed at the shim."""
    env = dict(os.environ if base is None else base)
    env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    env["ANTHROPIC_AUTH_TOKEN"] = secret
    env.pop("ANTHROPIC_API_KEY", None)  # it would go nowhere, and Claude Code asks about it
    for name in ("NO_PROXY", "no_proxy"):  # a corporate proxy must not be asked for 127.0.0.1
        env[name] = ",".join(filter(None, [env.get(name), "127.0.0.1", "localhost"]))
    return env


@contextlib.contextmanager
def signals_go_to(child: asyncio.subprocess.Process) -> Iterator[None]:
    """While the child runs, Ctrl-C is the child's business and SIGTERM/SIGHUP are passed on to it."""
    loop = asyncio.get_running_loop()
    installed = []
    handlers: dict[signal.Signals, Callable[[], None]] = {signal.SIGINT: lambda: None}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            sig = signal.Signals[name]
            handlers[sig] = lambda sig=sig: child.send_signal(sig)  # type: ignore[misc]
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # Windows: the console delivers Ctrl-C to the child itself
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
