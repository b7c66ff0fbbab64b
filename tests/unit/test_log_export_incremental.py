"""Exports as data products: the data dictionary inside every export, timestamps and major
units, and incremental export that appends exactly the new rows."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from frictionless import Package, validate

from analysis.export import Derivation, ExportError, ExportFollower, export_log
from analysis.sample import SampleLog, SampleOptions, generate
from bridge.log.datapackage import datapackage, table_files
from bridge.log.source import open_source
from bridge.log.tables import TABLES
from bridge.log.verify import verify_log

OPTIONS = SampleOptions(entries=240, block_size=20, rate=50.0, seed=21)
FORMATS = ("csv", "jsonl", "parquet")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("incremental-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


def cut(sample: SampleLog, path: Path, last_height: int) -> Path:
    """A copy of the sample log that ends at `last_height` (as the log was earlier)."""
    shutil.copyfile(sample.path, path)
    db = sqlite3.connect(path)
    try:
        (last_seq,) = db.execute(
            "SELECT first_seq + entry_count - 1 FROM blocks WHERE height=?", (last_height,)
        ).fetchone()
        db.execute("DELETE FROM blocks WHERE height > ?", (last_height,))
        db.execute("DELETE FROM attestations WHERE height > ?", (last_height,))
        db.execute("DELETE FROM entries WHERE seq > ?", (last_seq,))
        db.commit()
    finally:
        db.close()
    return path


def export(source: Path, out: Path, fmt: str | None, **options: object) -> None:
    with open_source(source) as log:
        export_log(log, out, fmt, **options)  # type: ignore[arg-type]


def verified(directory: Path) -> None:
    with open_source(directory) as source:
        report = verify_log(source)
    assert report.ok, report.failures


@pytest.mark.parametrize("fmt", FORMATS)
def test_datapackage_travels_with_every_export_and_is_valid(
    sample: SampleLog, tmp_path: Path, fmt: str
) -> None:
    """Every export holds a valid Frictionless datapackage.json describing all its tables."""
    out = tmp_path / fmt
    export(sample.path, out, fmt)
    descriptor = json.loads((out / "datapackage.json").read_text())
    assert Package.validate_descriptor(str(out / "datapackage.json")).valid
    assert [r["name"] for r in descriptor["resources"]] == [t.name for t in TABLES]
    for resource, table in zip(descriptor["resources"], TABLES, strict=True):
        assert (out / resource["path"]).is_file()
        assert [f["name"] for f in resource["schema"]["fields"]] == list(table.names)
        assert all(f["description"] for f in resource["schema"]["fields"])
    if fmt != "parquet":  # the data itself, against types, keys and foreign keys
        report = validate(str(out / "datapackage.json"))
        assert report.valid, report.flatten(["rowNumber", "fieldName", "message"])[:5]
    verified(out)


def test_parquet_has_timestamps_major_units_and_column_metadata(
    sample: SampleLog, tmp_path: Path
) -> None:
    """Parquet tables carry TIMESTAMP columns, float major units and the dictionary."""
    out = tmp_path / "parquet"
    export(sample.path, out, "parquet")
    legs = str(out / "legs.parquet")
    types = dict(duckdb.sql(f"SELECT name, logical_type FROM parquet_schema('{legs}')").fetchall())
    assert "TimestampType" in str(types["time"])
    [row] = duckdb.sql(
        f"SELECT time, epoch_ms(time), time_ms, amount, amount_major, exponent FROM '{legs}' "
        "LIMIT 1"
    ).fetchall()
    assert row[1] == row[2]
    assert row[4] == row[3] / 10 ** row[5]
    metadata = dict(
        duckdb.sql(
            f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{legs}')"
        ).fetchall()
    )
    assert metadata["cbdc-bridge.table"] == "legs"
    assert json.loads(metadata["cbdc-bridge.schema"])["fields"][0]["name"] == "seq"
    assert metadata["cbdc-bridge.column.amount_major"].startswith("DOUBLE; major units")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_append_adds_exactly_the_new_rows(sample: SampleLog, tmp_path: Path, fmt: str) -> None:
    """An export of an earlier log, then appended, equals a fresh export of the whole log."""
    early = cut(sample, tmp_path / "early.sqlite", 5)
    out, full = tmp_path / "appended", tmp_path / "full"
    export(early, out, fmt)
    before = {t.name: (out / f"{t.name}.{fmt}").read_bytes() for t in TABLES}
    export(sample.path, out, None, append=True)
    export(sample.path, full, fmt)
    for table in TABLES:
        after = (out / f"{table.name}.{fmt}").read_bytes()
        if table.name != "refusals":  # not part of the log: rewritten whole
            assert after.startswith(before[table.name]), table.name
        assert after == (full / f"{table.name}.{fmt}").read_bytes(), table.name
    for document in ("manifest.json", "datapackage.json", "genesis.json"):
        assert (out / document).read_bytes() == (full / document).read_bytes()
    export(sample.path, out, None, append=True)  # nothing new: nothing changes
    assert (out / f"entries.{fmt}").read_bytes() == (full / f"entries.{fmt}").read_bytes()
    verified(out)


def test_parquet_append_writes_part_files_that_verify(sample: SampleLog, tmp_path: Path) -> None:
    """A Parquet export grows by part files holding exactly the new blocks' rows."""
    early = cut(sample, tmp_path / "early.sqlite", 4)
    out = tmp_path / "appended"
    export(early, out, "parquet")
    export(sample.path, out, None, append=True)
    parts = table_files(out, "parquet")
    assert parts["entries"] == ["entries.parquet", "entries.part-000000000005.parquet"]
    assert parts["currencies"] == ["currencies.parquet"]  # nothing new, no empty part
    files = [str(out / name) for name in parts["entries"]]
    seqs = [r[0] for r in duckdb.sql(f"SELECT seq FROM read_parquet({files})").fetchall()]
    assert seqs == list(range(1, sample.entries + 1))
    descriptor = json.loads((out / "datapackage.json").read_text())
    entries = next(r for r in descriptor["resources"] if r["name"] == "entries")
    assert entries["path"] == parts["entries"]
    verified(out)


