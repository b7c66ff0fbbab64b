"""`cbdc-bridge bench replay`: one JSON object of per-entry figures (no timing checks)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from bridge.domain import DualPvp, Entry
from loadtest import bench_replay
from loadtest.bench_cli import bench_app


def invoke(*args: str) -> tuple[int, str]:
    """Run `cbdc-bridge bench ARGS` with the bench group mounted as the main CLI mounts it."""
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.output


def test_replay_bench_prints_one_json_object_of_positive_figures() -> None:
    """`bench replay --json` with a tiny log prints every figure per check level, positive,
    with each ratio the replay's figure over the baseline's."""
    exit_code, output = invoke("replay", "--pvps", "30", "--block", "8", "--rounds", "1", "--json")
    assert exit_code == 0, output
    figures = json.loads(output)
    assert (figures["pvps"], figures["entries"], figures["blocks"]) == (30, 30, 4)
    assert set(figures["replay_us_per_entry"]) == {"none", "endorsements"}
    assert figures["baseline_us_per_entry"] > 0
    for check, us in figures["replay_us_per_entry"].items():
        assert us > 0, check
        expected = us / figures["baseline_us_per_entry"]
        assert abs(figures["ratio"][check] - expected) <= 0.01 * expected + 0.01, check


def test_replay_log_holds_batch_endorsed_dual_pvps_in_linked_blocks() -> None:
    """The generated log: a setup block, then blocks of dual PvPs whose legs each central
    bank endorsed in one batch per block, every block linked to the one before."""
    log = bench_replay.build_log(pvps=12, block=5)
    assert [h.entry_count for h, _ in log.blocks[1:]] == [5, 5, 2]
    prev = log.genesis.hash()
    for header, _ in log.blocks:
        assert header.prev_hash == prev
        prev = header.hash()
    entries = [Entry.from_canonical_bytes(d) for d in log.blocks[1][1]]
    assert all(isinstance(e.envelope.body, DualPvp) for e in entries)
    sizes = {s.size for e in entries for s in e.envelope.signatures if s.endorses}
    assert max(sizes) > 1  # legs share a batch root


def test_replay_bench_with_a_checkpoint_replays_as_a_node_does() -> None:
    """`bench replay --checkpoint` replays the same log keeping a checkpoint file (the
    replica's look-ups go to it) and prints its figures marked so."""
    exit_code, output = invoke(
        "replay", "--pvps", "20", "--block", "5", "--rounds", "1", "--checkpoint",
        "--replica-check", "endorsements", "--json",
    )  # fmt: skip
    assert exit_code == 0, output
    figures = json.loads(output)
    assert figures["checkpoint"] is True
    assert set(figures["replay_us_per_entry"]) == {"endorsements"}
    assert figures["replay_us_per_entry"]["endorsements"] > 0


def test_replay_bench_takes_the_block_size_as_entries_per_block() -> None:
    """`--entries-per-block 4` seals the log in blocks of 4 entries (the bench e2e shape)."""
    exit_code, output = invoke(
        "replay", "--pvps", "10", "--entries-per-block", "4", "--rounds", "1",
        "--replica-check", "none", "--json",
    )  # fmt: skip
    assert exit_code == 0, output
    figures = json.loads(output)
    assert (figures["block_entries"], figures["blocks"], figures["entries"]) == (4, 3, 10)


def test_replay_bench_with_known_bodies_takes_that_share_from_the_edge() -> None:
    """`bench replay --known 0.5`: half the PvPs are decoded at the edge before their block,
    and the replica takes exactly those bodies (the others are decoded in full)."""
    exit_code, output = invoke(
        "replay", "--pvps", "10", "--block", "4", "--rounds", "1", "--known", "0.5",
        "--replica-check", "none", "--json",
    )  # fmt: skip
    assert exit_code == 0, output
    assert json.loads(output)["known"] == 0.5
    log = bench_replay.build_log(pvps=10, block=4)
    assert [len(block) for block in bench_replay._edge_messages(log, 0.5)] == [2, 2, 1]
    assert sum(len(block) for block in bench_replay._edge_messages(log, 1.0)) == 10
