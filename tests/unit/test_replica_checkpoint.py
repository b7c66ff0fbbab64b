"""A central bank replica restored from its checkpoint is the replica that replayed everything.

Blocks are built by hand from a bridge-side ledger (admissions, issues, a PvP held then
accepted, payments). One replica replays them all in memory; another writes checkpoints as it
goes; a third is restored from those checkpoints and replays only the rest. A checkpoint that
cannot be trusted (unreadable, inconsistent, of another chain) is discarded, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import Entry, Envelope, Millis, Outcome, ProposePvp, Receipt
from bridge.errors import LogIntegrityError, Reason, Refused, StoreError
from bridge.log.blocks import SealedBlock, seal
from bridge.store.receipts import StoredReceipts
from participants.central_bank import replica as replica_module
from participants.central_bank.checkpoint import ReplicaCheckpoint
from participants.central_bank.replica import Replica
from tests.factories import (
    BANKS,
    CENTRAL_BANKS,
    T0,
    Network,
    accept_pvp,
    cancel_pvp,
    fund,
    make_ledger,
    network,
    network_with_keys,
    pay,
    pvp_proposal,
    sign,
)

LOGGER = "participants.central_bank.replica"
EVERYONE = [cb for cb, *_ in CENTRAL_BANKS] + [bank for bank, _ in BANKS]


class Chain:
    """A bridge-side ledger and the blocks it sealed."""

    def __init__(self, net: Network) -> None:
        self.ledger: Ledger = make_ledger(net)
        self.height = 0
        self.head_hash = net.genesis.hash()

    def block(self, envelopes: list[Envelope], at: Millis) -> SealedBlock:
        for envelope in envelopes:
            self.ledger.apply(envelope, at)
        self.height += 1
        block = seal(self.height, self.head_hash, self.ledger.take_batch().entries, at)
        self.head_hash = block.header.hash()
        return block


def blocks_of(net: Network) -> list[SealedBlock]:
    """Five blocks touching every state table the replica keeps."""
    chain = Chain(net)
    fund(chain.ledger, net, "ICBC", 1_000_000)
    fund(chain.ledger, net, "BOCHK", 1_000_000)
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1_000, 1_100, settle_by=T0 + 100_000)
    return [
        chain.block([], T0),
        chain.block([sign(net, proposal)], T0 + 1_000),
        chain.block([pay(net, "ICBC", "CCB", 5), pay(net, "BOCHK", "ICBC", 7)], T0 + 2_000),
        chain.block([accept_pvp(net, proposal)], T0 + 3_000),
        chain.block([pay(net, "ICBC", "CCB", 1)], T0 + 4_000),
    ]


def replica_of(net: Network, path: Path | None = None) -> Replica:
    return Replica(
        net.genesis,
        central_bank="PBOC",
        signer=net.keys["PBOC"],
        verifier=FastVerifier(),
        check=SignatureCheck.ENDORSEMENTS,
        checkpoint=None if path is None else ReplicaCheckpoint(path),
    )


def replay(replica: Replica, blocks: list[SealedBlock]) -> None:
    for block in blocks:
        replica.apply_block(block.header, list(block.entry_bytes))


def history(replica: Replica, from_seq: int = 1) -> dict[str, list[tuple[int, int, bytes]]]:
    return {
        who: [(e.seq, e.height, e.data) for e in replica.entries_of(who, from_seq, 1_000)]
        for who in EVERYONE
    }


def assert_same(restored: Replica, full: Replica) -> None:
    """Same state, head and history; `full` (no checkpoint) holds everything in memory, a
    replica with a checkpoint its held PvPs (closed ones are read back from the file)."""
    mine, theirs = dict(restored.ledger.tables()), dict(full.ledger.tables())
    pvps = theirs.pop("pvps")
    closed = {k: s for k, s in pvps.items() if s.status is not Outcome.HELD}
    held = {k: s for k, s in pvps.items() if s.status is Outcome.HELD}
    assert {k: s for k, s in mine.pop("pvps").items() if s.status is Outcome.HELD} == held
    assert mine == theirs
    assert restored.checkpoint is not None
    for key, state in closed.items():
        assert restored.ledger.pvps.get(key, restored.checkpoint.closed_pvp(key)) == state
    # the restored receipts are looked up in the checkpoint: every one is found there
    assert all(restored.ledger.receipts.get(k) == r for k, r in full.ledger.receipts.items())
    assert restored.ledger.next_seq == full.ledger.next_seq
    assert (restored.height, restored.head_hash, restored.head_time, restored.head) == (
        full.height,
        full.head_hash,
        full.head_time,
        full.head,
    )
    for from_seq in range(1, full.last_seq + 2):
        assert history(restored, from_seq) == history(full, from_seq)


async def checkpointed(net: Network, path: Path, blocks: list[SealedBlock]) -> Replica:
    """A replica that replayed `blocks`, writing a checkpoint after every two."""
    replica = replica_of(net, path)
    for start in range(0, len(blocks), 2):
        replay(replica, blocks[start : start + 2])
        await replica.save_checkpoint()
    return replica


async def test_restored_replica_equals_full_replay_and_continues(tmp_path: Path) -> None:
    """Restored from a checkpoint, a replica has the state, head and history of one that
    replayed every block, and replays the next block to the same result."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    writer = await checkpointed(net, path, blocks[:4])
    full = replica_of(net)
    replay(full, blocks[:4])
    assert writer.checkpoint_height == 4
    assert_same(writer, full)  # history read back from the checkpoint

    restored = replica_of(net, path)
    assert restored.restore()
    assert restored.unverified_checkpoint
    assert_same(restored, full)
    replay(restored, blocks[4:])
    replay(full, blocks[4:])
    assert restored.replayed_blocks == 1
    assert_same(restored, full)  # history spans the checkpoint and memory
    await restored.save_checkpoint()
    again = replica_of(net, path)
    assert again.restore()
    assert_same(again, full)


