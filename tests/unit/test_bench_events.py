"""`bench events` figures without a network: each goal judged from its own figure."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import aiomqtt

from bridge.crypto import FastVerifier
from bridge.node.publisher import CONSUMER
from bridge.notify import MqttSettings, settlement_topic
from bridge.settlement import SettlementEngine
from bridge.store.sqlite import SqliteStore
from loadtest import bench_events
from loadtest.runner import LocustSettings, RunResult, StatsRow
from tests.factories import BANKS, T0, admit_bank, issue, network, pay

SETTLEMENT_TOPIC = settlement_topic("PBOC", "CCB")
SETTINGS = bench_events.EventsSettings(locust=LocustSettings(users=1, spawn_rate=1, seconds=1))


def run(label: str, pvps: int, rate: float) -> RunResult:
    rows = (StatsRow("settlement", "pvp", pvps, 0, 1.0, rate, {}),)
    return RunResult(label, "lt1", rows, Path(label), Path(f"{label}.html"), 0, 1.0)


def cpu(without: float, with_: float) -> dict[str, dict[bool, float]]:
    return {"all": {False: without, True: with_}, "bridge": {False: 0.0, True: 0.0}}


def figures(
    without: RunResult,
    with_: RunResult,
    at_max: list[float],
    at_half: list[float],
    seconds: dict[str, dict[bool, float]],
    missing: int = 0,
) -> dict[str, object]:
    by_mode = {False: [without], True: [with_]}
    delivery = {"messages": len(at_max) + len(at_half), "missing": missing}
    return bench_events._figures(
        SETTINGS, by_mode, run("half", 10, 1.0), at_max, at_half, delivery, seconds
    )


def test_goals_without_their_figures_are_not_met() -> None:
    """No PvP settled, no CPU measured, no event delivered: no goal reads as met, in the JSON
    or in the summary."""
    got = figures(run("without", 0, 0.0), run("with", 0, 0.0), [], [], cpu(0.0, 0.0))
    goals = got["goals_met"]
    assert isinstance(goals, dict)
    assert len(goals) == 4
    assert not any(goals.values()), goals
    summary = bench_events.describe(got)
    assert summary.count("not met") == 4, summary


def test_each_goal_is_judged_from_its_figure_at_both_rates() -> None:
    """5 % fewer PvP/s with the publisher (met), 10.5 % more CPU per PvP (not met), p99 10 ms
    at half rate (met) and 200 ms at full rate (not met)."""
    got = figures(
        run("without", 1000, 100.0),
        run("with", 950, 95.0),
        [200.0] * 100,
        [10.0] * 100,
        cpu(10.0, 10.0 * 0.95 * 1.105),
    )
    assert got["goals_met"] == {
        "p99_le_100ms_at_half_rate": True,
        "p99_le_100ms_at_full_rate": False,
        "publisher_cost_le_10pct": True,
        "publisher_cpu_cost_le_10pct": False,
    }
    lines = bench_events.describe(got).splitlines()
    assert lines[1].endswith("goal <= 10%: met)")
    assert lines[2].endswith("goal p99 <= 100 ms: met)")
    assert lines[3].endswith("goal p99 <= 100 ms: not met)")
    assert lines[4].endswith("goal <= 10%: not met)")


def test_latencies_are_taken_once_the_newest_entry_arrived(tmp_path: Path) -> None:
    """Once the outbox is drained, `wait_delivered` still waits for the subscriber to receive
    the newest entry's message (the broker acknowledges before it delivers), so the latest
    latencies are not left out of the percentiles."""
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    net = network()
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    engine.settle([admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    engine.settle([issue(net, "PBOC", "ICBC", 10**6)], T0)
    engine.settle([pay(net, "ICBC", "CCB", 7)], T0 + 1)
    store.set_outbox_cursor(CONSUMER, store.outbox_last_id())  # every row published
    newest = bench_events.last_seq(db)
    meter = bench_events.DeliveryMeter(MqttSettings())
    meter.since_ms = 0  # every entry counts

    def deliver_late() -> None:
        time.sleep(0.3)
        payload = json.dumps({"seq": newest, "time": T0 + 1}).encode()
        meter._record(aiomqtt.Message(SETTLEMENT_TOPIC, payload, 1, False, 1, None))

    late = threading.Thread(target=deliver_late)
    late.start()
    bench_events.wait_delivered(meter, db, timeout=60)
    taken = meter.take()
    late.join()
    store.close()
    assert len(taken) == 1


def test_entries_that_never_arrived_are_counted_and_fail_the_run() -> None:
    """The meter counts the seqs of a run it never received; any makes the run not ok."""
    meter = bench_events.DeliveryMeter(MqttSettings())
    meter.since_ms = 0
    for seq in (3, 4, 6):
        payload = json.dumps({"seq": seq, "time": T0}).encode()
        meter._record(aiomqtt.Message(SETTLEMENT_TOPIC, payload, 1, False, seq, None))
    assert meter.missing(2, 7) == 2  # 5 and 7
    assert meter.missing(2, 4) == 0
    pvps = (run("without", 1000, 100.0), run("with", 990, 99.0))
    fine = figures(*pvps, [5.0], [5.0], cpu(1.0, 1.0))
    lost = figures(*pvps, [5.0], [5.0], cpu(1.0, 1.0), missing=2)
    assert (fine["ok"], fine["delivery_missing"]) == (True, 0)
    assert (lost["ok"], lost["delivery_missing"]) == (False, 2)
    assert "entries never delivered:       2" in bench_events.describe(lost)
