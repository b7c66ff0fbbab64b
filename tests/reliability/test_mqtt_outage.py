"""Notifications survive a broker outage and a publisher crash: at least once, never lost.

The broker keeps its sessions on disk here (Mosquitto persistence), so a persistent subscriber
gets what was published while it was reconnecting; what the test proves is the bridge's side:
settlement goes on without the broker, the outbox keeps every event, and they are published,
in order, once it returns; and a bridge killed between the broker's acknowledgement and the
outbox cursor's update publishes the same events (same seq, same instruction id) again; one
killed after a block's commit, before its events reached the publisher, publishes them after
its restart.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from multiprocessing.pool import ThreadPool
from pathlib import Path

import pytest

from bridge.node.fault_hooks import CRASH_FILE
from bridge.node.publisher import HOLD_ENV
from bridge.notify import MqttSettings, settlement_topic
from participants.launcher import Network, prepare_network
from participants.sdk import BankClient, InstructionResult, SettlementEvent, SettlementSubscriber
from tests.conftest import READY_TIMEOUT, LiveNetwork, wait_for
from tests.mqtt_support import Collector, pay_resubmitting, require_mosquitto

BOCQ_TOPIC = settlement_topic("PBOC", "BOCQ")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A running network whose broker keeps its sessions across restarts."""
    require_mosquitto()
    directory = tmp_path_factory.mktemp("mqtt-outage")
    network = prepare_network(directory, central_banks=2, metrics=True)
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


class Payer:
    """ICBC paying BOCQ in a thread, one payment after another, until stopped (at most
    `cap` payments): a load that goes on while the broker stops and starts."""

    def __init__(self, directory: Path, name: str, cap: int = 1000) -> None:
        self.directory = directory
        self.name = name
        self.cap = cap
        self.settled: list[InstructionResult] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with BankClient.from_network(self.directory, "ICBC") as icbc:
                for i in range(self.cap):
                    if self._stop.is_set():
                        return
                    self.settled.append(icbc.pay("BOCQ", "CNY", 1 + i, f"{self.name}-{i}"))
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self) -> list[InstructionResult]:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), f"{self.name} did not stop"
        if self.error is not None:
            raise self.error
        return self.settled


class Follower:
    """BOCQ's SDK subscriber (gaps filled from BOCQ's gRPC stream) in a thread, from
    `from_seq` until an entry at or past `until` once that is set."""

    def __init__(self, directory: Path, settings: MqttSettings, from_seq: int) -> None:
        self.directory = directory
        self.settings = settings
        self.from_seq = from_seq
        self.events: list[SettlementEvent] = []
        self.until: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with BankClient.from_network(self.directory, "BOCQ") as bocq:
            for event in SettlementSubscriber(
                self.settings,
                central_bank="PBOC",
                bank="BOCQ",
                from_seq=self.from_seq,
                gaps=bocq.watch,
            ):
                self.events.append(event)
                if self.until and event.seq >= self.until[0]:
                    return

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the SDK subscriber stopped at {self.events[-1:]}"


def metric(network: Network, name: str) -> float:
    """One gauge of the bridge node's Prometheus endpoint, as an operator scrapes it."""
    url = f"http://127.0.0.1:{network.bridge.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith(f"cbdc_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"cbdc_{name} is not among the bridge's metrics")


