"""The bridge goes away for a while and comes back: central bank nodes reconnect on their own.

The bridge process is stopped for several seconds while banks keep calling PBOC's node (which
answers UNAVAILABLE meanwhile), then restarted on the same store (a SQLite file, or a PostgreSQL
database) and port. PBOC's node must serve payments again soon after (a generous bound: this
checks that it reconnects, not how fast), and its log must show the outage once ("bridge
unreachable") and the return once ("bridge reachable again after N s"), not a line per retry.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import grpc
import pytest

from bridge._proto.bridge.v1 import types_pb2 as types
from tests.conftest import network_on_each_store, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from participants.launcher import Network
    from tests.conftest import LiveNetwork

OUTAGE_SECONDS = 6.0
BACK_WITHIN_SECONDS = 10.0  # generous: correctness of reconnection, not its speed


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network with its one bridge process on each store."""
    yield from network_on_each_store(request, tmp_path_factory)


def log_lines(path: Path, message_start: str) -> list[dict[str, object]]:
    """The JSON log records of one node whose message starts with `message_start`."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("msg", "")).startswith(message_start):
            records.append(record)
    return records


def test_central_bank_node_serves_again_after_a_bridge_outage_and_logs_it_once(
    live: LiveNetwork,
) -> None:
    """Bridge down for seconds, then back: PBOC settles again and logs the outage once."""
    live.issue("ICBC", 1_000_000)
    live.pay("ICBC", "BOCQ", 100)
    log = live.directory / "logs" / "PBOC.log"
    assert not log_lines(log, "bridge unreachable")

    live.network.bridge.stop()
    deadline = time.monotonic() + OUTAGE_SECONDS
    codes = set()
    while time.monotonic() < deadline:  # banks keep trying meanwhile
        try:
            live.pay("ICBC", "BOCQ", 1)
        except grpc.RpcError as error:
            codes.add(error.code())
        time.sleep(0.2)
    assert codes == {grpc.StatusCode.UNAVAILABLE}
    live.network.restart_bridge()
    restarted = time.monotonic()

    def settles() -> bool:
        try:
            status = live.pay("ICBC", "BOCQ", 2)
        except grpc.RpcError:
            return False
        return status.receipt.outcome == types.OUTCOME_SETTLED

    wait_for(settles, timeout=BACK_WITHIN_SECONDS, what="PBOC to settle through the bridge again")
    assert time.monotonic() - restarted < BACK_WITHIN_SECONDS
    live.wait_all_final()  # every node's replica follows and attests again

    def logged_return() -> list[dict[str, object]]:
        return log_lines(log, "bridge reachable again after")

    wait_for(logged_return, timeout=BACK_WITHIN_SECONDS, what="PBOC to log the bridge's return")
    assert len(log_lines(log, "bridge unreachable")) == 1
    assert len(logged_return()) == 1
    assert not (lines := log_lines(log, "bridge stream broke")), lines
    assert not (lines := log_lines(log, "attestation not accepted")), lines
    assert not (lines := log_lines(log, "waiting for the bridge")), lines
    errors = [r for r in log_lines(log, "") if r.get("level") == "error"]
    assert not errors, errors
