"""The capture worker: one process, below the gateway's priority, that turns finished captures into rows.

A process rather than a thread: the GIL would let a worker thread stall every stream while it redacts. The
functions below the class run in that process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from gateway.capture.patterns import load_redactor
from gateway.capture.redact import Redactor
from gateway.capture.rows import CaptureJob, content_rows

WORKER_NICENESS = 10


class CaptureWorker:
    """Starts the worker process, hands it batches, and stops it at once when asked, even while it is busy."""

    def __init__(self, patterns: str | None, niceness: int = WORKER_NICENESS) -> None:
        self._patterns = patterns
        self._niceness = niceness
        self._pool: ProcessPoolExecutor | None = None
        self._pid: Future[int] | None = None

    async def start(self) -> None:
        """Start the process now rather than at the first capture, which would otherwise wait for it."""
        self._open()
        assert self._pid is not None
        await asyncio.wrap_future(self._pid)

    async def rows(self, jobs: list[CaptureJob], cap_bytes: int) -> list[dict[str, Any] | str]:
        """`content_rows` for the batch, in the worker process; raises `BrokenProcessPool` if it died."""
        if self._pool is None:
            raise RuntimeError("capture worker used before start()")
        return await asyncio.wrap_future(self._pool.submit(worker_rows, jobs, cap_bytes))

    def restart(self) -> None:
        """A fresh process in place of one that timed out or died."""
        self.close()
        self._open()

    def close(self) -> None:
        """Stop the process now, even one busy with a runaway pattern (shutting the pool down would wait for it)."""
        pool, pid = self._pool, self._pid
        self._pool = self._pid = None
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        # The pool offers no way to end a busy worker before Python 3.14's terminate_workers(): find our child by
        # the pid it reported when it came up. One that never came up has nothing running and exits by itself.
        if pid is not None and pid.done() and not pid.cancelled() and pid.exception() is None:
            for process in multiprocessing.active_children():
                if process.pid == pid.result():
                    process.terminate()

    def _open(self) -> None:
        # spawn, not fork: forking a process that runs threads and an event loop copies their locks mid-use.
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker,
            initargs=(self._patterns, self._niceness),
        )
        self._pid = self._pool.submit(ready)


# The worker process's redactor, compiled once when it starts.
_worker_redactor: Redactor | None = None


def start_worker(patterns: str | None, niceness: int) -> None:
    """Initialise the capture worker process: below the gateway's priority, so that on a shared CPU the relay
    runs first and captures take what is left."""
    global _worker_redactor
    # Ctrl-C at a terminal reaches the whole process group: the gateway stops the worker itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:  # pragma: no cover - lowering one's own priority is always allowed on Linux
            pass
    _worker_redactor = load_redactor(patterns)


def worker_rows(jobs: list[CaptureJob], cap_bytes: int) -> list[dict[str, Any] | str]:
    """`content_rows` in the worker process, with its redactor."""
    if _worker_redactor is None:
        raise RuntimeError("capture worker used before start_worker()")
    return content_rows(jobs, _worker_redactor, cap_bytes)


def ready() -> int:
    """The worker's pid, sent for at start-up: the process is up once it answers, and can be stopped by it."""
    return os.getpid()
