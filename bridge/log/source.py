"""Where a settlement log is read from: a SQLite store, a PostgreSQL store, an export directory.

A `LogSource` hands out the log as stored, without judging it: the genesis, the block headers in
height order (each with its stored hash and its attestations), and the entries in seq order,
each with its canonical bytes and the columns stored beside them. Everything streams in chunks;
nothing holds more than one chunk of rows. The verifier (`bridge.log.verify`) does the judging.

Rows that cannot even be read (bad JSON, a missing column, a wrong type) raise
`LogIntegrityError` naming the place, at the point of the stream where they occur.

`open_source(spec)` picks the implementation: a directory is an export (it has a
`manifest.json`), a `postgresql://` URL is a PostgreSQL store (read in one read-only REPEATABLE
READ transaction, streamed through server-side cursors), anything else is a SQLite file, opened
read-only inside one read transaction. Either way the tools read a consistent snapshot even while
a bridge appends.
"""

from __future__ import annotations

import heapq
import itertools
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from bridge.domain import Genesis, canonical_json
from bridge.errors import BridgeError, LogIntegrityError
from bridge.log.blocks import Attestation, BlockHeader
from bridge.log.datapackage import table_files
from bridge.log.tables import (
    ATTESTATIONS,
    BALANCES,
    BLOCKS,
    CURRENCIES,
    ENTRIES,
    LEGS,
    PARTICIPANTS,
    REFUSALS,
    CsvCodec,
    Row,
    Table,
    Value,
    bytes_of,
    iso_time,
    jsonl_line,
    time_text,
)

CHUNK_ROWS = 2_000
FORMATS = ("csv", "jsonl", "parquet")
DERIVED_TABLES = (LEGS, BALANCES, PARTICIPANTS, CURRENCIES)
POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+")


