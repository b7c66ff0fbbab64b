"""The load-test plumbing without a network: report parsing, figures, settings, cross-check."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import types_pb2 as types
from loadtest import bench_e2e
from loadtest.bench_stream import StreamTally, frames
from loadtest.benchkit import CpuMeter, StageMeter, core_per_node
from loadtest.crosscheck import ledger_settled
from loadtest.runner import PERCENTILES, LocustSettings, RunResult, StatsRow, read_stats
from loadtest.settings import LoadSettings, new_run_id, parse_weights

HEADER = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time",
    "Average Response Time", "Min Response Time", "Max Response Time", "Average Content Size",
    "Requests/s", "Failures/s", *PERCENTILES[:-1], "99.99%", "100%",
]  # fmt: skip


def _row(kind: str, name: str, count: int, rate: float, p99: float = 0.0) -> list[str]:
    percentiles = [str(p99 if label == "99%" else 1) for label in (*PERCENTILES[:-1], "99.99%")]
    return [kind, name, str(count), "0", "1", "1.5", "1", "9", "40", str(rate), "0.0",
            *percentiles, str(p99)]  # fmt: skip


def _stats(rows: list[tuple[str, str, int, float, float]]) -> tuple[StatsRow, ...]:
    return tuple(
        StatsRow(
            kind, name, count, 0, 1.0, rate, {p: (p99 if p == "99%" else 1.0) for p in PERCENTILES}
        )
        for kind, name, count, rate, p99 in rows
    )


def _result(label: str, rows: tuple[StatsRow, ...]) -> RunResult:
    return RunResult(label, "lt1", rows, Path(label), Path(f"{label}.html"), 0, 1.0)


def test_stats_csv_rows_are_read_without_the_aggregate(tmp_path: Path) -> None:
    """read_stats turns Locust's _stats.csv into rows and leaves out 'Aggregated'."""
    path = tmp_path / "run_stats.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerow(_row("grpc", "CentralBank/SubmitDualPvp", 120, 12.0))
        writer.writerow(_row("settlement", "pvp_dual", 118, 11.8, p99=37))
        writer.writerow(_row("", "Aggregated", 238, 23.8))
    rows = read_stats(path)
    assert [(r.type, r.name, r.requests) for r in rows] == [
        ("grpc", "CentralBank/SubmitDualPvp", 120),
        ("settlement", "pvp_dual", 118),
    ]
    assert rows[1].percentile("99%") == 37
    assert rows[1].requests_per_s == pytest.approx(11.8)


def test_run_result_counts_rpcs_settlements_and_refusals_apart() -> None:
    """RPCs are grpc + refused rows; settlements are derived rows, never counted as RPCs."""
    result = _result(
        "r",
        _stats(
            [
                ("grpc", "CentralBank/Pay", 10, 5.0, 0),
                ("refused", "INSUFFICIENT_FUNDS", 4, 2.0, 0),
                ("settlement", "pay", 6, 3.0, 0),
            ]
        ),
    )
    assert (result.rpcs, result.settlements, result.refused) == (14, 6, 4)
    assert result.rpc_per_s == pytest.approx(7.0)
    assert result.unexpected_failures == 0


