"""Offline verification of a SQLite settlement log: what passes, and every tampering it names."""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from hashlib import sha256
from pathlib import Path

import pytest

from analysis.sample import SampleLog, SampleOptions, generate
from bridge.crypto import PrivateKey
from bridge.domain import Entry, Envelope, Genesis, Outcome, Pay
from bridge.log.blocks import BlockHeader, attest
from bridge.log.merkle import merkle_root
from bridge.log.source import SqliteSource
from bridge.log.verify import IdFilter, MerkleAccumulator, VerifyReport, _Scratch, verify_log
from bridge.signing import endorse, endorse_legs, sign_as_party

OPTIONS = SampleOptions(entries=130, block_size=16, rate=100.0, seed=11)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("verify-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Layout:
    """Where things are in the sample: blocks as (height, first_seq, count)."""

    blocks: tuple[tuple[int, int, int], ...]

    def height_of(self, seq: int) -> int:
        return next(h for h, first, n in self.blocks if first <= seq < first + n)

    @property
    def last_seq(self) -> int:
        _, first, count = self.blocks[-1]
        return first + count - 1

    @property
    def middle_height(self) -> int:
        return self.blocks[len(self.blocks) // 2][0]

    def first_of(self, height: int) -> int:
        return self.blocks[height - 1][1]


def layout_of(path: Path) -> Layout:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT height, first_seq, entry_count FROM blocks ORDER BY height")
        return Layout(tuple(rows))
    finally:
        db.close()


def tampered(
    sample: SampleLog, tmp_path: Path, change: Callable[[sqlite3.Connection], None]
) -> Path:
    """A copy of the sample log with `change` applied through a writable connection."""
    path = tmp_path / "tampered.sqlite"
    shutil.copyfile(sample.path, path)
    db = sqlite3.connect(path)
    try:
        change(db)
        db.commit()
    finally:
        db.close()
    return path


def verify_file(path: Path, **options: object) -> VerifyReport:
    with SqliteSource(path) as source:
        return verify_log(source, **options)  # type: ignore[arg-type]


def flip(data: bytes, offset: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= mask
    return bytes(changed)


def entry_data(db: sqlite3.Connection, seq: int) -> bytes:
    return bytes(db.execute("SELECT data FROM entries WHERE seq=?", (seq,)).fetchone()[0])


# ---------------------------------------------------------------------------- a sound log


def test_sample_log_verifies_with_a_non_final_tail_as_warning(sample: SampleLog) -> None:
    """A generated log verifies; its non-final last block is a warning, not a failure."""
    report = verify_file(sample.path)
    assert report.ok, report.failures
    assert report.entries == sample.entries
    assert report.blocks == sample.blocks
    assert report.final_blocks == sample.blocks - 1
    assert report.signatures > 2 * report.entries
    assert any("not final" in w for w in report.warnings)


def test_verification_reads_the_file_without_changing_it(sample: SampleLog) -> None:
    """The store is opened read-only: its bytes are the same after verification."""
    before = sha256(sample.path.read_bytes()).hexdigest()
    assert verify_file(sample.path).ok
    assert sha256(sample.path.read_bytes()).hexdigest() == before


def test_trusted_genesis_must_match(sample: SampleLog) -> None:
    """A log whose genesis is not the trusted one fails at the genesis."""
    assert verify_file(sample.path, trusted_genesis=sample.genesis).ok
    other = Genesis("another-chain", sample.genesis.central_banks, sample.genesis.quorum)
    report = verify_file(sample.path, trusted_genesis=other)
    assert not report.ok
    assert report.failures[0].where == "genesis"


def test_progress_is_reported_per_block(sample: SampleLog) -> None:
    """The progress callback sees every block and ends at the entry count."""
    seen: list[tuple[int, int]] = []
    verify_file(sample.path, on_progress=lambda e, b: seen.append((e, b)))
    assert len(seen) == sample.blocks
    assert seen[-1] == (sample.entries, sample.blocks)


def test_pruned_replay_verifies_the_same(sample: SampleLog) -> None:
    """Forgetting receipts every few entries (bounded memory) changes no verdict."""
    report = verify_file(sample.path, prune_every=25)
    assert report.ok, report.failures
    assert report.entries == sample.entries


def test_id_filter_never_misses_an_added_id() -> None:
    """Every added (sender, id) is a "maybe", even far past capacity; unknown ids mostly not."""
    full = IdFilter(capacity=1_000)
    added = [(f"BANK{i % 7}", f"pay-{i:09d}") for i in range(20_000)]
    for sender, instruction_id in added:
        full.add(sender, instruction_id)
    assert full.full
    assert all(full.might_hold(s, i) for s, i in added)
    sized = IdFilter(capacity=20_000)
    for sender, instruction_id in added:
        sized.add(sender, instruction_id)
    assert all(sized.might_hold(s, i) for s, i in added)
    false_maybes = sum(sized.might_hold("BANK0", f"other-{i}") for i in range(20_000))
    assert false_maybes < 200  # about 0.3% expected when full


def test_id_index_finds_every_pruned_id_as_its_filter_grows() -> None:
    """The on-disk id index answers every stored id with its seq across filter rebuilds, and
    reads the disk for almost none of the ids it never held."""
    scratch = _Scratch(filter_capacity=64)
    try:
        assert scratch.seq_of("BANK1", "pay-1") is None
        seq = 0
        for batch in range(5):
            rows = [(f"BANK{n % 3}", f"pay-{batch}-{n}", seq + n + 1) for n in range(300)]
            seq += len(rows)
            scratch.add(iter(rows))
            assert all(scratch.seq_of(s, i) == q for s, i, q in rows)
        assert all(scratch.seq_of("BANK1", f"pay-0-{n}") == n + 1 for n in range(1, 300, 3))
        reads = scratch.index_reads
        assert all(scratch.seq_of("BANK1", f"new-{n}") is None for n in range(1_000))
        assert scratch.index_reads - reads < 50
    finally:
        scratch.close()


def test_verification_gives_the_collector_back_as_it_found_it(sample: SampleLog) -> None:
    """Objects frozen during verification are unfrozen after it; a caller's own freeze stays."""
    assert verify_file(sample.path, prune_every=25).ok
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert verify_file(sample.path).ok
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("size", [*range(1, 18), 31, 32, 33, 64, 65, 100])
def test_streaming_merkle_root_equals_rfc6962_root(size: int) -> None:
    """The O(log n) accumulator gives the same root as the recursive RFC 6962 definition."""
    items = [f"leaf {i}".encode() for i in range(size)]
    accumulator = MerkleAccumulator()
    for item in items:
        accumulator.add(sha256(b"\x00" + item).digest())
    assert accumulator.root() == merkle_root(items)


# ---------------------------------------------------------------------------- entries


# (offset into the entry's bytes: an index, or a fraction of its length; bit mask)
ENTRY_FLIPS = (
    (0, 0x01),
    (1, 0x20),
    (9, 0x01),
    (0.25, 0x20),
    (0.5, 0x01),
    (0.75, 0x20),
    (-2, 0x01),
    (-1, 0x20),
)


@pytest.mark.parametrize(("offset", "mask"), ENTRY_FLIPS)
@pytest.mark.parametrize("where", ["first-of-block-2", "middle", "last"])
def test_flipped_byte_in_an_entry_is_named(
    sample: SampleLog, tmp_path: Path, where: str, offset: float, mask: int
) -> None:
    """Flipping any sampled bit of an entry's bytes fails verification at that entry."""
    layout = layout_of(sample.path)
    seq = {
        "first-of-block-2": layout.first_of(2),
        "middle": layout.last_seq // 2,
        "last": layout.last_seq,
    }[where]

    def change(db: sqlite3.Connection) -> None:
        data = entry_data(db, seq)
        position = int(offset * len(data)) if isinstance(offset, float) else offset % len(data)
        db.execute("UPDATE entries SET data=? WHERE seq=?", (flip(data, position, mask), seq))

    report = verify_file(tampered(sample, tmp_path, change))
    failure = report.failures[0]
    assert (failure.height, failure.seq) == (layout.height_of(seq), seq), failure


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("sender", "'ICBC2'"),
        ("instruction_id", "instruction_id || 'x'"),
        ("kind", "'pay'"),
        ("outcome", "'REJECTED'"),
        ("time", "time + 1"),
        ("body_hash", "zeroblob(32)"),
        ("height", "height + 1"),
    ],
)
def test_changed_entry_column_is_named(
    sample: SampleLog, tmp_path: Path, column: str, value: str
) -> None:
    """A stored column that disagrees with the entry's bytes fails at that entry."""
    layout = layout_of(sample.path)
    seq = layout.first_of(layout.middle_height) + 1

    def change(db: sqlite3.Connection) -> None:
        db.execute(f"UPDATE entries SET {column}={value} WHERE seq=?", (seq,))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.seq == seq, failure
    assert failure.height == layout.height_of(seq)


@pytest.mark.parametrize("which", ["first", "middle", "last-of-block", "last"])
def test_deleted_entry_is_named(sample: SampleLog, tmp_path: Path, which: str) -> None:
    """Deleting any single entry fails at the block and seq where it is missing."""
    layout = layout_of(sample.path)
    height = layout.middle_height
    seq = {
        "first": 1,
        "middle": layout.first_of(height) + 2,
        "last-of-block": layout.first_of(height + 1) - 1,
        "last": layout.last_seq,
    }[which]

    def change(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM entries WHERE seq=?", (seq,))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert (failure.height, failure.seq) == (layout.height_of(seq), seq), failure
    assert "missing" in failure.message


def test_entry_appended_beyond_the_last_block_is_named(sample: SampleLog, tmp_path: Path) -> None:
    """An extra entry after the last block is reported as covered by no block."""
    layout = layout_of(sample.path)
    extra = layout.last_seq + 1

    def change(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO entries SELECT ?, height, sender, instruction_id || '-copy', kind, "
            "outcome, time, body_hash, data FROM entries WHERE seq=?",
            (extra, layout.last_seq),
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.seq == extra
    assert "not covered by any block" in failure.message


def test_entry_inserted_in_the_middle_is_named(sample: SampleLog, tmp_path: Path) -> None:
    """Shifting entries up to insert a copy fails at the inserted position."""
    layout = layout_of(sample.path)
    seq = layout.first_of(layout.middle_height) + 3

    def change(db: sqlite3.Connection) -> None:
        db.execute("UPDATE entries SET seq = -(seq + 1) WHERE seq >= ?", (seq,))
        db.execute("UPDATE entries SET seq = -seq WHERE seq < 0")
        db.execute(
            "INSERT INTO entries SELECT ?, height, sender, instruction_id || '-copy', kind, "
            "outcome, time, body_hash, data FROM entries WHERE seq=?",
            (seq, seq - 1),
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert (failure.height, failure.seq) == (layout.height_of(seq), seq), failure


@pytest.mark.parametrize("across_blocks", [False, True])
def test_reordered_entries_are_named(
    sample: SampleLog, tmp_path: Path, across_blocks: bool
) -> None:
    """Swapping two entries (within a block or across a boundary) fails at the first."""
    layout = layout_of(sample.path)
    height = layout.middle_height
    seq = layout.first_of(height + 1) - 1 if across_blocks else layout.first_of(height) + 1

    def change(db: sqlite3.Connection) -> None:
        db.execute("UPDATE entries SET seq=-1 WHERE seq=?", (seq,))
        db.execute("UPDATE entries SET seq=? WHERE seq=?", (seq, seq + 1))
        db.execute("UPDATE entries SET seq=? WHERE seq=-1", (seq + 1,))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.seq == seq, failure
    assert failure.height == layout.height_of(seq)


# ---------------------------------------------------------------------------- blocks


BLOCK_CHANGES = {
    "prev_hash": "prev_hash = zeroblob(32)",
    "merkle_root": "merkle_root = randomblob(32)",
    "time": "time = time + 1",
    "first_seq": "first_seq = first_seq + 1",
    "entry_count": "entry_count = entry_count - 1",
    "hash": "hash = randomblob(32)",
}


@pytest.mark.parametrize("column", sorted(BLOCK_CHANGES))
@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_changed_block_header_is_named(
    sample: SampleLog, tmp_path: Path, column: str, which: str
) -> None:
    """Changing any header column of any block fails at that block."""
    layout = layout_of(sample.path)
    height = {"first": 1, "middle": layout.middle_height, "last": len(layout.blocks)}[which]

    def change(db: sqlite3.Connection) -> None:
        db.execute(f"UPDATE blocks SET {BLOCK_CHANGES[column]} WHERE height=?", (height,))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height, failure


def test_header_rewritten_with_a_consistent_hash_fails_on_attestations(
    sample: SampleLog, tmp_path: Path
) -> None:
    """A header changed and re-hashed no longer matches what the central banks attested."""
    layout = layout_of(sample.path)
    height = layout.middle_height

    def change(db: sqlite3.Connection) -> None:
        header = read_header(db, height)
        moved = BlockHeader(
            header.height,
            header.prev_hash,
            header.merkle_root,
            header.time + 1,
            header.first_seq,
            header.entry_count,
        )
        db.execute(
            "UPDATE blocks SET time=?, hash=? WHERE height=?", (moved.time, moved.hash(), height)
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height
    assert "attestation" in failure.where


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_deleted_block_is_named(sample: SampleLog, tmp_path: Path, which: str) -> None:
    """Deleting any block's header fails at that block's height."""
    layout = layout_of(sample.path)
    height = {"first": 1, "middle": layout.middle_height, "last": len(layout.blocks)}[which]

    def change(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM blocks WHERE height=?", (height,))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    named = failure.height == height or failure.seq == layout.first_of(height)
    assert named, failure


@pytest.mark.parametrize("where", ["end", "middle"])
def test_inserted_block_is_named(sample: SampleLog, tmp_path: Path, where: str) -> None:
    """A copied block added at the end or pushed into the middle fails at its height."""
    layout = layout_of(sample.path)
    last = len(layout.blocks)
    height = last + 1 if where == "end" else layout.middle_height

    def change(db: sqlite3.Connection) -> None:
        if where == "middle":
            db.execute("UPDATE blocks SET height = -(height + 1) WHERE height >= ?", (height,))
            db.execute("UPDATE blocks SET height = -height WHERE height < 0")
        db.execute(
            "INSERT INTO blocks SELECT ?, hash, prev_hash, merkle_root, time, first_seq, "
            "entry_count FROM blocks WHERE height=?",
            (height, height - 1),
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height, failure


def test_reordered_blocks_are_named(sample: SampleLog, tmp_path: Path) -> None:
    """Swapping two blocks' headers fails at the first of them."""
    height = layout_of(sample.path).middle_height

    def change(db: sqlite3.Connection) -> None:
        db.execute("UPDATE blocks SET height=-1 WHERE height=?", (height,))
        db.execute("UPDATE blocks SET height=? WHERE height=?", (height, height + 1))
        db.execute("UPDATE blocks SET height=? WHERE height=-1", (height + 1,))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height, failure


# ---------------------------------------------------------------------------- attestations


@pytest.mark.parametrize("column", ["signature", "block_hash"])
@pytest.mark.parametrize("offset", [0, 13, 31])
def test_flipped_attestation_byte_is_a_failure(
    sample: SampleLog, tmp_path: Path, column: str, offset: int
) -> None:
    """An attestation whose signature or hash was altered fails, naming block and bank."""
    height = layout_of(sample.path).middle_height

    def change(db: sqlite3.Connection) -> None:
        bank, value = db.execute(
            f"SELECT central_bank, {column} FROM attestations WHERE height=? LIMIT 1", (height,)
        ).fetchone()
        db.execute(
            f"UPDATE attestations SET {column}=? WHERE height=? AND central_bank=?",
            (flip(bytes(value), offset, 0x01), height, bank),
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height
    assert "attestation by" in failure.where


def test_attestation_by_an_unknown_bank_is_a_failure(sample: SampleLog, tmp_path: Path) -> None:
    """An attestation signed by someone who is not a genesis central bank fails."""
    height = layout_of(sample.path).middle_height
    stranger = PrivateKey.generate()

    def change(db: sqlite3.Connection) -> None:
        header = read_header(db, height)
        a = attest(header, "ZZBANK", stranger)
        db.execute(
            "INSERT INTO attestations VALUES (?, ?, ?, ?)",
            (height, a.central_bank, a.block_hash, a.signature),
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height
    assert "not a central bank" in failure.message


def test_attestation_for_a_missing_block_is_a_failure(sample: SampleLog, tmp_path: Path) -> None:
    """An attestation of a height with no block is reported at that height."""
    height = len(layout_of(sample.path).blocks) + 5

    def change(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO attestations SELECT ?, central_bank, block_hash, signature "
            "FROM attestations WHERE height=1",
            (height,),
        )

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == height


def test_a_block_without_its_own_quorum_is_final_by_later_attestations(
    sample: SampleLog, tmp_path: Path
) -> None:
    """A block a quorum never attested itself is final once a quorum attested a later height."""
    height = layout_of(sample.path).middle_height

    def change(db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM attestations WHERE height=? AND central_bank IN ('BOT', 'MAS', 'PBOC')",
            (height,),
        )

    report = verify_file(tampered(sample, tmp_path, change))
    assert report.ok, report.failures
    assert report.final_blocks == report.blocks - 1
    assert not any(str(height) in w for w in report.warnings)


def test_missing_attestations_at_the_head_only_warn(sample: SampleLog, tmp_path: Path) -> None:
    """Blocks above the highest height a quorum attested are not final: a warning, no failure."""
    height = layout_of(sample.path).middle_height

    def change(db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM attestations WHERE height>=? AND central_bank IN ('BOT', 'MAS', 'PBOC')",
            (height,),
        )

    report = verify_file(tampered(sample, tmp_path, change))
    assert report.ok, report.failures
    assert report.final_blocks == height - 1
    assert any(f"heights {height}-" in w and "not final" in w for w in report.warnings)


# ---------------------------------------------------------------------------- genesis, state


def test_changed_genesis_key_breaks_the_chain_at_block_one(
    sample: SampleLog, tmp_path: Path
) -> None:
    """A genesis with another central bank key no longer hashes to block 1's prev_hash."""
    other = PrivateKey.generate().public_key

    def change(db: sqlite3.Connection) -> None:
        fields = json.loads(db.execute("SELECT value FROM meta WHERE key='genesis'").fetchone()[0])
        fields["central_banks"][0]["public_key"] = other.hex()
        db.execute("UPDATE meta SET value=? WHERE key='genesis'", (json.dumps(fields),))

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.height == 1
    assert "genesis hash" in failure.message


def test_unreadable_genesis_is_a_failure(sample: SampleLog, tmp_path: Path) -> None:
    """A genesis that is not JSON fails, naming the genesis."""

    def change(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value='{not json' WHERE key='genesis'")

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert "genesis" in failure.where


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE accounts SET available = available + 1 WHERE participant='ICBC' AND currency='CNY'",
        "DELETE FROM accounts WHERE participant='DBS' AND currency='SGD'",
        "UPDATE state SET value='[1,0]' WHERE tbl='supply' AND key='\"THB\"'",
    ],
)
def test_stored_state_must_equal_the_replay(
    sample: SampleLog, tmp_path: Path, statement: str
) -> None:
    """Balances and supply kept beside the log must equal what the log replays to."""
    failure = verify_file(tampered(sample, tmp_path, lambda db: db.execute(statement))).failures[0]
    assert "table" in failure.where


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        # a 1.00 THB transfer limit planted in the state: the signed log sets 50 million
        ("UPDATE state SET value='[100,0,[]]' WHERE tbl='policies' AND key='\"BOT\"'", "policies"),
        (
            "UPDATE state SET value=replace(value, '\"04', '\"05') "
            "WHERE tbl='participants' AND key='\"DBS\"'",
            "participants",
        ),
        (
            "UPDATE state SET value=replace(value, 'active', 'suspended') "
            "WHERE tbl='participants' AND key='\"ICBC\"'",
            "participants",
        ),
        (
            "UPDATE state SET value=replace(value, '\"SETTLED\"', '\"HELD\"') "
            "WHERE tbl='pvps' AND key=(SELECT MIN(key) FROM state WHERE tbl='pvps' "
            "AND value LIKE '%\"SETTLED\"%')",
            "pvps",
        ),
        ("DELETE FROM state WHERE tbl='pvps' AND value LIKE '%\"SETTLED\"%'", "pvps"),
        (
            "UPDATE accounts SET held = held + 5 WHERE participant='BOC' AND currency='CNY'",
            "accounts",
        ),
        ("UPDATE state SET value=value + 1 WHERE tbl='usage' AND key LIKE '[\"ICBC\"%'", "usage"),
        ("INSERT INTO state VALUES ('frozen', '[\"KBANK\",\"THB\"]', 'true')", "frozen"),
        (
            "UPDATE state SET value='[3,\"PBOC\"]' WHERE tbl='currencies' AND key='\"CNY\"'",
            "currencies",
        ),
    ],
)
def test_every_state_table_must_equal_the_replay(
    sample: SampleLog, tmp_path: Path, statement: str, table: str
) -> None:
    """An edited policy, key, participant, PvP, account, usage, freeze or currency row in the
    store's state fails verification, naming the table."""
    path = tampered(sample, tmp_path, lambda db: db.execute(statement))
    report = verify_file(path)
    assert not report.ok
    assert table in report.failures[0].where.split(",")[0].split()
    assert "replay" in report.failures[0].message


@pytest.mark.parametrize("prune_every", [1, 7, 1_000])
def test_state_comparison_holds_across_pruning(sample: SampleLog, prune_every: int) -> None:
    """Closed PvPs dropped from memory are still compared with the store's PvP rows."""
    assert verify_file(sample.path, prune_every=prune_every).ok
    with sqlite3.connect(sample.path) as db:
        closed = db.execute(
            "SELECT COUNT(*) FROM state WHERE tbl='pvps' AND value NOT LIKE '%\"HELD\",%'"
        ).fetchone()[0]
    assert closed > 0


def test_a_pruned_closed_pvp_edited_in_the_store_is_named(
    sample: SampleLog, tmp_path: Path
) -> None:
    """A closed PvP edited in the store is caught even when its replayed row left memory."""

    def change(db: sqlite3.Connection) -> None:
        db.execute(
            "UPDATE state SET value=replace(value, '\"REJECTED\"', '\"CANCELLED\"') "
            "WHERE tbl='pvps' AND value LIKE '%\"REJECTED\"%'"
        )

    report = verify_file(tampered(sample, tmp_path, change), prune_every=1)
    assert not report.ok
    assert report.failures[0].where.startswith("state table pvps, key [")


# ---------------------------------------------------------------------------- forged but sealed


def read_header(db: sqlite3.Connection, height: int) -> BlockHeader:
    row = db.execute(
        "SELECT height, prev_hash, merkle_root, time, first_seq, entry_count FROM blocks "
        "WHERE height=?",
        (height,),
    ).fetchone()
    return BlockHeader(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5])


def reseal(db: sqlite3.Connection, sample: SampleLog, from_height: int) -> None:
    """Recompute roots, hashes and links from `from_height` on and re-attest with every key."""
    heights = [
        r[0]
        for r in db.execute(
            "SELECT height FROM blocks WHERE height >= ? ORDER BY height", (from_height,)
        )
    ]
    prev = sample.genesis.hash() if from_height == 1 else read_header(db, from_height - 1).hash()
    for height in heights:
        old = read_header(db, height)
        leaves = [
            bytes(r[0])
            for r in db.execute("SELECT data FROM entries WHERE height=? ORDER BY seq", (height,))
        ]
        first = db.execute("SELECT MIN(seq) FROM entries WHERE height=?", (height,)).fetchone()[0]
        header = BlockHeader(height, prev, merkle_root(leaves), old.time, first, len(leaves))
        db.execute(
            "UPDATE blocks SET hash=?, prev_hash=?, merkle_root=?, first_seq=?, entry_count=? "
            "WHERE height=?",
            (header.hash(), prev, header.merkle_root, first, len(leaves), height),
        )
        db.execute("DELETE FROM attestations WHERE height=?", (height,))
        for bank in sample.genesis.central_banks:
            a = attest(header, bank.id, sample.keys[bank.id])
            db.execute(
                "INSERT INTO attestations VALUES (?, ?, ?, ?)",
                (height, a.central_bank, a.block_hash, a.signature),
            )
        prev = header.hash()


def append_entry(
    db: sqlite3.Connection,
    sample: SampleLog,
    envelope: Envelope,
    outcome: Outcome,
    *,
    shift: tuple[int, int] = (0, 0),
) -> int:
    """Append one entry in a new block, sealed and attested by every central bank; `shift`
    moves the (entry, block) times from the last entry's time (negative: backdated)."""
    last_seq, last_height, last_time = db.execute(
        "SELECT MAX(seq), MAX(height), MAX(time) FROM entries"
    ).fetchone()
    entry = Entry(last_seq + 1, last_time + shift[0], envelope, outcome)
    body = envelope.body
    height = last_height + 1
    db.execute("DROP INDEX IF EXISTS entries_by_id")
    db.execute(
        "INSERT INTO blocks VALUES (?, zeroblob(32), zeroblob(32), zeroblob(32), ?, ?, 1)",
        (height, last_time + shift[1], entry.seq),
    )
    db.execute(
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.seq,
            height,
            body.sender,
            body.instruction_id,
            body.KIND,
            outcome.value,
            entry.time,
            envelope.body_hash(),
            entry.canonical_bytes(),
        ),
    )
    reseal(db, sample, height)
    return entry.seq


@pytest.mark.parametrize("prune_every", [1_000_000, 20])
def test_replayed_instruction_in_a_sealed_block_is_named(
    sample: SampleLog, tmp_path: Path, prune_every: int
) -> None:
    """A validly signed instruction settled twice, even sealed and attested, fails at the copy."""
    layout = layout_of(sample.path)
    original = layout.first_of(2) + 4
    state: dict[str, int] = {}

    def change(db: sqlite3.Connection) -> None:
        entry = Entry.from_canonical_bytes(entry_data(db, original))
        state["copy"] = append_entry(db, sample, entry.envelope, entry.outcome)

    report = verify_file(tampered(sample, tmp_path, change), prune_every=prune_every)
    failure = report.failures[0]
    assert failure.seq == state["copy"], failure
    assert f"already used by entry {original}" in failure.message


def test_forged_bank_signature_in_a_sealed_block_is_named(
    sample: SampleLog, tmp_path: Path
) -> None:
    """A payment signed with a wrong bank key (yet endorsed, sealed, attested) fails replay."""
    state: dict[str, int] = {}

    def change(db: sqlite3.Connection) -> None:
        last_time = db.execute("SELECT MAX(time) FROM entries").fetchone()[0]
        body = Pay(
            "forged-1", "ICBC", last_time + 60_000, "DBS", "CNY", 100, "", signed_at=last_time
        )
        envelope = sign_as_party(Envelope.of(body), "ICBC", PrivateKey.generate())
        envelope = endorse(envelope, "ICBC", "PBOC", sample.keys["PBOC"])
        state["forged"] = append_entry(db, sample, envelope, Outcome.SETTLED)

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.seq == state["forged"]
    assert "BAD_SIGNATURE" in failure.message
    assert "ICBC" in failure.message


@pytest.mark.parametrize(
    ("shift", "what"),
    [((-60_000, -60_000), "sealed at"), ((-60_000, 0), "applied at")],
    ids=["block-backdated", "entry-backdated"],
)
def test_backdated_block_or_entry_fails_verification(
    sample: SampleLog, tmp_path: Path, shift: tuple[int, int], what: str
) -> None:
    """A block sealed, or an entry applied, before the block before it fails (not a warning),
    even when sealed and attested by every central bank."""
    state: dict[str, int] = {}

    def change(db: sqlite3.Connection) -> None:
        last_time = db.execute("SELECT MAX(time) FROM entries").fetchone()[0]
        body = Pay(
            "backdated-1", "ICBC", last_time + 60_000, "DBS", "CNY", 100, "", signed_at=last_time
        )
        envelope = sign_as_party(Envelope.of(body), "ICBC", sample.keys["ICBC"])
        envelope = endorse(envelope, "ICBC", "PBOC", sample.keys["PBOC"])
        state["seq"] = append_entry(db, sample, envelope, Outcome.SETTLED, shift=shift)

    report = verify_file(tampered(sample, tmp_path, change))
    assert not report.ok
    failure = report.failures[0]
    assert "time goes backwards" in failure.message, failure
    assert what in failure.message
    assert failure.height == layout_of(sample.path).blocks[-1][0] + 1


def batch_of_payments(sample: SampleLog, db: sqlite3.Connection, tag: str) -> list[Envelope]:
    """Three payments by ICBC, signed by it, not yet endorsed."""
    last_time = db.execute("SELECT MAX(time) FROM entries").fetchone()[0]
    return [
        sign_as_party(
            Envelope.of(
                Pay(
                    f"{tag}-{i}",
                    "ICBC",
                    last_time + 60_000,
                    "DBS",
                    "CNY",
                    100,
                    "",
                    signed_at=last_time,
                )
            ),
            "ICBC",
            sample.keys["ICBC"],
        )
        for i in range(3)
    ]


def test_legs_endorsed_under_one_batch_root_verify(sample: SampleLog, tmp_path: Path) -> None:
    """Three entries sharing one endorsement signature over their batch's root verify."""

    def change(db: sqlite3.Connection) -> None:
        signed = batch_of_payments(sample, db, "batched")
        ours = endorse_legs([(e, "ICBC") for e in signed], "PBOC", sample.keys["PBOC"])
        for envelope, endorsement in zip(signed, ours, strict=True):
            append_entry(db, sample, envelope.with_signature(endorsement), Outcome.SETTLED)

    report = verify_file(tampered(sample, tmp_path, change))
    # every entry and block verified; only the stored balances, left as they were, differ
    assert report.entries == layout_of(sample.path).last_seq + 3
    failure = report.failure
    assert failure is not None
    assert failure.seq is None
    assert failure.where.startswith("accounts table"), failure


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("wrong-path", "BAD_SIGNATURE"),
        ("path-of-another-batch", "BAD_SIGNATURE"),
        ("impossible-place", "Merkle path"),
        ("root-signed-by-another-key", "BAD_SIGNATURE"),
        ("root-signed-by-another-node", "NOT_HOME_CENTRAL_BANK"),
    ],
)
def test_tampered_batch_endorsement_is_named(
    sample: SampleLog, tmp_path: Path, tamper: str, reason: str
) -> None:
    """An entry whose batch endorsement has a wrong path, the path of another batch, an
    impossible place, or a root signed by the wrong key or node fails at that entry; the
    entry before it, of the same batch, verified."""
    state: dict[str, int] = {}

    def change(db: sqlite3.Connection) -> None:
        signed = batch_of_payments(sample, db, tamper)
        legs = [(e, "ICBC") for e in signed]
        ours = endorse_legs(legs, "PBOC", sample.keys["PBOC"])
        path = ours[1].path
        bad = {
            "wrong-path": replace(ours[1], path=(bytes(32), *path[1:])),
            "path-of-another-batch": replace(
                ours[1], size=2, path=endorse_legs(legs[:2], "PBOC", sample.keys["PBOC"])[1].path
            ),
            "impossible-place": replace(ours[1], index=3),
            "root-signed-by-another-key": endorse_legs(legs, "PBOC", sample.keys["HKMA"])[1],
            "root-signed-by-another-node": endorse_legs(legs, "HKMA", sample.keys["HKMA"])[1],
        }[tamper]
        seqs = [
            append_entry(db, sample, envelope.with_signature(endorsement), Outcome.SETTLED)
            for envelope, endorsement in zip(signed, [ours[0], bad, ours[2]], strict=True)
        ]
        state["bad"] = seqs[1]

    failure = verify_file(tampered(sample, tmp_path, change)).failures[0]
    assert failure.seq == state["bad"], failure
    assert reason in failure.message
    assert "ICBC" in failure.message
