"""Headless Locust runs of the load scenarios against a real network, each cross-checked.

The network is the suite's shared four-central-bank corridor (tests/conftest.py). Every run
goes through `loadtest.runner`, exactly as `cbdc-bridge bench e2e` does: Locust in a
subprocess with CSV and HTML reports, then the settlement count in the report compared with
the bridge's ledger and the whole settlement log verified offline.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from loadtest.runner import RunResult, run_scenario
from participants.launcher import Network
from tests.conftest import start_network


def _explain(result: RunResult) -> str:
    check = result.check.describe() if result.check is not None else "no cross-check"
    return f"{result.summary()}\n{check}\n--- locust stderr ---\n{result.output[-3000:]}"


def test_steady_run_has_no_failures_and_matches_the_ledger(
    network: Network, tmp_path: Path
) -> None:
    """8 s of steady: zero failures, Locust's settlements = the ledger's, the log verifies."""
    result = run_scenario("steady", network.directory, seconds=8, users=10, reports=tmp_path)
    assert result.unexpected_failures == 0, _explain(result)
    assert result.settlements > 0, _explain(result)
    assert {row.name for row in result.rows_of("settlement")} == {"pay", "pvp", "pvp_dual"}
    assert result.check is not None
    assert result.check.counts_match, _explain(result)
    assert result.check.log_ok, _explain(result)
    assert (tmp_path / "steady_stats.csv").is_file()
    assert (tmp_path / "steady.html").is_file()


@pytest.mark.slow
def test_steady_with_two_load_generator_processes_still_matches_the_ledger(
    network: Network, tmp_path: Path
) -> None:
    """With --processes 2 every worker's last settlements reach the report (exact count)."""
    result = run_scenario(
        "steady", network.directory, seconds=6, users=10, processes=2, reports=tmp_path
    )
    assert result.unexpected_failures == 0, _explain(result)
    assert result.check is not None
    assert result.check.ok, _explain(result)
    # every worker quit when the run ended, none waited for the master's heartbeat to stop
    assert "heartbeat from master" not in result.output, _explain(result)


@pytest.mark.slow
def test_two_multi_process_runs_at_once_each_match_their_own_ledger(
    network: Network, tmp_path: Path
) -> None:
    """Two --processes runs at once on two networks: no worker joins the other run's master."""
    other = start_network(tmp_path / "other-network")
    results: dict[str, RunResult] = {}

    def run(label: str, directory: Path) -> None:
        results[label] = run_scenario(
            "steady", directory, seconds=6, users=6, processes=2, reports=tmp_path / label
        )

    try:
        runs = [
            threading.Thread(target=run, args=("first", network.directory)),
            threading.Thread(target=run, args=("second", other.directory)),
        ]
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join()
    finally:
        other.stop()
    assert set(results) == {"first", "second"}
    for result in results.values():
        assert result.settlements > 0, _explain(result)
        assert result.check is not None
        assert result.check.ok, _explain(result)


@pytest.mark.slow
def test_liquidity_refusals_are_counted_apart_from_failures(
    network: Network, tmp_path: Path
) -> None:
    """Draining a currency: INSUFFICIENT_FUNDS refusals are `refused` rows, never failures."""
    result = run_scenario("liquidity", network.directory, seconds=6, users=6, reports=tmp_path)
    assert result.unexpected_failures == 0, _explain(result)
    assert result.refused > 0, _explain(result)
    assert {row.name for row in result.rows_of("refused")} == {"INSUFFICIENT_FUNDS"}
    assert result.check is not None
    assert result.check.ok, _explain(result)
