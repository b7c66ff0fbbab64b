"""The settlement engine over every store: ordered results, blocks only for changes, expiry,
genesis checks."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from bridge.core.ledger import Batch
from bridge.crypto import FastVerifier
from bridge.domain import DualPvp, Envelope, ExpirePvp, Outcome, Receipt
from bridge.errors import Reason, Refused, StoreError
from bridge.events import vars_of
from bridge.log.blocks import Attestation, SealedBlock
from bridge.node.sequencer import Sequencer
from bridge.settlement import SettlementEngine
from bridge.store.base import Store, is_postgres, open_store
from bridge.store.sqlite import SqliteStore
from tests.factories import (
    BANKS,
    T0,
    Network,
    accept_pvp,
    admit_bank,
    corrupt_endorsement,
    dual_pvp,
    issue,
    network,
    pay,
    propose_pvp,
    pvp_proposal,
    sign,
    with_signatures,
)

HOUR = 3_600_000
FUNDS = 1_000_000


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def store(store_spec: str) -> Iterator[Store]:
    """A fresh store of each kind (SQLite file, PostgreSQL database)."""
    opened = open_store(store_spec)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def engine(store: Store, net: Network) -> SettlementEngine:
    """An engine over a fresh store with every bank admitted and funded (blocks 1 and 2)."""
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    for batch in (
        [admit_bank(net, cb, bank) for bank, cb in BANKS],
        [issue(net, cb, bank, FUNDS) for bank, cb in BANKS],
    ):
        results = engine.settle(batch, T0).results
        assert all(isinstance(r, Receipt) for r in results), results
    return engine


def test_results_come_back_in_the_order_given(engine: SettlementEngine, net: Network) -> None:
    """Each instruction's result sits at its own index, whatever its fate."""
    first = pay(net, "ICBC", "CCB", 100)
    refused = pay(net, "BOCHK", "KBANK", 10 * FUNDS, "HKD")
    dual = dual_pvp(net, "CCB", "KBANK", 200, 900)
    settled = engine.settle([first, refused, dual, first], T0 + 1)
    a, b, c, d = settled.results
    assert isinstance(a, Receipt)
    assert a.instruction_id == first.body.instruction_id
    assert isinstance(b, Refused)
    assert b.reason is Reason.INSUFFICIENT_FUNDS
    assert isinstance(c, Receipt)
    assert c.instruction_id == dual.body.instruction_id
    assert isinstance(d, Receipt)
    assert d.duplicate
    assert d.seq == a.seq
    assert (a.outcome, c.outcome) == (Outcome.SETTLED, Outcome.SETTLED)
    assert c.seq == a.seq + 1
    assert settled.block is not None
    assert [e.seq for e in settled.block.entries] == [a.seq, c.seq]


def test_refusals_alone_seal_no_block(engine: SettlementEngine, net: Network) -> None:
    """A batch where everything is refused writes nothing and leaves the head where it was."""
    height, head = engine.height, engine.head_hash
    blocks, entries = engine.store.count("blocks"), engine.store.count("entries")
    batch = [
        pay(net, "BOCHK", "KBANK", 10 * FUNDS, "HKD"),
        pay(net, "ICBC", "ICBC-NOT-A-BANK", 1),
        pay(net, "ICBC", "CCB", 1, valid_until=T0),
    ]
    settled = engine.settle(batch, T0 + 1)
    assert settled.block is None
    assert [r.reason for r in settled.results if isinstance(r, Refused)] == [
        Reason.INSUFFICIENT_FUNDS,
        Reason.UNKNOWN_PARTICIPANT,
        Reason.INSTRUCTION_EXPIRED,
    ]
    assert (engine.height, engine.head_hash) == (height, head)
    assert (engine.store.count("blocks"), engine.store.count("entries")) == (blocks, entries)
    assert engine.ledger.pending_entries() == 0


def test_duplicates_alone_seal_no_block(engine: SettlementEngine, net: Network) -> None:
    """Resubmitting settled instructions returns their receipts and seals nothing."""
    batch = [pay(net, "ICBC", "CCB", 100), pay(net, "CCB", "ICBC", 50)]
    first = engine.settle(batch, T0 + 1)
    assert first.block is not None
    again = engine.settle(batch, T0 + 2)
    assert again.block is None
    for original, repeat in zip(first.results, again.results, strict=True):
        assert isinstance(original, Receipt)
        assert isinstance(repeat, Receipt)
        assert repeat == replace(original, duplicate=True)


