"""`cbdc-bridge bench core`: one JSON object with every figure and ratio (no timing checks)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from loadtest import bench_core
from loadtest.bench_cli import bench_app

RATES = (
    "core_pvp_per_s",
    "core_nosig_pvp_per_s",
    "raw_sqlite_pvp_per_s",
    "verify_only_pvp_per_s",
    "storage_ratio",
    "sig_ratio",
)


def invoke(*args: str) -> tuple[int, str]:
    """Run `cbdc-bridge bench ARGS` with the bench group mounted as the main CLI mounts it."""
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.output


def test_core_bench_prints_one_json_object_of_positive_figures() -> None:
    """`bench core --json` with a tiny run prints every figure, all positive."""
    exit_code, output = invoke("core", "--pvps", "40", "--batch", "10", "--json")
    assert exit_code == 0, output
    figures = json.loads(output)
    assert figures["n"] == 40
    assert figures["batch"] == 10
    assert isinstance(figures["python"], str)
    assert figures["python"]
    for key in RATES:
        assert isinstance(figures[key], float | int), key
        assert figures[key] > 0, key
    assert figures["storage_ratio"] == pytest.approx(
        figures["core_nosig_pvp_per_s"] / figures["raw_sqlite_pvp_per_s"], rel=0.01
    )
    assert figures["sig_ratio"] == pytest.approx(
        figures["core_pvp_per_s"] / figures["verify_only_pvp_per_s"], rel=0.01
    )


def test_core_bench_describes_figures_without_json() -> None:
    """Without `--json` the same figures are printed as readable lines."""
    exit_code, output = invoke("core", "--pvps", "12", "--batch", "5")
    assert exit_code == 0, output
    assert "storage ratio" in output
    assert "12 dual-signed PvPs" in output


def test_core_bench_refuses_an_empty_run() -> None:
    """A run needs at least one PvP and a positive batch size."""
    with pytest.raises(ValueError, match="positive"):
        bench_core.run(pvps=0)
    exit_code, _ = invoke("core", "--pvps", "0", "--json")
    assert exit_code != 0
