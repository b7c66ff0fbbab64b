"""Offline verification of a settlement log, streaming, with the first failure named precisely.

`verify_log(source)` reads the log once, in order, and checks, block by block:

1. the header: heights and entry ranges without gaps, the previous-hash link (to the genesis
   hash for block 1), the stored block hash against the header's own hash, a time never
   earlier than the previous block's;
2. every entry: applied no earlier than the entry or block before it and no later than its
   block's time (time only moves forward: a backdated entry fails, it is not a warning),
   stored where the header says, canonical (`Entry.from_canonical_bytes`), its
   stored columns agreeing with its bytes, replayed on a `Ledger` with `SignatureCheck.ALL`
   (every party signature, every central bank endorsement and signature, every policy rule)
   giving the outcome the log records, and its instruction id never used before;
3. the Merkle root of the block's entries (RFC 6962, computed as they stream past);
4. every attestation: a central bank of the genesis, over this exact header hash, with a
   signature that verifies; since a header commits to every block before it, a block is final
   when a quorum of central banks attested it or a later height;
5. conservation: per currency, balances plus holds equal issued minus redeemed.

At the end every state row a store keeps beside the log must equal the replay's, row by row
(accounts, participants with their keys, currencies, policies, frozen accounts, PvPs, daily
usage, supply): a bridge restarts from those rows, so "verified" covers them too. An export's
derived tables and manifest must equal what the log derives.

Verification stops at the first failure, so later noise never hides the cause. Missing
attestations are not failures: blocks above the final height are reported as not final
(warning), while an attestation that does not verify is a failure.

Memory stays bounded: the ledger's batches are taken every block; every `prune_every` entries
receipts and closed PvPs are dropped from memory after the instruction ids are written to a
temporary on-disk index, which then answers "was this id used before?". An in-memory Bloom
filter of those ids (2 bytes an id) answers "certainly not" for nearly every new id, so the
index is read only on the filter's rare "maybe": the cost of the question stays flat as the
log grows, and every id is still checked exactly.

The cyclic garbage collector would otherwise rescan the receipts kept in memory again and again
as they pile up between prunes; objects still alive at the end of a block are moved out of its
sight (`gc.freeze`), and given back at the end of the run. Reference counting still frees them
when pruned: the verification makes no reference cycles of its own.
"""

from __future__ import annotations

import gc
import heapq
import json
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, NoReturn

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Entry, Genesis, Outcome
from bridge.errors import LogIntegrityError, Refused
from bridge.log.blocks import attestation_valid, final_height
from bridge.log.datapackage import datapackage, table_files
from bridge.log.head import SignedHead
from bridge.log.merkle import leaf_hash, node_hash
from bridge.log.source import (
    DERIVED_TABLES,
    ExportSource,
    LogSource,
    StateRow,
    StoredBlock,
    StoredEntry,
    StoredRow,
    StrayAttestation,
)
from bridge.log.tables import (
    BALANCES as BALANCES_TABLE,
)
from bridge.log.tables import (
    CURRENCIES,
    LEGS,
    PARTICIPANTS,
    REFUSALS,
    SCHEMA_VERSION,
    TABLES,
    RowDeriver,
    Table,
    attestation_row,
    block_row,
    currency_rows,
)
from bridge.store.codec import KV_TABLES, encode_key, encode_value

PRUNE_EVERY = 50_000
MAX_WARNINGS = 20
Progress = Callable[[int, int], None]  # (entries verified, blocks verified)