def test_blocks_chain_from_the_genesis_hash(engine: SettlementEngine, net: Network) -> None:
    """Each block names the previous block's hash; the first names the genesis hash."""
    store = engine.store
    first = store.header(1)
    assert first is not None
    assert first.prev_hash == net.genesis.hash()
    settled = engine.settle([pay(net, "ICBC", "CCB", 1)], T0 + 1)
    assert settled.block is not None
    header = settled.block.header
    previous = store.header(2)
    assert previous is not None
    assert (header.height, header.prev_hash) == (3, previous.hash())
    assert (engine.height, engine.head_hash) == (3, header.hash())
    assert store.head() == header


def test_expired_hold_is_sealed_into_a_block(engine: SettlementEngine, net: Network) -> None:
    """Passing a held PvP's deadline releases the hold in a block of its own."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 3_000, 4_000, settle_by=T0 + HOUR)
    engine.settle([sign(net, proposal)], T0 + 1)
    assert engine.ledger.balance("ICBC", "CNY") == (FUNDS - 3_000, 3_000)

    assert engine.settle([], T0 + HOUR - 1).block is None
    settled = engine.settle([], T0 + HOUR)
    assert settled.results == []
    assert settled.block is not None
    (entry,) = settled.block.entries
    assert isinstance(entry.envelope.body, ExpirePvp)
    assert entry.outcome is Outcome.EXPIRED
    assert entry.envelope.body.pvp_id == proposal.instruction_id
    assert engine.ledger.balance("ICBC", "CNY") == (FUNDS, 0)
    location = engine.store.entry_location(
        entry.envelope.body.sender, entry.envelope.body.instruction_id
    )
    assert location == (entry.seq, settled.block.header.height)


def test_expiry_rides_along_with_a_batch(engine: SettlementEngine, net: Network) -> None:
    """Instructions and due expiries of the same tick share one block, expiries last."""
    envelope = propose_pvp(net, "CCB", "KBANK", 1_000, 5_000, settle_by=T0 + HOUR)
    engine.settle([envelope], T0 + 1)
    settled = engine.settle([pay(net, "ICBC", "CCB", 10)], T0 + 2 * HOUR)
    assert settled.block is not None
    assert [e.outcome for e in settled.block.entries] == [Outcome.SETTLED, Outcome.EXPIRED]
    events = json.loads(engine.store.outbox_after(0)[-1][1])
    assert [e["outcome"] for e in events] == ["SETTLED", "EXPIRED"]


def test_genesis_mismatch_is_refused(store: Store, net: Network) -> None:
    """Opening a store with another network's genesis fails instead of mixing ledgers."""
    SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    other = replace(net.genesis, chain_id="another-bridge")
    with pytest.raises(StoreError, match="genesis mismatch"):
        SettlementEngine.open(store, other, verifier=FastVerifier())


def test_reopen_without_genesis_uses_the_stored_one(engine: SettlementEngine, net: Network) -> None:
    """A store that already holds a ledger opens without being given the genesis."""
    again = SettlementEngine.open(engine.store, None, verifier=FastVerifier())
    assert again.ledger.genesis == net.genesis
    assert (again.height, again.head_hash) == (engine.height, engine.head_hash)


def test_empty_store_needs_a_genesis(store: Store) -> None:
    """An empty store cannot be opened without a genesis to found it."""
    with pytest.raises(StoreError, match="no genesis"):
        SettlementEngine.open(store, None, verifier=FastVerifier())