def test_broker_outage_during_a_load_loses_no_settlement(
    network: Network, live: LiveNetwork, bocq_collector: Collector
) -> None:
    """Broker stopped and restarted while payments keep settling: the backlog shows as a
    metric and a log line, and once the broker is back every settled entry reaches the
    subscriber, in order, duplicates carrying the same instruction id; the SDK subscriber
    yields each exactly once, in order."""
    broker = network.broker
    assert broker is not None
    live.issue("ICBC", 10**12)
    start = live.issue("BOCQ", 1).receipt.seq + 1  # BOCQ's entries from here: the load's
    bocq = live.config.mqtt_settings("BOCQ")
    assert bocq is not None
    follower = Follower(network.directory, bocq, start)
    payers = [Payer(network.directory, f"load-{n}") for n in range(2)]

    def settled() -> int:
        return sum(len(p.settled) for p in payers)

    try:
        wait_for(lambda: settled() >= 10, timeout=60, what="payments before the outage")
        broker.stop()  # payments in flight, messages unacknowledged
        stopped_at = settled()
        wait_for(lambda: settled() >= stopped_at + 30, timeout=60, what="settlement, no broker")
        wait_for(
            lambda: (
                metric(network, "mqtt_connected") == 0
                and metric(network, "mqtt_backlog_blocks") >= 1
            ),
            timeout=60,
            what="the backlog as a metric while the broker is down",
        )
        broker.start()
        started_at = settled()
        wait_for(lambda: settled() >= started_at + 10, timeout=60, what="payments after it")
    finally:
        receipts = [r for payer in payers for r in payer.stop()]
    seqs = sorted(r.seq for r in receipts)
    wait_for(lambda: delivered(bocq_collector, seqs), timeout=120, what="every notification")
    assert_same_ids(bocq_collector, {r.seq: r.instruction_id for r in receipts})
    firsts = list(dict.fromkeys(s for s in bocq_collector.seqs() if s in set(seqs)))
    assert firsts == seqs
    reconnects = [
        json.loads(line)
        for line in (network.directory / "logs" / "bridge.log").read_text().splitlines()
        if '"mqtt connected"' in line
    ]
    assert max(r["backlog_blocks"] for r in reconnects) >= 1  # the backlog was logged
    # the SDK, reconnecting by itself, yields each entry once, in order, gaps filled
    follower.until.append(seqs[-1] + 1)
    closing = live.pay("ICBC", "BOCQ", 5).receipt
    follower.join(120)
    expected = [(r.seq, r.instruction_id) for r in sorted(receipts, key=lambda r: r.seq)]
    expected.append((closing.seq, closing.instruction_id))
    assert [(e.seq, e.instruction_id) for e in follower.events] == expected
    wait_for(
        lambda: (
            metric(network, "mqtt_connected") == 1 and metric(network, "mqtt_backlog_blocks") == 0
        ),
        timeout=60,
        what="the backlog metric back to 0",
    )


def restart_bridge_with(network: Network, name: str, value: str) -> None:
    """Stop the bridge and start it again with the test hook `name` set to `value` (in its
    environment only)."""
    network.bridge.stop()
    os.environ[name] = value
    try:
        network.restart_bridge()
    finally:
        del os.environ[name]


def test_publisher_killed_between_ack_and_mark_publishes_again(
    network: Network, live: LiveNetwork, bocq_collector: Collector, tmp_path: Path
) -> None:
    """SIGKILL of the bridge after the broker acknowledged a batch and before the outbox
    cursor moved: after restart the same events (same seq and id) are delivered again."""
    marker = tmp_path / "held.json"
    live.issue("ICBC", 10**9)  # before: the payment is the first block after the restart
    restart_bridge_with(network, HOLD_ENV, str(marker))
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


def test_bridge_killed_between_commit_and_publication_publishes_after_restart(
    network: Network, live: LiveNetwork, bocq_collector: Collector, tmp_path: Path
) -> None:
    """SIGKILL of the bridge right after a block's commit, before its events were handed to
    the publisher: the restarted bridge reads them from the outbox and publishes them."""
    crash_file = tmp_path / "crash"
    live.issue("ICBC", 10**9)
    restart_bridge_with(network, CRASH_FILE, str(crash_file))
    crash_file.write_text("after-commit 1", encoding="ascii")
    paying = ThreadPool(1)
    try:
        answer = paying.apply_async(pay_resubmitting, (network, 44, "crashed"))
        bridge = network.bridge.process
        assert bridge is not None
        wait_for(lambda: bridge.poll() is not None, timeout=60, what="the bridge to kill itself")
        assert not crash_file.exists()  # the crash point was reached
        network.bridge.kill()  # its pipes closed, as after any crash
        network.restart_bridge()
        paid = answer.get(timeout=READY_TIMEOUT + 60)
    finally:
        paying.close()
    wait_for(
        lambda: delivered(bocq_collector, [paid.seq]), timeout=60, what="the crashed block's event"
    )
    assert_same_ids(bocq_collector, {paid.seq: paid.instruction_id})
