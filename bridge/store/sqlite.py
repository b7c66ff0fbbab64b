"""The embedded default store: one SQLite file in WAL mode, one transaction per block.

A block, its entries, the state rows it changed and its outbox events commit together
(`commit_block`); the caller acknowledges instructions only after that returns, so an
acknowledged settlement is on disk (synchronous=FULL). On restart `load` rebuilds the ledger
from the state tables and re-verifies the tail of the chain; the receipts (the idempotency
index) are not loaded but looked up in the entries table as instructions arrive
(`bridge.store.receipts`), so neither the work nor the memory of a restart grows with the
length of the log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bridge.core.ledger import Batch, Ledger, PvpState, ReceiptKey, SignatureCheck
from bridge.crypto import Verifier
from bridge.domain import Genesis, Outcome, Receipt
from bridge.errors import LogIntegrityError, StoreError
from bridge.log.blocks import Attestation, BlockHeader, SealedBlock
from bridge.store.base import REFUSALS_KEPT
from bridge.store.codec import (
    COVERING_QUERY,
    KV_TABLES,
    LOADED_ROWS_QUERY,
    SQLITE_PVP_STATUS,
    decode_row,
    encode_key,
    encode_value,
    entry_row_values,
)
from bridge.store.receipts import sqlite_receipts_for, stored_ledger
from bridge.store.state_reads import StateReads
from bridge.store.tail import TAIL_BLOCKS_VERIFIED, check_tail

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash BLOB NOT NULL, prev_hash BLOB NOT NULL,
    merkle_root BLOB NOT NULL, time INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    entry_count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, height INTEGER NOT NULL, sender TEXT NOT NULL,
    instruction_id TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL,
    time INTEGER NOT NULL, body_hash BLOB NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_id ON entries (sender, instruction_id);
CREATE TABLE IF NOT EXISTS attestations (
    height INTEGER NOT NULL, central_bank TEXT NOT NULL, block_hash BLOB NOT NULL,
    signature BLOB NOT NULL, PRIMARY KEY (height, central_bank)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    participant TEXT NOT NULL, currency TEXT NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0), held INTEGER NOT NULL CHECK (held >= 0),
    PRIMARY KEY (participant, currency)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    tbl TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (tbl, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, height INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_cursor (consumer TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY, time INTEGER NOT NULL, sender TEXT NOT NULL,
    instruction_id TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    corridor TEXT NOT NULL);
"""


