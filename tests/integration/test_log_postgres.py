"""The log tools on a PostgreSQL store: `log verify | prove | export | report` take a URL.

A sample log is generated into SQLite and copied into a throw-away PostgreSQL database
(`copy_from_sqlite`, the way a bridge moves onto a server); the CLI then runs as a subprocess
against the `postgresql://` URL, as an operator would run it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from analysis.sample import SampleLog, SampleOptions, generate
from bridge.errors import StoreError
from bridge.log.source import PostgresSource, open_source
from bridge.log.verify import verify_log
from bridge.store.postgres import copy_from_sqlite
from tests.pg import PostgresServer

OPTIONS = SampleOptions(entries=80, block_size=16, rate=100.0, seed=23)
SCRIPT = Path(sys.executable).with_name("cbdc-bridge")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("pg-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def url(sample: SampleLog, postgres_url: str) -> str:
    """A PostgreSQL database holding a copy of the sample log."""
    copied = copy_from_sqlite(str(sample.path), postgres_url)
    assert copied == sample.entries
    return postgres_url


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_verify_of_a_postgresql_store_passes_like_its_sqlite_original(
    url: str, sample: SampleLog, tmp_path: Path
) -> None:
    """`log verify postgresql://...` exits 0 with the same counts as the SQLite original."""
    result = run("log", "verify", url, "--json", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    with open_source(sample.path) as original:
        expected = verify_log(original).to_json()
    assert report["ok"] is True
    for field in ("entries", "blocks", "signatures", "attestations", "last_final_height", "head"):
        assert report[field] == expected[field], field
    assert "password" not in result.stdout


def test_verify_detects_a_tampered_entry_in_postgresql(url: str, tmp_path: Path) -> None:
    """A changed entry time in the database fails verification with exit code 1."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE entries SET time = time + 5 WHERE seq = 30")
    result = run("log", "verify", url, "--no-progress", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "entry 30" in result.stdout


def test_prove_export_and_report_read_a_postgresql_store(url: str, tmp_path: Path) -> None:
    """An inclusion proof, an export that verifies, and a report, all from the URL."""
    proof = run("log", "prove", "25", "--source", url, cwd=tmp_path)
    assert proof.returncode == 0, proof.stderr
    assert json.loads(proof.stdout)["entry"]["seq"] == 25
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(proof.stdout)
    genesis = run("log", "genesis", url, "--out", str(tmp_path / "genesis.json"), cwd=tmp_path)
    assert genesis.returncode == 0, genesis.stderr
    checked = run(
        "log",
        "check-proof",
        str(proof_file),
        "--genesis",
        str(tmp_path / "genesis.json"),
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    exported = run("log", "export", "--source", url, "--format", "csv", "--out", "x", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    again = run("log", "verify", str(tmp_path / "x"), "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr

    report = run("log", "report", "--source", url, "--out", "r", "--no-progress", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "r" / "report.html").is_file()


def test_postgresql_source_reads_one_snapshot(url: str) -> None:
    """Rows committed after the source opened are not seen: the tools read one snapshot."""
    with open_source(url) as source:
        assert isinstance(source, PostgresSource)
        before = source.counts()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM attestations")
        assert source.counts() == before
        assert sum(1 for _ in source.entries()) == before.entries


def test_copy_keeps_the_refusals_the_sqlite_store_recorded(url: str, sample: SampleLog) -> None:
    """Moving a store onto a server keeps its recorded refusals (export and report read them)."""
    with open_source(sample.path) as original:
        expected = [row[2:] for row in original.refusals()]
    assert expected, "the sample recorded no refusals"
    with open_source(url) as copied:
        assert [row[2:] for row in copied.refusals()] == expected


def test_copy_refuses_a_database_that_holds_a_ledger(url: str, sample: SampleLog) -> None:
    """Copying a store into a database that already holds a ledger is refused."""
    with pytest.raises(StoreError, match="already holds a ledger"):
        copy_from_sqlite(str(sample.path), url)


def test_database_without_a_log_is_a_source_error(postgres_server: PostgresServer) -> None:
    """A reachable database with no bridge tables is not a log."""
    from bridge.log.source import SourceError

    with pytest.raises(SourceError, match="not a bridge store"):
        open_source(postgres_server.create_database())
