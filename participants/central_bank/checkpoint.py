"""A central bank replica's checkpoint: its replayed state on disk, so a restart replays the tail.

One SQLite file per node (`<network>/state/<CB>.replica.sqlite`, WAL). Each write is one
transaction holding what changed since the previous one: the ledger's state rows (encoded as
the bridge's own store encodes them, `bridge.store.codec`), the receipts (the idempotency index
the replay needs to reproduce outcomes: looked up here by instruction id as blocks arrive, never
loaded whole, `receipt_index`; closed PvPs likewise, kept apart from the held ones so a restart
reads only those), the entries replayed with the participants each one
concerns (the index that serves history and settlement streams, read from here rather than
kept in memory), and the head: height, header (so its hash and time) and the next sequence
number. A crash between two writes leaves the previous checkpoint whole; the replica then
replays the blocks after it again.

The checkpoint is the node's own cache, not a source of truth: on start the node checks it
against the bridge's block at the same height and discards it when they differ.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.core.ledger import Ledger, PvpState, ReceiptKey, SignatureCheck
from bridge.crypto import Verifier
from bridge.domain import Genesis, Outcome, Receipt
from bridge.log.blocks import BlockHeader
from bridge.store.codec import (
    KV_TABLES,
    decode_row,
    encode_key,
    encode_value,
)
from bridge.store.receipts import StoredReceipts, sqlite_receipts_for

SCHEMA_VERSION = "2"  # 2: closed PvPs in rows of their own ("closed_pvps")
CLOSED_PVPS = "closed_pvps"  # the state rows of closed PvPs, never loaded

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    participant TEXT NOT NULL, currency TEXT NOT NULL, available INTEGER NOT NULL,
    held INTEGER NOT NULL, PRIMARY KEY (participant, currency)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    tbl TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (tbl, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    sender TEXT NOT NULL, instruction_id TEXT NOT NULL, body_hash BLOB NOT NULL,
    outcome TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (sender, instruction_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, height INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS parties (
    participant TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (participant, seq)) WITHOUT ROWID;
"""


@dataclass(slots=True)
class Delta:
    """What changed in the replica since the previous checkpoint write."""

    changes: dict[str, dict[Any, Any]] = field(default_factory=dict)  # table -> key -> value
    entries: list[tuple[int, int, bytes]] = field(default_factory=list)  # seq, height, bytes
    parties: list[tuple[str, int]] = field(default_factory=list)  # participant, seq

    def merge(self, changes: Mapping[str, Mapping[Any, Any]]) -> None:
        """Fold one block's changed rows in (a later value of a row replaces an earlier)."""
        for table, rows in changes.items():
            self.changes.setdefault(table, {}).update(rows)


@dataclass(frozen=True, slots=True)
class Restored:
    ledger: Ledger
    head: BlockHeader


class CheckpointError(Exception):
    """The checkpoint cannot be used (unreadable, another chain, inconsistent)."""