class SqliteStore(StateReads):
    """Durable home of one bridge ledger."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.executescript(SCHEMA)

    @property
    def description(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ founding and loading

    def genesis(self) -> Genesis | None:
        row = self._db.execute("SELECT value FROM meta WHERE key='genesis'").fetchone()
        return None if row is None else Genesis.from_fields(json.loads(row[0]))

    def initialize(self, ledger: Ledger) -> None:
        """Record the genesis and the founding state of a brand-new ledger."""
        if self.genesis() is not None:
            raise StoreError(f"{self.path} already holds a ledger")
        with self._transaction() as db:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            genesis_text = json.dumps(ledger.genesis.to_fields(), sort_keys=True)
            db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis_text,))
            for table in KV_TABLES:
                rows = ledger.tables()[table].items()
                db.executemany(
                    "INSERT INTO state VALUES (?, ?, ?)",
                    [(table, encode_key(k), encode_value(table, v)) for k, v in rows],
                )

    def load(self, *, verifier: Verifier | None, check: SignatureCheck) -> Ledger:
        """Rebuild the ledger from the state tables; re-verify the last blocks first."""
        genesis = self.genesis()
        if genesis is None:
            raise StoreError(f"{self.path} holds no ledger")
        self.verify_tail(genesis)
        ledger = stored_ledger(self, genesis, verifier=verifier, check=check)
        query = LOADED_ROWS_QUERY.format("?", SQLITE_PVP_STATUS)
        for table in KV_TABLES:
            cursor = self._db.execute(query, (table,))
            ledger.load_table(table, (decode_row(table, k, v) for k, v in cursor))
        ledger.load_table(
            "balances",
            (((p, c), (a, h)) for p, c, a, h in self._db.execute("SELECT * FROM accounts")),
        )
        (last_seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()
        ledger.set_next_seq(last_seq + 1)
        return ledger

    def receipts_for(self, keys: Sequence[ReceiptKey]) -> list[Receipt]:
        """The receipts of those (sender, instruction id) keys that settled, from the entries
        table's unique index (the idempotency index: nothing of it is held in memory)."""
        try:
            return sqlite_receipts_for(self._db, "entries", keys)
        except sqlite3.Error as exc:
            raise StoreError(f"looking up {len(keys)} receipts failed: {exc}") from exc

    def verify_tail(self, genesis: Genesis, blocks: int = TAIL_BLOCKS_VERIFIED) -> None:
        """Check hash links, Merkle roots and entry ranges of the last `blocks` blocks."""
        check_tail(self, genesis, blocks)

    def _last_seq(self) -> int:
        (last_seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()
        return int(last_seq)

    # ------------------------------------------------------------------ writing

    def commit_block(
        self,
        block: SealedBlock,
        batch: Batch,
        events: Sequence[bytes],
        attestations: Sequence[Attestation] = (),
    ) -> int:
        """Write one block, its entries, the changed state and its events atomically, with
        any attestations (of earlier blocks) that arrived meanwhile: one commit for both.
        Returns the id of the block's last outbox row (0 when it has no events)."""
        header = block.header
        entry_rows = entry_row_values(block, batch)
        row_id = 0
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        header.height,
                        header.hash(),
                        header.prev_hash,
                        header.merkle_root,
                        header.time,
                        header.first_seq,
                        header.entry_count,
                    ),
                )
                db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", entry_rows)
                self._write_changes(db, batch)
                for payload in events:
                    row_id = (
                        db.execute(
                            "INSERT INTO outbox (height, payload) VALUES (?, ?)",
                            (header.height, payload),
                        ).lastrowid
                        or 0
                    )
                if attestations:
                    db.executemany(
                        "INSERT OR IGNORE INTO attestations VALUES (?, ?, ?, ?)",
                        [
                            (a.height, a.central_bank, a.block_hash, a.signature)
                            for a in attestations
                        ],
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"commit of block {header.height} failed: {exc}") from exc
        return row_id

    @staticmethod
    def _write_changes(db: sqlite3.Connection, batch: Batch) -> None:
        balances = batch.changes.get("balances", {})
        if balances:
            db.executemany(
                "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?)",
                [(p, c, v[0], v[1]) for (p, c), v in balances.items() if v is not None],
            )
        for table in KV_TABLES:
            rows = batch.changes.get(table)
            if not rows:
                continue
            upserts = [
                (table, encode_key(k), encode_value(table, v))
                for k, v in rows.items()
                if v is not None
            ]
            deletes = [(table, encode_key(k)) for k, v in rows.items() if v is None]
            if upserts:
                db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", upserts)
            if deletes:
                db.executemany("DELETE FROM state WHERE tbl=? AND key=?", deletes)

    def record_refusals(
        self, refusals: Sequence[tuple[int, str, str, str, str, str]], keep: int = REFUSALS_KEPT
    ) -> None:
        """Record refused instructions (time, sender, instruction id, kind, reason, corridor),
        keeping the newest `keep`. Outside the hash chain: a refusal changed nothing."""
        if not refusals:
            return
        try:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO refusals (time, sender, instruction_id, kind, reason, corridor) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    refusals,
                )
                (last,) = db.execute("SELECT MAX(id) FROM refusals").fetchone()
                db.execute("DELETE FROM refusals WHERE id <= ?", (int(last) - keep,))
        except sqlite3.Error as exc:
            raise StoreError(f"recording {len(refusals)} refusals failed: {exc}") from exc

    def add_attestation(self, attestation: Attestation) -> bool:
        """Store one attestation; False if this central bank already attested this height."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO attestations VALUES (?, ?, ?, ?)",
                (
                    attestation.height,
                    attestation.central_bank,
                    attestation.block_hash,
                    attestation.signature,
                ),
            )
            return cursor.rowcount == 1

    def add_attestations(self, attestations: Sequence[Attestation]) -> list[bool]:
        """Store several attestations in one transaction; per attestation, False if that
        central bank had already attested that height."""
        added = []
        try:
            with self._transaction() as db:
                for attestation in attestations:
                    cursor = db.execute(
                        "INSERT OR IGNORE INTO attestations VALUES (?, ?, ?, ?)",
                        (
                            attestation.height,
                            attestation.central_bank,
                            attestation.block_hash,
                            attestation.signature,
                        ),
                    )
                    added.append(cursor.rowcount == 1)
        except sqlite3.Error as exc:
            raise StoreError(f"storing {len(attestations)} attestations failed: {exc}") from exc
        return added

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # ------------------------------------------------------------------ reading

    def head(self) -> BlockHeader | None:
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return None if row[0] is None else self.header(row[0])

    def header(self, height: int) -> BlockHeader | None:
        row = self._db.execute(
            "SELECT height, prev_hash, merkle_root, time, first_seq, entry_count "
            "FROM blocks WHERE height=?",
            (height,),
        ).fetchone()
        return None if row is None else _header(row)

    def headers(self, first: int, last: int) -> Iterator[BlockHeader]:
        cursor = self._db.execute(
            "SELECT height, prev_hash, merkle_root, time, first_seq, entry_count "
            "FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
            (first, last),
        )
        for row in cursor:
            yield _header(row)

    def _stored_hash(self, height: int) -> bytes:
        row = self._db.execute("SELECT hash FROM blocks WHERE height=?", (height,)).fetchone()
        if row is None:
            raise LogIntegrityError(f"block {height}", "missing")
        return bytes(row[0])

    def block_entry_bytes(self, height: int) -> list[bytes]:
        # by the block's seq range (the primary key): entries has no index on height, and a
        # scan per block read grows with the log (it dominated the bridge under load)
        cursor = self._db.execute(
            "SELECT e.data FROM blocks b JOIN entries e "
            "ON e.seq BETWEEN b.first_seq AND b.first_seq + b.entry_count - 1 "
            "WHERE b.height=? ORDER BY e.seq",
            (height,),
        )
        return [bytes(row[0]) for row in cursor]

    def entries_from(self, seq: int, limit: int = 1000) -> list[tuple[int, int, bytes]]:
        """(seq, height, canonical bytes) of entries from `seq` on, at most `limit`."""
        cursor = self._db.execute(
            "SELECT seq, height, data FROM entries WHERE seq >= ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [(s, h, bytes(d)) for s, h, d in cursor]

    def entry_location(self, sender: str, instruction_id: str) -> tuple[int, int] | None:
        """(seq, height) of the entry of one instruction, if it settled."""
        row = self._db.execute(
            "SELECT seq, height FROM entries WHERE sender=? AND instruction_id=?",
            (sender, instruction_id),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def attestations(self, height: int) -> list[Attestation]:
        cursor = self._db.execute(
            "SELECT height, block_hash, central_bank, signature FROM attestations "
            "WHERE height=? ORDER BY central_bank",
            (height,),
        )
        return [Attestation(h, bytes(b), c, bytes(s)) for h, b, c, s in cursor]

    def covering_attestations(self, height: int) -> list[Attestation]:
        cursor = self._db.execute(COVERING_QUERY.format("?"), (height,))
        return [Attestation(h, bytes(b), c, bytes(s)) for h, b, c, s in cursor]

    def attested_heights(self) -> dict[str, int]:
        cursor = self._db.execute(
            "SELECT central_bank, MAX(height) FROM attestations GROUP BY central_bank"
        )
        return {str(c): int(h) for c, h in cursor}

    def outbox_after(self, last_id: int, limit: int = 500) -> list[tuple[int, bytes]]:
        cursor = self._db.execute(
            "SELECT id, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
        )
        return [(i, bytes(p)) for i, p in cursor]

    def outbox_last_id(self) -> int:
        """Id of the newest outbox row (0 if none): with a cursor, the backlog in rows."""
        (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()
        return int(last)

    def outbox_cursor(self, consumer: str) -> int:
        row = self._db.execute(
            "SELECT last_id FROM outbox_cursor WHERE consumer=?", (consumer,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def set_outbox_cursor(self, consumer: str, last_id: int) -> None:
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO outbox_cursor VALUES (?, ?)", (consumer, last_id)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"storing the outbox cursor of {consumer} failed: {exc}") from exc

    # ------------------------------------------------------------------ committed state

    def _kv(self, table: str, key: Any) -> Any:
        row = self._db.execute(
            "SELECT key, value FROM state WHERE tbl=? AND key=?", (table, encode_key(key))
        ).fetchone()
        return None if row is None else decode_row(table, row[0], row[1])[1]

    def _kv_all(self, table: str) -> list[Any]:
        cursor = self._db.execute("SELECT key, value FROM state WHERE tbl=? ORDER BY key", (table,))
        return [decode_row(table, k, v)[1] for k, v in cursor]

    def closed_pvp(self, key: tuple[str, str]) -> PvpState | None:
        try:
            return self.pvp(*key)
        except sqlite3.Error as exc:
            raise StoreError(f"looking up PvP {key[1]!r} of {key[0]} failed: {exc}") from exc

    def accounts(
        self, participant: str = "", currency: str = ""
    ) -> list[tuple[str, str, int, int, bool]]:
        """(participant, currency, available, held, frozen) of committed accounts, filtered."""
        cursor = self._db.execute(
            "SELECT participant, currency, available, held FROM accounts "
            "WHERE (?1 = '' OR participant = ?1) AND (?2 = '' OR currency = ?2) "
            "ORDER BY participant, currency",
            (participant, currency),
        )
        frozen = {
            decode_row("frozen", k, v)[0]
            for k, v in self._db.execute("SELECT key, value FROM state WHERE tbl='frozen'")
        }
        return [(p, c, a, h, (p, c) in frozen) for p, c, a, h in cursor]

    def receipt(self, sender: str, instruction_id: str) -> tuple[Receipt, int] | None:
        """The receipt of one settled instruction and the height of its block."""
        row = self._db.execute(
            "SELECT body_hash, outcome, seq, height FROM entries "
            "WHERE sender=? AND instruction_id=?",
            (sender, instruction_id),
        ).fetchone()
        if row is None:
            return None
        return Receipt(sender, instruction_id, bytes(row[0]), Outcome(row[1]), row[2]), row[3]

    def count(self, table: str) -> int:
        if table not in ("blocks", "entries", "attestations", "outbox", "accounts"):
            raise ValueError(f"no table {table}")
        (n,) = self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(n)


def _header(row: Sequence[Any]) -> BlockHeader:
    return BlockHeader(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the body raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()  # a failed COMMIT leaves the transaction open
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (e.g. "database or disk is full"): a second
        # ROLLBACK would fail and hide the cause behind "no transaction is active"
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
