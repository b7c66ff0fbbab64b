"""Log sources: which one a SOURCE names, read-only snapshots, and the attestation merge."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.sample import SampleLog, SampleOptions, generate
from bridge.log.blocks import Attestation, BlockHeader
from bridge.log.source import (
    ExportSource,
    SourceError,
    SqliteSource,
    StoredAttestation,
    StoredBlock,
    StrayAttestation,
    UnsupportedSource,
    merge_attestations,
    open_source,
)
from bridge.log.verify import verify_log

OPTIONS = SampleOptions(entries=60, block_size=12, rate=100.0, seed=9)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("source-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


def test_driver_qualified_postgresql_urls_are_not_supported() -> None:
    """A SQLAlchemy-style `postgresql+driver://` URL is refused, naming the plain form."""
    with pytest.raises(UnsupportedSource, match="not supported"):
        open_source("postgresql+psycopg://a/b")


@pytest.mark.parametrize(
    "url", ["postgresql://bridge@127.0.0.1:1/ledger", "postgres://127.0.0.1:1/y"]
)
def test_unreachable_postgresql_is_a_source_error(url: str) -> None:
    """A PostgreSQL URL nobody answers at is a source error naming the server, not a crash."""
    with pytest.raises(SourceError, match="cannot read"):
        open_source(url)


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    """A path that does not exist cannot be opened."""
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nothing.sqlite")


def test_file_that_is_not_sqlite_is_a_source_error(tmp_path: Path) -> None:
    """A file that is not a SQLite database is refused with the reason."""
    path = tmp_path / "notes.txt"
    path.write_text("hello" * 100)
    with pytest.raises(SourceError, match="cannot read as SQLite"):
        open_source(path)


def test_sqlite_file_without_a_log_is_a_source_error(tmp_path: Path) -> None:
    """A SQLite file without the log tables is not a bridge store."""
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(SourceError, match="not a bridge store"):
        open_source(path)


def test_directory_without_manifest_is_a_source_error(tmp_path: Path) -> None:
    """A directory is an export only if it has a manifest."""
    with pytest.raises(SourceError, match="manifest"):
        open_source(tmp_path)


def test_sources_are_picked_by_kind(sample: SampleLog, tmp_path: Path) -> None:
    """A file opens as a SQLite store, an export directory as an export."""
    with open_source(sample.path) as source:
        assert isinstance(source, SqliteSource)
    (tmp_path / "manifest.json").write_text('{"format": "jsonl"}')
    with open_source(tmp_path) as source:
        assert isinstance(source, ExportSource)


def test_sqlite_source_streams_everything(sample: SampleLog) -> None:
    """Blocks come in height order with their attestations; entries in seq order."""
    with open_source(sample.path) as source:
        counts = source.counts()
        blocks = [b for b in source.blocks() if isinstance(b, StoredBlock)]
        entries = list(source.entries())
    assert [b.header.height for b in blocks] == list(range(1, sample.blocks + 1))
    assert [e.seq for e in entries] == list(range(1, sample.entries + 1))
    assert sum(len(b.attestations) for b in blocks) == counts.attestations
    assert (counts.blocks, counts.entries) == (sample.blocks, sample.entries)


def test_sqlite_source_reads_one_snapshot_while_a_node_appends(
    sample: SampleLog, tmp_path: Path
) -> None:
    """Rows committed after the source opened are not seen: verification is consistent."""
    path = tmp_path / "live.sqlite"
    shutil.copyfile(sample.path, path)
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    with open_source(path) as source:
        assert source.counts().entries == sample.entries
        writer.execute(
            "INSERT INTO entries SELECT seq + 1000, height, sender, instruction_id || 'x', kind, "
            "outcome, time, body_hash, data FROM entries WHERE seq = 1"
        )
        writer.commit()
        report = verify_log(source)
    writer.close()
    assert report.ok, report.failures
    assert report.entries == sample.entries


def _header(height: int) -> StoredBlock:
    header = BlockHeader(height, b"\0" * 32, b"\0" * 32, 0, height, 1)
    return StoredBlock(header, None, (), f"block {height}")


def _attestation(height: int, bank: str) -> StoredAttestation:
    return StoredAttestation(Attestation(height, b"\0" * 32, bank, b""), f"{height}/{bank}")


def test_attestations_merge_onto_their_blocks_and_strays_are_kept() -> None:
    """Attestations join the block of their height; others come out as strays, in place."""
    blocks = iter([_header(1), _header(2), _header(4)])
    attestations = iter(
        [
            _attestation(0, "A"),
            _attestation(1, "A"),
            _attestation(1, "B"),
            _attestation(3, "A"),
            _attestation(4, "B"),
            _attestation(9, "C"),
        ]
    )
    items = list(merge_attestations(blocks, attestations))
    shape = [
        (
            f"stray {i.attestation.attestation.height}"
            if isinstance(i, StrayAttestation)
            else f"block {i.header.height}: {len(i.attestations)}"
        )
        for i in items
    ]
    assert shape == ["stray 0", "block 1: 2", "block 2: 0", "stray 3", "block 4: 1", "stray 9"]
