"""The audit trail of requests under way: each request's row handed off once (with its prompt capture, if any),
and the order the shutdown follows so that every row is written: cut the relays, let them settle, drain the
captures, close the writers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.audit.record import AuditRecord
from gateway.audit.writer import AuditWriter
from gateway.capture.levels import CaptureLevel
from gateway.capture.pipeline import CapturePipeline, RequestCapture
from gateway.config import Settings

logger = logging.getLogger("gateway")

# The shutdown budget (GATEWAY_SHUTDOWN_SECONDS from SIGTERM) in its parts: streams run until STREAM_RESERVE
# seconds before its end and are then cut; the requests cut finish their bookkeeping; captures under way get
# CAPTURE_DRAIN_SECONDS; audit rows are in the sink or the audit_fallback log AUDIT_RESERVE seconds before the end.
STREAM_RESERVE = 2.5
AUDIT_RESERVE = 1.0
CAPTURE_DRAIN_SECONDS = 0.5
# Shutting down without a SIGTERM noted (the lifespan ends, e.g. under another server): time for the writers.
CLOSE_SECONDS = 2.0


class AuditTrail:
    """Where each request's audit row goes, and the shutdown of everything that writes rows."""

    relays: set[Callable[[], None]]
    """Relays under way (their cut handles), for the shutdown to cut."""
    in_flight: int
    """Requests being answered, until their audit row is submitted."""
    stopping_at: float | None
    """`time.monotonic()` of the SIGTERM, once one came."""
    cutting: bool
    """The streams' share of the shutdown budget is spent: relays are cut, new ones refused."""

    def __init__(
        self,
        settings: Settings,
        writer: AuditWriter,
        capture: CapturePipeline | None = None,
        telemetry: AuditWriter | None = None,
    ) -> None:
        self._shutdown_seconds = settings.shutdown_seconds
        self.writer = writer
        self.capture = capture
        """Prompt capture, when a policy rule asks for it; None otherwise (and the relay does no capture work)."""
        self.telemetry = telemetry
        """Claude Code's OpenTelemetry, stamped with the verified sender, to the telemetry table; None while that
        table is missing (exports are then answered and dropped: inference never depends on it)."""
        self.relays = set()
        self.in_flight = 0
        self.stopping_at = None
        self.cutting = False

    def begin(self) -> None:
        """A request arrived: it is in flight until `finish`."""
        self.in_flight += 1

    def capture_for(self, level: CaptureLevel, path: str, body: bytes, record: AuditRecord) -> RequestCapture | None:
        """The request's prompt capture at the level its policy rule asks for, or None."""
        return None if self.capture is None else self.capture.begin(level, path, body, record)

    def admit(self, record: AuditRecord) -> None:
        """The request goes upstream: a crash from here on leaves it visible as incomplete."""
        self.writer.admit(record)

    def finish(self, record: AuditRecord, capture: RequestCapture | None) -> None:
        """The request is answered: its row goes to the writer, through its capture when it has one."""
        if capture is None:
            self.writer.submit(record)
        else:
            capture.submit(record)  # audits the request once its content row is built
        self.in_flight -= 1

    def begin_shutdown(self, signalled_at: float | None = None) -> None:
        """SIGTERM came (at `signalled_at`): streams may run until STREAM_RESERVE seconds before the budget ends."""
        if self.stopping_at is not None:
            return
        self.stopping_at = signalled_at if signalled_at is not None else time.monotonic()
        cut_in = max(self.stopping_at + self._shutdown_seconds - STREAM_RESERVE - time.monotonic(), 0.0)
        asyncio.get_running_loop().call_later(cut_in, self.cut_relays)
        logger.info(
            "shutting down: %d request(s) under way; streams still running in %.1fs are cut", self.in_flight, cut_in
        )

    def cut_relays(self) -> None:
        """End every relay under way with an overloaded_error (the client retries elsewhere); refuse new ones."""
        self.cutting = True
        if self.relays:
            logger.warning("shutdown budget: cutting %d relay(s) still under way", len(self.relays))
        for cut in list(self.relays):
            cut()

    def deadline(self) -> float:
        """When every row must be in the sink or the log."""
        if self.stopping_at is None:
            return time.monotonic() + CLOSE_SECONDS
        return self.stopping_at + self._shutdown_seconds - AUDIT_RESERVE

    async def settle(self, deadline: float) -> None:
        """Requests the server cancelled still settle their spend and submit their rows: give them a moment."""
        settle_by = min(deadline - CAPTURE_DRAIN_SECONDS - 0.5, time.monotonic() + 1.0)
        while self.in_flight and time.monotonic() < settle_by:
            await asyncio.sleep(0.02)

    async def aclose(self, deadline: float) -> None:
        """Rows first: they must reach the sink before the process goes away. Captures under way submit their
        requests' metadata rows, so they finish before the writers drain, and the writers drain at once."""
        closing = [self.writer.aclose(deadline)]
        if self.telemetry is not None:
            closing.append(self.telemetry.aclose(deadline))
        if self.capture is not None:
            await self.capture.drain(max(min(CAPTURE_DRAIN_SECONDS, deadline - time.monotonic() - 0.5), 0.05))
            closing.append(self.capture.aclose(deadline))
        await asyncio.gather(*closing)