def genesis_of_meta_row(cursor: Any) -> Genesis:
    """The genesis stored in a store's `meta` table, read from a cursor over its value."""
    row = cursor.fetchone()
    if row is None:
        raise LogIntegrityError("genesis (meta table)", "missing")
    try:
        return Genesis.from_fields(json.loads(row[0]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LogIntegrityError("genesis (meta table)", f"unreadable: {exc!r}") from exc


BRIDGE_RECORDER = "bridge"  # `recorded_by` of the refusals the bridge recorded


class SourceError(BridgeError):
    """Raised when a source cannot be opened at all (missing, not a log, unsupported)."""


class UnsupportedSource(SourceError):
    """Raised for a source kind the tools do not read (e.g. a `postgresql+driver://` URL)."""


class StoredRow(Protocol):
    """A row as stored in an export table, compared with the row the verifier derives."""

    def mismatch(self, expected: Row) -> str | None: ...


@dataclass(frozen=True, slots=True)
class StoredAttestation:
    attestation: Attestation
    where: str
    row: StoredRow | None = None


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block header as stored, its stored hash (if the source keeps one) and attestations."""

    header: BlockHeader
    stored_hash: bytes | None
    attestations: tuple[StoredAttestation, ...]
    where: str
    row: StoredRow | None = None


@dataclass(frozen=True, slots=True)
class StrayAttestation:
    """An attestation for a height the source has no block at (or out of height order)."""

    attestation: StoredAttestation


class StoredColumns(NamedTuple):
    """Columns a store keeps beside an entry's bytes (for queries); they must agree with it."""

    height: object
    sender: object
    instruction_id: object
    kind: object
    outcome: object
    time_ms: object
    body_hash: object  # bytes of the SHA-256 of the canonical body


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry: the seq and height it is stored under, its bytes and any stored columns.

    `columns` are the values a store keeps beside the bytes (SQLite); `row` is the whole
    stored row of an export, checked against the derived row.
    """

    seq: int
    height: int
    data: bytes
    where: str
    columns: StoredColumns | None = None
    row: StoredRow | None = None


@dataclass(frozen=True, slots=True)
class LogCounts:
    blocks: int
    entries: int
    attestations: int


class StateRow(NamedTuple):
    """One row of the committed state a store keeps beside the log, as the store encodes it
    (`bridge.store.codec`): the `accounts` table and every key/value state table."""

    table: str
    key: str  # JSON text of the key, e.g. '"PBOC"' or '["ICBC","CNY"]'
    value: str  # JSON text of the value, e.g. '[100000,0]'


class LogSource(Protocol):
    description: str

    def genesis(self) -> Genesis: ...

    def counts(self) -> LogCounts: ...

    def blocks(self) -> Iterator[StoredBlock | StrayAttestation]: ...

    def entries(self) -> Iterator[StoredEntry]: ...

    def derived(self, table: Table) -> Iterator[tuple[str, StoredRow]] | None: ...

    def manifest(self) -> Mapping[str, Any] | None: ...

    def datapackage(self) -> bytes | None: ...

    def stored_state(self) -> Iterator[StateRow] | None: ...

    def refusals(self) -> Iterator[Row]: ...

    def close(self) -> None: ...

    def __enter__(self) -> LogSource: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def open_source(spec: str | Path) -> LogSource:
    """Open the log at `spec`: SQLite file, PostgreSQL URL or export directory."""
    text = str(spec)
    if text.startswith(POSTGRES_PREFIXES):
        if text.startswith("postgresql+"):
            raise UnsupportedSource(
                f"{text.split('://')[0]}:// URLs are not supported: "
                "give a plain postgresql:// URL (libpq form)"
            )
        return PostgresSource(text)
    path = Path(text)
    if path.is_dir():
        return ExportSource(path)
    if path.is_file():
        return SqliteSource(path)
    raise SourceError(f"{text}: no such file or directory")


class _Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def merge_attestations(
    blocks: Iterator[StoredBlock], attestations: Iterator[StoredAttestation]
) -> Iterator[StoredBlock | StrayAttestation]:
    """Attach attestations (in height order) to blocks (in height order); the rest are strays."""
    pending = next(attestations, None)
    for block in blocks:
        height = block.header.height
        mine: list[StoredAttestation] = []
        while pending is not None and pending.attestation.height <= height:
            if pending.attestation.height == height:
                mine.append(pending)
            else:
                yield StrayAttestation(pending)
            pending = next(attestations, None)
        yield StoredBlock(block.header, block.stored_hash, tuple(mine), block.where, block.row)
    while pending is not None:
        yield StrayAttestation(pending)
        pending = next(attestations, None)


# ---------------------------------------------------------------------------- SQLite


class SqliteSource(_Closing):
    """A SQLite store, opened read-only (`mode=ro`) in one read transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = path = Path(path)
        self.description = str(path)
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._db.execute("BEGIN")  # one snapshot for every read below
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"{path}: cannot read as SQLite: {exc}") from exc
        missing = {"meta", "blocks", "entries", "attestations"} - tables
        if missing:
            raise SourceError(f"{path}: not a bridge store (no {', '.join(sorted(missing))})")
        self._has_refusals = "refusals" in tables

    def close(self) -> None:
        self._db.close()

    def _columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self._db.execute(f"PRAGMA table_info({table})")}

    def genesis(self) -> Genesis:
        return genesis_of_meta_row(self._db.execute("SELECT value FROM meta WHERE key='genesis'"))

    def counts(self) -> LogCounts:
        def count(table: str) -> int:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

        return LogCounts(count("blocks"), count("entries"), count("attestations"))

    def blocks(self) -> Iterator[StoredBlock | StrayAttestation]:
        return merge_attestations(self._headers(), self._attestations())

    def blocks_after(self, height: int) -> Iterator[StoredBlock | StrayAttestation]:
        """Blocks above `height`, with their attestations (following a growing log)."""
        where = f"WHERE height > {int(height)}"
        return merge_attestations(self._headers(where), self._attestations(where))

    def latest_attestations(self) -> list[tuple[BlockHeader, Attestation]]:
        """Each central bank's highest stored attestation, with the header stored at its height
        (attestations of heights not in the log are left out)."""
        query = (
            "SELECT a.height FROM attestations a JOIN (SELECT central_bank, MAX(height) AS top "
            "FROM attestations GROUP BY central_bank) m "
            "ON a.central_bank = m.central_bank AND a.height = m.top"
        )
        heights = sorted({int(row[0]) for row in self._rows(query)})
        latest: dict[str, tuple[BlockHeader, Attestation]] = {}
        for height in heights:
            where = f"WHERE height={height}"
            for block in merge_attestations(self._headers(where), self._attestations(where)):
                if isinstance(block, StoredBlock):
                    for stored in block.attestations:
                        latest[stored.attestation.central_bank] = (block.header, stored.attestation)
        return list(latest.values())

    def _rows(self, query: str) -> Iterator[tuple[Any, ...]]:
        cursor = self._db.execute(query)
        while rows := cursor.fetchmany(CHUNK_ROWS):
            yield from rows

    def _headers(self, where_clause: str = "") -> Iterator[StoredBlock]:
        query = (
            "SELECT height, hash, prev_hash, merkle_root, time, first_seq, entry_count "
            f"FROM blocks {where_clause} ORDER BY height"
        )
        for row in self._rows(query):
            where = f"blocks table, height {row[0]}"
            height, stored_hash, prev_hash, root, time, first_seq, count = (
                _int(row[0], where, "height"),
                _hash(row[1], where, "hash"),
                _hash(row[2], where, "prev_hash"),
                _hash(row[3], where, "merkle_root"),
                _int(row[4], where, "time"),
                _int(row[5], where, "first_seq"),
                _int(row[6], where, "entry_count"),
            )
            header = BlockHeader(height, prev_hash, root, time, first_seq, count)
            yield StoredBlock(header, stored_hash, (), where)

    def _attestations(self, where_clause: str = "") -> Iterator[StoredAttestation]:
        query = (
            "SELECT height, central_bank, block_hash, signature FROM attestations "
            f"{where_clause} ORDER BY height, central_bank"
        )
        for height, bank, block_hash, signature in self._rows(query):
            where = f"attestations table, height {height}, {bank}"
            attestation = Attestation(
                height=_int(height, where, "height"),
                block_hash=_hash(block_hash, where, "block_hash"),
                central_bank=_text(bank, where, "central_bank"),
                signature=_blob(signature, where, "signature"),
            )
            yield StoredAttestation(attestation, where)

    def entries(self, where_clause: str = "") -> Iterator[StoredEntry]:
        query = (
            "SELECT seq, height, sender, instruction_id, kind, outcome, time, body_hash, data "
            f"FROM entries {where_clause} ORDER BY seq"
        )
        for seq, height, sender, iid, kind, outcome, time, body_hash, data in self._rows(query):
            where = f"entries table, seq {seq}"
            if type(seq) is not int or type(height) is not int or type(data) is not bytes:
                _int(seq, where, "seq"), _int(height, where, "height"), _blob(data, where, "data")
            columns = StoredColumns(height, sender, iid, kind, outcome, time, body_hash)
            yield StoredEntry(seq, height, data, where, columns)

    def derived(self, table: Table) -> None:
        return None

    def manifest(self) -> None:
        return None

    def datapackage(self) -> None:
        return None

    def locate(self, seq: int | None, sender: str | None, instruction_id: str | None) -> list[int]:
        """Heights of the blocks holding matching entries (indexed lookups, no scan)."""
        if seq is not None:
            query, args = "SELECT height FROM entries WHERE seq=?", (seq,)
        elif sender is not None:
            query = "SELECT height FROM entries WHERE sender=? AND instruction_id=?"
            args = (sender, instruction_id)  # type: ignore[assignment]
        else:
            query, args = "SELECT height FROM entries WHERE instruction_id=?", (instruction_id,)  # type: ignore[assignment]
        return [int(row[0]) for row in self._db.execute(query, args)]

    def block_at(self, height: int) -> tuple[StoredBlock, list[StoredEntry]] | None:
        """One block with its attestations and the entries its header covers."""
        blocks = merge_attestations(
            self._headers(f"WHERE height={int(height)}"),
            self._attestations(f"WHERE height={int(height)}"),
        )
        block = next((b for b in blocks if isinstance(b, StoredBlock)), None)
        if block is None:
            return None
        first, count = block.header.first_seq, block.header.entry_count
        entries = list(self.entries(f"WHERE seq BETWEEN {int(first)} AND {int(first + count - 1)}"))
        return block, entries

    # key/value state rows in binary (code point) order of (tbl, key)
    _STATE_QUERY = "SELECT tbl, key, value FROM state ORDER BY tbl, key"

    def stored_state(self) -> Iterator[StateRow]:
        """Every state row (accounts and the key/value tables), ordered by (table, key) in
        code point order, encoded as the store encodes them (`bridge.store.codec`)."""
        accounts = sorted(
            StateRow(
                "accounts",
                json.dumps([p, c], separators=(",", ":")),
                json.dumps([a, h], separators=(",", ":")),
            )
            for p, c, a, h in self._rows(
                "SELECT participant, currency, available, held FROM accounts"
            )
        )
        state = (StateRow(str(t), str(k), str(v)) for t, k, v in self._rows(self._STATE_QUERY))
        return heapq.merge(accounts, state)

    def refusals(self) -> Iterator[Row]:
        """Refused instructions the store recorded, oldest first, as `REFUSALS` rows."""
        if not self._has_refusals or "instruction_id" not in self._columns("refusals"):
            return iter(())
        return (
            (i, BRIDGE_RECORDER, t, iso_time(t), s, n, k, r, c or None)
            for i, t, s, n, k, r, c in self._rows(
                "SELECT id, time, sender, instruction_id, kind, reason, corridor FROM refusals "
                "ORDER BY id"
            )
        )


