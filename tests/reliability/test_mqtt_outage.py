"""Notifications survive a broker outage and a publisher crash: at least once, never lost.

The broker keeps its sessions on disk here (Mosquitto persistence), so a persistent subscriber
gets what was published while it was reconnecting; what the test proves is the bridge's side:
settlement goes on without the broker, the outbox keeps every event, and they are published,
in order, once it returns; and a bridge killed between the broker's acknowledgement and the
outbox cursor's update publishes the same events (same seq, same instruction id) again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.node.publisher import HOLD_ENV
from bridge.notify import settlement_topic
from participants.launcher import Network, prepare_network
from participants.sdk import BankClient
from tests.conftest import READY_TIMEOUT, LiveNetwork, wait_for
from tests.mqtt_support import Collector, pay_resubmitting, require_mosquitto

BOCQ_TOPIC = settlement_topic("PBOC", "BOCQ")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A running network whose broker keeps its sessions across restarts."""
    require_mosquitto()
    directory = tmp_path_factory.mktemp("mqtt-outage")
    network = prepare_network(directory, central_banks=2)
    assert network.broker is not None
    network.broker.persistence = directory / "mqtt" / "sessions"
    network.broker.persistence.mkdir(parents=True)
    network.start()
    try:
        with BankClient.from_network(directory, "ICBC") as icbc:
            icbc.wait_ready(timeout=READY_TIMEOUT)
        with BankClient.from_network(directory, "BOCQ") as bocq:
            bocq.wait_ready(timeout=READY_TIMEOUT)
        yield network
    finally:
        network.stop()


@pytest.fixture
def bocq_collector(live: LiveNetwork, request: pytest.FixtureRequest) -> Iterator[Collector]:
    settings = live.config.mqtt_settings("BOCQ")
    assert settings is not None
    collector = Collector(settings, BOCQ_TOPIC, identifier=f"test-{request.node.name}"[:60])
    assert collector.subscribed.wait(30), "the collector could not subscribe"
    try:
        yield collector
    finally:
        collector.stop()


def delivered(collector: Collector, seqs: list[int], times: int = 1) -> bool:
    got = collector.seqs()
    return all(got.count(seq) >= times for seq in seqs)


def assert_same_ids(collector: Collector, ids: dict[int, str]) -> None:
    """Every message of a seq carries that entry's instruction id (duplicates included), and
    names an earlier seq as its topic's previous one."""
    for message in collector.snapshot():
        assert message["prev_seq"] < message["seq"], message
        if message["seq"] in ids:
            assert message["instruction_id"] == ids[message["seq"]], message


def test_broker_outage_loses_no_settlement(
    network: Network, live: LiveNetwork, bocq_collector: Collector
) -> None:
    """Broker stopped during a load: settlement goes on, and once it is back every settled
    entry reaches the subscriber, in order, duplicates carrying the same instruction id."""
    assert network.broker is not None
    live.issue("ICBC", 10**12)
    receipts = [live.pay("ICBC", "BOCQ", 1 + i).receipt for i in range(10)]
    wait_for(
        lambda: delivered(bocq_collector, [r.seq for r in receipts]),
        timeout=60,
        what="notifications before the outage",
    )
    network.broker.stop()
    during = [live.pay("ICBC", "BOCQ", 100 + i).receipt for i in range(30)]
    network.broker.start()
    receipts += during + [live.pay("ICBC", "BOCQ", 200 + i).receipt for i in range(10)]
    seqs = [r.seq for r in receipts]
    wait_for(lambda: delivered(bocq_collector, seqs), timeout=90, what="every notification")
    assert_same_ids(bocq_collector, {r.seq: r.instruction_id for r in receipts})
    firsts = list(dict.fromkeys(s for s in bocq_collector.seqs() if s in set(seqs)))
    assert firsts == sorted(seqs)
    reconnects = [
        json.loads(line)
        for line in (network.directory / "logs" / "bridge.log").read_text().splitlines()
        if '"mqtt connected"' in line
    ]
    assert max(r["backlog_blocks"] for r in reconnects) >= 1  # the backlog was visible


def test_publisher_killed_between_ack_and_mark_publishes_again(
    network: Network, live: LiveNetwork, bocq_collector: Collector, tmp_path: Path
) -> None:
    """SIGKILL of the bridge after the broker acknowledged a batch and before the outbox
    cursor moved: after restart the same events (same seq and id) are delivered again."""
    marker = tmp_path / "held.json"
    live.issue("ICBC", 10**9)  # before: the payment is the first block after the restart
    network.bridge.stop()
    os.environ[HOLD_ENV] = str(marker)
    try:
        network.restart_bridge()
    finally:
        del os.environ[HOLD_ENV]
    paid = pay_resubmitting(network, 42, "held")
    wait_for(marker.exists, timeout=60, what="the publisher to hold after an acknowledgement")
    held = json.loads(marker.read_text())
    wait_for(lambda: delivered(bocq_collector, [paid.seq]), timeout=60, what="the first delivery")
    assert paid.seq in held["seqs"]
    network.bridge.kill()
    network.restart_bridge()
    wait_for(
        lambda: delivered(bocq_collector, [paid.seq], times=2),
        timeout=60,
        what="the same event delivered again",
    )
    assert_same_ids(bocq_collector, {paid.seq: paid.instruction_id})
    later = pay_resubmitting(network, 43, "after")
    wait_for(lambda: delivered(bocq_collector, [later.seq]), timeout=60, what="a later event")
