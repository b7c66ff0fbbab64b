"""The settlement engine: apply a batch to the ledger, seal it into a block, commit it durably.

This is the one place where the pure core meets the store. `settle` returns receipts only after
the block holding them is committed; if the commit fails the ledger is rolled back whole and
every instruction of the batch is answered OUTCOME_UNKNOWN (not decided: resubmit the same id),
whether it settled, was refused or repeated an instruction of the same batch in memory: each of
those outcomes may have rested on an instruction of the batch that was never stored. Only a
duplicate of an instruction committed in an earlier block keeps its original receipt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.core.ledger import Batch, Ledger, SignatureCheck
from bridge.crypto import Verifier
from bridge.domain import Envelope, Genesis, Millis, Receipt
from bridge.errors import Reason, Refused, StoreError
from bridge.events import Notice, encode_notices, settlement_event
from bridge.log.blocks import Attestation, SealedBlock, seal
from bridge.metrics import BLOCK_ENTRIES, stage
from bridge.store.base import Store
from bridge.store.receipts import stored_ledger

Result = Receipt | Refused
# (time, sender, instruction id, kind, reason, corridor) of a refused instruction
RefusalRecord = tuple[int, str, str, str, str, str]
# per batch: what the sequencer's thread spends applying and sealing, the writer's committing
PREVERIFY = stage("preverify", thread_cpu=True)
APPLY = stage("apply", thread_cpu=True)
SEAL = stage("seal", thread_cpu=True)
COMMIT = stage("commit", thread_cpu=True)
CONFIRM = stage("confirm", thread_cpu=True)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch applied in memory and sealed, waiting for its commit."""

    results: list[Result]
    block: SealedBlock | None
    batch: Batch
    events: bytes
    refusals: tuple[RefusalRecord, ...] = ()
    notices: list[Notice] | None = None  # `events` one by one, for the publisher


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A committed block's outbox row as the publisher takes it in memory: the row's id in
    the store and the events it holds."""

    row_id: int
    notices: list[Notice]
    height: int = 0  # the block's height: consecutive blocks' rows are handed in order


@dataclass(frozen=True, slots=True)
class Settled:
    """Outcome of one `settle` call: a result per instruction, and the block if one was sealed."""

    results: list[Result]
    block: SealedBlock | None
    outbox: OutboxRow | None = None  # the block's outbox row, once committed


def refusal_record(
    ledger: Ledger, envelope: Envelope, refusal: Refused, now: Millis
) -> RefusalRecord:
    """What is kept of a refused instruction: when, who, what, why, and its corridor
    (sender's jurisdiction - counterparty's, when both are known participants)."""
    body = envelope.body
    other = next(
        (
            getattr(body, name)
            for name in ("payee", "counterparty", "proposer", "to", "bank", "participant")
            if isinstance(getattr(body, name, None), str)
        ),
        None,
    )
    sender = ledger.participants.get(body.sender)
    peer = ledger.participants.get(other) if other is not None else None
    corridor = (
        "" if sender is None or peer is None else f"{sender.jurisdiction}-{peer.jurisdiction}"
    )
    return (now, body.sender, body.instruction_id, body.KIND, refusal.reason.value, corridor)


class SettlementEngine:
    """Owns the ledger and its store; one caller at a time (the sequencer)."""

    def __init__(self, ledger: Ledger, store: Store) -> None:
        self.ledger = ledger
        self.store = store
        head = store.head()
        self.height = 0 if head is None else head.height
        self.head_hash = ledger.genesis.hash() if head is None else head.hash()
        self.outbox_row = 0  # the id of the outbox row of the block committed last

    @classmethod
    def open(
        cls,
        store: Store,
        genesis: Genesis | None,
        *,
        verifier: Verifier | None,
        check: SignatureCheck = SignatureCheck.ENDORSEMENTS,
    ) -> SettlementEngine:
        """Load the ledger held by `store`, or found it from `genesis` if the store is empty."""
        stored = store.genesis()
        if stored is None:
            if genesis is None:
                raise StoreError(f"{store.description} is empty and no genesis was given")
            ledger = stored_ledger(store, genesis, verifier=verifier, check=check)
            store.initialize(ledger)
            return cls(ledger, store)
        if genesis is not None and genesis.hash() != stored.hash():
            raise StoreError(f"{store.description} holds a different ledger (genesis mismatch)")
        return cls(store.load(verifier=verifier, check=check), store)

    def settle(self, envelopes: Sequence[Envelope], now: Millis) -> Settled:
        """Apply, expire due PvPs, seal and commit; results in the order given."""
        prepared = self.prepare(envelopes, now)
        return self.finish(prepared, self.commit(prepared))

    def prepare(self, envelopes: Sequence[Envelope], now: Millis) -> Prepared:
        """Apply the batch to the in-memory ledger and seal its block (nothing durable yet)."""
        ledger = self.ledger
        results: list[Result] = []
        refusals: list[RefusalRecord] = []
        with PREVERIFY.timed(len(envelopes)):
            # one look-up in the store for the whole batch's instruction ids (the retries);
            # if the store cannot answer, each instruction's own look-up fails below
            with contextlib.suppress(StoreError):
                ledger.receipts.prefetch((e.body.sender, e.body.instruction_id) for e in envelopes)
            ledger.preverify(envelopes)
        with APPLY.timed(len(envelopes)):
            for envelope in envelopes:
                try:
                    results.append(ledger.apply(envelope, now))
                except Refused as refusal:
                    results.append(refusal)
                    refusals.append(refusal_record(ledger, envelope, refusal, now))
                except StoreError as failure:
                    # its receipt could not be looked up: whether it is a retry is not known,
                    # and nothing was applied
                    results.append(_not_decided(failure))
            with contextlib.suppress(StoreError):  # due PvPs left for the next batch
                ledger.expire_due(now)
            batch = ledger.pending_batch()
        if not batch.entries:
            return Prepared(results, None, batch, b"", tuple(refusals))
        with SEAL.timed(len(batch.entries)):
            block = seal(self.height + 1, self.head_hash, batch.entries, now)
            events, notices = encode_notices(
                [settlement_event(e, ledger, block.header.height) for e in batch.entries]
            )
        BLOCK_ENTRIES.observe(len(batch.entries))
        return Prepared(results, block, batch, events, tuple(refusals), notices)

    def commit(
        self, prepared: Prepared, attestations: Sequence[Attestation] = ()
    ) -> StoreError | None:
        """Write the prepared block durably (with `attestations` of earlier blocks, in the
        same transaction); safe to run in a worker thread. Once the block is committed (a
        failed commit makes every answer of the batch not decided), the batch's refused
        instructions are recorded beside it, outside the hash chain; failing to record them
        fails nothing."""
        if prepared.block is not None:
            try:
                with COMMIT.timed(len(prepared.batch.entries)):
                    self.outbox_row = self.store.commit_block(
                        prepared.block, prepared.batch, [prepared.events], attestations
                    )
            except StoreError as exc:
                return exc
        if prepared.refusals:
            with contextlib.suppress(StoreError):
                self.store.record_refusals(prepared.refusals)
        return None

    def finish(self, prepared: Prepared, failure: StoreError | None) -> Settled:
        """Confirm a committed batch, or roll the ledger back if the commit failed."""
        ledger = self.ledger
        if failure is not None:
            ledger.rollback()
            return Settled(undecided(ledger, prepared.results, failure), None)
        with CONFIRM.timed(len(prepared.results)):
            ledger.confirm()
        outbox = None
        if prepared.block is not None:
            self.height = prepared.block.header.height
            self.head_hash = prepared.block.header.hash()
            if prepared.notices is not None and self.outbox_row:
                outbox = OutboxRow(self.outbox_row, prepared.notices, self.height)
        return Settled(prepared.results, prepared.block, outbox)


def undecided(ledger: Ledger, results: Sequence[Result], failure: Exception) -> list[Result]:
    """The answers of a batch whose commit failed, once the ledger is rolled back.

    A duplicate whose original receipt is still in the (rolled-back) ledger was committed in
    an earlier block: its receipt stands. Everything else is OUTCOME_UNKNOWN."""
    unknown = _not_decided(failure)
    return [
        r if isinstance(r, Receipt) and r.duplicate and _committed(ledger, r) else unknown
        for r in results
    ]


def _not_decided(failure: Exception) -> Refused:
    return Refused(
        Reason.OUTCOME_UNKNOWN,
        f"the batch was not recorded ({failure}); resubmit the same instruction id",
    )


def _committed(ledger: Ledger, receipt: Receipt) -> bool:
    """Whether this duplicate's original receipt is committed (found in memory or in the
    store; if the store cannot say, it is not known to be)."""
    try:
        stored = ledger.receipts.get((receipt.sender, receipt.instruction_id))
    except StoreError:
        return False
    return stored is not None and stored.seq == receipt.seq