def test_final_only_stops_before_the_first_block_without_a_quorum(
    sample: SampleLog, tmp_path: Path
) -> None:
    """Following exports only final blocks, so nothing it wrote ever changes."""
    out = tmp_path / "follow"
    export(sample.path, out, "csv", append=True, final_only=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["head"]["height"] == sample.blocks - 1  # the sample's tail is not final
    verified(out)


def test_partial_export_from_a_height_or_seq(sample: SampleLog, tmp_path: Path) -> None:
    """--from-height/--from-seq export whole blocks from there on; such an export says it
    cannot be verified alone."""
    export(sample.path, tmp_path / "h", "jsonl", from_height=3)
    export(sample.path, tmp_path / "s", "jsonl", from_seq=50)
    with sqlite3.connect(sample.path) as db:
        (first_seq_3,) = db.execute("SELECT first_seq FROM blocks WHERE height=3").fetchone()
        (height_50,) = db.execute("SELECT height FROM entries WHERE seq=50").fetchone()
    for name, height in (("h", 3), ("s", height_50)):
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["first_height"] == height
        assert (
            json.loads((tmp_path / name / "blocks.jsonl").read_text().split("\n")[0])["height"]
            == height
        )
        with open_source(tmp_path / name) as source:
            report = verify_log(source)
        assert not report.ok
        assert "partial export" in report.failures[0].message
    first = json.loads((tmp_path / "h" / "entries.jsonl").read_text().split("\n")[0])
    assert first["seq"] == first_seq_3
    assert (tmp_path / "h" / "currencies.jsonl").read_text() == ""


def test_append_refuses_another_log_or_format(sample: SampleLog, tmp_path: Path) -> None:
    """Appending from a log whose block at the export's head differs, or in another format,
    is refused."""
    out = tmp_path / "x"
    export(sample.path, out, "csv")
    other = generate(tmp_path / "other.sqlite", SampleOptions(entries=300, block_size=20, seed=8))
    with pytest.raises(ExportError, match="not the log this export was taken from"):
        export(other.path, out, None, append=True)
    with pytest.raises(ExportError, match="csv export, not jsonl"):
        export(sample.path, out, "jsonl", append=True)


def test_an_edited_datapackage_fails_verification(sample: SampleLog, tmp_path: Path) -> None:
    """datapackage.json must be exactly what the tables and manifest imply."""
    out = tmp_path / "csv"
    export(sample.path, out, "csv")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "datapackage.json").read_bytes() == datapackage(manifest, table_files(out, "csv"))
    (out / "datapackage.json").write_text(
        (out / "datapackage.json").read_text().replace("Amount moved.", "Amount moved (USD).")
    )
    with open_source(out) as source:
        report = verify_log(source)
    assert not report.ok
    assert report.failures[0].where == "datapackage.json"


def test_follow_keeps_its_replay_and_reads_only_new_blocks(
    sample: SampleLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each --follow poll replays only the blocks after the export's head; the result equals
    one export of the final blocks."""
    early = cut(sample, tmp_path / "early.sqlite", 5)
    replayed: list[int] = []
    original = Derivation._entry

    def counting(self: Derivation, stored: Any, height: int) -> Any:
        replayed.append(stored.seq)
        return original(self, stored, height)

    monkeypatch.setattr(Derivation, "_entry", counting)
    follower = ExportFollower()
    out, once = tmp_path / "followed", tmp_path / "once"
    with open_source(early) as log:
        first = export_log(log, out, "csv", append=True, final_only=True, follower=follower)
    assert first.head_height == 5
    replayed.clear()
    with open_source(sample.path) as log:
        second = export_log(log, out, None, append=True, final_only=True, follower=follower)
    assert second.head_height == sample.blocks - 1
    assert replayed
    assert min(replayed) == first.counts["entries"] + 1  # nothing replayed twice
    assert len(replayed) == second.new_rows["entries"]
    export(sample.path, once, "csv", append=True, final_only=True)
    for table in TABLES:
        name = f"{table.name}.csv"
        assert (out / name).read_bytes() == (once / name).read_bytes(), table.name
    verified(out)
