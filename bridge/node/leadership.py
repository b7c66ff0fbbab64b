"""Several bridge processes on one PostgreSQL database: one sequences, the others stand by.

Every process serves reads from the database. One of them leads: it holds the database's
advisory lock (`bridge.store.postgres.Leadership`), has incremented the epoch (the fencing token
checked inside every block commit), loaded the ledger and runs the `Sequencer`. The others run
a `Standby` in its place, which refuses instructions with the retryable UNAVAILABLE ("not the
leader": a central bank node then tries another bridge address) and stores attestations directly
(they are verified against stored blocks and idempotent, so they need no sequencer).

`lead_when_possible` tries for the lock every `POLL_SECONDS`; once leading, it checks every
`POLL_SECONDS` (also while it loads the ledger) that its lock session is alive, which renews
the lease the server holds it to (`bridge.store.postgres.LEASE_SECONDS`), and that no block
commit has failed (the outcome of a commit cut off mid-way is unknown: the ledger is reloaded
from the database rather than trusted), and steps down otherwise. Leadership then passes to
whichever process takes the lock first, this one included, at the next height: the new leader
loads the ledger after its epoch increment, which waits for any commit of the old leader still
in flight.

`follow_database` moves every process's `ChainFeed` on from the database, so followers' block
streams and finality advance, and the leader sees attestations stored by followers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bridge.core.ledger import SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Envelope, Genesis
from bridge.errors import Reason, Refused
from bridge.log.blocks import Attestation, SealedBlock
from bridge.node.feed import ChainFeed
from bridge.node.sequencer import MonotonicClock, Sequencer
from bridge.settlement import Result, SettlementEngine
from bridge.store.base import Store
from bridge.store.postgres import Leadership, PostgresStore

log = logging.getLogger("bridge.leadership")
POLL_SECONDS = 0.5
FOLLOW_SECONDS = 0.1
NOT_LEADER = Refused(
    Reason.UNAVAILABLE, "not the leader: this bridge process stands by; try another bridge address"
)
STEPPED_DOWN = Refused(
    Reason.OUTCOME_UNKNOWN,
    "this bridge process stopped leading before the outcome was known; "
    "resubmit the same instruction id",
)


class Standby:
    """What stands in for the sequencer while this process does not lead."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="standby-writer")

    def enqueue(
        self, envelope: Envelope, *, deadline: float | None = None
    ) -> asyncio.Future[Result | None]:
        future: asyncio.Future[Result | None] = asyncio.get_running_loop().create_future()
        future.set_result(NOT_LEADER)
        return future

    async def submit(self, envelope: Envelope, *, deadline: float | None = None) -> Result:
        return NOT_LEADER

    def store_attestation(self, attestation: Attestation) -> asyncio.Future[None]:
        """Store a verified attestation of a stored block straight away (idempotent)."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self.store.add_attestations, [attestation])
        future: asyncio.Future[None] = loop.create_future()

        def finished(task: asyncio.Future[list[bool]]) -> None:
            if future.done():
                return
            if task.exception() is not None:
                future.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                future.set_result(None)

        done.add_done_callback(finished)
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class LeaderSequencer(Sequencer):
    """The sequencer of a leader: when leadership ends, every caller still waiting (queued, or
    in a batch whose commit was cut off) is answered at once, retryably, instead of hanging."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: set[asyncio.Future[Result | None]] = set()
        self._attesting: set[asyncio.Future[None]] = set()

    def enqueue(
        self, envelope: Envelope, *, deadline: float | None = None
    ) -> asyncio.Future[Result | None]:
        future = super().enqueue(envelope, deadline=deadline)
        self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)
        return future

    def store_attestation(self, attestation: Attestation) -> asyncio.Future[None]:
        future = super().store_attestation(attestation)
        self._attesting.add(future)
        future.add_done_callback(self._attesting.discard)
        return future

    async def stop(self) -> None:
        await super().stop()
        for future in list(self._waiting):
            if not future.done():
                future.set_result(STEPPED_DOWN)
        for attesting in list(self._attesting):
            if not attesting.done():
                attesting.set_exception(STEPPED_DOWN)


@dataclass(frozen=True, slots=True)
class SequencerOptions:
    max_batch: int
    block_interval: float


async def lead_when_possible(
    *,
    url: str,
    store: PostgresStore,
    genesis: Genesis,
    options: SequencerOptions,
    install: Callable[[Sequencer | None], None],
    on_block: Callable[[SealedBlock], None],
) -> None:
    """Take leadership whenever it is free, sequence while it lasts; runs until cancelled.

    `install(sequencer)` hands the running sequencer to the service (None: stand by again)."""
    loop = asyncio.get_running_loop()
    leadership = Leadership(url)
    try:
        while True:
            epoch = await loop.run_in_executor(None, leadership.try_acquire)
            if epoch is None:
                await asyncio.sleep(POLL_SECONDS)
                continue
            await _lead(leadership, epoch, store, genesis, options, install, on_block)
    finally:
        leadership.release()


async def _lead(
    leadership: Leadership,
    epoch: int,
    store: PostgresStore,
    genesis: Genesis,
    options: SequencerOptions,
    install: Callable[[Sequencer | None], None],
    on_block: Callable[[SealedBlock], None],
) -> None:
    loop = asyncio.get_running_loop()
    store.epoch, store.failed = epoch, False
    sequencer: Sequencer | None = None
    try:
        opening = loop.run_in_executor(
            None,
            lambda: SettlementEngine.open(
                store, genesis, verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS
            ),
        )
        # loading a large ledger can outlast the lease: keep proving this process is alive
        while not opening.done():
            if not await loop.run_in_executor(None, leadership.held):
                log.warning("leadership lost while loading the ledger", extra={"epoch": epoch})
                with contextlib.suppress(Exception):
                    await opening
                return
            await asyncio.wait({opening}, timeout=POLL_SECONDS)
        engine = await opening
        head = await loop.run_in_executor(None, store.head)
        sequencer = LeaderSequencer(
            engine,
            clock=MonotonicClock(start=0 if head is None else head.time),
            max_batch=options.max_batch,
            block_interval=options.block_interval,
            on_block=on_block,
        )
        sequencer.start()
        install(sequencer)
        log.info("leading", extra={"epoch": epoch, "height": engine.height})
        while not store.failed and await loop.run_in_executor(None, leadership.held):
            await asyncio.sleep(POLL_SECONDS)
        log.warning("stepping down", extra={"epoch": epoch, "commit_failed": store.failed})
    except Exception:
        log.exception("leadership lost", extra={"epoch": epoch})
        await asyncio.sleep(POLL_SECONDS)
    finally:
        install(None)
        if sequencer is not None:
            await sequencer.stop()
        leadership.release()
        store.epoch = None


async def follow_database(reader: Store, feed: ChainFeed) -> None:
    """Move the feed on to the database's head and final height; runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(FOLLOW_SECONDS)
        with contextlib.suppress(Exception):
            head = await loop.run_in_executor(None, reader.head)
            if head is not None and head.height > feed.height:
                feed.block_sealed(head.height)
            if feed.final_height < feed.height:
                feed.refresh_final()