def node_refusals(path: Path, genesis: Genesis) -> Iterator[Row]:
    """The refusals a central bank node recorded in its own file (`<CB>.refusals.sqlite`,
    `participants.central_bank.refusals`), oldest first, as `REFUSALS` rows recorded by that
    central bank. Raises SourceError when the file is not one, or belongs to another chain or
    to no central bank of `genesis`."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SourceError(f"{path}: cannot open: {exc}") from exc
    try:
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            rows = db.execute(
                "SELECT id, time, sender, instruction_id, kind, reason, corridor FROM refusals "
                "ORDER BY id"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"{path}: not a central bank node's refusals file ({exc})") from exc
        central_bank = str(meta.get("central_bank", ""))
        if meta.get("chain_id") != genesis.chain_id:
            raise SourceError(
                f"{path}: refusals of chain {meta.get('chain_id')!r}, not {genesis.chain_id!r}"
            )
        if central_bank not in {b.id for b in genesis.central_banks}:
            raise SourceError(f"{path}: {central_bank!r} is not a central bank of this log")
    finally:
        db.close()
    return (
        (i, central_bank, t, iso_time(t), s, n, k, r, c or None) for i, t, s, n, k, r, c in rows
    )


# ---------------------------------------------------------------------------- PostgreSQL


class PostgresSource(SqliteSource):
    """A PostgreSQL store, read in one read-only REPEATABLE READ transaction (one snapshot)."""

    def __init__(self, url: str) -> None:
        import psycopg

        from bridge.store.postgres import public_url

        self.url = url
        self.description = public_url(url)
        self._names = itertools.count(1)
        try:
            self._pg = psycopg.connect(url, connect_timeout=10)
            self._pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._pg.read_only = True
            tables = {
                r[0]
                for r in self._pg.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
        except psycopg.Error as exc:
            raise SourceError(f"{self.description}: cannot read: {exc}") from exc
        missing = {"meta", "blocks", "entries", "attestations"} - tables
        if missing:
            raise SourceError(
                f"{self.description}: not a bridge store (no {', '.join(sorted(missing))})"
            )
        self._has_refusals = "refusals" in tables

    _STATE_QUERY = 'SELECT tbl, key, value FROM state ORDER BY tbl COLLATE "C", key COLLATE "C"'

    def close(self) -> None:
        self._pg.close()

    def _columns(self, table: str) -> set[str]:
        rows = self._pg.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {str(r[0]) for r in rows}

    def genesis(self) -> Genesis:
        return genesis_of_meta_row(self._pg.execute("SELECT value FROM meta WHERE key='genesis'"))

    def counts(self) -> LogCounts:
        def count(table: str) -> int:
            row = self._pg.execute(f"SELECT COUNT(*) FROM {table}".encode()).fetchone()
            return 0 if row is None else int(row[0])

        return LogCounts(count("blocks"), count("entries"), count("attestations"))

    def _rows(self, query: str) -> Iterator[tuple[Any, ...]]:
        # a server-side cursor: the server holds the result, we fetch one chunk at a time
        with self._pg.cursor(name=f"log_{next(self._names)}") as cursor:
            cursor.itersize = CHUNK_ROWS
            cursor.execute(query.encode())
            while rows := cursor.fetchmany(CHUNK_ROWS):
                yield from rows

    def locate(self, seq: int | None, sender: str | None, instruction_id: str | None) -> list[int]:
        """Heights of the blocks holding matching entries (indexed lookups, no scan)."""
        if seq is not None:
            query, args = "SELECT height FROM entries WHERE seq=%s", (seq,)
        elif sender is not None:
            query = "SELECT height FROM entries WHERE sender=%s AND instruction_id=%s"
            args = (sender, instruction_id)  # type: ignore[assignment]
        else:
            query, args = "SELECT height FROM entries WHERE instruction_id=%s", (instruction_id,)  # type: ignore[assignment]
        return [int(row[0]) for row in self._pg.execute(query.encode(), args)]


def _int(value: object, where: str, column: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LogIntegrityError(where, f"column {column}: expected an integer, got {value!r}")
    return value


def _text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise LogIntegrityError(where, f"column {column}: expected text, got {value!r}")
    return value


def _blob(value: object, where: str, column: str) -> bytes:
    if not isinstance(value, bytes):
        raise LogIntegrityError(where, f"column {column}: expected a BLOB, got {value!r:.60}")
    return value


def _hash(value: object, where: str, column: str) -> bytes:
    data = _blob(value, where, column)
    if len(data) != 32:
        raise LogIntegrityError(where, f"column {column}: expected 32 bytes, got {len(data)}")
    return data


# ---------------------------------------------------------------------------- export directory


class ExportSource(_Closing):
    """A directory written by `cbdc-bridge log export` (CSV, JSONL or Parquet tables)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path = Path(path)
        self.description = str(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise SourceError(f"{path}: not a log export (no manifest.json)")
        try:
            self._manifest: dict[str, Any] = json.loads(manifest_path.read_bytes())
            self.format = str(self._manifest["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{manifest_path}: unreadable manifest: {exc!r}") from exc
        if self.format not in FORMATS:
            raise SourceError(f"{manifest_path}: unknown format {self.format!r}")
        self._manifest_bytes = manifest_path.read_bytes()

    def close(self) -> None:
        pass

    def file(self, table: Table) -> Path:
        return self.path / f"{table.name}.{self.format}"

    def genesis(self) -> Genesis:
        data = _read_file(self.path / "genesis.json", "genesis.json")
        try:
            genesis = Genesis.from_fields(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise LogIntegrityError("genesis.json", f"unreadable: {exc!r}") from exc
        if data != genesis.canonical_bytes() + b"\n":
            raise LogIntegrityError("genesis.json", "not the canonical genesis encoding")
        return genesis

    def manifest(self) -> Mapping[str, Any]:
        if self._manifest_bytes != canonical_json(self._manifest) + b"\n":
            raise LogIntegrityError("manifest.json", "not in canonical form")
        return self._manifest

    def datapackage(self) -> bytes:
        """The export's `datapackage.json` as written (b"" when it has none)."""
        path = self.path / "datapackage.json"
        return path.read_bytes() if path.is_file() else b""

    def files(self, table: Table) -> list[Path]:
        """The table's files in order: `<table>.<format>`, then any Parquet parts that
        `log export --append` added."""
        return [self.path / name for name in table_files(self.path, self.format)[table.name]]

    def counts(self) -> LogCounts:
        counts = self._manifest.get("counts", {})

        def count(name: str) -> int:
            value = counts.get(name, 0) if isinstance(counts, dict) else 0
            return value if isinstance(value, int) else 0

        return LogCounts(count("blocks"), count("entries"), count("attestations"))

    def _table(self, table: Table) -> Iterator[tuple[str, Row, StoredRow]]:
        for path in self.files(table):
            if not path.is_file():
                raise LogIntegrityError(path.name, "missing")
            if self.format == "parquet":
                yield from _parquet_rows(path, table)
            else:
                yield from _line_rows(path, table, self.format)

    def blocks(self) -> Iterator[StoredBlock | StrayAttestation]:
        return merge_attestations(self._headers(), self._attestations())

    def _headers(self) -> Iterator[StoredBlock]:
        for where, row, stored in self._table(BLOCKS):
            height, block_hash, prev_hash, root, time, _, first_seq, count, _, _ = row
            header = BlockHeader(
                _row_int(height, where, "height"),
                _row_hash(prev_hash, where, "prev_hash"),
                _row_hash(root, where, "merkle_root"),
                _row_int(time, where, "time_ms"),
                _row_int(first_seq, where, "first_seq"),
                _row_int(count, where, "entry_count"),
            )
            yield StoredBlock(header, _row_hash(block_hash, where, "hash"), (), where, stored)

    def _attestations(self) -> Iterator[StoredAttestation]:
        for where, row, stored in self._table(ATTESTATIONS):
            height, bank, block_hash, signature, _ = row
            if not isinstance(bank, str):
                raise LogIntegrityError(where, "column central_bank: expected text")
            attestation = Attestation(
                height=_row_int(height, where, "height"),
                block_hash=_row_hash(block_hash, where, "block_hash"),
                central_bank=bank,
                signature=_row_hex(signature, where, "signature"),
            )
            yield StoredAttestation(attestation, where, stored)

    def entries(self) -> Iterator[StoredEntry]:
        seq_at, height_at, canonical_at = (
            ENTRIES.index("seq"),
            ENTRIES.index("height"),
            ENTRIES.index("canonical"),
        )
        for where, row, stored in self._table(ENTRIES):
            canonical = row[canonical_at]
            if not isinstance(canonical, str):
                raise LogIntegrityError(where, "column canonical: expected text")
            try:
                data = bytes_of(canonical)
            except UnicodeEncodeError as exc:
                raise LogIntegrityError(where, "column canonical: not byte text") from exc
            yield StoredEntry(
                _row_int(row[seq_at], where, "seq"),
                _row_int(row[height_at], where, "height"),
                data,
                where,
                row=stored,
            )

    def derived(self, table: Table) -> Iterator[tuple[str, StoredRow]]:
        return ((where, stored) for where, _, stored in self._table(table))

    def stored_state(self) -> None:
        return None

    def refusals(self) -> Iterator[Row]:
        if not self.file(REFUSALS).is_file():
            return iter(())
        return (row for _, row, _ in self._table(REFUSALS))


def _read_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LogIntegrityError(where, f"cannot read: {exc}") from exc


def _row_int(value: Value, where: str, column: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LogIntegrityError(where, f"column {column}: expected an integer, got {value!r}")
    return value


def _row_hex(value: Value, where: str, column: str) -> bytes:
    if not isinstance(value, str):
        raise LogIntegrityError(where, f"column {column}: expected hex text, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise LogIntegrityError(where, f"column {column}: not hex: {value!r:.80}") from exc


def _row_hash(value: Value, where: str, column: str) -> bytes:
    data = _row_hex(value, where, column)
    if len(data) != 32:
        raise LogIntegrityError(where, f"column {column}: expected 32 bytes, got {len(data)}")
    return data


# ---------------------------------------------------------------------------- line formats


def _parse_value(column_type: str, value: object, name: str) -> Value:
    """A JSON value, or CSV text, as the typed value of one column; ValueError if it is not."""
    if value is None or value == "":
        return None
    if column_type in ("BIGINT", "INTEGER"):
        if isinstance(value, str):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif column_type == "BOOLEAN":
        if value in ("true", "false"):
            return value == "true"
        if isinstance(value, bool):
            return value
    elif column_type == "DOUBLE":
        if isinstance(value, str):
            return float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ValueError(f"column {name}: expected {column_type}, got {value!r:.80}")


def _parse_csv(table: Table, line: str) -> Row:
    fields = CsvCodec.fields(line)
    if len(fields) != len(table.columns):
        raise ValueError(f"{len(fields)} fields, expected {len(table.columns)}")
    return tuple(
        _parse_value(c.type, f, c.name) for c, f in zip(table.columns, fields, strict=True)
    )


def _parse_jsonl(table: Table, line: str) -> Row:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if list(data) != list(table.names):
        raise ValueError(f"keys {list(data)} differ from the columns {list(table.names)}")
    return tuple(_parse_value(c.type, data[c.name], c.name) for c in table.columns)


@dataclass(frozen=True, slots=True)
class _LineRow:
    """A CSV or JSONL row as the exact line stored; compared byte for byte."""

    table: Table
    format: str
    line: str
    values: Row
    codec: CsvCodec

    def encode(self, values: Row) -> str:
        if self.format == "csv":
            return self.codec.line(values)
        return jsonl_line(self.table, values)

    def mismatch(self, expected: Row) -> str | None:
        if self.encode(expected) == self.line:
            return None
        return _first_difference(self.table, self.values, expected) or (
            "row is not encoded as the export writes it"
        )


@dataclass(frozen=True, slots=True)
class _ValueRow:
    table: Table
    values: Row

    def mismatch(self, expected: Row) -> str | None:
        if self.values == expected and all(
            type(a) is type(b) for a, b in zip(self.values, expected, strict=True)
        ):
            return None
        return _first_difference(self.table, self.values, expected) or "value types differ"


def _first_difference(table: Table, stored: Row, expected: Row) -> str | None:
    for column, a, b in zip(table.columns, stored, expected, strict=True):
        if a != b:
            return f"column {column.name}: stored {_show(a)}, expected {_show(b)}"
    return None


def _show(value: Value) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def _line_rows(path: Path, table: Table, fmt: str) -> Iterator[tuple[str, Row, StoredRow]]:
    codec = CsvCodec()
    parse = _parse_csv if fmt == "csv" else _parse_jsonl
    with path.open("rb") as stream:
        number = 0
        if fmt == "csv":
            number = 1
            header = stream.readline()
            expected = (codec.line(list(table.names)) + "\n").encode()
            if header != expected:
                raise LogIntegrityError(f"{path.name} line 1", "header differs from the columns")
        for raw in stream:
            number += 1
            where = f"{path.name} line {number}"
            if not raw.endswith(b"\n"):
                raise LogIntegrityError(where, "last line is not terminated")
            try:
                line = raw[:-1].decode("utf-8")
                values = parse(table, line)
            except ValueError as exc:
                raise LogIntegrityError(where, f"unreadable row: {exc}") from exc
            yield where, values, _LineRow(table, fmt, line, values, codec)


_DUCKDB_TYPES = {
    "BIGINT": "BIGINT",
    "INTEGER": "INTEGER",
    "VARCHAR": "VARCHAR",
    "BOOLEAN": "BOOLEAN",
    "DOUBLE": "DOUBLE",
    "TIMESTAMP": "TIMESTAMP",
}


def _parquet_rows(path: Path, table: Table) -> Iterator[tuple[str, Row, StoredRow]]:
    import duckdb  # only Parquet exports need it

    db = duckdb.connect()
    try:
        db.execute("SET threads=1")  # keeps file order and memory small
        db.execute("SET memory_limit='128MB'")
        db.execute("SET enable_progress_bar=false")
        try:
            cursor = db.execute("SELECT * FROM read_parquet(?)", [str(path)])
        except duckdb.Error as exc:
            raise LogIntegrityError(path.name, f"unreadable Parquet: {exc}") from exc
        names = tuple(d[0] for d in cursor.description or ())
        types = tuple(str(d[1]) for d in cursor.description or ())
        wanted = tuple(_DUCKDB_TYPES[c.type] for c in table.columns)
        if names != table.names or types != wanted:
            raise LogIntegrityError(path.name, f"schema {list(zip(names, types, strict=False))}")
        times = [i for i, c in enumerate(table.columns) if c.type == "TIMESTAMP"]
        number = 0
        while True:
            try:
                rows = cursor.fetchmany(CHUNK_ROWS)
            except duckdb.Error as exc:
                raise LogIntegrityError(f"{path.name} after row {number}", str(exc)) from exc
            if not rows:
                break
            for values in rows:
                number += 1
                row = tuple(values)
                if times:  # timestamps compare as the text the other formats carry
                    row = tuple(
                        time_text(v) if i in times and isinstance(v, datetime) else v
                        for i, v in enumerate(row)
                    )
                yield f"{path.name} row {number}", row, _ValueRow(table, row)
    finally:
        db.close()