async def test_write_interrupted_by_cancellation_loses_nothing(tmp_path: Path) -> None:
    """A checkpoint write whose caller is cancelled (the node stopping) keeps its changes:
    the next write waits for it and the checkpoint restores the full state."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    writer = replica_of(net, path)
    replay(writer, blocks[:3])
    saving = asyncio.create_task(writer.save_checkpoint())
    await asyncio.sleep(0)  # the write is under way in its thread
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving
    replay(writer, blocks[3:])
    await writer.save_checkpoint()
    full = replica_of(net)
    replay(full, blocks)
    restored = replica_of(net, path)
    assert restored.restore()
    assert_same(restored, full)


async def test_duplicate_replayed_after_restore_is_caught(tmp_path: Path) -> None:
    """The restored receipts are the idempotency index: a block repeating instructions
    settled before the checkpoint fails verification after a restore, as it would before."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    await checkpointed(net, path, blocks[:4])
    restored = replica_of(net, path)
    assert restored.restore()
    settled = blocks[2].entries  # two payments, settled in block 3
    first = restored.ledger.next_seq
    repeated = [Entry(first + i, T0 + 5_000, e.envelope, e.outcome) for i, e in enumerate(settled)]
    block = seal(5, restored.head_hash, repeated, T0 + 5_000)
    with pytest.raises(LogIntegrityError, match="replay gives"):
        restored.apply_block(block.header, list(block.entry_bytes))
    assert restored.height == 4


