"""Exported tables: they reproduce the ledger in DuckDB, verify like the store, and any change to
an exported file is caught and named."""

from __future__ import annotations

import asyncio
import csv
import json
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from analysis.export import ExportError, export_log
from analysis.sample import SampleLog, SampleOptions, generate
from bridge.core.ledger import SignatureCheck
from bridge.log.source import SourceError, open_source
from bridge.log.tables import STORE_TABLES, TABLES, data_dictionary_markdown, iso_time
from bridge.log.verify import Failure, verify_log
from bridge.store.sqlite import SqliteStore
from participants.central_bank.refusals import NodeRefusals

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = SampleOptions(entries=70, block_size=12, rate=100.0, seed=5)
VERIFIED_FILES = (
    "entries",
    "blocks",
    "attestations",
    "legs",
    "balances",
    "participants",
    "currencies",
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("export-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def exports(
    sample: SampleLog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    directory = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt in ("csv", "jsonl", "parquet"):
        with open_source(sample.path) as source:
            export_log(source, directory / fmt, fmt)
        out[fmt] = directory / fmt
    yield out
    shutil.rmtree(directory, ignore_errors=True)


def ledger_balances(sample: SampleLog, tmp_path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    copy = tmp_path / "ledger.sqlite"
    shutil.copyfile(sample.path, copy)
    store = SqliteStore(copy)
    try:
        ledger = store.load(verifier=None, check=SignatureCheck.NONE)
        return dict(ledger.balances)
    finally:
        store.close()


def reader(fmt: str, path: Path) -> str:
    if fmt == "csv":
        return f"read_csv('{path}', header=true)"
    if fmt == "jsonl":
        return f"read_json('{path}', format='newline_delimited')"
    return f"read_parquet('{path}')"


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_balance_history_in_duckdb_reproduces_the_ledger(
    sample: SampleLog, exports: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    """The last balance-history row of each account, read by DuckDB, is the ledger's balance."""
    table = reader(fmt, exports[fmt] / f"balances.{fmt}")
    rows = duckdb.sql(
        f"SELECT participant, currency, arg_max(available, seq), arg_max(held, seq) "
        f"FROM {table} GROUP BY ALL"
    ).fetchall()
    assert {(p, c): (a, h) for p, c, a, h in rows} == ledger_balances(sample, tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_legs_in_duckdb_net_to_the_ledger_balances(
    sample: SampleLog, exports: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    """Per bank account, legs received minus legs paid equal available plus held."""
    legs = reader(fmt, exports[fmt] / f"legs.{fmt}")
    rows = duckdb.sql(
        f"SELECT who, currency, SUM(amount) FROM ("
        f" SELECT payee AS who, currency, amount FROM {legs}"
        f" UNION ALL SELECT payer, currency, -amount FROM {legs}) GROUP BY ALL"
    ).fetchall()
    balances = ledger_balances(sample, tmp_path)
    banks = {p for p, _ in balances}
    net = {(who, c): int(n) for who, c, n in rows if who in banks}
    assert net == {k: a + h for k, (a, h) in balances.items() if (a, h) != (0, 0) or k in net}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_signing_times_and_latency_are_read_from_the_signed_bodies(
    exports: dict[str, Path], fmt: str
) -> None:
    """Each entry's `signed_at_ms` is the `signed_at` inside its canonical entry and
    `latency_ms` its time minus that; a leg of an accepted PvP counts from the acceptance's
    signature, and its propose-to-accept wait stands apart."""
    entries = duckdb.sql(
        f"SELECT seq, time_ms, kind, signed_at_ms, latency_ms, canonical, "
        f"strftime(signed_at::TIMESTAMP, '%Y-%m-%dT%H:%M:%S.%g') "
        f"FROM {reader(fmt, exports[fmt] / f'entries.{fmt}')}"
    ).fetchall()
    by_seq = {}
    for seq, time_ms, kind, signed_at_ms, latency_ms, canonical, signed_at in entries:
        body = json.loads(canonical)["body"]
        assert signed_at_ms == body["signed_at"], seq
        assert latency_ms == time_ms - signed_at_ms, seq
        assert signed_at == iso_time(signed_at_ms)[:-1], seq
        by_seq[seq] = (kind, signed_at_ms, body)
    assert min(latency for *_, latency, _, _ in entries) > 0  # the sample signs before blocks
    legs = duckdb.sql(
        f"SELECT seq, time_ms, kind, signed_at_ms, latency_ms, initiated_ms, "
        f"propose_to_accept_ms FROM {reader(fmt, exports[fmt] / f'legs.{fmt}')}"
    ).fetchall()
    accepted = [leg for leg in legs if leg[2] == "pvp_accept"]
    assert accepted
    for seq, time_ms, kind, signed_at_ms, latency_ms, initiated_ms, waited in legs:
        assert (kind, signed_at_ms) == by_seq[seq][:2]
        assert latency_ms == time_ms - signed_at_ms
        assert waited == time_ms - initiated_ms
        assert (waited > 0) == (kind == "pvp_accept")


def test_the_three_formats_hold_the_same_rows(exports: dict[str, Path]) -> None:
    """CSV, JSONL and Parquet exports of one log hold identical tables."""
    for table in TABLES:
        results = []
        for fmt in ("csv", "jsonl", "parquet"):
            columns = ", ".join(f'"{c.name}"::{c.type}' for c in table.columns)
            results.append(
                duckdb.sql(
                    f"SELECT {columns} FROM {reader(fmt, exports[fmt] / f'{table.name}.{fmt}')}"
                ).fetchall()
            )
        assert results[0] == results[1] == results[2], table.name


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_verifies_like_the_store(
    sample: SampleLog, exports: dict[str, Path], fmt: str
) -> None:
    """An export directory verifies with the same figures as the store it came from."""
    with open_source(sample.path) as source:
        expected = verify_log(source)
    with open_source(exports[fmt]) as source:
        report = verify_log(source)
    assert report.ok, report.failures
    assert (report.entries, report.blocks, report.signatures, report.final_blocks) == (
        expected.entries,
        expected.blocks,
        expected.signatures,
        expected.final_blocks,
    )


def test_manifest_counts_every_table(exports: dict[str, Path]) -> None:
    """The manifest names the format, head and row count of every table."""
    manifest = json.loads((exports["jsonl"] / "manifest.json").read_text())
    assert manifest["format"] == "jsonl"
    for table in TABLES:
        lines = (exports["jsonl"] / f"{table.name}.jsonl").read_text().count("\n")
        assert manifest["counts"][table.name] == lines


def test_refusals_are_copied(exports: dict[str, Path], sample: SampleLog) -> None:
    """The refused instructions the store recorded are exported one row each (informational,
    outside the signed log), with time, sender, kind, reason and corridor."""
    db = sqlite3.connect(sample.path)
    try:
        stored = db.execute(
            "SELECT id, time, sender, instruction_id, kind, reason, corridor FROM refusals "
            "ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    assert len(stored) == sample.refused > 0
    exported = duckdb.sql(
        "SELECT id, time_ms, sender, instruction_id, kind, reason, coalesce(corridor, '') "
        f"FROM read_parquet('{exports['parquet'] / 'refusals.parquet'}') ORDER BY id"
    ).fetchall()
    assert exported == stored


def node_refusals_file(path: Path, central_bank: str, chain_id: str) -> Path:
    """A central bank node's refusals file holding two refusals, as the node writes it."""
    refusals = NodeRefusals(path, central_bank=central_bank, chain_id=chain_id)
    refusals.record((1_000, "ICBC", "pay-forged", "pay", "BAD_SIGNATURE", "CN-CN"))
    refusals.record((1_001, "HSBCHK", "pay-elsewhere", "pay", "NOT_HOME_CENTRAL_BANK", ""))
    asyncio.run(refusals.flush())
    refusals.close()
    return path


def test_node_refusals_join_the_bridges_in_the_export(sample: SampleLog, tmp_path: Path) -> None:
    """`node_refusals` files add their rows after the bridge's, each marked with who recorded
    it; the export still verifies, and its manifest counts them."""
    with open_source(sample.path) as source:
        genesis = source.genesis()
        node = node_refusals_file(tmp_path / "PBOC.refusals.sqlite", "PBOC", genesis.chain_id)
        export_log(source, tmp_path / "out", "csv", node_refusals=[node])
    rows = duckdb.sql(
        "SELECT recorded_by, id, sender, instruction_id, reason, corridor "
        f"FROM read_csv('{tmp_path / 'out' / 'refusals.csv'}', header=true)"
    ).fetchall()
    assert [r[0] for r in rows] == ["bridge"] * sample.refused + ["PBOC", "PBOC"]
    assert rows[-2:] == [
        ("PBOC", 1, "ICBC", "pay-forged", "BAD_SIGNATURE", "CN-CN"),
        ("PBOC", 2, "HSBCHK", "pay-elsewhere", "NOT_HOME_CENTRAL_BANK", None),
    ]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["refusals"] == sample.refused + 2
    with open_source(tmp_path / "out") as exported:
        assert verify_log(exported).ok


def test_node_refusals_of_another_network_are_refused(sample: SampleLog, tmp_path: Path) -> None:
    """A refusals file of another chain, or of no central bank of the log, stops the export
    before anything is written."""
    with open_source(sample.path) as source:
        chain_id = source.genesis().chain_id
        for name, central_bank, chain in (
            ("other-chain", "PBOC", "another-chain"),
            ("no-such-bank", "ECB", chain_id),
        ):
            node = node_refusals_file(tmp_path / f"{name}.sqlite", central_bank, chain)
            with pytest.raises(ExportError, match=name):
                export_log(source, tmp_path / name, "csv", node_refusals=[node])
            assert not (tmp_path / name).exists()


def test_data_dictionary_doc_is_current() -> None:
    """docs/log-data-dictionary.md is exactly what the table schema generates."""
    doc = (ROOT / "docs" / "log-data-dictionary.md").read_text(encoding="utf-8")
    assert doc == data_dictionary_markdown() + "\n"


def test_store_tables_in_the_dictionary_are_the_stores_schema(tmp_path: Path) -> None:
    """Every table of a fresh SQLite store is documented, with exactly its columns and types."""
    store = SqliteStore(tmp_path / "store.sqlite")
    store.close()
    db = sqlite3.connect(tmp_path / "store.sqlite")
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        schema = {
            name: [(c[1], c[2]) for c in db.execute(f"PRAGMA table_info({name})")] for name in names
        }
    finally:
        db.close()
    documented = {t.name: [(c.name, c.type) for c in t.columns] for t in STORE_TABLES}
    assert documented == schema


def test_export_refuses_a_non_empty_directory(sample: SampleLog, tmp_path: Path) -> None:
    """Exporting into a directory that holds files is refused."""
    (tmp_path / "x").write_text("keep me")
    with open_source(sample.path) as source, pytest.raises(ExportError):
        export_log(source, tmp_path, "csv")


def test_export_refuses_a_log_that_does_not_replay(sample: SampleLog, tmp_path: Path) -> None:
    """A log whose entry no longer replays cannot be exported; the error names the entry."""
    path = tmp_path / "broken.sqlite"
    shutil.copyfile(sample.path, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET data = replace(data, 'SETTLED', 'REJECTED') WHERE seq = 40")
    db.commit()
    db.close()
    with open_source(path) as source, pytest.raises(ExportError, match="seq 40"):
        export_log(source, tmp_path / "out", "jsonl")


# ---------------------------------------------------------------------------- tampered exports


def copy_export(exports: dict[str, Path], fmt: str, tmp_path: Path) -> Path:
    target = tmp_path / fmt
    shutil.copytree(exports[fmt], target)
    return target


def verdict(directory: Path) -> tuple[str, Failure | None]:
    """The first failure as text (or the error that stopped opening the source)."""
    try:
        with open_source(directory) as source:
            report = verify_log(source)
    except SourceError as exc:
        return str(exc), None
    assert not report.ok, "tampering went unnoticed"
    failure = report.failures[0]
    return f"{failure.where}: {failure.message}", failure


def row_keys(path: Path, fmt: str) -> dict[int, tuple[int | None, int | None]]:
    """Line number -> (height, seq) of the row on that line, for naming checks."""
    out: dict[int, tuple[int | None, int | None]] = {}
    with path.open(encoding="utf-8", newline="") as stream:
        if fmt == "csv":
            rows: Iterator[dict[str, str]] = csv.DictReader(stream)
            first = 2
        else:
            rows = (json.loads(line) for line in stream)
            first = 1
        for number, row in enumerate(rows, start=first):
            height, seq = row.get("height"), row.get("seq")
            out[number] = (
                int(height) if height not in (None, "") else None,
                int(seq) if seq not in (None, "") else None,
            )
    return out


def names(
    failure: Failure | None,
    text: str,
    file: str,
    lines: set[int],
    keys: dict[int, tuple[int | None, int | None]],
) -> bool:
    """The failure names the file and one of the lines, or the block or entry of those rows."""
    if any(f"{file} line {line}" in text for line in lines):
        return True
    if failure is None:
        return False
    for line in lines:
        height, seq = keys.get(line, (None, None))
        if seq is not None and failure.seq == seq:
            return True
        if height is not None and failure.height == height and seq is None:
            return True
    return False


def flip_positions(path: Path, count: int) -> list[int]:
    size = path.stat().st_size
    chooser = random.Random(f"{path.name}:{size}")
    return sorted(chooser.sample(range(size), min(count, size)))


@pytest.mark.parametrize(("fmt", "per_file"), [("jsonl", 5), ("csv", 3)])
def test_any_flipped_byte_of_an_export_is_named(
    exports: dict[str, Path], tmp_path: Path, fmt: str, per_file: int
) -> None:
    """Flipping one bit at sampled positions of every verified file fails, naming the place."""
    files = [f"{name}.{fmt}" for name in VERIFIED_FILES] + ["genesis.json", "manifest.json"]
    missed = []
    for file in files:
        source_path = exports[fmt] / file
        keys = row_keys(source_path, fmt) if file.endswith(fmt) else {}
        for position in flip_positions(source_path, per_file):
            target = copy_export(exports, fmt, tmp_path / f"{file}-{position}")
            data = bytearray((target / file).read_bytes())
            line = data[:position].count(b"\n") + 1
            data[position] ^= 0x01
            (target / file).write_bytes(bytes(data))
            text, failure = verdict(target)
            if file in ("genesis.json", "manifest.json"):
                named = file in text or (file == "genesis.json" and "genesis" in text)
            else:
                named = names(failure, text, file, {line}, keys)
            if not named:
                missed.append((file, position, line, text))
            shutil.rmtree(target)
    assert not missed


# (edit, format, which rows: first / middle / last data row)
LINE_EDITS = (
    ("delete", "jsonl", ("first", "middle", "last")),
    ("duplicate", "jsonl", ("first", "middle", "last")),
    ("swap", "jsonl", ("first", "middle", "last")),
    ("delete", "csv", ("middle",)),
    ("duplicate", "csv", ("last",)),
    ("swap", "csv", ("first",)),
)


@pytest.mark.parametrize(("edit", "fmt", "which"), LINE_EDITS)
def test_deleted_repeated_or_swapped_rows_are_named(
    exports: dict[str, Path], tmp_path: Path, edit: str, fmt: str, which: tuple[str, ...]
) -> None:
    """Deleting, repeating or swapping a row of any verified table fails, naming the place."""
    missed = []
    for name in VERIFIED_FILES:
        file = f"{name}.{fmt}"
        lines = (exports[fmt] / file).read_bytes().splitlines(keepends=True)
        keys = row_keys(exports[fmt] / file, fmt)
        first = 2 if fmt == "csv" else 1
        positions = {"first": first, "middle": (first + len(lines)) // 2, "last": len(lines)}
        for number in sorted({positions[w] for w in which}):
            if edit == "swap" and (number >= len(lines) or lines[number - 1] == lines[number]):
                continue
            target = copy_export(exports, fmt, tmp_path / f"{name}-{edit}-{number}")
            changed = list(lines)
            index = number - 1
            if edit == "delete":
                del changed[index]
            elif edit == "duplicate":
                changed.insert(index, changed[index])
            else:
                changed[index], changed[index + 1] = changed[index + 1], changed[index]
            (target / file).write_bytes(b"".join(changed))
            text, failure = verdict(target)
            if not names(failure, text, file, {number, number + 1}, keys):
                missed.append((file, edit, number, text))
            shutil.rmtree(target)
    assert not missed


@pytest.mark.parametrize(
    ("table", "change", "key"),
    [
        ("entries", "amount = amount + 1", "seq"),
        ("legs", "amount = amount - 1", "seq"),
        ("balances", "held = held + 1", "seq"),
        ("blocks", "time_ms = time_ms + 1", "height"),
        ("attestations", "valid = NOT valid", "height"),
    ],
)
def test_changed_parquet_value_is_named(
    exports: dict[str, Path], tmp_path: Path, table: str, change: str, key: str
) -> None:
    """A value rewritten in a Parquet table fails verification at that row's entry or block."""
    target = copy_export(exports, "parquet", tmp_path)
    path = target / f"{table}.parquet"
    column, value = change.split(" = ")
    keys = duckdb.sql(
        f"SELECT {key} FROM read_parquet('{path}') WHERE {column} IS NOT NULL"
    ).fetchall()
    chosen = keys[len(keys) // 2][0]
    rewritten = tmp_path / "rewritten.parquet"
    condition = f"{key} = {chosen}"
    duckdb.sql(
        f"COPY (SELECT * REPLACE (CASE WHEN {condition} THEN {value} "
        f"ELSE {column} END AS {column}) FROM read_parquet('{path}')) TO '{rewritten}' "
        "(FORMAT parquet)"
    )
    shutil.move(rewritten, path)
    text, failure = verdict(target)
    assert failure is not None
    assert (failure.seq if key == "seq" else failure.height) == chosen, text
    assert f"{table}.parquet row" in text or table in ("blocks",)


def test_final_only_export_goes_as_far_as_later_heights_attest(
    sample: SampleLog, tmp_path: Path
) -> None:
    """Blocks without their own quorum are exported as final once a quorum attested a later one."""
    path = tmp_path / "heights.sqlite"
    shutil.copyfile(sample.path, path)
    with sqlite3.connect(path) as db:
        (head,) = db.execute("SELECT MAX(height) FROM blocks").fetchone()
        covered = head - 2
        db.execute("DELETE FROM attestations WHERE height <> ?", (covered,))
    with open_source(path) as source:
        summary = export_log(source, tmp_path / "out", "jsonl", final_only=True)
    assert summary.head_height == covered
