"""The DuckDB and pandas queries in docs/research.md run against a real export and answer."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from analysis.export import export_log
from analysis.sample import SampleOptions, generate
from bridge.log.source import open_source

DOC = Path(__file__).resolve().parents[2] / "docs" / "research.md"
BLOCKS = re.findall(r"```(sql|python)\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding `export/` (Parquet) and `export-csv/`, as the doc's quick start."""
    directory = tmp_path_factory.mktemp("research")
    log = generate(directory / "log.sqlite", SampleOptions(entries=300, block_size=20, rate=4.0))
    for fmt, name in (("parquet", "export"), ("csv", "export-csv")):
        with open_source(log.path) as source:
            export_log(source, directory / name, fmt)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_doc_has_three_questions_in_both_tools() -> None:
    """The doc answers its three questions in DuckDB SQL and in pandas."""
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("sql") >= 4
    assert kinds.count("python") == 3


@pytest.mark.parametrize(
    "query", [q for kind, q in BLOCKS if kind == "sql" and "CREATE TABLE" not in q]
)
def test_duckdb_query_answers(workspace: Path, monkeypatch: pytest.MonkeyPatch, query: str) -> None:
    """Each DuckDB query of the doc runs on the Parquet export and returns rows."""
    monkeypatch.chdir(workspace)
    rows = duckdb.sql(query).fetchall()
    assert rows
    assert all(value is not None for value in rows[0])


@pytest.mark.parametrize("code", [c for kind, c in BLOCKS if kind == "python"])
def test_pandas_snippet_answers(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: str
) -> None:
    """Each pandas snippet of the doc runs on the CSV export and prints a non-empty answer."""
    monkeypatch.chdir(workspace)
    exec(compile(code, str(DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip()
    assert "Empty DataFrame" not in printed
