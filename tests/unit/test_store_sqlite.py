"""The SQLite store: state round trips, receipts after restart, atomic commits, tail checks."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Entry, Envelope, Outcome, Pay, Receipt
from bridge.errors import LogIntegrityError, Reason, Refused, StoreError
from bridge.log.blocks import attest
from bridge.settlement import Result, SettlementEngine
from bridge.signing import endorse_legs, sign_as_party
from bridge.store.sqlite import TAIL_BLOCKS_VERIFIED, SqliteStore
from tests.factories import (
    BANKS,
    SIGNED_AT,
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


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bridge-store-") as tmp:
        yield Path(tmp) / "ledger.sqlite"


@pytest.fixture
def stores() -> Iterator[list[SqliteStore]]:
    """Every store a test opens, closed at the end."""
    opened: list[SqliteStore] = []
    yield opened
    for store in opened:
        store.close()


@pytest.fixture
def open_engine(
    db_path: Path, net: Network, stores: list[SqliteStore]
) -> Callable[[], SettlementEngine]:
    def opener() -> SettlementEngine:
        store = SqliteStore(db_path)
        stores.append(store)
        return SettlementEngine.open(store, net.genesis, verifier=FastVerifier())

    return opener


def settle_ok(engine: SettlementEngine, envelopes: list[Envelope], now: int) -> list[Receipt]:
    """Settle a batch that must be accepted whole."""
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


def rows_of(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read through a separate connection."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}


def tamper(path: Path, sql: str, *args: Any) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(sql, args)
    finally:
        db.close()


def populate(engine: SettlementEngine, net: Network) -> dict[str, Any]:
    """Drive every state table: admissions, policy, freeze, issue, pay, PvPs of each fate,
    redemption. One block per call to `settle_ok`; returns what was sent."""
    sent: dict[str, Any] = {}
    settle_ok(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    funding = [issue(net, cb, bank, FUNDS) for bank, cb in BANKS]
    sent["policy"] = set_policy(
        net,
        "PBOC",
        per_transfer_limit=5_000_000,
        per_day_limit=8_000_000,
        allowed_jurisdictions=("HK", "TH"),
    )
    sent["freeze"] = freeze(net, "BOT", "ENBD", "THB")
    settle_ok(engine, [*funding, sent["policy"], sent["freeze"]], T0 + 1)
    held = pvp_proposal(net, "ICBC", "BOCHK", 20_000, 25_000, settle_by=T0 + HOUR)
    settled = pvp_proposal(net, "CCB", "KBANK", 10_000, 45_000, settle_by=T0 + HOUR)
    cancelled = pvp_proposal(net, "BOCHK", "KBANK", 7_000, 30_000, settle_by=T0 + HOUR)
    sent["held"] = held
    sent["pay"] = pay(net, "ICBC", "CCB", 1_000, reference="INV-2025-0001")
    sent["dual"] = dual_pvp(net, "BOCHK", "ENBD", 3_000, 1_500)
    sent["propose"] = [sign(net, p) for p in (held, settled, cancelled)]
    settle_ok(engine, [sent["pay"], sent["dual"], *sent["propose"]], T0 + 2)
    sent["accept"] = accept_pvp(net, settled)
    sent["cancel"] = cancel_pvp(net, cancelled)
    sent["redeem"] = redeem(net, "KBANK", 500)
    settle_ok(engine, [sent["accept"], sent["cancel"], sent["redeem"]], T0 + 3)
    return sent


# ---------------------------------------------------------------------------- round trips


def test_founding_state_round_trips(open_engine: Callable[[], SettlementEngine]) -> None:
    """A freshly founded ledger reloads with the genesis central banks, currencies, supply."""
    engine = open_engine()
    before = state_of(engine.ledger)
    engine.store.close()
    again = open_engine()
    assert state_of(again.ledger) == before
    assert again.ledger.next_seq == 1
    assert again.height == 0


def test_every_state_table_round_trips(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Reloading gives back every table: participants to supply, PvPs, usage and receipts."""
    engine = open_engine()
    sent = populate(engine, net)
    before = state_of(engine.ledger)
    receipts = dict(engine.ledger.receipts.items())
    assert receipts
    for table in ("policies", "frozen", "pvps", "usage", "supply", "balances"):
        assert before[table], f"populate left {table} empty"
    assert {s.status for s in before["pvps"].values()} == {Outcome.HELD}  # closed: on disk
    proposals = [e.body for e in sent["propose"]]
    closed = [engine.store.pvp(p.sender, p.instruction_id) for p in proposals]
    assert [s.status for s in closed if s is not None] == [
        Outcome.HELD,
        Outcome.SETTLED,
        Outcome.CANCELLED,
    ]
    assert before["supply"]["THB"][1] == 500
    height, head, next_seq = engine.height, engine.head_hash, engine.ledger.next_seq
    engine.store.close()

    again = open_engine()
    assert dict(again.ledger.receipts.items()) == {}  # none loaded: looked up on demand
    assert same_receipts(again.ledger, receipts)
    assert state_of(again.ledger) == before
    assert (again.height, again.head_hash, again.ledger.next_seq) == (height, head, next_seq)
    assert again.ledger.conservation_errors() == []