def test_e2e_figures_have_every_key_and_the_efficiency_formula() -> None:
    """efficiency = pvp_settled_per_s x rpcs_per_pvp / echo_rpc_per_s; p99 is the worst form's;
    the echo server's CPU per call and the banks' calls' floor per PvP follow from it."""
    echo = _result("echo", _stats([("grpc", "Echo/Echo", 3000, 1000.0, 0)]))
    max_run = _result(
        "max",
        _stats(
            [
                ("grpc", "CentralBank/ProposePvp", 100, 50.0, 0),
                ("grpc", "CentralBank/AcceptPvp", 100, 50.0, 0),
                ("grpc", "CentralBank/SubmitDualPvp", 100, 50.0, 0),
                ("settlement", "pvp", 100, 50.0, 0),
                ("settlement", "pvp_dual", 100, 50.0, 0),
            ]
        ),
    )
    half = _result(
        "half",
        _stats([("settlement", "pvp", 50, 25.0, 40.0), ("settlement", "pvp_dual", 50, 25.0, 30.0)]),
    )
    settings = bench_e2e.E2eSettings(locust=LocustSettings(users=4, seconds=2))
    echo_cpu = CpuMeter({})
    echo_cpu.seconds = {"echo": 0.6}
    nodes_cpu = CpuMeter({})
    nodes_cpu.seconds = {"bridge": 0.5, "PBOC": 0.25}
    figures = bench_e2e._figures(settings, echo, max_run, half, nodes_cpu, StageMeter({}), echo_cpu)
    for key in (
        "echo_rpc_per_s", "pvp_settled_per_s", "rpcs_per_pvp", "efficiency",
        "settlement_p50_ms", "settlement_p95_ms", "settlement_p99_ms",
    ):  # fmt: skip
        assert isinstance(figures[key], float), key
    assert figures["pvp_settled_per_s"] == 100.0
    assert figures["rpcs_per_pvp"] == 1.5
    assert figures["efficiency"] == pytest.approx(100.0 * 1.5 / 1000.0)
    assert figures["settlement_p99_ms"] == 40.0
    assert figures["echo_server_cpu_ms_per_rpc"] == pytest.approx(0.2)  # 0.6 s / 3,000 calls
    assert figures["bank_call_floor_cpu_ms_per_pvp"] == pytest.approx(0.3)  # x 1.5 calls
    assert figures["goals_met"]["p99_le_50ms_at_half_rate"] is True
    # 200 PvPs settled: the bridge's 0.5 s of CPU is 400 PvP/s on a core of its own
    assert figures["node_core_pvp_per_s"] == {"PBOC": 800.0, "bridge": 400.0}
    assert figures["core_per_node_pvp_per_s"] == 400.0
    assert figures["core_per_node_bound_by"] == "bridge"
    assert "with a core per node:          400 PvP/s (bound by bridge;" in bench_e2e.describe(
        figures
    )


def test_a_core_per_node_is_bound_by_the_node_with_the_most_cpu_per_pvp() -> None:
    """Each node's rate is the PvPs settled per CPU second it spent; a node that spent none is
    left out (it did no work to project), and nothing settled projects nothing."""
    cpu = CpuMeter({})
    cpu.seconds = {"bridge": 2.0, "PBOC": 1.0, "HKMA": 0.5, "idle": 0.0}
    assert core_per_node(cpu, 1000) == {
        "node_core_pvp_per_s": {"HKMA": 2000.0, "PBOC": 1000.0, "bridge": 500.0},
        "core_per_node_pvp_per_s": 500.0,
        "core_per_node_bound_by": "bridge",
    }
    assert core_per_node(cpu, 0)["core_per_node_pvp_per_s"] == 0.0


def test_stream_tally_counts_settled_refused_and_other_answers() -> None:
    """A SETTLED receipt counts as settled, a refusal by reason, anything else as failed."""
    tally = StreamTally()
    settled = pb.BankSubmitResponse(correlation_id=1)
    settled.status.receipt.outcome = types.OUTCOME_SETTLED
    refused = pb.BankSubmitResponse(correlation_id=2)
    refused.refusal.reason = "INSUFFICIENT_FUNDS"
    held = pb.BankSubmitResponse(correlation_id=3)
    held.status.receipt.outcome = types.OUTCOME_HELD
    for response in (settled, refused, held):
        tally.add(response)
    assert (tally.settled, tally.refused, tally.failed) == (1, 1, 1)
    assert tally.reasons == {"INSUFFICIENT_FUNDS": 1}