def test_prepare_writes_nothing_until_commit(engine: SettlementEngine, net: Network) -> None:
    """`prepare` seals in memory only; `commit` then `finish` make it durable and confirmed."""
    blocks = engine.store.count("blocks")
    prepared = engine.prepare([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    assert prepared.block is not None
    assert engine.store.count("blocks") == blocks
    assert engine.height == blocks
    failure = engine.commit(prepared)
    assert failure is None
    settled = engine.finish(prepared, failure)
    assert engine.store.count("blocks") == blocks + 1
    assert engine.height == prepared.block.header.height
    assert settled.block == prepared.block


def test_finish_with_a_failure_rolls_back(engine: SettlementEngine, net: Network) -> None:
    """Finishing a prepared batch with a store failure undoes it and acknowledges nothing."""
    before = dict(engine.ledger.balances)
    prepared = engine.prepare([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    settled = engine.finish(prepared, StoreError("disk unplugged"))
    (result,) = settled.results
    assert isinstance(result, Refused)
    assert result.reason is Reason.OUTCOME_UNKNOWN
    assert "disk unplugged" in result.message
    assert settled.block is None
    assert engine.ledger.balances == before
    assert engine.ledger.pending_entries() == 0


class CountingVerifier:
    """A real verifier that counts the verifications asked of it."""

    def __init__(self) -> None:
        self.inner = FastVerifier()
        self.calls = 0

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        return self.inner.verify(public_key, message, signature)


def test_bad_endorsement_is_refused_alone_in_its_batch(
    engine: SettlementEngine, net: Network
) -> None:
    """One forged endorsement refuses that instruction only, with the others settling."""
    good = dual_pvp(net, "ICBC", "KBANK", 100, 400)
    forged = corrupt_endorsement(dual_pvp(net, "CCB", "BOCHK", 100, 90), "BOCHK")
    after = pay(net, "ICBC", "CCB", 5)
    first, second, third = engine.settle([good, forged, after], T0 + 1).results
    assert isinstance(first, Receipt)
    assert isinstance(second, Refused)
    assert second.reason is Reason.BAD_SIGNATURE
    assert "endorsement of BOCHK" in second.message
    assert isinstance(third, Receipt)


def test_forged_and_genuine_copies_are_judged_each_on_its_own(
    engine: SettlementEngine, net: Network
) -> None:
    """A forged copy of an instruction fails and the genuine one after it still settles."""
    genuine = dual_pvp(net, "ICBC", "KBANK", 100, 400)
    forged = corrupt_endorsement(genuine, "ICBC")
    first, second = engine.settle([forged, genuine], T0 + 1).results
    assert isinstance(first, Refused)
    assert first.reason is Reason.BAD_SIGNATURE
    assert isinstance(second, Receipt)
    assert not second.duplicate


def test_banks_admitted_in_the_same_batch_can_settle_in_it(store: Store, net: Network) -> None:
    """Admission, funding and a PvP of the new banks settle together in one block."""
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    batch = [
        admit_bank(net, "PBOC", "ICBC"),
        admit_bank(net, "HKMA", "BOCHK"),
        issue(net, "PBOC", "ICBC", 1_000),
        issue(net, "HKMA", "BOCHK", 1_000),
        dual_pvp(net, "ICBC", "BOCHK", 100, 120),
    ]
    settled = engine.settle(batch, T0)
    assert all(isinstance(r, Receipt) for r in settled.results), settled.results
    assert engine.ledger.balance("ICBC", "HKD") == (120, 0)


def test_each_endorsement_is_verified_once_and_duplicates_not_at_all(
    store: Store, net: Network
) -> None:
    """A batch verifies every endorsement once; re-sending it verifies nothing."""
    verifier = CountingVerifier()
    engine = SettlementEngine.open(store, net.genesis, verifier=verifier)
    setup = [admit_bank(net, cb, bank) for bank, cb in BANKS]
    setup += [issue(net, cb, bank, FUNDS) for bank, cb in BANKS]
    engine.settle(setup, T0)
    batch = [dual_pvp(net, "ICBC", "KBANK", 10 + i, 40 + i) for i in range(5)]
    verifier.calls = 0
    engine.settle(batch, T0 + 1)
    assert verifier.calls == 2 * len(batch)
    verifier.calls = 0
    again = engine.settle(batch, T0 + 2)
    assert all(isinstance(r, Receipt) and r.duplicate for r in again.results)
    assert verifier.calls == 0


def test_outbox_events_carry_both_legs_of_each_pvp(engine: SettlementEngine, net: Network) -> None:
    """Dual and accepted PvP events list both legs as [payer, payee, currency, amount]."""
    dual = dual_pvp(net, "ICBC", "KBANK", 100, 400)
    proposal = pvp_proposal(net, "CCB", "BOCHK", 70, 60, settle_by=T0 + HOUR)
    engine.settle([dual, sign(net, proposal)], T0 + 1)
    engine.settle([accept_pvp(net, proposal)], T0 + 2)
    events = [e for _, payload in engine.store.outbox_after(0) for e in json.loads(payload)]
    assert isinstance(dual.body, DualPvp)
    by_kind = {e["kind"]: e for e in events}
    assert by_kind["pvp_dual"]["legs"] == [list(vars_of(leg)) for leg in dual.body.legs()]
    assert by_kind["pvp_accept"]["legs"] == [list(vars_of(leg)) for leg in proposal.legs()]
    assert by_kind["pvp_accept"]["parties"] == ["BOCHK", "CCB"]
    assert by_kind["pvp_propose"]["legs"] == []


def test_shape_is_refused_before_signatures_within_a_batch(
    engine: SettlementEngine, net: Network
) -> None:
    """Checks keep their order in a batch: a malformed body with a forged endorsement is
    refused as malformed, not as badly signed."""
    malformed = corrupt_endorsement(dual_pvp(net, "ICBC", "KBANK", 0, 400), "ICBC")
    unknown = dual_pvp(net, "ICBC", "KBANK", 100, 400)
    stranger = corrupt_endorsement(
        with_signatures(unknown, tuple(s for s in unknown.signatures if s.endorses != "KBANK")),
        "ICBC",
    )
    first, second = engine.settle([malformed, stranger], T0 + 1).results
    assert isinstance(first, Refused)
    assert first.reason is Reason.NON_POSITIVE_AMOUNT
    assert isinstance(second, Refused)
    assert second.reason is Reason.MISSING_SIGNATURE


# ---------------------------------------------------------------------------- failed commits


class FailingStore(SqliteStore):
    """A real SQLite store whose block commits fail while `failing` is set (a full disk)."""

    failing = False

    def commit_block(
        self,
        block: SealedBlock,
        batch: Batch,
        events: Sequence[bytes],
        attestations: Sequence[Attestation] = (),
    ) -> int:
        if self.failing:
            raise StoreError("database or disk is full")
        return super().commit_block(block, batch, events, attestations)


@pytest.fixture
def failing_engine(net: Network) -> Iterator[SettlementEngine]:
    """A funded engine (blocks 1 and 2) over a store that fails on demand."""
    with tempfile.TemporaryDirectory(prefix="bridge-failing-") as tmp:
        store = FailingStore(Path(tmp) / "ledger.sqlite")
        try:
            yield engine_over(store, net)
        finally:
            store.close()


def engine_over(store: SqliteStore, net: Network) -> SettlementEngine:
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    for batch in (
        [admit_bank(net, cb, bank) for bank, cb in BANKS],
        [issue(net, cb, bank, FUNDS) for bank, cb in BANKS],
    ):
        assert all(isinstance(r, Receipt) for r in engine.settle(batch, T0).results)
    return engine


def failing_batch(net: Network) -> tuple[Envelope, ...]:
    """Two copies of one payment, then a payment refused only because of the one before it."""
    first = pay(net, "ICBC", "CCB", FUNDS - 100)
    overspend = pay(net, "ICBC", "KBANK", 200, "CNY")
    return (first, first, overspend)


def test_failed_commit_answers_outcome_unknown_for_every_result_of_the_batch(
    failing_engine: SettlementEngine, net: Network
) -> None:
    """Settled, in-batch duplicate and refusal alike: OUTCOME_UNKNOWN when the commit fails."""
    engine = failing_engine
    earlier = pay(net, "BOCHK", "KBANK", 10, "HKD")
    (committed,) = engine.settle([earlier], T0 + 1).results
    assert isinstance(committed, Receipt)
    store = engine.store
    assert isinstance(store, FailingStore)
    store.failing = True

    first, copy, overspend = failing_batch(net)
    prepared = engine.prepare([first, copy, overspend, earlier], T0 + 2)
    in_memory = prepared.results
    assert isinstance(in_memory[1], Receipt)
    assert in_memory[1].duplicate
    assert isinstance(in_memory[2], Refused)
    assert in_memory[2].reason is Reason.INSUFFICIENT_FUNDS
    settled = engine.finish(prepared, engine.commit(prepared))

    *lost, again = settled.results
    for result in lost:
        assert isinstance(result, Refused), result
        assert result.reason is Reason.OUTCOME_UNKNOWN
        assert result.reason.retryable
    assert again == replace(committed, duplicate=True)
    assert settled.block is None


def test_after_a_failed_commit_resubmission_settles_once(
    failing_engine: SettlementEngine, net: Network
) -> None:
    """Resubmitting a failed batch's ids settles each once; the overspend is then refused."""
    engine = failing_engine
    store = engine.store
    assert isinstance(store, FailingStore)
    first, copy, overspend = failing_batch(net)
    store.failing = True
    engine.settle([first, copy, overspend], T0 + 1)
    store.failing = False

    settled = engine.settle([first, copy, overspend], T0 + 2)
    a, b, c = settled.results
    assert isinstance(a, Receipt)
    assert not a.duplicate
    assert b == replace(a, duplicate=True)
    assert isinstance(c, Refused)
    assert c.reason is Reason.INSUFFICIENT_FUNDS
    assert engine.store.count("entries") == engine.ledger.next_seq - 1
    assert engine.ledger.balance("ICBC", "CNY") == (100, 0)
    (later,) = engine.settle([first], T0 + 3).results
    assert later == replace(a, duplicate=True)


async def test_sequencer_answers_outcome_unknown_when_the_block_commit_fails(
    failing_engine: SettlementEngine, net: Network
) -> None:
    """Through the sequencer: one batch, commit failing, every caller gets OUTCOME_UNKNOWN."""
    engine = failing_engine
    earlier = pay(net, "BOCHK", "KBANK", 10, "HKD")
    (committed,) = engine.settle([earlier], T0 + 1).results
    assert isinstance(committed, Receipt)
    store = engine.store
    assert isinstance(store, FailingStore)
    store.failing = True
    sequencer = Sequencer(engine, clock=lambda: T0 + 2)
    first, copy, overspend = failing_batch(net)
    futures = [sequencer.enqueue(e) for e in (first, copy, overspend, earlier)]
    sequencer.start()  # the four are queued before the loop runs: one batch
    try:
        results = [await f for f in futures]
    finally:
        await sequencer.stop()
    assert [getattr(r, "reason", None) for r in results[:3]] == [Reason.OUTCOME_UNKNOWN] * 3
    assert results[3] == replace(committed, duplicate=True)


def _rows(spec: str, sql: str) -> list[tuple[object, ...]]:
    """Rows read straight from a store's database, behind its back."""
    if is_postgres(spec):
        with psycopg.connect(spec, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(sql.encode()).fetchall()]
    db = sqlite3.connect(spec)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _refusal_rows(spec: str) -> list[tuple[object, ...]]:
    return _rows(
        spec,
        "SELECT id, time, sender, instruction_id, kind, reason, corridor FROM refusals ORDER BY id",
    )


def test_refused_instructions_are_recorded_beside_the_log(
    engine: SettlementEngine, store_spec: str, net: Network
) -> None:
    """A refusal is recorded (time, sender, id, kind, reason, corridor) and changes nothing:
    no entry, no block, no state row."""
    state_sql = "SELECT tbl, key, value FROM state ORDER BY tbl, key"
    accounts_sql = "SELECT * FROM accounts ORDER BY participant, currency"
    before = (_rows(store_spec, state_sql), _rows(store_spec, accounts_sql))
    height, entries = engine.height, engine.store.count("entries")
    refused = pay(net, "BOCHK", "KBANK", 10 * FUNDS, "HKD")
    settled = engine.settle([refused], T0 + 5)
    assert isinstance(settled.results[0], Refused)
    assert settled.block is None
    assert (engine.height, engine.store.count("entries")) == (height, entries)
    assert (_rows(store_spec, state_sql), _rows(store_spec, accounts_sql)) == before
    [(_, time, sender, instruction_id, kind, reason, corridor)] = _refusal_rows(store_spec)
    hk, th = net.jurisdiction_of["BOCHK"], net.jurisdiction_of["KBANK"]
    assert (time, sender, instruction_id, kind, reason) == (
        T0 + 5,
        "BOCHK",
        refused.body.instruction_id,
        "pay",
        "INSUFFICIENT_FUNDS",
    )
    assert corridor == f"{hk}-{th}"


def test_refusals_keep_only_the_newest(store: Store, store_spec: str) -> None:
    """Retention is bounded: recording past the limit drops the oldest refusals."""
    rows = [(T0 + i, "ICBC", f"r{i}", "pay", "INSUFFICIENT_FUNDS", "CN-HK") for i in range(7)]
    store.record_refusals(rows[:4], keep=5)
    store.record_refusals(rows[4:], keep=5)
    kept = _refusal_rows(store_spec)
    assert [r[3] for r in kept] == ["r2", "r3", "r4", "r5", "r6"]
    assert [r[0] for r in kept] == sorted(r[0] for r in kept)


def test_refusals_of_a_batch_whose_commit_failed_are_not_recorded(
    failing_engine: SettlementEngine, net: Network
) -> None:
    """A refusal answered as not decided (the block's commit failed) is not recorded."""
    engine = failing_engine
    store = engine.store
    assert isinstance(store, FailingStore)
    store.failing = True
    engine.settle(list(failing_batch(net)), T0 + 2)
    assert _refusal_rows(str(store.path)) == []
    store.failing = False
    settled = engine.settle(list(failing_batch(net)), T0 + 3)
    assert isinstance(settled.results[2], Refused)
    assert [row[5] for row in _refusal_rows(str(store.path))] == ["INSUFFICIENT_FUNDS"]