@dataclass(frozen=True, slots=True)
class Failure:
    """Where verification failed and what differs."""

    where: str
    message: str
    height: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class VerifyReport:
    """What `verify_log` found. `ok` when there is no failure (warnings allowed)."""

    source: str
    chain_id: str = ""
    genesis_hash: str = ""
    blocks: int = 0
    entries: int = 0
    signatures: int = 0  # party signatures, endorsements, central bank signatures
    attestations: int = 0
    final_blocks: int = 0
    last_final_height: int = 0
    head_height: int = 0
    head_hash: str = ""
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process (robust on a shared machine)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failure(self) -> Failure | None:
        return self.failures[0] if self.failures else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis_hash,
            "blocks": self.blocks,
            "entries": self.entries,
            "signatures": self.signatures,
            "attestations": self.attestations,
            "final_blocks": self.final_blocks,
            "last_final_height": self.last_final_height,
            "head": {"height": self.head_height, "hash": self.head_hash},
            "failures": [
                {"where": f.where, "message": f.message, "height": f.height, "seq": f.seq}
                for f in self.failures
            ],
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


class MerkleAccumulator:
    """RFC 6962 Merkle root of leaf hashes added one at a time, in O(log n) memory.

    The tree of n leaves splits at the largest power of two below n, so it is a row of perfect
    subtrees of decreasing size, folded from the right: exactly what a binary counter of
    perfect subtrees holds after n additions.
    """

    __slots__ = ("_stack",)

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []

    def add(self, leaf: bytes) -> None:
        stack = self._stack
        size, node = 1, leaf
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, node = size + left_size, node_hash(left, node)
        stack.append((size, node))

    def root(self) -> bytes:
        if not self._stack:
            return sha256(b"").digest()
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


class IdFilter:
    """A Bloom filter of (sender, instruction id) pairs: `might_hold` is False only for a pair
    never added (no false negatives), True for an added pair and, rarely, for another one.

    Sized at `BITS_PER_ID` bits an id with `PROBES` probes (about 0.3% false "maybe"s when
    full); past its capacity the owner rebuilds it twice as large (`grown`). Hashes are
    Python's own (`hash` of the pair), stable within the process, which is all it needs."""

    BITS_PER_ID = 16
    PROBES = 3

    __slots__ = ("_bits", "_mask", "capacity", "count")

    def __init__(self, capacity: int = 1 << 20) -> None:
        bits = 1 << max(6, (capacity * self.BITS_PER_ID - 1).bit_length())
        self._bits = bytearray(bits >> 3)
        self._mask = bits - 1
        self.capacity = capacity
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    def add(self, sender: str, instruction_id: str) -> None:
        h = hash((sender, instruction_id)) & 0xFFFF_FFFF_FFFF_FFFF
        step = (h >> 32) | 1
        bits, mask = self._bits, self._mask
        for _ in range(self.PROBES):
            place = h & mask
            bits[place >> 3] |= 1 << (place & 7)
            h += step
        self.count += 1

    def might_hold(self, sender: str, instruction_id: str) -> bool:
        h = hash((sender, instruction_id)) & 0xFFFF_FFFF_FFFF_FFFF
        step = (h >> 32) | 1
        bits, mask = self._bits, self._mask
        for _ in range(self.PROBES):
            place = h & mask
            if not bits[place >> 3] & (1 << (place & 7)):
                return False
            h += step
        return True


