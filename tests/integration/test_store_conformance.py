"""What every store must do, held against each one (SQLite file, PostgreSQL database).

The same tests, through the `Store` interface only: state round trips, receipts after a
restart, atomic block commits (a failed one writes nothing and rolls the ledger back), the
database refusing a negative balance on its own, attestations, the outbox, and the tail check.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Envelope, Outcome, Receipt
from bridge.errors import LogIntegrityError, Reason, Refused, StoreError
from bridge.log.blocks import attest
from bridge.settlement import Result, SettlementEngine
from bridge.store.base import Store, is_postgres, open_store
from bridge.store.receipts import StoredReceipts
from tests.factories import (
    BANKS,
    T0,
    Network,
    accept_pvp,
    admit_bank,
    cancel_pvp,
    dual_pvp,
    freeze,
    issue,
    network,
    pay,
    pvp_proposal,
    redeem,
    set_policy,
    sign,
)

HOUR = 3_600_000
FUNDS = 10_000_000
TABLES = ("blocks", "entries", "attestations", "outbox", "accounts")


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    """Every store a test opens, closed at the end."""
    opened: list[Store] = []
    yield opened
    for store in opened:
        store.close()


@pytest.fixture
def open_engine(
    store_spec: str, net: Network, stores: list[Store]
) -> Callable[[], SettlementEngine]:
    """Open (or reopen) an engine over the test's store."""

    def opener() -> SettlementEngine:
        store = open_store(store_spec)
        stores.append(store)
        return SettlementEngine.open(store, net.genesis, verifier=FastVerifier())

    return opener