def test_stream_tally_counts_each_result_of_a_batch_and_a_batch_refused_whole() -> None:
    """A batch's answer counts once per result; a batch refused whole counts each instruction."""
    tally = StreamTally()
    answer = pb.BankSubmitResponse(correlation_id=1)
    answer.results.add().status.receipt.outcome = types.OUTCOME_SETTLED
    answer.results.add().refusal.reason = "BAD_SIGNATURE"
    answer.results.add().refusal.reason = "OVERLOADED"
    tally.add_response(answer, 3)
    whole = pb.BankSubmitResponse(correlation_id=2)
    whole.refusal.reason = "FIELD_TOO_LONG"
    tally.add_response(whole, 4)
    assert (tally.settled, tally.refused, tally.not_decided) == (1, 5, 1)
    assert tally.reasons == {"BAD_SIGNATURE": 1, "OVERLOADED": 1, "FIELD_TOO_LONG": 4}


def test_frames_put_batch_instructions_per_message_and_one_alone_at_batch_1() -> None:
    """`frames`: `batch` instructions per request in order (the last shorter); 1: `instruction`."""
    signed = []
    for number in range(5):
        message = types.SignedInstruction()
        message.instruction.instruction_id = f"i-{number}"
        signed.append(message.SerializeToString())
    framed = [(pb.BankSubmitRequest.FromString(data), n) for data, n in frames(signed, 2)]
    assert [n for _, n in framed] == [2, 2, 1]
    assert [r.correlation_id for r, _ in framed] == [1, 2, 3]
    ids = [i.instruction.instruction_id for r, _ in framed for i in r.instructions]
    assert ids == [f"i-{number}" for number in range(5)]
    assert not any(r.HasField("instruction") for r, _ in framed)
    alone = [pb.BankSubmitRequest.FromString(data) for data, _ in frames(signed, 1)]
    assert [r.instruction.instruction.instruction_id for r in alone] == ids
    assert not any(r.instructions for r in alone)


def test_ledger_count_takes_only_the_runs_settled_entries(tmp_path: Path) -> None:
    """Entries count when SETTLED and their id starts with '<run id>.' (not a longer run id)."""
    db = tmp_path / "bridge.sqlite"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE entries (instruction_id TEXT, outcome TEXT)")
    connection.executemany(
        "INSERT INTO entries VALUES (?, ?)",
        [
            ("lt1.a.1", "SETTLED"),
            ("lt1.a.2.a", "SETTLED"),
            ("lt1.a.2", "HELD"),
            ("lt10.a.1", "SETTLED"),
            ("other", "SETTLED"),
        ],
    )
    connection.commit()
    connection.close()
    assert ledger_settled(db, "lt1") == 2


def test_weights_and_run_ids() -> None:
    """Task weights parse and refuse unknown kinds; run ids are valid instruction id prefixes."""
    assert parse_weights("pay=0,dual=4") == {"pay": 0, "pvp": 3, "dual": 4}
    with pytest.raises(ValueError, match="kind=integer"):
        parse_weights("swap=1")
    with pytest.raises(ValueError, match="positive"):
        parse_weights("pay=0,pvp=0,dual=0")
    run_id = new_run_id()
    assert run_id.isalnum()
    assert len(run_id) <= 16
    settings = LoadSettings.from_environment({"BRIDGE_NETWORK": "n", "LOADTEST_USER_RATE": "2"})
    assert settings.user_rate == 2.0
    assert str(settings.network) == "n"


def test_the_batch_option_agrees_with_the_stream_default_and_the_node_bound() -> None:
    """`--batch` of bench stream and bench postgres defaults to bench_stream.DEFAULT_BATCH and
    stops at the node's bound on a SubmitStream batch."""
    from bridge.bounds import FIELD_BOUNDS
    from loadtest.bench_cli import submit_batch_option
    from loadtest.bench_postgres import PostgresBenchSettings
    from loadtest.bench_stream import DEFAULT_BATCH, StreamSettings

    option = submit_batch_option()
    assert option.default == DEFAULT_BATCH == StreamSettings().batch
    assert PostgresBenchSettings().batch == DEFAULT_BATCH
    assert option.max == FIELD_BOUNDS["instructions"].max_length
