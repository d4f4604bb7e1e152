"""The retrying batch sender: a batch goes to the sink by its deadline, or to the fallback log and the spill.

While the sink is known to be failing, batches go straight to the fallback; a probe now and then, later and
later, finds out whether it is back."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from gateway.audit.counters import AuditCounters
from gateway.audit.fallback import Fallback
from gateway.audit.sink_base import AuditSink, BatchRefused, RowsRejected, SinkServerError
from gateway.audit.spill import Pending

logger = logging.getLogger("gateway.audit")

# The longest one probe of a failing sink may hold up the queue behind it.
PROBE_SECONDS = 1.0


class BatchSender:
    """Settles batches of rows: written, rejected (logged), or failed over (logged and spilled); retries with
    backoff and jitter, and halves a batch the sink chokes on to find the row at fault."""

    def __init__(
        self,
        sink: AuditSink,
        fallback: Fallback,
        counters: AuditCounters,
        *,
        durable_seconds: float,
        max_backoff: float,
    ) -> None:
        self.sink = sink
        self.healthy = True  # the last write was accepted: queued rows wait for the sink, the spill is replayed
        self._fallback = fallback
        self._counters = counters
        self._durable_seconds = durable_seconds
        self._max_backoff = max_backoff
        self._probe_delay = 0.5
        self._next_probe = 0.0

    @property
    def known_failing(self) -> bool:
        """The sink failed lately and no probe is due: rows go to the fallback without waiting for it."""
        return not self.healthy and time.monotonic() < self._next_probe

    @property
    def probe_due(self) -> bool:
        return time.monotonic() >= self._next_probe

    async def deliver(self, batch: list[Pending], deadline: float, *, replay: bool = False) -> None:
        """Settle every row of the batch by `deadline` (a `time.monotonic()` value)."""
        rows = [row for row, _ in batch]
        delay = 0.1
        server_errors = 0
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.05)):
                    await self.sink.write(rows)
            except RowsRejected as exc:
                self.healthy = True
                refused = {index: reason for index, reason in exc.rejected if 0 <= index < len(rows)}
                self._note_written(len(rows) - len(refused), replay)
                for index, reason in refused.items():
                    self._fallback.reject(rows[index], reason)
                return
            except BatchRefused as exc:
                self.healthy = True
                if len(batch) == 1:
                    self._fallback.reject(rows[0], str(exc))
                else:
                    await self._split(batch, deadline, replay)
                return
            except Exception as exc:  # a sink failure must never end the writer
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, SinkServerError) and len(batch) > 1:
                    server_errors += 1
                    if server_errors >= 2:
                        # The server answers but not to this batch: find the row it chokes on.
                        await self._split(batch, deadline, replay)
                        return
                if time.monotonic() + delay > deadline:
                    self._failing()
                    logger.error(
                        "audit sink %s failing (%s): %d row(s) go to the %s log and the spill",
                        self.sink.name,
                        reason,
                        len(batch),
                        self._fallback.kind.fallback_key,
                    )
                    # Replayed rows are in the log already: back to the spill only.
                    self._fallback.fail_over(batch, f"{self.sink.name}: {reason}", log=not replay)
                    return
                self._counters.retried += len(batch)
                logger.warning(
                    "audit sink %s failed (%s); retrying %d row(s) in %.1fs", self.sink.name, reason, len(batch), delay
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._max_backoff)
            else:
                self.healthy = True
                self._note_written(len(rows), replay)
                return

    async def probe(self) -> None:
        """No traffic to show the sink is back: try one spilled row, once; it stays spilled if that fails."""
        spill = self._fallback.spill
        batch = spill.read_batch(1)
        rows = [row for row, _ in batch]
        if not rows:
            spill.commit()
            return
        try:
            async with asyncio.timeout(min(PROBE_SECONDS, self._durable_seconds)):
                await self.sink.write(rows)
        except (RowsRejected, BatchRefused) as exc:
            # The sink answers: the row is the trouble, not the sink.
            spill.commit()
            self.healthy = True
            self._fallback.reject(
                rows[0], exc.rejected[0][1] if isinstance(exc, RowsRejected) and exc.rejected else str(exc)
            )
        except Exception as exc:
            if isinstance(exc, SinkServerError):
                # The server answers but not to this row, which may be the trouble: to the back of the spill (for
                # MAX_ROUNDS), so that it cannot keep the rows behind it from being tried.
                spill.commit()
                self._fallback.fail_over(batch, f"{self.sink.name}: {exc}", log=False)
            else:
                spill.rewind()
            self._failing()
            logger.info("audit sink %s still unavailable (%s)", self.sink.name, exc)
        else:
            spill.commit()
            self.healthy = True
            self._note_written(len(rows), replay=True)

    async def _split(self, batch: list[Pending], deadline: float, replay: bool) -> None:
        half = len(batch) // 2
        await self.deliver(batch[:half], deadline, replay=replay)
        await self.deliver(batch[half:], deadline, replay=replay)

    def _failing(self) -> None:
        """The sink failed: rows go straight to the log until a probe, later and later, finds it back."""
        if self.healthy:
            self._probe_delay = 0.5
        else:
            self._probe_delay = min(self._probe_delay * 2, self._max_backoff)
        self.healthy = False
        self._next_probe = time.monotonic() + self._probe_delay

    def _note_written(self, count: int, replay: bool) -> None:
        self._counters.written += count
        if replay:
            self._counters.replayed += count
