"""Processes the benchmark starts, and what /proc says they cost (CPU seconds, resident memory)."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from string import Template

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process, all its threads included."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def all_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine, by pid."""
    times = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all CPUs (the `steal` column of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0


def status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """A started process (and, for nginx, its workers), stopped with SIGTERM and then SIGKILL."""

    def __init__(
        self, name: str, argv: list[str], *, env: dict[str, str], log: Path, cpu: str | None, nice: int = 0
    ) -> None:
        self.name = name
        # Both exec the command, so the pid is the command's own.
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", cpu, *argv]
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=BENCH_DIR.parent
            )
        self.pid = self.popen.pid

    def pids(self) -> list[int]:
        return [self.pid, *children(self.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_kb(self) -> int:
        return sum(status_kb(pid, "VmRSS") for pid in self.pids())

    def peak_rss_kb(self) -> int:
        return sum(status_kb(pid, "VmHWM") for pid in self.pids())

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in reversed(self.pids()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_ready(proc: Proc, port: int, request: tuple[str, str, bytes, dict[str, str]], timeout: float = 20.0) -> None:
    """Wait until the process answers `request` (method, path, body, headers) with 200."""
    method, path, body, headers = request
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if response.status == 200:
                return
            last = f"HTTP {response.status}: {data[:300]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not become ready on port {port}: {last}\n{proc.tail()}")


def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def write_nginx_conf(run_dir: Path, port: int, upstream_port: int) -> Path:
    template = Template((BENCH_DIR / "nginx.conf.template").read_text())
    # Workers would drop to `nobody`, who cannot write the run directory; as root, stay root.
    user_line = "user root;" if os.geteuid() == 0 else ""
    conf = run_dir / "nginx.conf"
    conf.write_text(template.substitute(user_line=user_line, run_dir=run_dir, port=port, upstream_port=upstream_port))
    return conf
