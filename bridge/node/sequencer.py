"""The bridge's single sequencer: queue instructions, settle them in batches, wake the waiters.

Instructions from every central bank node are queued; one task takes whatever is waiting (up to
`max_batch`), applies and seals it on the event loop, commits the block in a worker thread
(requests keep queueing meanwhile: group commit), then resolves each caller's future. A caller
learns its result only after its block is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bridge.domain import Envelope, Millis
from bridge.errors import Reason, Refused, StoreError
from bridge.log.blocks import Attestation, SealedBlock
from bridge.metrics import stage
from bridge.node.episodes import FailureEpisode
from bridge.settlement import OutboxRow, Result, SettlementEngine

Clock = Callable[[], Millis]
log = logging.getLogger("bridge.sequencer")
RESOLVE = stage("resolve", thread_cpu=True)  # answering the callers of a settled batch


def wall_clock_ms() -> Millis:
    return time.time_ns() // 1_000_000


class MonotonicClock:
    """Wall-clock milliseconds that never go backwards (the ledger's logical time)."""

    def __init__(self, source: Clock = wall_clock_ms, start: Millis = 0) -> None:
        self._source = source
        self._last = start

    def __call__(self) -> Millis:
        now = self._source()
        if now > self._last:
            self._last = now
        return self._last


@dataclass(slots=True)
class _Pending:
    envelope: Envelope | None  # None: a tick that only expires due PvPs
    future: asyncio.Future[Result | None] = field(default_factory=asyncio.Future)
    deadline: float | None = None  # event-loop time after which its caller no longer waits

    def abandoned(self, now: float) -> bool:
        """Its caller has gone (the call was cancelled, or its deadline has passed)."""
        return self.envelope is not None and (
            self.future.done() or (self.deadline is not None and now >= self.deadline)
        )


# the answer to an instruction dropped because its caller had gone before it was sequenced
ABANDONED = Refused(
    Reason.UNAVAILABLE,
    "dropped unsettled: the caller's deadline passed before the instruction was sequenced; "
    "resubmit the same instruction id",
)


class Sequencer:
    """Serialises all ledger writes of one bridge node."""

    def __init__(
        self,
        engine: SettlementEngine,
        *,
        clock: Clock,
        max_batch: int = 1000,
        on_block: Callable[[SealedBlock], None] = lambda block: None,
        expiry_interval: float = 0.05,
        block_interval: float = 0.0,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.max_batch = max_batch
        self.on_block = on_block
        # handed each committed block's outbox row after `on_block` (the MQTT publisher; None
        # when the store did not say which row it wrote: read it from the store)
        self.on_outbox: Callable[[OutboxRow | None], None] | None = None
        self.expiry_interval = expiry_interval
        # least time between the starts of two batches: every block costs the bridge a commit
        # and a fan-out and each central bank node a replay, so waiting a few ms for more
        # instructions makes larger blocks under load, at the cost of latency (an idle bridge
        # never waits). Off by default: at the rates measured so far the commit's own fsync
        # already gathers as much (docs/performance.md).
        self.block_interval = block_interval
        self._last_batch = -1e9
        # every write to the store runs on this one thread, so writers never wait on each
        # other for SQLite's write lock
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        # attestations waiting to be stored with the next block (or on their own if none)
        self._attestations: list[tuple[Attestation, asyncio.Future[None]]] = []
        self._woken = False
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # instructions dropped unsettled because their caller had gone
        # a full or failing disk fails every write until it is fixed: logged once per episode
        self.store_writes = FailureEpisode(log, "ledger store writes")

    @property
    def depth(self) -> int:
        """Instructions (and ticks) queued for the next batches."""
        return self._queue.qsize()

    async def submit(self, envelope: Envelope, *, deadline: float | None = None) -> Result:
        result = await self.enqueue(envelope, deadline=deadline)
        assert result is not None
        return result

    def enqueue(
        self, envelope: Envelope, *, deadline: float | None = None
    ) -> asyncio.Future[Result | None]:
        """Queue one instruction; the future resolves once its batch is durable. Work whose
        caller has gone before it is sequenced (the future was cancelled, or `deadline`, in
        event-loop time, has passed) is dropped unsettled: settling it would only surprise a
        caller that has already given up and will resubmit."""
        pending = _Pending(envelope, deadline=deadline)
        self._queue.put_nowait(pending)
        return pending.future

    def store_attestation(self, attestation: Attestation) -> asyncio.Future[None]:
        """Store a (verified) attestation durably: in the next block's transaction, or on its
        own when no block is coming; the future resolves once it is on disk."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._attestations.append((attestation, future))
        if not self._woken:
            self._woken = True
            self._queue.put_nowait(_Pending(None))  # a tick: settle whatever is there now
        return future

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="sequencer"),
            asyncio.create_task(self._expire_regularly(), name="expiry"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.writer.shutdown(wait=True)

    async def _expire_regularly(self) -> None:
        while True:
            await asyncio.sleep(self.expiry_interval)
            if self._has_due_expiry():
                self._queue.put_nowait(_Pending(None))

    def _has_due_expiry(self) -> bool:
        due = self.engine.ledger.next_expiry()
        return due is not None and due <= self.clock()

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            wait = self._last_batch + self.block_interval - loop.time()
            if wait > 0 and queue.qsize() + 1 < self.max_batch:
                await asyncio.sleep(wait)
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = self._without_abandoned(batch, loop.time())
            if not batch:
                continue
            self._last_batch = loop.time()
            self._woken = False
            attestations, self._attestations = self._attestations, []
            failure = await self._settle(batch, [a for a, _ in attestations])
            for _, future in attestations:
                if future.done():
                    continue
                if failure is None:
                    future.set_result(None)
                else:
                    future.set_exception(failure)

    def _without_abandoned(self, batch: list[_Pending], now: float) -> list[_Pending]:
        kept = []
        for pending in batch:
            if not pending.abandoned(now):
                kept.append(pending)
                continue
            self.dropped += 1
            if not pending.future.done():
                pending.future.set_result(ABANDONED)
        return kept

    async def _settle(
        self, batch: list[_Pending], attestations: list[Attestation]
    ) -> Exception | None:
        """Settle a batch (and store `attestations`); what made the attestations fail."""
        engine = self.engine
        envelopes = [p.envelope for p in batch if p.envelope is not None]
        loop = asyncio.get_running_loop()
        try:
            prepared = engine.prepare(envelopes, self.clock())
            failure = None
            if prepared.block is not None:
                failure = await loop.run_in_executor(
                    self.writer, engine.commit, prepared, attestations
                )
            elif attestations:
                await loop.run_in_executor(self.writer, engine.store.add_attestations, attestations)
            settled = engine.finish(prepared, failure)
        except Exception as error:
            # The store failed (or a bug): undo the batch, answer OUTCOME_UNKNOWN, keep serving.
            self.store_writes.failed(error, traceback=not isinstance(error, StoreError))
            engine.ledger.rollback()
            if self.on_outbox is not None:
                self.on_outbox(None)  # a block may have been committed all the same
            unknown = Refused(
                Reason.OUTCOME_UNKNOWN,
                "the bridge could not settle this batch; resubmit the same instruction id",
            )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result(None if pending.envelope is None else unknown)
            return error
        if failure is not None:
            self.store_writes.failed(failure)
        elif prepared.block is not None or attestations:
            self.store_writes.succeeded()  # something was written: the store works again
        with RESOLVE.timed(len(batch)):
            results = iter(settled.results)
            for pending in batch:
                if pending.envelope is None:
                    pending.future.set_result(None)
                elif not pending.future.done():
                    pending.future.set_result(next(results))
                else:
                    next(results)
            if settled.block is not None:
                self.on_block(settled.block)
                if self.on_outbox is not None:
                    self.on_outbox(settled.outbox)
        return failure