def execute(spec: str, sql: str, *args: Any) -> None:
    """Run one statement straight against the database, behind the store's back."""
    if is_postgres(spec):
        with psycopg.connect(spec, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s").encode(), args)
        return
    db = sqlite3.connect(spec, isolation_level=None)
    try:
        db.execute(sql, args)
    finally:
        db.close()


def settle_ok(engine: SettlementEngine, envelopes: list[Envelope], now: int) -> list[Receipt]:
    results = engine.settle(envelopes, now).results
    refused = [r for r in results if isinstance(r, Refused)]
    assert not refused, refused
    return [r for r in results if isinstance(r, Receipt)]


def state_of(ledger: Ledger) -> dict[str, dict[Any, Any]]:
    """The state tables (the receipts are an index of their own, looked up in the store)."""
    return {name: dict(rows) for name, rows in ledger.tables().items()}


def same_receipts(ledger: Ledger, receipts: dict[Any, Any]) -> bool:
    """Whether the ledger finds each of these receipts (in memory or by looking it up)."""
    return all(ledger.receipts.get(key) == receipt for key, receipt in receipts.items())


def stored(store: Store) -> tuple[Any, ...]:
    """What a reader of the store sees: row counts, every account, the head."""
    return (
        tuple(store.count(t) for t in TABLES),
        store.accounts(),
        store.head(),
        store.outbox_after(0),
    )


def populate(engine: SettlementEngine, net: Network) -> dict[str, Any]:
    """Drive every state table through four blocks; returns what was sent."""
    sent: dict[str, Any] = {}
    settle_ok(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    funding = [issue(net, cb, bank, FUNDS) for bank, cb in BANKS]
    policy = set_policy(net, "PBOC", per_transfer_limit=5_000_000, per_day_limit=8_000_000)
    sent["freeze"] = freeze(net, "BOT", "ENBD", "THB")
    settle_ok(engine, [*funding, policy, sent["freeze"]], T0 + 1)
    held = pvp_proposal(net, "ICBC", "BOCHK", 20_000, 25_000, settle_by=T0 + HOUR)
    settled = pvp_proposal(net, "CCB", "KBANK", 10_000, 45_000, settle_by=T0 + HOUR)
    cancelled = pvp_proposal(net, "BOCHK", "KBANK", 7_000, 30_000, settle_by=T0 + HOUR)
    sent["held"] = held
    sent["pay"] = pay(net, "ICBC", "CCB", 1_000, reference="INV-2025-0001")
    sent["dual"] = dual_pvp(net, "BOCHK", "ENBD", 3_000, 1_500)
    sent["propose"] = [sign(net, p) for p in (held, settled, cancelled)]
    settle_ok(engine, [sent["pay"], sent["dual"], *sent["propose"]], T0 + 2)
    sent["accept"] = accept_pvp(net, settled)
    settle_ok(
        engine, [sent["accept"], cancel_pvp(net, cancelled), redeem(net, "KBANK", 500)], T0 + 3
    )
    return sent


def pay_batch(net: Network, count: int, prefix: str) -> list[Envelope]:
    return [pay(net, "ICBC", "CCB", 10 + i, instruction_id=f"{prefix}-{i}") for i in range(count)]


def assert_all_undecided(results: list[Result]) -> None:
    """A failed commit acknowledges nothing: every answer is "not decided" (resubmit)."""
    for result in results:
        assert isinstance(result, Refused), result
        assert result.reason is Reason.OUTCOME_UNKNOWN


# ---------------------------------------------------------------------------- round trips


def test_every_state_table_and_the_head_round_trip(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Reopening gives back every state table, the receipts, the head and the next seq."""
    engine = open_engine()
    populate(engine, net)
    before = state_of(engine.ledger)
    receipts = dict(engine.ledger.receipts.items())
    assert receipts
    assert all(before[t] for t in ("policies", "frozen", "pvps", "usage", "supply"))
    height, head, next_seq = engine.height, engine.head_hash, engine.ledger.next_seq
    engine.store.close()

    again = open_engine()
    assert dict(again.ledger.receipts.items()) == {}  # none loaded: looked up on demand
    assert same_receipts(again.ledger, receipts)
    assert state_of(again.ledger) == before
    assert (again.height, again.head_hash, again.ledger.next_seq) == (height, head, next_seq)
    assert again.ledger.conservation_errors() == []


def test_readers_see_the_committed_state(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Accounts (with frozen flags), participants, policy, PvPs, supply and receipts read back."""
    engine = open_engine()
    sent = populate(engine, net)
    settle_ok(engine, [freeze(net, "HKMA", "BOCHK", "HKD")], T0 + 4)
    store, ledger = engine.store, engine.ledger
    accounts = store.accounts()
    assert [(p, c, a, h) for p, c, a, h, _ in accounts] == sorted(
        (p, c, a, h) for (p, c), (a, h) in ledger.balances.items()
    )
    assert [a[:2] for a in accounts if a[4]] == [("BOCHK", "HKD")]
    assert store.accounts("ICBC", "CNY") == [("ICBC", "CNY", *ledger.balance("ICBC", "CNY"), False)]
    assert {p.id for p in store.participants()} == set(ledger.participants)
    assert store.participant("ICBC") == ledger.participants["ICBC"]
    assert store.participant("nobody") is None
    assert store.policy("PBOC") == ledger.policies["PBOC"]
    held = sent["held"]
    assert store.pvp("ICBC", held.instruction_id) == ledger.pvps[("ICBC", held.instruction_id)]
    assert store.supply("THB") == ledger.supply["THB"]
    assert {c.code for c in store.currencies()} == set(ledger.currencies)
    body = sent["pay"].body
    found = store.receipt(body.sender, body.instruction_id)
    assert found == (ledger.receipts[(body.sender, body.instruction_id)], 3)
    assert store.receipt("ICBC", "never-sent") is None


def test_held_pvp_still_expires_after_reopen(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A hold loaded from the store is released when its deadline passes after a restart."""
    engine = open_engine()
    sent = populate(engine, net)
    available, reserved = engine.ledger.balance("ICBC", "CNY")
    engine.store.close()

    again = open_engine()
    settled = again.settle([], T0 + HOUR)
    assert settled.block is not None
    assert [e.outcome for e in settled.block.entries] == [Outcome.EXPIRED]
    expired = again.store.pvp("ICBC", sent["held"].instruction_id)
    assert expired is not None
    assert expired.status is Outcome.EXPIRED
    assert ("ICBC", sent["held"].instruction_id) not in again.ledger.pvps  # closed: left memory
    assert again.ledger.balance("ICBC", "CNY") == (available + 20_000, reserved - 20_000)


def test_retry_after_reopen_is_duplicate_and_settles_nothing(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Receipts are rebuilt from the entries: a retry after a restart returns the original."""
    engine = open_engine()
    sent = populate(engine, net)
    original = engine.ledger.receipts[("ICBC", sent["pay"].body.instruction_id)]
    engine.store.close()

    again = open_engine()
    before = stored(again.store)
    settled = again.settle([sent["pay"], sent["dual"], sent["accept"]], T0 + 10)
    assert settled.block is None
    assert all(isinstance(r, Receipt) and r.duplicate for r in settled.results)
    replayed = settled.results[0]
    assert isinstance(replayed, Receipt)
    assert (replayed.seq, replayed.body_hash) == (original.seq, original.body_hash)
    assert stored(again.store) == before


def test_receipts_are_looked_up_after_reopen_not_loaded(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A reopened ledger holds no receipt in memory, yet finds every old one when retried:
    old retries are duplicates with their original seq, and only the new instruction settles
    (once, though sent twice in the batch)."""
    engine = open_engine()
    sent = populate(engine, net)
    originals = {
        e.body.instruction_id: engine.ledger.receipts[(e.body.sender, e.body.instruction_id)]
        for e in (sent["pay"], sent["dual"], sent["accept"])
    }
    engine.store.close()

    again = open_engine()
    index = again.ledger.receipts
    assert isinstance(index, StoredReceipts)
    assert index.held() == 0
    entries = again.store.count("entries")
    fresh = pay(net, "ICBC", "CCB", 77, instruction_id="after-reopen")
    batch = [sent["pay"], fresh, sent["dual"], fresh, sent["accept"]]
    results = again.settle(batch, T0 + 10).results
    assert all(isinstance(r, Receipt) for r in results), results
    old_pay, new, old_dual, new_again, old_accept = (r for r in results if isinstance(r, Receipt))
    for old in (old_pay, old_dual, old_accept):
        original = originals[old.instruction_id]
        assert old.duplicate
        assert (old.seq, old.outcome, old.body_hash) == (
            original.seq,
            original.outcome,
            original.body_hash,
        )
    assert not new.duplicate
    assert new_again.duplicate
    assert new_again.seq == new.seq
    assert again.store.count("entries") == entries + 1
    assert index.lookups == 1  # one look-up for the whole batch
    assert index.held() <= len(batch)


def test_retry_across_a_failed_commit_settles_once(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """An instruction sent twice in a batch whose commit fails is not decided; resubmitted,
    twice again, it settles exactly once, and after a restart it is a duplicate."""
    first = open_engine()
    populate(first, net)
    second = open_engine()  # sees the same head as `first`
    settle_ok(first, pay_batch(net, 1, "winner"), T0 + 10)
    retried = pay(net, "ICBC", "CCB", 55, instruction_id="retried")
    assert_all_undecided(second.settle([retried, retried], T0 + 11).results)
    assert second.store.receipts_for([("ICBC", "retried")]) == []

    third = open_engine()
    entries = third.store.count("entries")
    once, twice = third.settle([retried, retried], T0 + 12).results
    assert isinstance(once, Receipt)
    assert not once.duplicate
    assert isinstance(twice, Receipt)
    assert twice.duplicate
    assert twice.seq == once.seq
    assert third.store.count("entries") == entries + 1

    fourth = open_engine()
    (again,) = fourth.settle([retried], T0 + 13).results
    assert isinstance(again, Receipt)
    assert again.duplicate
    assert again.seq == once.seq
    assert fourth.store.count("entries") == entries + 1


def test_receipts_for_answers_only_settled_keys(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """`receipts_for` returns the receipt of each settled key among many (more than one
    query's worth), and nothing for keys that never settled."""
    engine = open_engine()
    settled = settle_ok(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    settled += settle_ok(engine, [issue(net, cb, bank, FUNDS) for bank, cb in BANKS], T0 + 1)
    settled += settle_ok(engine, pay_batch(net, 50, "many"), T0 + 2)
    wanted = {(r.sender, r.instruction_id): r for r in settled}
    unknown = [("ICBC", f"never-{i}") for i in range(900)]
    keys = [k for pair in itertools.zip_longest(unknown, wanted) for k in pair if k is not None]
    found = engine.store.receipts_for(keys)
    assert {(r.sender, r.instruction_id): r for r in found} == wanted
    assert len(found) == len(wanted)
    assert engine.store.receipts_for([]) == []


def test_closed_pvps_leave_memory_and_are_read_back_to_refuse(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Once its closing is committed a PvP leaves memory, on a running and on a reopened
    ledger; a late accept or cancel of it is still refused as not pending (read back from
    the store), and only held PvPs are loaded."""
    engine = open_engine()
    sent = populate(engine, net)
    proposals = {e.body.instruction_id: e for e in sent["propose"]}
    held = sent["held"].instruction_id
    assert {k[1] for k in engine.ledger.pvps} == {held}
    engine.store.close()

    again = open_engine()
    assert {k[1] for k in again.ledger.pvps} == {held}
    closed = [p for i, p in proposals.items() if i != held]
    late = [accept_pvp(net, closed[0].body), cancel_pvp(net, closed[1].body)]
    results = again.settle(late, T0 + 10).results
    for result in results:
        assert isinstance(result, Refused), result
        assert result.reason is Reason.PVP_NOT_PENDING, result
    unknown = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=T0 + HOUR)
    (refused,) = again.settle([accept_pvp(net, unknown)], T0 + 11).results
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.UNKNOWN_PVP


def test_initialize_twice_and_load_empty_are_refused(
    store_spec: str, net: Network, stores: list[Store]
) -> None:
    """A store holds one ledger: no second founding, and loading an empty one fails."""
    store = open_store(store_spec)
    stores.append(store)
    assert store.genesis() is None
    assert store.head() is None
    with pytest.raises(StoreError, match="holds no ledger"):
        store.load(verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS)
    ledger = Ledger(net.genesis, verifier=FastVerifier())
    store.initialize(ledger)
    with pytest.raises(StoreError, match="already holds a ledger"):
        store.initialize(ledger)
    assert store.genesis() == net.genesis


def test_another_networks_genesis_is_refused(
    open_engine: Callable[[], SettlementEngine], net: Network, stores: list[Store]
) -> None:
    """Opening a store with another network's genesis fails instead of mixing ledgers."""
    engine = open_engine()
    with pytest.raises(StoreError, match="genesis mismatch"):
        SettlementEngine.open(
            engine.store, replace(net.genesis, chain_id="another"), verifier=FastVerifier()
        )


# ---------------------------------------------------------------------------- atomic commits


def test_commit_of_a_taken_block_height_fails_whole(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A second writer sealing a height already committed writes nothing and rolls back."""
    first = open_engine()
    populate(first, net)
    second = open_engine()  # sees the same head as `first`
    settle_ok(first, pay_batch(net, 3, "winner"), T0 + 10)
    before_rows = stored(second.store)
    before_state = state_of(second.ledger)

    settled = second.settle(pay_batch(net, 3, "loser"), T0 + 11)
    assert_all_undecided(settled.results)
    assert stored(second.store) == before_rows
    assert state_of(second.ledger) == before_state
    assert second.store.entry_location("ICBC", "loser-0") is None


def test_commit_on_a_closed_store_fails_and_rolls_back(
    store_spec: str, open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """If the database is gone, nothing is acknowledged and the ledger is exactly as before."""
    engine = open_engine()
    populate(engine, net)
    before_state = state_of(engine.ledger)
    before_rows = stored(engine.store)
    engine.store.close()

    settled = engine.settle(pay_batch(net, 2, "closed"), T0 + 10)
    assert_all_undecided(settled.results)
    assert state_of(engine.ledger) == before_state
    assert stored(open_engine().store) == before_rows


def test_negative_balance_is_refused_by_the_database(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A block carrying a negative balance (a core bug) is refused by the database whole."""
    engine = open_engine()
    populate(engine, net)
    before = stored(engine.store)
    prepared = engine.prepare(pay_batch(net, 1, "bug"), T0 + 10)
    assert prepared.block is not None
    balances = dict(prepared.batch.changes["balances"])
    balances[("ICBC", "CNY")] = (-1, 0)
    corrupted = replace(prepared.batch, changes={**prepared.batch.changes, "balances": balances})
    with pytest.raises(StoreError):
        engine.store.commit_block(prepared.block, corrupted, [prepared.events])
    settled = engine.finish(prepared, StoreError("refused"))
    assert_all_undecided(settled.results)
    assert stored(engine.store) == before


def test_block_attestations_and_events_commit_together(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Attestations passed with a block are stored in its transaction, with its outbox row."""
    engine = open_engine()
    populate(engine, net)
    header = engine.store.header(3)
    assert header is not None
    attestation = attest(header, "PBOC", net.keys["PBOC"])
    prepared = engine.prepare(pay_batch(net, 2, "with-attestation"), T0 + 10)
    assert engine.commit(prepared, [attestation]) is None
    engine.finish(prepared, None)
    assert engine.store.attestations(3) == [attestation]
    (_, payload), *_ = engine.store.outbox_after(engine.store.outbox_after(0)[-2][0])
    assert {e["height"] for e in json.loads(payload)} == {5}


# ---------------------------------------------------------------------------- log, outbox


def test_one_outbox_row_per_block_with_its_events(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Each committed block writes one outbox row, in order, with one event per entry."""
    engine = open_engine()
    populate(engine, net)
    assert engine.settle([pay(net, "BOCHK", "KBANK", 10 * FUNDS)], T0 + 5).block is None
    store = engine.store
    rows = store.outbox_after(0)
    assert len(rows) == store.count("blocks") == engine.height == 4
    for height, (_, payload) in enumerate(rows, start=1):
        header = store.header(height)
        assert header is not None
        assert [e["seq"] for e in json.loads(payload)] == list(
            range(header.first_seq, header.first_seq + header.entry_count)
        )
    assert [i for i, _ in rows] == sorted(i for i, _ in rows)
    assert store.outbox_after(rows[1][0]) == rows[2:]
    assert store.outbox_after(rows[0][0], limit=1) == rows[1:2]


def test_outbox_last_id_measures_the_backlog_behind_a_cursor(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """The newest outbox row's id (0 when empty): minus a cursor, the rows not yet consumed."""
    engine = open_engine()
    assert engine.store.outbox_last_id() == 0
    populate(engine, net)
    rows = engine.store.outbox_after(0)
    assert engine.store.outbox_last_id() == rows[-1][0]


def test_outbox_cursor_persists(store_spec: str, stores: list[Store]) -> None:
    """A consumer's cursor starts at 0, moves, and survives a reopen."""
    store = open_store(store_spec)
    stores.append(store)
    assert store.outbox_cursor("mqtt") == 0
    store.set_outbox_cursor("mqtt", 7)
    store.set_outbox_cursor("mqtt", 9)
    store.close()
    again = open_store(store_spec)
    stores.append(again)
    assert (again.outbox_cursor("mqtt"), again.outbox_cursor("grpc")) == (9, 0)


def test_the_shared_outbox_cursor_never_moves_back(store_spec: str, stores: list[Store]) -> None:
    """On PostgreSQL, where bridge processes take over from each other, a late write of a
    lower position (a deposed leader's last mark) leaves the cursor where the new leader put
    it; the single-process SQLite store writes what it is given."""
    store = open_store(store_spec)
    stores.append(store)
    store.set_outbox_cursor("mqtt", 9)
    store.set_outbox_cursor("mqtt", 7)
    assert store.outbox_cursor("mqtt") == (9 if is_postgres(store_spec) else 7)


def test_add_attestation_is_idempotent(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A central bank's attestation of a height is stored once; repeats are ignored."""
    engine = open_engine()
    populate(engine, net)
    store = engine.store
    header = store.header(2)
    assert header is not None
    first = attest(header, "PBOC", net.keys["PBOC"])
    assert store.add_attestation(first) is True
    assert store.add_attestation(first) is False
    second = attest(header, "HKMA", net.keys["HKMA"])
    assert store.add_attestations([second, first]) == [True, False]
    assert [a.central_bank for a in store.attestations(2)] == ["HKMA", "PBOC"]
    assert store.count("attestations") == 2
    assert store.attestations(3) == []


def test_log_reads_by_height_seq_and_instruction(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Headers chain, block entries match their header, entries read back by seq and by id."""
    engine = open_engine()
    sent = populate(engine, net)
    store = engine.store
    headers = list(store.headers(1, 4))
    assert [h.height for h in headers] == [1, 2, 3, 4]
    assert headers[0].prev_hash == net.genesis.hash()
    assert all(b.prev_hash == a.hash() for a, b in itertools.pairwise(headers))
    assert store.head() == headers[-1]
    assert len(store.block_entry_bytes(3)) == headers[2].entry_count
    receipt = engine.ledger.receipts[("ICBC", sent["pay"].body.instruction_id)]
    assert store.entry_location("ICBC", sent["pay"].body.instruction_id) == (receipt.seq, 3)
    rows = store.entries_from(receipt.seq, limit=3)
    assert [seq for seq, _, _ in rows] == [receipt.seq, receipt.seq + 1, receipt.seq + 2]
    assert b'"INV-2025-0001"' in rows[0][2]


def test_load_refuses_a_tampered_tail(
    store_spec: str, open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Opening re-verifies the last blocks: a rewritten Merkle root is refused."""
    engine = open_engine()
    populate(engine, net)
    engine.store.verify_tail(net.genesis)
    engine.store.close()
    execute(store_spec, "UPDATE blocks SET merkle_root = ? WHERE height = 4", b"\x42" * 32)
    with pytest.raises(LogIntegrityError, match="block 4"):
        open_engine()


def query(spec: str, sql: str) -> list[tuple[Any, ...]]:
    """Read rows straight from the database, behind the store's back."""
    if is_postgres(spec):
        with psycopg.connect(spec, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(sql.encode()).fetchall()]
    db = sqlite3.connect(spec)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_refusals_are_recorded_with_bounded_retention(
    store_spec: str, open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A refused instruction is recorded beside the log (no entry); only the newest are kept."""
    engine = open_engine()
    settle_ok(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    entries = engine.store.count("entries")
    refused = pay(net, "ICBC", "BOCHK", 5)  # nothing issued yet
    (result,) = engine.settle([refused], T0 + 1).results
    assert isinstance(result, Refused)
    assert engine.store.count("entries") == entries
    sql = "SELECT time, sender, instruction_id, kind, reason, corridor FROM refusals ORDER BY id"
    hk = net.jurisdiction_of["BOCHK"]
    cn = net.jurisdiction_of["ICBC"]
    assert query(store_spec, sql) == [
        (T0 + 1, "ICBC", refused.body.instruction_id, "pay", "INSUFFICIENT_FUNDS", f"{cn}-{hk}")
    ]
    more = [(T0 + 2 + i, "ICBC", f"r{i}", "pay", "INSUFFICIENT_FUNDS", "") for i in range(4)]
    engine.store.record_refusals(more, keep=3)
    assert [r[2] for r in query(store_spec, sql)] == ["r1", "r2", "r3"]