class ReplicaCheckpoint:
    """The SQLite file holding one replica's checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None  # writes (off the event loop) and loading
        self._reader: sqlite3.Connection | None = None  # history reads, on the event loop

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # atomic; a lost write is replayed
            db.executescript(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def close(self) -> None:
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None

    def discard(self) -> None:
        """Remove the file (and its WAL): the next write starts a new checkpoint."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # ------------------------------------------------------------------ loading

    def load(
        self, genesis: Genesis, *, verifier: Verifier | None, check: SignatureCheck
    ) -> Restored | None:
        """The replica's ledger and head as last written; None if there is no checkpoint.
        Raises CheckpointError (or sqlite3.Error) when it cannot be used."""
        if not self.path.exists():
            return None
        try:
            db = self._open()
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if not meta:
                return None
            if meta.get("schema") != SCHEMA_VERSION:
                raise CheckpointError(f"schema {meta.get('schema')!r}, expected {SCHEMA_VERSION}")
            if meta.get("genesis") != genesis.hash().hex():
                raise CheckpointError("written for another genesis")
            head = _header_from_json(meta["head"])
            if meta.get("head_hash") != head.hash().hex():
                raise CheckpointError("the stored head does not match its hash")
            next_seq = int(meta["next_seq"])
            if next_seq != head.first_seq + head.entry_count:
                raise CheckpointError(f"next seq {next_seq} does not follow block {head.height}")
            ledger = Ledger(
                genesis,
                verifier=verifier,
                check=check,
                receipts=self.receipt_index(),
                closed_pvps=self.closed_pvp,
            )
            for table in KV_TABLES:  # "pvps" holds the held ones only
                cursor = db.execute("SELECT key, value FROM state WHERE tbl=?", (table,))
                ledger.load_table(table, (decode_row(table, k, v) for k, v in cursor))
            ledger.load_table(
                "balances",
                (((p, c), (a, h)) for p, c, a, h in db.execute("SELECT * FROM accounts")),
            )
            ledger.set_next_seq(next_seq)
            (last_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()
            if last_seq != next_seq - 1:
                raise CheckpointError(f"entries end at {last_seq}, the head at {next_seq - 1}")
            errors = ledger.conservation_errors()
            if errors:
                raise CheckpointError("; ".join(errors))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointError(f"malformed: {exc!r}") from exc
        return Restored(ledger, head)

    # ------------------------------------------------------------------ receipts

    def receipt_index(self) -> StoredReceipts:
        """A replica ledger's idempotency index: receipts looked up in this file; those
        replayed since the last write are held in memory until `StoredReceipts.saved`."""
        return StoredReceipts(self.receipts_for, durable_on_confirm=False)

    def receipts_for(self, keys: Sequence[ReceiptKey]) -> list[Receipt]:
        """The written receipts among those (sender, instruction id) keys (on the reader
        connection: it sees only whole writes)."""
        if self._reader is None:
            self._reader = self._connect()
        return sqlite_receipts_for(self._reader, "receipts", keys)

    def closed_pvp(self, key: tuple[str, str]) -> PvpState | None:
        """A written PvP's state. A PvP closed since the last write still reads HELD here: the
        replica asks its changes not yet written first (`Replica._closed_pvp`)."""
        if self._reader is None:
            self._reader = self._connect()
        row = self._reader.execute(
            "SELECT key, value FROM state WHERE tbl IN ('pvps', ?) AND key=?",
            (CLOSED_PVPS, encode_key(key)),
        ).fetchone()
        if row is None:
            return None
        state: PvpState = decode_row("pvps", row[0], row[1])[1]
        return state

    # ------------------------------------------------------------------ writing

    def write(self, genesis: Genesis, head: BlockHeader, next_seq: int, delta: Delta) -> None:
        """Add one delta and move the head, in one transaction (called off the event loop)."""
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write_changes(db, delta.changes)
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", delta.entries)
            db.executemany("INSERT OR IGNORE INTO parties VALUES (?, ?)", delta.parties)
            meta = {
                "schema": SCHEMA_VERSION,
                "genesis": genesis.hash().hex(),
                "head": _header_to_json(head),
                "head_hash": head.hash().hex(),
                "next_seq": str(next_seq),
            }
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _write_changes(db: sqlite3.Connection, changes: Mapping[str, Mapping[Any, Any]]) -> None:
        for (p, c), value in changes.get("balances", {}).items():
            if value is None:
                db.execute("DELETE FROM accounts WHERE participant=? AND currency=?", (p, c))
            else:
                db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?)", (p, c, *value))
        receipts = changes.get("receipts", {})
        db.executemany(
            "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?)",
            [
                (r.sender, r.instruction_id, r.body_hash, r.outcome.value, r.seq)
                for r in receipts.values()
                if r is not None
            ],
        )
        db.executemany(
            "DELETE FROM receipts WHERE sender=? AND instruction_id=?",
            [key for key, r in receipts.items() if r is None],
        )
        for table in KV_TABLES:
            rows = changes.get(table, {})
            upserts, deletes = [], []
            for k, v in rows.items():
                key = encode_key(k)
                if v is None:
                    deletes.append((table, key))
                elif table == "pvps" and v.status is not Outcome.HELD:
                    deletes.append((table, key))
                    upserts.append((CLOSED_PVPS, key, encode_value(table, v)))
                else:
                    upserts.append((table, key, encode_value(table, v)))
            db.executemany("DELETE FROM state WHERE tbl=? AND key=?", deletes)
            db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", upserts)

    # ------------------------------------------------------------------ reading

    def entries_of(
        self, participant: str, from_seq: int, to_seq: int, limit: int
    ) -> list[tuple[int, int, bytes]]:
        """(seq, height, bytes) of the entries concerning `participant` in [from_seq, to_seq]."""
        if self._reader is None:
            self._reader = self._connect()
        cursor = self._reader.execute(
            "SELECT p.seq, e.height, e.data FROM parties p JOIN entries e ON e.seq = p.seq "
            "WHERE p.participant=? AND p.seq BETWEEN ? AND ? ORDER BY p.seq LIMIT ?",
            (participant, from_seq, to_seq, limit),
        )
        return [(s, h, bytes(d)) for s, h, d in cursor]


def _header_to_json(header: BlockHeader) -> str:
    return json.dumps(
        [
            header.height,
            header.prev_hash.hex(),
            header.merkle_root.hex(),
            header.time,
            header.first_seq,
            header.entry_count,
        ]
    )


def _header_from_json(text: str) -> BlockHeader:
    h, prev, root, time, first, count = json.loads(text)
    return BlockHeader(
        int(h), bytes.fromhex(prev), bytes.fromhex(root), int(time), int(first), int(count)
    )
