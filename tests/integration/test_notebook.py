"""docs/notebooks/settlement-analysis.ipynb runs top to bottom on a fresh sample log's export."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analysis.export import export_log
from analysis.sample import SampleOptions, generate
from bridge.log.source import open_source

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebooks" / "settlement-analysis.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    """The committed notebook carries no outputs: results come from the reader's own export."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes_on_a_fresh_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell runs without error; the corridor, FX, latency (signed to settled, per corridor
    and kind) and liquidity cells answer."""
    log = generate(tmp_path / "log.sqlite", SampleOptions(entries=1_500, block_size=50, rate=80.0))
    with open_source(log.path) as source:
        export_log(source, tmp_path / "export", "parquet")
    monkeypatch.setenv("CBDC_BRIDGE_EXPORT", str(tmp_path / "export"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [c.outputs for c in notebook.cells if c.cell_type == "code"]
    figures = sum(any("image/png" in o.get("data", {}) for o in out) for out in outputs)
    assert figures == 4  # corridors, FX, latency, liquidity
    text = "\n".join(
        o.get("data", {}).get("text/plain", "") or o.get("text", "") for out in outputs for o in out
    )
    assert "value_cny_m" in text
    assert "propose-to-accept ms" in text
    assert "p95_ms" in text  # settlement latency per corridor and kind
    assert "p50_p95_p99_ms" in text  # and per kind
    assert "gap_bp_max" in text
    assert "error" not in {o.get("output_type") for out in outputs for o in out}