def test_held_pvp_still_expires_after_reopen(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """A hold loaded from disk is released when its deadline passes after a restart."""
    engine = open_engine()
    sent = populate(engine, net)
    held = sent["held"]
    available, reserved = engine.ledger.balance("ICBC", "CNY")
    engine.store.close()

    again = open_engine()
    settled = again.settle([], T0 + HOUR)
    assert settled.block is not None
    assert [e.outcome for e in settled.block.entries] == [Outcome.EXPIRED]
    expired = again.store.pvp("ICBC", held.instruction_id)
    assert expired is not None
    assert expired.status is Outcome.EXPIRED
    assert ("ICBC", held.instruction_id) not in again.ledger.pvps  # closed: left memory
    assert again.ledger.balance("ICBC", "CNY") == (available + 20_000, reserved - 20_000)


def test_retry_after_reopen_is_duplicate_and_settles_nothing(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Receipts are rebuilt from the entries: a retry after restart returns the original."""
    engine = open_engine()
    sent = populate(engine, net)
    originals = {
        key: engine.ledger.receipts[(e.body.sender, e.body.instruction_id)]
        for key, e in (("pay", sent["pay"]), ("dual", sent["dual"]), ("accept", sent["accept"]))
    }
    engine.store.close()

    again = open_engine()
    before = state_of(again.ledger)
    entries, blocks = again.store.count("entries"), again.store.count("blocks")
    retried = [sent["pay"], sent["dual"], sent["accept"], *sent["propose"]]
    settled = again.settle(retried, T0 + 10)
    assert settled.block is None
    for result in settled.results:
        assert isinstance(result, Receipt), result
        assert result.duplicate, result
    by_id = {r.instruction_id: r for r in settled.results if isinstance(r, Receipt)}
    for original in originals.values():
        replayed = by_id[original.instruction_id]
        assert (replayed.seq, replayed.outcome, replayed.body_hash) == (
            original.seq,
            original.outcome,
            original.body_hash,
        )
    assert state_of(again.ledger) == before
    assert (again.store.count("entries"), again.store.count("blocks")) == (entries, blocks)


def test_reused_id_with_another_body_is_refused_after_reopen(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """The same instruction id with a different body is an id conflict, also after restart."""
    engine = open_engine()
    sent = populate(engine, net)
    engine.store.close()
    again = open_engine()
    body = sent["pay"].body
    altered = pay(net, "ICBC", "CCB", 1_001, instruction_id=body.instruction_id)
    (result,) = again.settle([altered], T0 + 10).results
    assert isinstance(result, Refused)
    assert result.reason is Reason.ID_CONFLICT


def test_initialize_twice_and_load_empty_are_refused(db_path: Path, net: Network) -> None:
    """A store holds one ledger: no second founding, and loading an empty file fails."""
    store = SqliteStore(db_path)
    try:
        with pytest.raises(StoreError, match="holds no ledger"):
            store.load(verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS)
        ledger = Ledger(net.genesis, verifier=FastVerifier())
        store.initialize(ledger)
        with pytest.raises(StoreError, match="already holds a ledger"):
            store.initialize(ledger)
        assert store.genesis() == net.genesis
    finally:
        store.close()


# ---------------------------------------------------------------------------- atomic commits


def pay_batch(net: Network, count: int, prefix: str) -> list[Envelope]:
    return [pay(net, "ICBC", "CCB", 10 + i, instruction_id=f"{prefix}-{i}") for i in range(count)]


def assert_all_unknown(results: list[Result]) -> None:
    for result in results:
        assert isinstance(result, Refused), result
        assert result.reason is Reason.OUTCOME_UNKNOWN


def test_failed_commit_writes_nothing_and_rolls_the_ledger_back(
    open_engine: Callable[[], SettlementEngine], net: Network, db_path: Path
) -> None:
    """A commit failing mid-transaction leaves no row behind and the ledger as before."""
    engine = open_engine()
    populate(engine, net)
    ledger = engine.ledger
    next_seq = ledger.next_seq
    # a row squatting on the next sequence number: the block row inserts, the entries fail
    tamper(
        db_path,
        "INSERT INTO entries VALUES (?, 999, 'x', 'squatter', 'pay', 'SETTLED', 0, x'', x'')",
        next_seq,
    )
    before_rows = rows_of(db_path)
    before_state = state_of(ledger)
    height, head = engine.height, engine.head_hash

    batch = pay_batch(net, 5, "atomic")
    settled = engine.settle(batch, T0 + 10)
    assert settled.block is None
    assert_all_unknown(settled.results)
    assert rows_of(db_path) == before_rows
    assert state_of(ledger) == before_state
    assert (ledger.next_seq, ledger.pending_entries()) == (next_seq, 0)
    assert (engine.height, engine.head_hash) == (height, head)

    tamper(db_path, "DELETE FROM entries WHERE instruction_id = 'squatter'")
    receipts = settle_ok(engine, batch, T0 + 11)
    assert [r.seq for r in receipts] == list(range(next_seq, next_seq + 5))
    assert not any(r.duplicate for r in receipts)
    engine.store.verify_tail(net.genesis)


def endorsed_as_one_batch(net: Network, amounts: list[int], prefix: str) -> list[Envelope]:
    """Payments by ICBC whose legs PBOC endorsed together, with one signature over their root."""
    signed = [
        sign_as_party(
            Envelope.of(
                Pay(
                    f"{prefix}-{i}",
                    "ICBC",
                    T0 + HOUR,
                    "CCB",
                    "CNY",
                    amount,
                    "",
                    signed_at=SIGNED_AT,
                )
            ),
            "ICBC",
            net.keys["ICBC"],
        )
        for i, amount in enumerate(amounts)
    ]
    endorsements = endorse_legs([(e, "ICBC") for e in signed], "PBOC", net.keys["PBOC"])
    return [e.with_signature(s) for e, s in zip(signed, endorsements, strict=True)]


def test_a_batch_under_one_endorsement_fails_or_settles_per_instruction(
    open_engine: Callable[[], SettlementEngine], net: Network, db_path: Path
) -> None:
    """Legs endorsed under one batch root: a failed commit leaves each OUTCOME_UNKNOWN; sent
    again, each settles or is refused on its own (one over its limit sinks no other)."""
    engine = open_engine()
    populate(engine, net)
    next_seq = engine.ledger.next_seq
    tamper(
        db_path,
        "INSERT INTO entries VALUES (?, 999, 'x', 'squatter', 'pay', 'SETTLED', 0, x'', x'')",
        next_seq,
    )
    batch = endorsed_as_one_batch(net, [10, 10 * FUNDS, 12], "one-root")
    failed = engine.settle(batch, T0 + 10)
    assert failed.block is None
    assert_all_unknown(failed.results)
    tamper(db_path, "DELETE FROM entries WHERE instruction_id = 'squatter'")
    settled = engine.settle(batch, T0 + 11)
    assert settled.block is not None
    first, short, last = settled.results
    assert isinstance(first, Receipt)
    assert isinstance(last, Receipt)
    assert isinstance(short, Refused)
    assert short.reason is Reason.TRANSFER_LIMIT_EXCEEDED
    assert [first.seq, last.seq] == [next_seq, next_seq + 1]


def test_commit_of_a_taken_block_height_fails_whole(
    open_engine: Callable[[], SettlementEngine], net: Network, db_path: Path
) -> None:
    """A second writer sealing a height already committed is refused and rolled back."""
    first = open_engine()
    populate(first, net)
    second = open_engine()  # sees the same head as `first`
    settle_ok(first, pay_batch(net, 3, "winner"), T0 + 10)
    before_rows = rows_of(db_path)
    before_balances = dict(second.ledger.balances)
    before_state = state_of(second.ledger)

    settled = second.settle(pay_batch(net, 3, "loser"), T0 + 11)
    assert_all_unknown(settled.results)
    assert rows_of(db_path) == before_rows
    assert second.ledger.balances == before_balances
    assert state_of(second.ledger) == before_state


def test_commit_on_a_closed_connection_fails_and_rolls_back(
    open_engine: Callable[[], SettlementEngine], net: Network, db_path: Path
) -> None:
    """If the database is gone, nothing is acknowledged and balances are exactly as before."""
    engine = open_engine()
    populate(engine, net)
    before_rows = rows_of(db_path)
    before_state = state_of(engine.ledger)
    engine.store.close()

    batch = [*pay_batch(net, 2, "closed"), dual_pvp(net, "BOCHK", "KBANK", 100, 400)]
    settled = engine.settle(batch, T0 + 10)
    assert_all_unknown(settled.results)
    assert state_of(engine.ledger) == before_state
    assert rows_of(db_path) == before_rows


def test_earlier_duplicates_in_a_failed_batch_keep_their_original_receipt(
    open_engine: Callable[[], SettlementEngine], net: Network, db_path: Path
) -> None:
    """A duplicate of an earlier block keeps its receipt; a refusal and a new settlement of the
    failed batch are both OUTCOME_UNKNOWN (the refusal may have rested on the lost batch)."""
    engine = open_engine()
    sent = populate(engine, net)
    engine.store.close()
    too_much = pay(net, "BOCHK", "KBANK", 10 * FUNDS)
    results = engine.settle([sent["pay"], too_much, *pay_batch(net, 1, "lost")], T0 + 10).results
    duplicate, refused, lost = results
    assert isinstance(duplicate, Receipt)
    assert duplicate.duplicate
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.OUTCOME_UNKNOWN
    assert isinstance(lost, Refused)
    assert lost.reason is Reason.OUTCOME_UNKNOWN


# ---------------------------------------------------------------------------- tail verification


@pytest.fixture
def sealed_chain(
    open_engine: Callable[[], SettlementEngine], net: Network, stores: list[SqliteStore]
) -> Path:
    """A closed store holding five blocks."""
    engine = open_engine()
    populate(engine, net)
    settle_ok(engine, pay_batch(net, 4, "tail"), T0 + 4)
    assert engine.height == 5
    engine.store.close()
    return engine.store.path


def entry_of_block(path: Path, height: int) -> tuple[int, bytes]:
    with sqlite3.connect(path) as db:
        seq, data = db.execute(
            "SELECT seq, data FROM entries WHERE height = ? ORDER BY seq LIMIT 1", (height,)
        ).fetchone()
    return int(seq), bytes(data)


def check_tail(path: Path, net: Network, blocks: int = TAIL_BLOCKS_VERIFIED) -> None:
    store = SqliteStore(path)
    try:
        store.verify_tail(net.genesis, blocks)
    finally:
        store.close()


def test_untouched_chain_verifies(sealed_chain: Path, net: Network) -> None:
    """An honest store passes the tail check."""
    check_tail(sealed_chain, net)


def test_tampered_entry_byte_is_detected(sealed_chain: Path, net: Network) -> None:
    """Changing one byte of a stored entry breaks its block's Merkle root."""
    seq, data = entry_of_block(sealed_chain, 3)
    position = data.index(b'"amount":') + len(b'"amount":')
    forged = data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]
    tamper(sealed_chain, "UPDATE entries SET data = ? WHERE seq = ?", forged, seq)
    with pytest.raises(LogIntegrityError, match="block 3: Merkle root"):
        check_tail(sealed_chain, net)


def test_broken_prev_hash_link_is_detected(sealed_chain: Path, net: Network) -> None:
    """A block whose previous-hash does not name the block before it is refused."""
    tamper(sealed_chain, "UPDATE blocks SET prev_hash = ? WHERE height = 4", b"\x00" * 32)
    with pytest.raises(LogIntegrityError, match="block 4: previous-hash link"):
        check_tail(sealed_chain, net)


def test_wrong_merkle_root_is_detected(sealed_chain: Path, net: Network) -> None:
    """A header whose Merkle root does not match its entries is refused."""
    tamper(sealed_chain, "UPDATE blocks SET merkle_root = ? WHERE height = 2", b"\x42" * 32)
    with pytest.raises(LogIntegrityError, match="block 2: Merkle root"):
        check_tail(sealed_chain, net)


def test_rewritten_header_is_detected(sealed_chain: Path, net: Network) -> None:
    """Changing a sealed header field makes it disagree with its stored hash."""
    tamper(sealed_chain, "UPDATE blocks SET time = time + 1 WHERE height = 2")
    with pytest.raises(LogIntegrityError, match="block 2: stored block hash"):
        check_tail(sealed_chain, net)


def test_missing_entry_is_detected(sealed_chain: Path, net: Network) -> None:
    """Deleting an entry leaves fewer entries than the header counts."""
    seq, _ = entry_of_block(sealed_chain, 3)
    tamper(sealed_chain, "DELETE FROM entries WHERE seq = ?", seq)
    with pytest.raises(LogIntegrityError, match=r"block 3: .* entries stored"):
        check_tail(sealed_chain, net)


def test_entry_outside_any_block_is_detected(sealed_chain: Path, net: Network) -> None:
    """An entry past the last sealed block is refused."""
    tamper(
        sealed_chain,
        "INSERT INTO entries SELECT MAX(seq) + 1, 99, 'x', 'orphan', 'pay', 'SETTLED', 0, x'', x'' "
        "FROM entries",
    )
    with pytest.raises(LogIntegrityError, match="beyond the last block"):
        check_tail(sealed_chain, net)


def test_load_refuses_a_tampered_store(
    sealed_chain: Path, net: Network, stores: list[SqliteStore]
) -> None:
    """Opening the engine re-verifies the tail and refuses a tampered log."""
    tamper(sealed_chain, "UPDATE blocks SET merkle_root = ? WHERE height = 5", b"\x42" * 32)
    store = SqliteStore(sealed_chain)
    stores.append(store)
    with pytest.raises(LogIntegrityError):
        SettlementEngine.open(store, net.genesis, verifier=FastVerifier())


def test_tail_check_covers_only_the_last_blocks(sealed_chain: Path, net: Network) -> None:
    """Only the last `blocks` blocks are re-verified on open; a full check finds older damage."""
    tamper(sealed_chain, "UPDATE blocks SET merkle_root = ? WHERE height = 1", b"\x42" * 32)
    check_tail(sealed_chain, net, blocks=4)
    with pytest.raises(LogIntegrityError, match="block 1"):
        check_tail(sealed_chain, net, blocks=5)


# ---------------------------------------------------------------------------- outbox, attestations


def test_one_outbox_row_per_block_with_its_events(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """Each committed block writes one outbox row: its height and one event per entry."""
    engine = open_engine()
    populate(engine, net)
    refused = engine.settle([pay(net, "BOCHK", "KBANK", 10 * FUNDS)], T0 + 5)
    assert refused.block is None
    store = engine.store
    rows = store.outbox_after(0)
    assert len(rows) == store.count("blocks") == engine.height == 4
    for height, (row_id, payload) in enumerate(rows, start=1):
        events = json.loads(payload)
        header = store.header(height)
        assert header is not None
        assert [e["seq"] for e in events] == list(
            range(header.first_seq, header.first_seq + header.entry_count)
        )
        assert {e["height"] for e in events} == {height}
        assert row_id == height
    assert store.outbox_after(rows[1][0]) == rows[2:]


def test_outbox_cursor_persists(db_path: Path, net: Network, stores: list[SqliteStore]) -> None:
    """A consumer's cursor starts at 0 and survives a reopen."""
    store = SqliteStore(db_path)
    stores.append(store)
    assert store.outbox_cursor("mqtt") == 0
    store.set_outbox_cursor("mqtt", 7)
    store.set_outbox_cursor("mqtt", 9)
    store.close()
    again = SqliteStore(db_path)
    stores.append(again)
    assert again.outbox_cursor("mqtt") == 9
    assert again.outbox_cursor("grpc") == 0


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
    assert store.add_attestation(attest(header, "PBOC", net.keys["PBOC"])) is False
    assert store.add_attestation(attest(header, "HKMA", net.keys["HKMA"])) is True
    stored = store.attestations(2)
    assert [a.central_bank for a in stored] == ["HKMA", "PBOC"]
    assert stored[1] == first
    assert store.count("attestations") == 2
    assert store.attestations(3) == []


def test_entry_location_and_entries_from(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """An instruction's entry is found by id, and entries read back in sequence order."""
    engine = open_engine()
    sent = populate(engine, net)
    store = engine.store
    receipt = engine.ledger.receipts[("ICBC", sent["pay"].body.instruction_id)]
    assert store.entry_location("ICBC", sent["pay"].body.instruction_id) == (receipt.seq, 3)
    assert store.entry_location("ICBC", "never-sent") is None
    rows = store.entries_from(receipt.seq, limit=3)
    assert [seq for seq, _, _ in rows] == [receipt.seq, receipt.seq + 1, receipt.seq + 2]
    assert b'"INV-2025-0001"' in rows[0][2]


def test_entry_rows_hold_the_body_hash_and_canonical_bytes(
    open_engine: Callable[[], SettlementEngine], net: Network, db_path: Path
) -> None:
    """Each stored entry row keeps SHA-256 of its body and the entry's canonical bytes."""
    engine = open_engine()
    populate(engine, net)
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT seq, sender, instruction_id, body_hash, data FROM entries")
        stored = [(s, snd, iid, bytes(h), bytes(d)) for s, snd, iid, h, d in rows]
    assert stored
    for seq, sender, instruction_id, body_hash, data in stored:
        entry = Entry.from_canonical_bytes(data)
        assert entry.seq == seq
        assert (entry.envelope.body.sender, entry.envelope.body.instruction_id) == (
            sender,
            instruction_id,
        )
        assert body_hash == sha256(entry.envelope.body_bytes).digest()
        assert engine.ledger.receipts[(sender, instruction_id)].body_hash == body_hash


def test_outbox_last_id_measures_the_backlog_behind_a_cursor(
    open_engine: Callable[[], SettlementEngine], net: Network
) -> None:
    """The newest outbox row's id (0 when empty): minus a cursor, the rows not yet consumed."""
    engine = open_engine()
    assert engine.store.outbox_last_id() == 0
    populate(engine, net)
    rows = engine.store.outbox_after(0)
    assert engine.store.outbox_last_id() == rows[-1][0] == len(rows)