async def test_receipts_leave_memory_once_written_and_are_still_found(tmp_path: Path) -> None:
    """A restored replica holds no receipt in memory; those it replays stay in memory until
    the next checkpoint write, then only the bounded cache keeps them, and a block repeating
    an instruction is caught on either side of the write."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    await checkpointed(net, path, blocks[:2])
    restored = replica_of(net, path)
    assert restored.restore()
    index = restored.ledger.receipts
    assert isinstance(index, StoredReceipts)
    assert index.held() == 0
    replay(restored, blocks[2:3])  # two payments, not yet written
    assert index.held() == 2
    assert_repeat_refused(restored, blocks[2])
    await restored.save_checkpoint()
    assert restored.checkpoint is not None
    written = restored.checkpoint.receipts_for(
        [(e.envelope.body.sender, e.envelope.body.instruction_id) for e in blocks[2].entries]
    )
    assert sorted(r.seq for r in written) == [e.seq for e in blocks[2].entries]
    assert_repeat_refused(restored, blocks[2])
    assert_repeat_refused(restored, blocks[1])  # written by the first replica

    again = replica_of(net, path)
    assert again.restore()
    assert isinstance(again.ledger.receipts, StoredReceipts)
    assert again.ledger.receipts.held() == 0
    assert_repeat_refused(again, blocks[2])


async def test_a_restart_reads_only_held_pvps(tmp_path: Path) -> None:
    """A closed PvP is written apart from the held ones: a restored replica loads none of
    them, yet finds it when asked (to refuse acting on it again)."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    await checkpointed(net, path, blocks[:4])  # block 4 accepts the PvP held since block 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM state WHERE tbl='pvps'").fetchone() == (0,)
    restored = replica_of(net, path)
    assert restored.restore()
    assert restored.ledger.pvps == {}
    assert restored.checkpoint is not None
    proposal = blocks[1].entries[0].envelope.body
    found = restored.checkpoint.closed_pvp((proposal.sender, proposal.instruction_id))
    assert found is not None
    assert found.status is Outcome.SETTLED


def assert_repeat_refused(replica: Replica, settled: SealedBlock) -> None:
    """A next block repeating the instructions of `settled` fails verification."""
    first = replica.ledger.next_seq
    at = replica.head_time + 1
    repeated = [Entry(first + i, at, e.envelope, e.outcome) for i, e in enumerate(settled.entries)]
    block = seal(replica.height + 1, replica.head_hash, repeated, at)
    height = replica.height
    with pytest.raises(LogIntegrityError, match="replay gives"):
        replica.apply_block(block.header, list(block.entry_bytes))
    assert replica.height == height


def tamper(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql)


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("UPDATE accounts SET available = available + 1 WHERE participant = 'ICBC'", "issued"),
        ("UPDATE meta SET value = '[4, \"00\", \"00\", 1, 1, 1]' WHERE key = 'head'", "hash"),
        ("DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)", "entries end"),
        ("UPDATE meta SET value = '9' WHERE key = 'schema'", "schema"),
    ],
)
async def test_inconsistent_checkpoint_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sql: str, why: str
) -> None:
    """A checkpoint altered on disk is discarded with one warning; the replica starts at 0."""
    net = network()
    path = tmp_path / "PBOC.replica.sqlite"
    (await checkpointed(net, path, blocks_of(net)[:4])).checkpoint.close()  # type: ignore[union-attr]
    tamper(path, sql)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    replica = replica_of(net, path)
    assert not replica.restore()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["replica checkpoint discarded"]
    assert why in warnings[0].why  # type: ignore[attr-defined]
    assert (replica.height, replica.last_seq) == (0, 0)
    assert not path.exists()


async def test_unreadable_checkpoint_is_discarded_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint file that is not a database is discarded with one warning; the replica
    replays from genesis and writes a new checkpoint."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    path.write_bytes(b"not a database " * 100)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    replica = replica_of(net, path)
    assert not replica.restore()
    assert [r.getMessage() for r in caplog.records] == ["replica checkpoint discarded"]
    replay(replica, blocks)
    await replica.save_checkpoint()
    restored = replica_of(net, path)
    assert restored.restore()
    assert restored.height == len(blocks)


async def test_checkpoint_of_another_chain_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint written for another genesis is not loaded."""
    net = network()
    path = tmp_path / "PBOC.replica.sqlite"
    await checkpointed(net, path, blocks_of(net)[:2])
    other = network_with_keys({who: PrivateKey.generate() for who in net.keys}, chain_id="other")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    replica = replica_of(other, path)
    assert not replica.restore()
    assert "another genesis" in caplog.records[0].why  # type: ignore[attr-defined]


async def test_reset_forgets_the_restored_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reset (the bridge's block at the checkpoint's height differs) starts from genesis."""
    net = network()
    blocks = blocks_of(net)
    path = tmp_path / "PBOC.replica.sqlite"
    await checkpointed(net, path, blocks[:4])
    replica = replica_of(net, path)
    assert replica.restore()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    replica.reset("the bridge's block at height 4 has another hash")
    assert len(caplog.records) == 1
    assert (replica.height, replica.last_seq, replica.unverified_checkpoint) == (0, 0, False)
    assert not path.exists()
    full = replica_of(net)
    replay(full, blocks)
    replay(replica, blocks)
    await replica.save_checkpoint()  # closed PvPs are read back from the file
    assert_same(replica, full)


