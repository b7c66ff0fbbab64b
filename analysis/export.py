"""Export the settlement log as tidy tables (CSV, JSONL or Parquet) that verify like the store.

`Derivation` replays a source (no signature checks: that is `log verify`'s job) and yields, per
block, the rows of every table in `bridge.log.tables`. `export_log` writes them as one file per
table, plus `genesis.json` (canonical) and `manifest.json` (format, row counts, chain id,
genesis hash, head block). The `entries` table carries each entry's canonical bytes, so an
export holds everything `log verify` needs; it also re-derives and compares every other table.

CSV and JSONL are written line by line. Parquet is written through DuckDB: each table is first
streamed to a CSV file in a staging folder, then DuckDB converts it with the table's explicit
column types (`COPY ... TO ... (FORMAT parquet)`), which streams with a bounded memory limit.
DuckDB rather than PyArrow because it is already a dependency of the project (the research
queries use it), it converts with bounded memory without building Arrow tables in Python, and
PyArrow would add a ~100 MB dependency for nothing else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Entry, Genesis, Outcome, canonical_json
from bridge.errors import BridgeError, LogIntegrityError, Refused
from bridge.log.blocks import attestation_valid, final_height
from bridge.log.datapackage import datapackage, parquet_metadata, table_files
from bridge.log.source import (
    FORMATS,
    LogSource,
    SourceError,
    SqliteSource,
    StoredBlock,
    StoredEntry,
    StrayAttestation,
)
from bridge.log.source import node_refusals as node_refusal_rows
from bridge.log.tables import (
    ATTESTATIONS,
    BALANCES,
    BLOCKS,
    CURRENCIES,
    ENTRIES,
    LEGS,
    PARTICIPANTS,
    REFUSALS,
    SCHEMA_VERSION,
    TABLES,
    CsvCodec,
    EntryRows,
    Row,
    RowDeriver,
    Table,
    attestation_row,
    block_row,
    currency_rows,
    jsonl_line,
)

Progress = Callable[[int, int], None]  # (entries done, blocks done)
DUCKDB_MEMORY_LIMIT = "128MB"
MAX_LINE_BYTES = 1 << 20  # a CSV row is ~1.5 KB; DuckDB's read buffer is a multiple of this
# Rows per Parquet row group. A reader holds a whole row group in memory, and an `entries` row
# is about 1.2 KB, so 10,000 rows keep any reader's buffers near 12 MB per column chunk.
PARQUET_ROW_GROUP = 10_000


class ExportError(BridgeError):
    """Raised when a log cannot be exported (it does not replay, or the target is not empty)."""


@dataclass(frozen=True, slots=True)
class DerivedBlock:
    """One block with the rows it contributes to every table."""

    stored: StoredBlock
    block_hash: bytes
    row: Row
    attestations: tuple[Row, ...]
    entries: tuple[tuple[Entry, EntryRows], ...]


class Derivation:
    """Replays a source block by block and derives the rows of every table."""

    def __init__(self, source: LogSource) -> None:
        self.source = source
        try:
            self.genesis: Genesis = source.genesis()
        except LogIntegrityError as exc:
            raise ExportError(f"{exc.where}: {exc.message}") from exc
        self.ledger = Ledger(self.genesis, verifier=None, check=SignatureCheck.NONE)
        self.deriver = RowDeriver(self.genesis)
        self.keys = {b.id: b.public_key for b in self.genesis.central_banks}
        self.verifier = FastVerifier()
        self.currencies = currency_rows(self.genesis)
        self.participants = self.deriver.genesis_participants(self.ledger)
        self.head: tuple[int, bytes] = (0, self.genesis.hash())

    def blocks(
        self,
        on_progress: Progress | None = None,
        *,
        final_only: bool = False,
        resume: bool = False,
    ) -> Iterator[DerivedBlock]:
        """Derive block after block. With `final_only`, stop before the first block that is not
        final (no quorum of central banks validly attested it or a later height), before
        replaying it. With `resume`, go on after `head` in `self.source` (a store, possibly a
        newer snapshot than the one replayed so far)."""
        source = self.source
        final = self._final_height() if final_only else 0
        if resume:
            if not isinstance(source, SqliteSource):
                raise ExportError(f"{source.description}: only a store can be followed")
            entries = source.entries(f"WHERE seq >= {int(self.ledger.next_seq)}")
            items = source.blocks_after(self.head[0])
        else:
            entries, items = source.entries(), source.blocks()
        done = 0
        try:
            for item in items:
                if isinstance(item, StrayAttestation):
                    raise ExportError(
                        f"{item.attestation.where}: attestation for a block not in the log; "
                        "run `cbdc-bridge log verify` on the source"
                    )
                header = item.header
                if (
                    resume
                    and header.height == self.head[0] + 1
                    and header.prev_hash != self.head[1]
                ):
                    raise ExportError(
                        f"block {header.height} does not link to block {self.head[0]} as "
                        "replayed: the log changed"
                    )
                attestations, attested = self._attestations(item)
                if final_only and header.height > final:
                    return
                block = self._block(item, entries, attestations, attested)
                done += len(block.entries)
                self.head = (item.header.height, block.block_hash)
                yield block
                if on_progress is not None:
                    on_progress(done, item.header.height)
            leftover = next(entries, None)
        except LogIntegrityError as exc:
            raise ExportError(f"{exc.where}: {exc.message}") from exc
        if leftover is not None:
            raise ExportError(f"{leftover.where}: entry {leftover.seq} is in no block")

    def _final_height(self) -> int:
        """The source's final height: the highest a quorum of central banks validly attested
        (an attestation of height h covers the chain up to h)."""
        source = self.source
        if not isinstance(source, SqliteSource):
            raise ExportError(f"{source.description}: only a store can be followed")
        attested: dict[str, int] = {}
        for header, attestation in source.latest_attestations():
            key = self.keys.get(attestation.central_bank)
            if (
                key is not None
                and attestation.block_hash == header.hash()
                and attestation_valid(attestation, key, self.verifier)
            ):
                attested[attestation.central_bank] = header.height
        return final_height(attested, self.genesis.quorum)

    def _attestations(self, stored: StoredBlock) -> tuple[tuple[Row, ...], int]:
        """The block's attestation rows, and how many distinct central banks validly attested."""
        header_hash = stored.header.hash()
        rows = []
        attested = set()
        for s in stored.attestations:
            a = s.attestation
            key = self.keys.get(a.central_bank)
            valid = (
                key is not None
                and a.block_hash == header_hash
                and attestation_valid(a, key, self.verifier)
            )
            if valid:
                attested.add(a.central_bank)
            rows.append(attestation_row(a, valid))
        return tuple(rows), len(attested)

    def _block(
        self,
        stored: StoredBlock,
        entries: Iterator[StoredEntry],
        attestations: tuple[Row, ...],
        attested: int,
    ) -> DerivedBlock:
        header = stored.header
        block_hash = header.hash()
        if stored.stored_hash is not None and stored.stored_hash != block_hash:
            block_hash = stored.stored_hash  # exported as stored; verify will say it differs
        derived = []
        for _ in range(header.entry_count):
            item = next(entries, None)
            if item is None:
                raise ExportError(f"block {header.height}: the log ends inside the block")
            derived.append(self._entry(item, header.height))
        final = attested >= self.genesis.quorum
        row = block_row(header, block_hash, attested, final)
        return DerivedBlock(stored, block_hash, row, attestations, tuple(derived))

    def _entry(self, stored: StoredEntry, height: int) -> tuple[Entry, EntryRows]:
        try:
            entry = Entry.from_canonical_bytes(stored.data)
        except (Refused, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ExportError(f"{stored.where}: not a canonical entry ({exc})") from exc
        ledger = self.ledger
        if entry.seq != ledger.next_seq:
            raise ExportError(f"{stored.where}: entry {entry.seq} where {ledger.next_seq} belongs")
        try:
            receipt = ledger.apply(entry.envelope, entry.time)
        except Refused as exc:
            raise ExportError(
                f"{stored.where}: does not replay ({exc}); run `cbdc-bridge log verify`"
            ) from exc
        if receipt.outcome is not entry.outcome or receipt.duplicate:
            raise ExportError(f"{stored.where}: replay gives {receipt.outcome.value}")
        batch = ledger.take_batch()
        return entry, self.deriver.rows(entry, height, ledger, batch)

    def forget_closed(self) -> None:
        """Drop receipts and closed PvPs (the log is replayed once; ids are not resubmitted)."""
        self.ledger.load_table("receipts", ())
        held = [(k, s) for k, s in self.ledger.pvps.items() if s.status is Outcome.HELD]
        self.ledger.load_table("pvps", held)


class ExportFollower:
    """What `log export --follow` keeps between polls: the replay, so that each poll reads
    only the blocks after the export's head from a fresh snapshot of the store."""

    def __init__(self) -> None:
        self.derivation: Derivation | None = None

    def derivation_for(self, source: LogSource, plan: _Plan) -> tuple[Derivation, bool]:
        """The kept replay if it stands exactly at the export's head, else a new one."""
        kept = self.derivation
        if (
            kept is not None
            and isinstance(source, SqliteSource)
            and kept.head[0] == plan.after
            and (plan.after == 0 or kept.head[1].hex() == plan.after_hash)
        ):
            kept.source = source
            return kept, True
        self.derivation = Derivation(source)
        return self.derivation, False


# ---------------------------------------------------------------------------- writers


class _TableWriter:
    """Streams rows of one table to `<table>.csv` or `<table>.jsonl`."""

    def __init__(self, path: Path, table: Table, fmt: str, *, append: bool = False) -> None:
        self.path = path
        self.table = table
        self.format = fmt
        self.rows = 0
        self._codec = CsvCodec()
        self._file: IO[str] = path.open("a" if append else "w", encoding="utf-8", newline="")
        if fmt == "csv" and not append:
            self._file.write(self._codec.line(list(table.names)) + "\n")

    def write(self, row: Row) -> None:
        csv = self.format == "csv"
        line = self._codec.line(row) if csv else jsonl_line(self.table, row)
        self._file.write(line)
        self._file.write("\n")
        self.rows += 1

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class ExportSummary:
    directory: Path
    format: str
    counts: dict[str, int] = field(default_factory=dict)
    head_height: int = 0
    new_blocks: int = 0  # blocks written by this run (all of them, unless appending)
    new_rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Which blocks a run writes: after `after` (appending), from `first_height` on, and only
    final ones when `final_only`."""

    fmt: str
    first_height: int
    from_seq: int | None = None
    after: int = 0
    after_hash: str = ""
    final_only: bool = False
    old_counts: Mapping[str, int] = field(default_factory=dict)


def export_log(
    source: LogSource,
    directory: Path,
    fmt: str | None = None,
    *,
    on_progress: Progress | None = None,
    forget_every: int = 50_000,
    append: bool = False,
    from_height: int = 1,
    from_seq: int | None = None,
    final_only: bool = False,
    follower: ExportFollower | None = None,
    node_refusals: Sequence[Path] = (),
) -> ExportSummary:
    """Write every table of `source` to `directory`, or append to the export there.

    A new export (the directory new or empty) holds every block from `from_height` (or from the
    block holding entry `from_seq`) on; one that starts after block 1 is a partial export,
    for pipelines, and cannot be verified alone. With `append`, the export in `directory`
    gains exactly the rows of the blocks after its head (after checking that its head is the
    source's block at that height): CSV and JSONL files grow, Parquet tables gain a part file
    `<table>.part-<height>.parquet`. The `refusals` table, not part of the log, is rewritten
    whole. With `final_only`, writing stops before the first block without a quorum, so
    nothing written ever changes (what `log export --follow` uses, with a `follower` that keeps
    the replay from one poll to the next). `node_refusals`: central bank nodes' refusals files,
    whose rows follow the source's own in the `refusals` table (each file is checked to
    belong to a central bank of this log before anything is written)."""
    plan = _plan(directory, fmt, append, from_height, from_seq, final_only)
    fmt = plan.fmt
    try:
        genesis = source.genesis()
        nodes = [node_refusal_rows(path, genesis) for path in node_refusals]
    except SourceError as exc:
        raise ExportError(str(exc)) from exc
    directory.mkdir(parents=True, exist_ok=True)
    if follower is not None:
        derivation, resume = follower.derivation_for(source, plan)
    else:
        derivation, resume = Derivation(source), False
    appending = append and plan.old_counts != {}
    first_new = max(plan.after + 1, plan.first_height)
    staging = directory / ".staging" if fmt == "parquet" else directory
    staging.mkdir(exist_ok=True)
    line_format = "csv" if fmt == "parquet" else fmt
    writers = {
        t.name: _TableWriter(
            staging / f"{t.name}.{line_format}",
            t,
            line_format,
            append=appending and fmt != "parquet" and t is not REFUSALS,
        )
        for t in TABLES
    }
    try:
        head, blocks, first_height = _write_rows(
            derivation, writers, plan, first_new, appending, resume, on_progress, forget_every
        )
        for rows in nodes:
            for row in rows:
                writers[REFUSALS.name].write(row)
    finally:
        for writer in writers.values():
            writer.close()
    if fmt == "parquet":
        for table in TABLES:
            target = directory / f"{table.name}.parquet"
            if appending and table is not REFUSALS:
                if not writers[table.name].rows:
                    continue
                target = directory / f"{table.name}.part-{first_new:012d}.parquet"
            _csv_to_parquet(writers[table.name].path, target, table)
        shutil.rmtree(staging)
    genesis = derivation.genesis
    (directory / "genesis.json").write_bytes(genesis.canonical_bytes() + b"\n")
    new_rows = {name: writer.rows for name, writer in writers.items()}
    counts = {
        name: n + (0 if name == REFUSALS.name else plan.old_counts.get(name, 0))
        for name, n in new_rows.items()
    }
    height, head_hash = head if head is not None else (plan.after, plan.after_hash)
    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "format": fmt,
        "chain_id": genesis.chain_id,
        "genesis_hash": genesis.hash().hex(),
        "head": {"height": height, "hash": head_hash},
        "counts": counts,
        "tables": [t.name for t in TABLES],
    }
    if first_height > 1:
        manifest["first_height"] = first_height
    (directory / "manifest.json").write_bytes(canonical_json(manifest) + b"\n")
    (directory / "datapackage.json").write_bytes(datapackage(manifest, table_files(directory, fmt)))
    return ExportSummary(directory, fmt, counts, height, blocks, new_rows)


def _plan(
    directory: Path,
    fmt: str | None,
    append: bool,
    from_height: int,
    from_seq: int | None,
    final_only: bool,
) -> _Plan:
    exists = directory.exists() and any(directory.iterdir())
    if not append or not exists:
        if exists:
            raise ExportError(f"{directory} is not empty (use --append to extend its export)")
        if fmt not in FORMATS:
            raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return _Plan(fmt, max(1, from_height), from_seq, final_only=final_only)
    try:
        manifest = json.loads((directory / "manifest.json").read_bytes())
        old_fmt = str(manifest["format"])
        head = manifest["head"]
        counts = {str(k): int(v) for k, v in manifest["counts"].items()}
        first_height = int(manifest.get("first_height", 1))
        after, after_hash = int(head["height"]), str(head["hash"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"{directory}: not an export to append to ({exc!r})") from exc
    if fmt is not None and fmt != old_fmt:
        raise ExportError(f"{directory} holds a {old_fmt} export, not {fmt}")
    return _Plan(old_fmt, first_height, None, after, after_hash, final_only, counts)


def _write_rows(
    derivation: Derivation,
    writers: dict[str, _TableWriter],
    plan: _Plan,
    first_new: int,
    appending: bool,
    resume: bool,
    on_progress: Progress | None,
    forget_every: int,
) -> tuple[tuple[int, str] | None, int, int]:
    """Write the rows of the blocks the plan selects; return the new head, the number of
    blocks written and the export's first height."""
    first_height = plan.first_height if appending else 0
    since_forget, head, written = 0, None, 0
    for block in derivation.blocks(on_progress, final_only=plan.final_only, resume=resume):
        header = block.stored.header
        since_forget += len(block.entries)
        if since_forget >= forget_every:
            derivation.forget_closed()
            since_forget = 0
        if header.height == plan.after and block.block_hash.hex() != plan.after_hash:
            raise ExportError(
                f"block {header.height} of the source differs from the export's head: the "
                "source is not the log this export was taken from"
            )
        last_seq = header.first_seq + header.entry_count - 1
        if header.height < first_new or (plan.from_seq is not None and last_seq < plan.from_seq):
            continue
        if not first_height:
            first_height = header.height
            if first_height == 1:
                _write_genesis_rows(derivation, writers)
        _write_block(block, writers)
        head, written = (header.height, block.block_hash.hex()), written + 1
    if not first_height:  # nothing to write yet: a new export starts at block 1
        first_height = 1
        if plan.first_height <= 1 and plan.from_seq is None:
            _write_genesis_rows(derivation, writers)
    for row in derivation.source.refusals():
        writers[REFUSALS.name].write(tuple(row))
    return head, written, first_height


def _write_genesis_rows(derivation: Derivation, writers: dict[str, _TableWriter]) -> None:
    for row in derivation.currencies:
        writers[CURRENCIES.name].write(row)
    for row in derivation.participants:
        writers[PARTICIPANTS.name].write(row)


def _write_block(block: DerivedBlock, writers: dict[str, _TableWriter]) -> None:
    for _, rows in block.entries:
        writers[ENTRIES.name].write(rows.entry)
        for row in rows.legs:
            writers[LEGS.name].write(row)
        for row in rows.balances:
            writers[BALANCES.name].write(row)
        for row in rows.participants:
            writers[PARTICIPANTS.name].write(row)
    for row in block.attestations:
        writers[ATTESTATIONS.name].write(row)
    writers[BLOCKS.name].write(block.row)


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _csv_to_parquet(csv_path: Path, parquet_path: Path, table: Table) -> None:
    # timestamps are read as their ISO text ("...T01:00:00.123Z") and cast without the "Z"
    columns = ", ".join(
        f"{_sql_text(c.name)}: {_sql_text('VARCHAR' if c.type == 'TIMESTAMP' else c.type)}"
        for c in table.columns
    )
    selected = ", ".join(
        f"CAST(rtrim({_sql_name(c.name)}, 'Z') AS TIMESTAMP) AS {_sql_name(c.name)}"
        if c.type == "TIMESTAMP"
        else _sql_name(c.name)
        for c in table.columns
    )
    metadata = ", ".join(f"{_sql_text(k)}: {_sql_text(v)}" for k, v in parquet_metadata(table))
    query = (
        f"COPY (SELECT {selected} FROM read_csv({_sql_text(str(csv_path))}, header=true, "
        f"delim=',', quote='\"', escape='\"', nullstr='', auto_detect=false, "
        f"max_line_size={MAX_LINE_BYTES}, buffer_size={8 * MAX_LINE_BYTES}, "
        f"columns={{{columns}}})) "
        f"TO {_sql_text(str(parquet_path))} "
        f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {PARQUET_ROW_GROUP}, "
        f"KV_METADATA {{{metadata}}})"
    )
    import duckdb  # only the Parquet export needs it

    db = duckdb.connect()
    try:
        db.execute(f"SET memory_limit={_sql_text(DUCKDB_MEMORY_LIMIT)}")
        db.execute("SET preserve_insertion_order=true")
        db.execute("SET threads=1")
        db.execute("SET enable_progress_bar=false")
        db.execute(query)
    finally:
        db.close()


def export_json_summary(summary: ExportSummary) -> str:
    return json.dumps(
        {
            "directory": str(summary.directory),
            "format": summary.format,
            "counts": summary.counts,
            "head_height": summary.head_height,
        }
    )
