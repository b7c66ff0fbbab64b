"""The campaign's verdict: every figure a check produces can fail the run, and a clean run passes.

`summary` turns what the campaign saw into its JSON and `all_checks_passed` (the command's exit
status); `CheckReport.passed` is the verdict of one round of checks. Each is fed here a record
that breaks exactly one promise and must say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from participants.broker import Broker
from participants.chaos.campaign import (
    CALL_TIMEOUT,
    Campaign,
    Figures,
    Part,
    fault_failures,
    summary,
)
from participants.chaos.checks import CheckReport
from participants.chaos.faults import rss_bytes
from participants.chaos.schedule import QUICK, Fault, plan

CBS = ["PBOC", "HKMA", "BOT", "CBUAE"]
OUTAGE = {
    "kind": "outage",
    "target": "HKMA",
    "hold": 7.0,
    "recovery_s": 1.1,
    "finality_continued": True,
    "pvp_expired_during_outage": True,
}
DISK_FULL = {
    "kind": "disk-full",
    "target": "bridge-store",
    "recovery_s": 0.1,
    "final_refusals_while_full": {},
    "not_decided_while_full": {"not_decided:OUTCOME_UNKNOWN": 3},
}


def verdict(tmp_path: Path, faults: list[dict[str, Any]], took: float = 0.2) -> dict[str, Any]:
    """The figures of a run that saw `faults` and whose slowest client call took `took` s."""
    record = tmp_path / "load-1.jsonl"
    line = {"ack": True, "rpc": "Pay", "node": "PBOC", "sender": "ICBC", "id": "a", "took": took}
    record.write_text(json.dumps(line) + "\n", encoding="utf-8")
    figures = Figures(faults=faults, recoveries=[1.0])
    part = Part("sqlite", CheckReport(acknowledged=1, log_verified=True), [record], {}, {}, 1.0)
    return summary(7, QUICK, plan(7, QUICK, CBS), figures, [part])


def test_a_clean_run_passes(tmp_path: Path) -> None:
    """Finality went on, the PvP expired, the full disk refused nothing for good: passed."""
    figures = verdict(tmp_path, [OUTAGE, DISK_FULL])
    assert figures["fault_failures"] == []
    assert figures["all_checks_passed"] is True


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ({**OUTAGE, "finality_continued": False}, "finality stopped"),
        ({**OUTAGE, "pvp_expired_during_outage": False}, "did not expire"),
        ({**DISK_FULL, "final_refusals_while_full": {"INSUFFICIENT_FUNDS": 1}}, "final refusal"),
    ],
    ids=["finality-stopped", "hold-kept", "final-refusal-on-full-disk"],
)
def test_a_fault_that_broke_a_promise_fails_the_run(
    tmp_path: Path, fault: dict[str, Any], says: str
) -> None:
    """An outage that stopped finality or kept a PvP's hold, or a full disk answered with a
    final refusal, fails the run and is named in `fault_failures`."""
    figures = verdict(tmp_path, [fault])
    assert figures["all_checks_passed"] is False
    assert any(says in failure for failure in figures["fault_failures"]), figures


def test_a_call_that_hangs_fails_the_run(tmp_path: Path) -> None:
    """A client call that outlived its deadline many times over (a hang) fails the run."""
    figures = verdict(tmp_path, [OUTAGE], took=CALL_TIMEOUT * 10)
    assert figures["all_checks_passed"] is False
    assert figures["fault_failures"], figures


FAILING = {
    "lost": 1,
    "misplaced": 1,
    "doubled": 1,
    "resubmit_failures": ["ICBC/a: seq 9 != 8"],
    "conservation_failures": ["CNY: balances 1 != issued - redeemed 2"],
    "replica_disagreements": 1,
    "stuck_holds": 1,
    "expiries_wrong": 1,
    "log_verified": False,
    "memory_over_bound": ["bridge: 900 MiB (base 80)"],
}


@pytest.mark.parametrize("field", sorted(FAILING))
def test_each_failing_figure_fails_the_round_of_checks(field: str) -> None:
    """A round of checks with one bad figure (any of them) is not passed."""
    assert CheckReport().passed
    report = CheckReport(**{field: FAILING[field]})
    assert not report.passed
    assert not report.to_json()["passed"]


def test_memory_is_measured_for_every_process_of_the_network(tmp_path: Path) -> None:
    """The processes whose RSS the campaign bounds: each it started (the latest load client
    of all it started), and the MQTT broker."""
    campaign = Campaign(7, QUICK, tmp_path)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = [
        campaign.managed(name, sleep, tmp_path / f"{name}.log")
        for name in ("bridge", "PBOC", "load", "load")
    ]
    broker = subprocess.Popen(sleep)
    campaign.broker = Broker(tmp_path, 0, process=broker)
    try:
        for process in started:
            process.start()
        pids = campaign.pids()
        assert pids["bridge"] == started[0].pid
        assert pids["PBOC"] == started[1].pid
        assert pids["load"] == started[3].pid
        assert pids["mqtt-broker"] == broker.pid
        assert all(rss_bytes(pid) > 0 for pid in pids.values())
    finally:
        campaign.teardown()
        broker.kill()
        broker.wait()


def test_a_false_flag_of_a_fault_reaches_the_verdict() -> None:
    """`Campaign.fault_done` keeps `finality_continued=False` and
    `pvp_expired_during_outage=False` in the fault's record (False equals 0, which the record
    leaves out as empty), so the verdict sees them and fails the run."""
    figures = Figures()
    campaign = SimpleNamespace(figures=figures, recover=lambda healed_at: 1.0)
    outage = Fault("outage", "HKMA", 1.0, hold=7.0)
    Campaign.fault_done(
        campaign,  # type: ignore[arg-type]
        outage,
        0.0,
        finality_continued=False,
        pvp_expired_during_outage=False,
    )
    recorded = figures.faults[-1]
    assert recorded["finality_continued"] is False
    assert recorded["pvp_expired_during_outage"] is False
    failures = fault_failures(figures.faults, 1.0)
    assert any("finality stopped" in f for f in failures), failures
    assert any("did not expire" in f for f in failures), failures
