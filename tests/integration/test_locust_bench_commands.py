"""Tiny runs of `cbdc-bridge bench e2e`, `bench stream` and `bench flood`: one JSON object each.

Each command starts its own network (and echo service) and stops it; speed is not asserted,
only the shape of the output and that the cross-checks held.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _bench(*args: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-m", "participants.cli", "bench", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(completed.stdout)
    assert isinstance(figures, dict)
    return figures


def test_bench_e2e_prints_the_figures_as_one_json_object(tmp_path: Path) -> None:
    """bench e2e: echo, PvP and latency figures, and cross-checked, failure-free runs."""
    figures = _bench("e2e", "--users", "4", "--seconds", "3", "--reports", str(tmp_path))
    for key in (
        "echo_rpc_per_s", "pvp_settled_per_s", "rpcs_per_pvp", "efficiency",
        "settlement_p50_ms", "settlement_p95_ms", "settlement_p99_ms",
    ):  # fmt: skip
        assert isinstance(figures[key], float), key
    assert figures["ok"] is True, figures["checks"]
    assert (tmp_path / "pvp-max_stats.csv").is_file()
    assert_budget_by_node_and_stage(figures)


@pytest.mark.parametrize("prefill", [0, 150])
def test_bench_stream_prints_the_figures_as_one_json_object(prefill: int) -> None:
    """bench stream: PvPs and echo messages per second, their ratio, and a clean cross-check;
    with --prefill, a first measurement on the fresh log and the ratio of the two."""
    figures = _bench("stream", "--pvps", "300", "--echo-seconds", "1", "--prefill", str(prefill))
    if prefill:
        # fresh-log part, prefill and last part all settled and counted by the cross-check
        assert figures["prefill_settled"] == prefill
        assert figures["crosscheck"]["ledger_settled"] == 2 * 300 + prefill, figures["crosscheck"]
        assert figures["empty_log_pvp_per_s"] > 0
        assert figures["prefill_ratio"] == pytest.approx(
            figures["prefilled_pvp_per_s"] / figures["empty_log_pvp_per_s"], rel=0.01
        )
    else:
        assert "prefill_ratio" not in figures
    for key in ("stream_pvp_per_s", "stream_echo_msg_per_s", "stream_echo_pvp_per_s", "ratio"):
        assert isinstance(figures[key], float), key
    # the echo runs in the client's shape: `batch` PvP-sized payloads per message
    batch = figures["settings"]["batch"]
    assert figures["stream_echo_pvp_per_s"] == pytest.approx(
        figures["stream_echo_msg_per_s"] * batch, rel=0.01
    )
    assert figures["ratio"] == pytest.approx(
        figures["stream_pvp_per_s"] / figures["stream_echo_pvp_per_s"], rel=0.02, abs=0.002
    )
    assert figures["pvps_settled"] == 300
    assert figures["ok"] is True, figures["crosscheck"]
    assert_budget_by_node_and_stage(figures)
    assert isinstance(figures["crypto_floor_pvp_per_s"], float)
    assert figures["crypto_floor_pvp_per_s"] > 0
    assert figures["floor_ratio"] > 0


def assert_budget_by_node_and_stage(figures: dict[str, Any]) -> None:
    """The nodes' own stage timers, scraped from their metrics endpoints, add up per node."""
    budget = figures["cpu_ms_per_pvp_by_stage"]
    assert set(budget) == {"bridge", "PBOC", "HKMA", "BOT", "CBUAE"}, budget
    for stage in ("decode", "verify", "apply", "seal", "commit"):
        assert budget["bridge"][stage] > 0, stage
    assert budget["PBOC"]["replay"] > 0
    assert budget["PBOC"]["sign"] > 0
    for row in budget.values():
        named = sum(v for s, v in row.items() if s not in ("other", "total"))
        assert abs(named + row["other"] - row["total"]) < 0.01, row
    assert figures["entries_per_block"] >= 1
    # the projection with a core per node follows from the same CPU figures
    rates = figures["node_core_pvp_per_s"]
    assert set(rates) == set(budget), rates
    for name, rate in rates.items():
        assert rate == pytest.approx(1000 / budget[name]["total"], rel=0.01), name
    assert figures["core_per_node_pvp_per_s"] == min(rates.values())
    assert rates[figures["core_per_node_bound_by"]] == figures["core_per_node_pvp_per_s"]


def test_bench_flood_answers_every_call_and_settles_none_twice() -> None:
    """bench flood: every call answered (OK or shed), nothing settled twice, node SERVING."""
    figures = _bench("flood", "--calls", "400", "--max-in-flight", "16", "--deadline", "120")
    codes = figures["codes"]
    assert isinstance(codes, dict)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert sum(codes.values()) == 400
    assert figures["settled"] == codes.get("OK", 0)
    assert figures["settled_twice"] == 0
    assert figures["serving_after"] is True