class _Scratch:
    """What left memory during verification, in a temporary on-disk index: instruction ids of
    entries whose receipts were pruned, and the final state rows of closed PvPs. An in-memory
    `IdFilter` of the ids spares the index every lookup of an id it certainly does not hold."""

    def __init__(self, filter_capacity: int = 1 << 20) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._db: sqlite3.Connection | None = None
        self._filter = IdFilter(filter_capacity)
        self.index_reads = 0  # lookups the filter let through to the on-disk index

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._dir = tempfile.TemporaryDirectory(prefix="cbdc-verify-")
            self._db = sqlite3.connect(Path(self._dir.name) / "ids.sqlite")
            self._db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE ids (sender TEXT, id TEXT, seq INTEGER,"
                " PRIMARY KEY (sender, id)) WITHOUT ROWID;"
                "CREATE TABLE pvps (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
            )
        return self._db

    def add(self, rows: Iterable[tuple[str, str, int]]) -> None:
        db = self._open()
        id_filter = self._filter

        def filtered() -> Iterator[tuple[str, str, int]]:
            for row in rows:
                id_filter.add(row[0], row[1])
                yield row

        db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)", filtered())
        db.commit()
        if id_filter.full:
            self._grow_filter()

    def _grow_filter(self) -> None:
        """Rebuild the filter at twice the capacity its ids need, from the index (amortised:
        each rebuild at least doubles the ids between two rebuilds)."""
        db = self._open()
        count = int(db.execute("SELECT COUNT(*) FROM ids").fetchone()[0])
        grown = IdFilter(max(2 * count, 2 * self._filter.capacity))
        cursor = db.execute("SELECT sender, id FROM ids")
        while rows := cursor.fetchmany(10_000):
            for sender, instruction_id in rows:
                grown.add(sender, instruction_id)
        self._filter = grown

    def add_closed_pvps(self, rows: Iterator[tuple[str, str]]) -> None:
        db = self._open()
        db.executemany("INSERT OR REPLACE INTO pvps VALUES (?, ?)", rows)
        db.commit()

    def closed_pvps(self) -> Iterator[StateRow]:
        """Closed PvPs that left memory, as state rows ordered by key."""
        if self._db is None:
            return
        cursor = self._db.execute("SELECT key, value FROM pvps ORDER BY key")
        while rows := cursor.fetchmany(2_000):
            for key, value in rows:
                yield StateRow("pvps", key, value)

    def seq_of(self, sender: str, instruction_id: str) -> int | None:
        if self._db is None or not self._filter.might_hold(sender, instruction_id):
            return None
        self.index_reads += 1
        row = self._db.execute(
            "SELECT seq FROM ids WHERE sender=? AND id=?", (sender, instruction_id)
        ).fetchone()
        return None if row is None else int(row[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._dir is not None:
            self._dir.cleanup()


class _Stop(Exception):
    """Internal: the first failure was recorded; unwind to the end of verification."""


@dataclass(slots=True)
class _Tables:
    """Derived tables of an export being compared row by row with what the replay derives."""

    streams: dict[str, Iterator[tuple[str, StoredRow]]]
    rows: dict[str, int] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)  # place of the last row read


def _next_place(last: str | None, table: str) -> str:
    """The place right after `last` ("legs.csv line 7" -> "legs.csv line 8")."""
    if last is None:
        return f"{table}, first row"
    match = re.fullmatch(r"(.*) (line|row) (\d+)", last)
    if match is None:
        return f"after {last}"
    return f"{match[1]} {match[2]} {int(match[3]) + 1}"


class LogVerifier:
    """One verification run over one source."""

    def __init__(
        self,
        source: LogSource,
        *,
        trusted_genesis: Genesis | None = None,
        head: SignedHead | None = None,
        on_progress: Progress | None = None,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        self.source = source
        self.trusted_genesis = trusted_genesis
        self.head = head
        self.on_progress = on_progress
        self.prune_every = prune_every
        self.report = VerifyReport(source=source.description)
        self.verifier = FastVerifier()
        self.seen = _Scratch()
        self._attested: dict[str, int] = {}  # each central bank's highest valid attestation
        self.quorum = 0
        self._freeze = False  # objects outliving a block leave the cyclic collector's sight

    # ------------------------------------------------------------------ driver

    def run(self) -> VerifyReport:
        started, started_cpu = time.perf_counter(), time.process_time()
        # Freeze only when nothing else did: `gc.unfreeze` at the end gives back everything.
        self._freeze = gc.isenabled() and gc.get_freeze_count() == 0
        try:
            self._run()
        except _Stop:
            pass
        except LogIntegrityError as exc:
            self._record(Failure(exc.where, exc.message))
        except (sqlite3.DatabaseError, OSError) as exc:
            self._record(Failure(self.source.description, f"cannot read: {exc}"))
        finally:
            self.seen.close()
            if self._freeze:
                gc.unfreeze()
        self._finality_warnings()
        self.report.seconds = time.perf_counter() - started
        self.report.cpu_seconds = time.process_time() - started_cpu
        return self.report

    def _record(self, failure: Failure) -> None:
        if not self.report.failures:
            self.report.failures.append(failure)

    def _fail(
        self, where: str, message: str, height: int | None = None, seq: int | None = None
    ) -> NoReturn:
        self._record(Failure(where, message, height, seq))
        raise _Stop

    def _warn(self, message: str) -> None:
        if len(self.report.warnings) < MAX_WARNINGS:
            self.report.warnings.append(message)

    def _run(self) -> None:
        manifest = self.source.manifest()
        if manifest is not None and manifest.get("first_height", 1) != 1:
            self._fail(
                "manifest.json",
                f"a partial export (blocks from {manifest.get('first_height')!r} on) cannot be "
                "verified alone: verify the log it was exported from, or a full export",
            )
        genesis = self._genesis()
        try:
            self.ledger = Ledger(genesis, verifier=self.verifier, check=SignatureCheck.ALL)
        except ValueError as exc:
            self._fail("genesis", str(exc))
        self.genesis = genesis
        if self.head is not None:
            problem = self.head.problem(genesis, self.verifier)
            if problem is not None:
                self._fail("signed head", f"does not verify: {problem}")
        self.quorum = genesis.quorum
        self.keys = {b.id: b.public_key for b in genesis.central_banks}
        self.prev_hash = genesis.hash()
        self.prev_time: int | None = None
        self.time_floor = 0  # no entry may be applied before an earlier entry or block
        self.next_height = 1
        self.since_prune = 0
        self.tables = self._derived_tables()
        self.deriver = RowDeriver(genesis) if self.tables is not None else None
        if self.deriver is not None:
            for row in currency_rows(genesis):
                self._compare(CURRENCIES, row, "genesis")
            for row in self.deriver.genesis_participants(self.ledger):
                self._compare(PARTICIPANTS, row, "genesis")
        entries = self.source.entries()
        for item in self.source.blocks():
            if isinstance(item, StrayAttestation):
                stray = item.attestation
                self._fail(
                    stray.where,
                    f"attestation by {stray.attestation.central_bank} for block "
                    f"{stray.attestation.height}, which is not in the log at that place",
                    height=stray.attestation.height,
                )
            else:
                self._block(item, entries)
        leftover = next(entries, None)
        if leftover is not None:
            self._fail(
                leftover.where,
                f"entry {leftover.seq} (stored for block {leftover.height}) is not covered by "
                f"any block; the last block ends at seq {self.ledger.next_seq - 1}",
                seq=leftover.seq,
            )
        self._finish()

    def _genesis(self) -> Genesis:
        genesis = self.source.genesis()
        self.report.chain_id = genesis.chain_id
        self.report.genesis_hash = genesis.hash().hex()
        trusted = self.trusted_genesis
        if trusted is not None and trusted.hash() != genesis.hash():
            self._fail(
                "genesis",
                f"differs from the trusted genesis (hash {genesis.hash().hex()[:16]}..., "
                f"trusted {trusted.hash().hex()[:16]}...)",
            )
        return genesis

    def _derived_tables(self) -> _Tables | None:
        streams = {}
        for table in DERIVED_TABLES:
            stream = self.source.derived(table)
            if stream is None:
                return None
            streams[table.name] = stream
        return _Tables(streams)

    # ------------------------------------------------------------------ blocks

    def _block(self, block: StoredBlock, entries: Iterator[StoredEntry]) -> None:
        header = block.header
        height = header.height
        where = f"block {height}" if block.row is None else f"block {height} ({block.where})"
        if height != self.next_height:
            self._fail(where, f"height {height} where block {self.next_height} belongs", height)
        if header.entry_count < 1:
            self._fail(where, f"entry_count {header.entry_count}: a block holds entries", height)
        if header.first_seq != self.ledger.next_seq:
            self._fail(
                where,
                f"first_seq {header.first_seq}, but the previous block ends at seq "
                f"{self.ledger.next_seq - 1}",
                height,
            )
        if header.prev_hash != self.prev_hash:
            what = "the genesis hash" if height == 1 else f"the hash of block {height - 1}"
            self._fail(
                where,
                f"prev_hash {header.prev_hash.hex()} differs from {what} {self.prev_hash.hex()}",
                height,
            )
        block_hash = header.hash()
        if block.stored_hash is not None and block.stored_hash != block_hash:
            self._fail(
                where,
                f"stored hash {block.stored_hash.hex()} differs from the hash of its header "
                f"{block_hash.hex()}",
                height,
            )
        head = self.head
        if head is not None and height == head.height and block_hash != head.header.hash():
            self._fail(
                where,
                f"hash {block_hash.hex()} differs from the block {head.central_bank} attested at "
                f"this height ({head.header.hash().hex()}): the log was rewritten",
                height,
            )
        if self.prev_time is not None and header.time < self.prev_time:
            self._fail(
                where,
                f"time goes backwards: sealed at {header.time}, before block {height - 1} "
                f"({self.prev_time})",
                height,
            )
        root = self._entries(block, entries)
        if root != header.merkle_root:
            self._fail(
                where,
                f"Merkle root of its {header.entry_count} entries is {root.hex()}, the header "
                f"says {header.merkle_root.hex()}",
                height,
            )
        valid, final = self._attestations(block, block_hash)
        if self.tables is not None:
            expected = block_row(header, block_hash, valid, final)
            self._compare_stored(block.row, expected, where, height)
        for error in self.ledger.conservation_errors():
            self._fail(where, f"conservation broken after this block: {error}", height)
        self.ledger.take_batch()
        report = self.report
        report.blocks += 1
        report.head_height, report.head_hash = height, block_hash.hex()
        self.prev_hash, self.prev_time, self.next_height = block_hash, header.time, height + 1
        self.time_floor = header.time
        if self.since_prune >= self.prune_every:
            self._prune()
        if self._freeze:
            gc.freeze()  # what outlived the block: out of the collector's rescans
        if self.on_progress is not None:
            self.on_progress(report.entries, report.blocks)

    def _attestations(self, block: StoredBlock, block_hash: bytes) -> tuple[int, bool]:
        height = block.header.height
        attested: set[str] = set()
        previous = ""
        for stored in block.attestations:
            attestation = stored.attestation
            bank = attestation.central_bank
            where = f"block {height}, attestation by {bank}"
            if block.row is not None:
                where += f" ({stored.where})"
            if bank <= previous:
                self._fail(where, "duplicate or out of order (one per central bank)", height)
            previous = bank
            key = self.keys.get(bank)
            if key is None:
                self._fail(where, f"{bank} is not a central bank of this ledger", height)
            if attestation.block_hash != block_hash:
                self._fail(
                    where,
                    f"attests hash {attestation.block_hash.hex()}, but the header hashes to "
                    f"{block_hash.hex()}",
                    height,
                )
            if not attestation_valid(attestation, key, self.verifier):
                self._fail(where, f"signature does not verify with {bank}'s public key", height)
            attested.add(bank)
            self._attested[bank] = height
            self.report.attestations += 1
            self.report.signatures += 1
            if self.tables is not None:
                expected = attestation_row(attestation, True)
                self._compare_stored(stored.row, expected, where, height)
        return len(attested), len(attested) >= self.quorum

    # ------------------------------------------------------------------ entries

    def _entries(self, block: StoredBlock, entries: Iterator[StoredEntry]) -> bytes:
        header = block.header
        accumulator = MerkleAccumulator()
        for index in range(header.entry_count):
            stored = next(entries, None)
            expected_seq = header.first_seq + index
            if stored is None:
                self._fail(
                    f"block {header.height}",
                    f"header says {header.entry_count} entries from seq {header.first_seq}; "
                    f"the log ends after {index} (entry {expected_seq} is missing)",
                    header.height,
                    expected_seq,
                )
            accumulator.add(leaf_hash(stored.data))
            self._entry(stored, expected_seq, block)
        return accumulator.root()

    def _entry(self, stored: StoredEntry, expected_seq: int, block: StoredBlock) -> None:
        height = block.header.height
        if stored.seq != expected_seq or stored.height != height:
            self._misplaced(stored, expected_seq, block)
        try:
            entry = Entry.from_canonical_bytes(stored.data)
        except Refused as exc:
            self._entry_fail(stored, height, f"not a canonical entry: {exc.message}")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            self._entry_fail(stored, height, f"not a canonical entry: {exc!r:.200}")
        if entry.seq != stored.seq:
            self._entry_fail(stored, height, f"its bytes say seq {entry.seq}")
        if entry.time > block.header.time:
            self._entry_fail(
                stored,
                height,
                f"applied at {entry.time}, after its block was sealed at {block.header.time}",
            )
        if entry.time < self.time_floor:
            self._entry_fail(
                stored,
                height,
                f"time goes backwards: applied at {entry.time}, before {self.time_floor} "
                "(an earlier entry or block)",
            )
        self.time_floor = entry.time
        envelope = entry.envelope
        body = envelope.body
        columns = stored.columns
        if columns is not None and columns != (
            height,
            body.sender,
            body.instruction_id,
            body.KIND,
            entry.outcome.value,
            entry.time,
            envelope.body_hash(),
        ):
            self._column_fail(stored, entry, height)
        self._replay(entry, stored, height)
        report = self.report
        report.entries += 1
        report.signatures += len(envelope.signatures)
        self.since_prune += 1
        if self.deriver is not None:
            self._compare_rows(entry, stored, height)

    def _entry_where(self, stored: StoredEntry, height: int) -> str:
        return f"block {height}, entry {stored.seq} ({stored.where})"

    def _entry_fail(self, stored: StoredEntry, height: int, message: str) -> NoReturn:
        self._fail(self._entry_where(stored, height), message, height, stored.seq)

    def _misplaced(self, stored: StoredEntry, expected_seq: int, block: StoredBlock) -> NoReturn:
        height = block.header.height
        where = self._entry_where(stored, height)
        if stored.seq != expected_seq:
            what = (
                f"entry {expected_seq} is missing (next stored entry is {stored.seq})"
                if stored.seq > expected_seq
                else f"entry {stored.seq} is out of place or repeated (expected {expected_seq})"
            )
            self._fail(where, what, height, expected_seq)
        first, count = block.header.first_seq, block.header.entry_count
        self._fail(
            where,
            f"stored in block {stored.height}, but block {height} covers seq "
            f"{first}-{first + count - 1}",
            height,
            stored.seq,
        )

    def _column_fail(self, stored: StoredEntry, entry: Entry, height: int) -> NoReturn:
        assert stored.columns is not None
        body = entry.envelope.body
        expected = (
            height,
            body.sender,
            body.instruction_id,
            body.KIND,
            entry.outcome.value,
            entry.time,
            entry.envelope.body_hash(),
        )
        for name, value, want in zip(stored.columns._fields, stored.columns, expected, strict=True):
            if value != want:
                shown = (value.hex() if isinstance(value, bytes) else repr(value), want)
                if isinstance(want, bytes):
                    shown = (shown[0], want.hex())
                self._entry_fail(
                    stored,
                    height,
                    f"stored column {name} is {shown[0]}, the entry's bytes say {shown[1]!r}",
                )
        self._entry_fail(stored, height, "stored columns differ from the entry's bytes")

    def _compare_rows(self, entry: Entry, stored: StoredEntry, height: int) -> None:
        """Export sources: the entry's row and the rows it derives in the other tables."""
        assert self.deriver is not None
        where = self._entry_where(stored, height)
        batch = self.ledger.take_batch()
        rows = self.deriver.rows(entry, height, self.ledger, batch)
        seq = entry.seq
        self._compare_stored(stored.row, rows.entry, where, height, seq)
        for row in rows.legs:
            self._compare(LEGS, row, where, height, seq)
        for row in rows.balances:
            self._compare(BALANCES_TABLE, row, where, height, seq)
        for row in rows.participants:
            self._compare(PARTICIPANTS, row, where, height, seq)

    def _replay(self, entry: Entry, stored: StoredEntry, height: int) -> None:
        body = entry.envelope.body
        earlier = self.seen.seq_of(body.sender, body.instruction_id)
        if earlier is not None:
            self._entry_fail(
                stored,
                height,
                f"instruction id {body.instruction_id!r} of {body.sender} was already used by "
                f"entry {earlier}",
            )
        try:
            receipt = self.ledger.apply(entry.envelope, entry.time)
        except Refused as exc:
            self._entry_fail(stored, height, f"replay refuses it: {exc}")
        if receipt.duplicate:
            self._entry_fail(
                stored,
                height,
                f"instruction id {body.instruction_id!r} of {body.sender} was already used by "
                f"entry {receipt.seq}",
            )
        if receipt.outcome is not entry.outcome:
            self._entry_fail(
                stored,
                height,
                f"replay gives {receipt.outcome.value}, the log says {entry.outcome.value}",
            )

    def _prune(self) -> None:
        """Forget receipts (their ids go to the on-disk index) and closed PvPs."""
        ledger = self.ledger
        ledger.take_batch()
        self.seen.add((s, i, r.seq) for (s, i), r in ledger.receipts.items())
        ledger.load_table("receipts", ())
        self.seen.add_closed_pvps(
            (encode_key(k), encode_value("pvps", s))
            for k, s in ledger.pvps.items()
            if s.status is not Outcome.HELD
        )
        held = [(k, s) for k, s in ledger.pvps.items() if s.status is Outcome.HELD]
        ledger.load_table("pvps", held)
        self.since_prune = 0

    # ------------------------------------------------------------------ derived tables

    def _compare_stored(
        self,
        stored: StoredRow | None,
        expected: tuple[Any, ...],
        where: str,
        height: int | None = None,
        seq: int | None = None,
    ) -> None:
        if stored is None:
            return
        problem = stored.mismatch(expected)
        if problem is not None:
            self._fail(where, problem, height, seq)

    def _compare(
        self,
        table: Table,
        expected: tuple[Any, ...],
        context: str,
        height: int | None = None,
        seq: int | None = None,
    ) -> None:
        """Compare the next stored row of a derived table with the row the log derives."""
        tables = self.tables
        assert tables is not None
        found = next(tables.streams[table.name], None)
        tables.rows[table.name] = tables.rows.get(table.name, 0) + 1
        if found is None:
            self._fail(
                _next_place(tables.last.get(table.name), f"{table.name} table"),
                f"missing: the table ends before the row derived from {context}",
                height,
                seq,
            )
        where, stored = found
        tables.last[table.name] = where
        problem = stored.mismatch(expected)
        if problem is not None:
            self._fail(where, f"{problem} (row derived from {context})", height, seq)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> None:
        for error in self.ledger.conservation_errors():
            self._fail("conservation", error)
        head = self.head
        if head is not None and self.report.head_height < head.height:
            self._fail(
                "end of the log",
                f"the log ends at block {self.report.head_height}, but {head.central_bank} "
                f"signed block {head.height}: the log is cut short",
            )
        if self.tables is not None:
            for name, stream in self.tables.streams.items():
                extra = next(stream, None)
                if extra is not None:
                    self._fail(extra[0], f"extra {name} row: the log derives no such row")
        self._check_manifest()
        self._check_stored_state()

    def _check_stored_state(self) -> None:
        """Every state row the store keeps (accounts, participants and their keys, currencies,
        policies, frozen accounts, PvPs, daily usage, supply) must equal the replay's, row by
        row: the bridge restarts from these rows, not from the log."""
        stored = self.source.stored_state()
        if stored is None:
            return
        expected = heapq.merge(self._replayed_state(), self.seen.closed_pvps())
        have, want = next(stored, None), next(expected, None)
        while have is not None or want is not None:
            if want is None or (have is not None and have[:2] < want[:2]):
                assert have is not None
                self._fail(
                    _state_place(have),
                    f"stored {have.value}, but the replay of the log has no such row",
                )
            if have is None or want[:2] < have[:2]:
                self._fail(
                    _state_place(want),
                    f"missing: the replay of the log gives {want.value}",
                )
            if have.value != want.value:
                self._fail(
                    _state_place(have),
                    f"stored {have.value}, the replay of the log gives {want.value}",
                )
            have, want = next(stored, None), next(expected, None)

    def _replayed_state(self) -> Iterator[StateRow]:
        """The replayed ledger's state rows still in memory, encoded and ordered as stored."""
        tables = self.ledger.tables()
        rows = [
            StateRow("accounts", encode_key(k), json.dumps(list(v), separators=(",", ":")))
            for k, v in tables["balances"].items()
        ]
        for table in KV_TABLES:
            rows += (
                StateRow(table, encode_key(k), encode_value(table, v))
                for k, v in tables[table].items()
            )
        rows.sort()
        return iter(rows)

    def _check_manifest(self) -> None:
        manifest = self.source.manifest()
        if manifest is None:
            return
        tables = self.tables
        report = self.report
        rows = {} if tables is None else tables.rows
        expected_counts = {
            "blocks": report.blocks,
            "entries": report.entries,
            "attestations": report.attestations,
            **{t.name: rows.get(t.name, 0) for t in DERIVED_TABLES},
            REFUSALS.name: sum(1 for _ in self.source.refusals()),
        }
        expected = {
            "schema": SCHEMA_VERSION,
            "format": manifest.get("format"),
            "chain_id": report.chain_id,
            "genesis_hash": report.genesis_hash,
            "head": {"height": report.head_height, "hash": report.head_hash},
            "counts": {t.name: expected_counts[t.name] for t in TABLES},
            "tables": [t.name for t in TABLES],
        }
        for key in sorted(set(expected) | set(manifest)):
            if manifest.get(key) != expected.get(key):
                self._fail(
                    "manifest.json",
                    f"{key} is {manifest.get(key)!r}, the export holds {expected.get(key)!r}",
                )
        stored = self.source.datapackage()
        if stored is not None and isinstance(self.source, ExportSource):
            wanted = datapackage(manifest, table_files(self.source.path, self.source.format))
            if stored != wanted:
                what = "missing" if not stored else "differs from the tables and manifest"
                self._fail("datapackage.json", what)

    def _finality_warnings(self) -> None:
        """Final: every block up to the highest height that a quorum attested (or attested a
        later height of), among the blocks verified."""
        report = self.report
        final = min(report.head_height, final_height(self._attested, self.quorum))
        report.final_blocks = final
        report.last_final_height = final
        tail = report.blocks - final
        if report.blocks and tail:
            report.warnings.insert(
                0,
                f"{tail} block(s) at the head are not final yet (heights "
                f"{final + 1}-{report.head_height}): fewer than {self.quorum} central banks "
                "attested them or a later height",
            )


def _state_place(row: StateRow) -> str:
    if row.table == "accounts":
        return f"accounts table, account {row.key}"
    return f"state table {row.table}, key {row.key}"


def verify_log(
    source: LogSource,
    *,
    trusted_genesis: Genesis | None = None,
    head: SignedHead | None = None,
    on_progress: Progress | None = None,
    prune_every: int = PRUNE_EVERY,
) -> VerifyReport:
    """Verify everything `source` holds; see the module docstring for what is checked.

    With `head` (a central bank's signed head), the log must reach that block and hold exactly
    it there: a log cut short otherwise verifies as a shorter log."""
    verifier = LogVerifier(
        source,
        trusted_genesis=trusted_genesis,
        head=head,
        on_progress=on_progress,
        prune_every=prune_every,
    )
    return verifier.run()
