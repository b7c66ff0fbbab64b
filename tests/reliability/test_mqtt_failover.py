"""Notifications when several bridge processes share a PostgreSQL database.

Only the leader publishes (it alone writes the outbox); when it is killed, the process that
takes the lead publishes from the stored cursor on: every settled payment reaches the
subscriber, those around the kill perhaps twice, with the same seq and instruction id.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.notify import settlement_topic
from participants.launcher import Network
from tests.conftest import LiveNetwork, start_network, wait_for
from tests.mqtt_support import Collector, pay_resubmitting, require_mosquitto
from tests.pg import PostgresServer


@pytest.fixture(scope="module")
def network(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """Two bridge processes on one database, two central banks, and the broker."""
    require_mosquitto()
    started = start_network(
        tmp_path_factory.mktemp("mqtt-failover"),
        bridge_store=postgres_server.create_database(),
        bridges=2,
    )
    try:
        assert started.broker is not None
        yield started
    finally:
        started.stop()


def test_the_next_leader_publishes_after_the_leader_is_killed(
    network: Network, live: LiveNetwork
) -> None:
    """Payments before and after a SIGKILL of the leading bridge all reach BOCQ's
    subscriber; every copy of a seq carries its instruction id."""
    settings = live.config.mqtt_settings("BOCQ")
    assert settings is not None
    collector = Collector(settings, settlement_topic("PBOC", "BOCQ"), identifier="failover")
    try:
        assert collector.subscribed.wait(30)
        live.issue("ICBC", 10**9)
        before = [pay_resubmitting(network, 10 + i, f"before-{i}") for i in range(5)]
        wait_for(
            lambda: {p.seq for p in before} <= set(collector.seqs()),
            timeout=60,
            what="the leader's notifications",
        )
        network.bridge.kill()  # the first process started leads
        after = [pay_resubmitting(network, 20 + i, f"after-{i}") for i in range(5)]
        wait_for(
            lambda: {p.seq for p in after} <= set(collector.seqs()),
            timeout=90,
            what="the next leader's notifications",
        )
        ids = {p.seq: p.instruction_id for p in before + after}
        for message in collector.snapshot():
            if message["seq"] in ids:
                assert message["instruction_id"] == ids[message["seq"]], message
    finally:
        collector.stop()
