"""The protocol fuzzer against a live network: 1,000 hypothesis-generated requests.

Every RPC of every node gets messages built from the descriptors, mutations of valid signed
requests and garbage, as raw bytes. Nothing may answer UNKNOWN or INTERNAL, no batch of
refusals may change state, every call is answered within its deadline, every node stays up
and SERVING, and no traceback is logged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.fuzz import fuzz_network

if TYPE_CHECKING:
    from participants.launcher import Network

REQUESTS = 1_000


def test_fuzzed_requests_are_answered_precisely_and_change_nothing(network: Network) -> None:
    """1,000 fuzzed requests: no UNKNOWN/INTERNAL, no state change after refusals, no hang."""
    nodes = {"bridge": network.bridge, **network.central_banks}

    def exited() -> list[str]:
        return [
            n
            for n, node in nodes.items()
            if node.process is None or node.process.poll() is not None
        ]

    figures = fuzz_network(network.config, requests=REQUESTS, seed=9, batch=25, alive=exited)
    summary = {k: v for k, v in figures.items() if k != "examples"} | {
        "examples": figures["examples"]
    }
    assert figures["requests"] == REQUESTS, summary
    assert figures["unknown_or_internal"] == 0, summary
    assert figures["state_changes_after_refusals"] == 0, summary
    assert figures["refusal_batches_checked"] > 0, summary
    assert figures["hangs"] == 0, summary
    assert figures["nodes_down_or_restarted"] == [], summary
    assert figures["tracebacks_logged"] == 0, summary
    assert figures["statuses"].get("INVALID_ARGUMENT", 0) > REQUESTS // 4, summary


def test_bench_fuzz_command_prints_the_figures(network: Network, tmp_path: Path) -> None:
    """`cbdc-bridge bench fuzz --network DIR --requests 100 --json`, run as a process from a
    temporary directory, prints the figures as JSON and exits 0 when every goal is met."""
    command = [sys.executable, "-m", "participants.cli", "bench", "fuzz", "--requests", "100"]
    command += ["--network", str(network.directory), "--json", "--seed", "3"]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    figures = json.loads(completed.stdout)
    assert figures["requests"] == 100
    assert sum(figures["statuses"].values()) + figures["streams_left_open"] == 100
    for goal in ("unknown_or_internal", "state_changes_after_refusals", "restarts_or_hangs"):
        assert figures[goal] == 0, figures