async def test_a_checkpoint_is_due_after_enough_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However few blocks and little time went by, enough entries replayed make a checkpoint
    due: what waits for the write is held in memory."""
    monkeypatch.setattr(replica_module, "CHECKPOINT_BLOCKS", 1_000)
    monkeypatch.setattr(replica_module, "CHECKPOINT_SECONDS", 3_600.0)
    net = network()
    blocks = blocks_of(net)
    replica = replica_of(net, tmp_path / "PBOC.replica.sqlite")
    monkeypatch.setattr(replica_module, "CHECKPOINT_ENTRIES", replica.last_seq + 1_000)
    replay(replica, blocks[:1])
    assert not replica.checkpoint_due()
    monkeypatch.setattr(replica_module, "CHECKPOINT_ENTRIES", replica.last_seq)
    assert replica.checkpoint_due()
    await replica.save_checkpoint()
    assert not replica.checkpoint_due()


@pytest.mark.parametrize("again", ["cancel", "accept"])
async def test_a_pvp_closed_since_the_last_write_cannot_be_acted_on_again(
    tmp_path: Path, again: str
) -> None:
    """A PvP held in the checkpoint file and closed since (not yet written) is still closed:
    a forged block cancelling or accepting it again fails verification and changes nothing,
    instead of releasing or moving its hold a second time."""
    net = network()
    blocks = blocks_of(net)
    replica = replica_of(net, tmp_path / "PBOC.replica.sqlite")
    replay(replica, blocks[:2])  # block 2 holds the PvP
    await replica.save_checkpoint()  # the file holds it as HELD
    replay(replica, blocks[2:4])  # block 4 accepts it: closed, not yet written
    proposal = blocks[1].entries[0].envelope.body
    assert isinstance(proposal, ProposePvp)
    forged = (
        cancel_pvp(net, proposal) if again == "cancel" else accept_pvp(net, proposal)
    )  # a bridge replaying the closing with a new instruction id
    outcome = Outcome.CANCELLED if again == "cancel" else Outcome.SETTLED
    at = replica.head_time + 1
    entry = Entry(replica.ledger.next_seq, at, forged, outcome)
    block = seal(replica.height + 1, replica.head_hash, [entry], at)
    before = (replica.height, dict(replica.ledger.tables()))
    with pytest.raises(Refused) as refused:
        replica.apply_block(block.header, list(block.entry_bytes))
    assert refused.value.reason is Reason.PVP_NOT_PENDING
    assert (replica.height, dict(replica.ledger.tables())) == before


async def test_a_failed_checkpoint_lookup_rolls_the_block_back(tmp_path: Path) -> None:
    """A checkpoint file that cannot be read during a replay leaves the replica exactly at the
    block before (a StoreError, so the node replays the block again), and the same block
    replays once the file is readable."""
    net = network()
    blocks = blocks_of(net)
    replica = replica_of(net, tmp_path / "PBOC.replica.sqlite")
    replay(replica, blocks[:2])
    await replica.save_checkpoint()
    receipts = replica.ledger.receipts
    assert isinstance(receipts, StoredReceipts)
    real = receipts._lookup

    def failing(keys: object) -> list[Receipt]:
        raise sqlite3.OperationalError("disk I/O error")

    receipts._lookup = failing
    before = (replica.height, dict(replica.ledger.tables()), replica.ledger.next_seq)
    with pytest.raises(StoreError, match="checkpoint look-up failed"):
        replay(replica, blocks[2:3])
    assert (replica.height, dict(replica.ledger.tables()), replica.ledger.next_seq) == before
    receipts._lookup = real
    replay(replica, blocks[2:])
    assert replica.height == len(blocks)
