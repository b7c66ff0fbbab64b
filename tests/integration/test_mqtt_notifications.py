"""Settlement notifications through a real Mosquitto started with the network.

Settled entries reach the SDK subscriber and `mosquitto_sub` (Mosquitto's own client) exactly
once each, in sequence order; the SDK fills what it missed from the gRPC stream; the finality
topic follows attestations; `bank watch --mqtt` prints notifications; and the generated ACL
keeps each bank to its own topics.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.notify import FINAL_TOPIC, MqttSettings, settlement_topic
from participants.launcher import Network
from participants.network_config import NetworkConfig
from participants.sdk import (
    AsyncBankClient,
    AsyncSettlementSubscriber,
    BankClient,
    SettlementEvent,
    SettlementSubscriber,
)
from tests.conftest import LiveNetwork, start_network
from tests.mqtt_support import MosquittoSub, require_mosquitto

PAYMENTS = 20
ICBC_TOPIC = settlement_topic("PBOC", "ICBC")
HSBCHK_TOPIC = settlement_topic("HKMA", "HSBCHK")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A running network with its Mosquitto broker."""
    require_mosquitto()
    network = start_network(tmp_path_factory.mktemp("mqtt-network"))
    try:
        assert network.broker is not None
        yield network
    finally:
        network.stop()


def mqtt_of(live: LiveNetwork, user: str) -> MqttSettings:
    settings = live.config.mqtt_settings(user)
    assert settings is not None
    return settings


def collect(
    subscriber: SettlementSubscriber, count: int = 0, last: list[int] | None = None
) -> tuple[list[SettlementEvent], threading.Thread]:
    """Events in a thread until `count` of them, or one whose seq is in `last` (set later)."""
    events: list[SettlementEvent] = []

    def run() -> None:
        for event in subscriber:
            events.append(event)
            if len(events) == count or (last and event.seq in last):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return events, thread


def test_every_settlement_reaches_the_sdk_and_mosquitto_sub_once_in_order(
    live: LiveNetwork,
) -> None:
    """N settled payments among three banks: for each bank, the SDK subscriber and
    mosquitto_sub (with that bank's credentials) receive exactly the bank's events, in sequence
    order, with their instruction ids, and nothing else before a closing payment."""
    homes = {"ICBC": "PBOC", "BOCQ": "PBOC", "HSBCHK": "HKMA"}
    pairs = [("ICBC", "HSBCHK"), ("ICBC", "BOCQ"), ("BOCQ", "HSBCHK")]
    issued = {bank: live.issue(bank, 10**12).receipt.seq for bank in homes}
    subs: dict[str, MosquittoSub] = {}
    clients: dict[str, BankClient] = {}
    collected: dict[str, tuple[list[SettlementEvent], threading.Thread]] = {}
    paying = [pairs[i % len(pairs)] for i in range(PAYMENTS)]
    counts = {bank: sum(bank in pair for pair in paying) for bank in homes}
    expected: dict[str, list[tuple[int, str]]] = {bank: [] for bank in homes}
    settled: list[tuple[int, str]] = []
    try:
        for bank, home in homes.items():
            settings = mqtt_of(live, bank)
            subs[bank] = MosquittoSub(settings, settlement_topic(home, bank))
            # retained or live, the issuance arrives: mosquitto_sub is subscribed from here on
            wait_seq(subs[bank], issued[bank])
            clients[bank] = BankClient.from_network(live.directory, bank)
            subscriber = SettlementSubscriber(
                settings,
                central_bank=home,
                bank=bank,
                from_seq=issued[bank] + 1,
                gaps=clients[bank].watch,
            )
            collected[bank] = collect(subscriber, counts[bank])
        for i, (payer, payee) in enumerate(paying):
            status = live.pay(payer, payee, 100 + i, reference=f"INV-{i}")
            receipt = (status.receipt.seq, status.receipt.instruction_id)
            settled.append(receipt)
            expected[payer].append(receipt)
            expected[payee].append(receipt)
        # one more entry per bank: the next line each mosquitto_sub prints must be it, so it
        # printed nothing else (no duplicate, no foreign entry) after the N
        closing = {bank: live.issue(bank, 1).receipt.seq for bank in homes}
        for bank, sub in subs.items():
            from_sub = [sub.event() for _ in expected[bank]]
            assert [(e["seq"], e["instruction_id"]) for e in from_sub] == expected[bank], bank
            assert sub.event()["seq"] == closing[bank], bank
        for bank, (events, thread) in collected.items():
            thread.join(60)
            assert [(e.seq, e.instruction_id) for e in events] == expected[bank], bank
            assert all(e.outcome == "SETTLED" and e.kind == "pay" for e in events)
            assert [e.prev_seq for e in events[1:]] == [seq for seq, _ in expected[bank][:-1]]
    finally:
        for sub in subs.values():
            sub.stop()
        for client in clients.values():
            client.close()
    assert sorted(settled) == settled  # the sequence order the subscribers were held to


def test_subscriber_fills_what_it_missed_from_the_grpc_stream(live: LiveNetwork) -> None:
    """Resuming from seq 1, the SDK subscriber yields the bank's whole history once, in order:
    the past from the gRPC stream, then live notifications."""
    live.issue("BOCQ", 10**9)  # BOCQ has a past, whatever ran before
    issued = live.issue("BOCQ", 10**9)
    live.issue("ICBC", 10**9)
    # the issuance is the topic's retained message before the subscriber connects, so what
    # came before it is the past (gRPC) and only the issuance and the payment come by MQTT
    retained = MosquittoSub(mqtt_of(live, "BOCQ"), settlement_topic("PBOC", "BOCQ"))
    wait_seq(retained, issued.receipt.seq)
    retained.stop()
    last: list[int] = []
    with BankClient.from_network(live.directory, "BOCQ") as client:
        subscriber = SettlementSubscriber(
            mqtt_of(live, "BOCQ"), central_bank="PBOC", bank="BOCQ", from_seq=1, gaps=client.watch
        )
        events, thread = collect(subscriber, last=last)
        paid = live.pay("ICBC", "BOCQ", 7, reference="after-resume")
        last.append(paid.receipt.seq)
        thread.join(60)
        # read after: PBOC's replica has replayed everything up to the payment by now
        history = [e.seq for e in client.history(1, limit=500) if e.seq <= paid.receipt.seq]
    assert [e.seq for e in events] == history
    assert history[-1] == paid.receipt.seq
    sources = [e.source for e in events]
    # the past from gRPC; from the topic's latest (retained) message on, MQTT
    assert sources[0] == "grpc"
    assert sources == sorted(sources, key=lambda source: source == "mqtt")
    assert subscriber.stats["filled"] == sources.count("grpc") >= len(history) - 2


async def test_async_subscriber_follows_payments_as_they_settle(live: LiveNetwork) -> None:
    """The asyncio subscriber, resuming at the next seq with AsyncBankClient.watch for gaps,
    yields exactly the payments ICBC makes, in order."""
    live.issue("ICBC", 10**9)
    async with AsyncBankClient.from_network(live.directory, "ICBC") as icbc:
        start = (await icbc.history(1, limit=500))[-1].seq + 1
        subscriber = AsyncSettlementSubscriber(
            mqtt_of(live, "ICBC"), central_bank="PBOC", bank="ICBC", from_seq=start,
            gaps=icbc.watch,
        )  # fmt: skip
        paid = [await icbc.pay("BOCQ", "CNY", 30 + i, f"ASYNC-{i}") for i in range(3)]
        events = []
        async with asyncio.timeout(60):
            async for event in subscriber:
                events.append(event)
                if len(events) == len(paid):
                    break
    assert [(e.seq, e.instruction_id) for e in events] == [(p.seq, p.instruction_id) for p in paid]
    assert [e.reference for e in events] == ["ASYNC-0", "ASYNC-1", "ASYNC-2"]


def test_finality_topic_reaches_the_height_of_a_settlement(live: LiveNetwork) -> None:
    """The retained blocks/final message rises to the block of a settled payment once it is
    final."""
    status = live.pay("ICBC", "BOCQ", 11)
    live.wait_all_final()
    sub = MosquittoSub(mqtt_of(live, "BOCQ"), FINAL_TOPIC)
    try:
        while (final := sub.event())["final_height"] < status.block_height:
            pass
    finally:
        sub.stop()
    assert final["head_height"] >= final["final_height"] >= status.block_height


def test_bank_watch_mqtt_prints_notifications(live: LiveNetwork, tmp_path: Path) -> None:
    """`cbdc-bridge bank watch --mqtt`, run from another directory, prints the bank's entries
    from a sequence number on (the past filled from gRPC) and stops after --count."""
    live.issue("HSBCHK", 10**9)
    first = live.pay("HSBCHK", "BOCHK", 5, currency="HKD", reference="watch-1")
    second = live.pay("HSBCHK", "BOCHK", 6, currency="HKD", reference="watch-2")
    run = subprocess.run(
        [
            *(sys.executable, "-m", "participants.cli", "bank", "watch", "--mqtt"),
            *("--from-seq", str(first.receipt.seq), "--count", "2"),
            *("--network", str(live.directory.resolve()), "--bank", "HSBCHK"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            **{"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == [first.receipt.seq, second.receipt.seq]
    assert "watch-1" in lines[0]
    assert "watch-2" in lines[1]
    assert "over MQTT" in run.stderr


def test_a_bank_cannot_read_another_banks_topics(live: LiveNetwork) -> None:
    """ICBC's credentials, subscribed to HSBCHK's topic and to every topic, receive only ICBC's
    own notifications; HSBCHK's subscriber receives its own; HKMA, subscribed to every topic,
    receives its banks' and none of PBOC's banks'; a message ICBC publishes on its own topic
    reaches nobody."""
    live.issue("HSBCHK", 10**9)
    live.issue("ICBC", 10**9)
    ready = live.pay("ICBC", "BOCQ", 1)
    hkma_ready = live.pay("HSBCHK", "BOCHK", 1, currency="HKD")
    icbc_settings = mqtt_of(live, "ICBC")
    icbc = MosquittoSub(icbc_settings, HSBCHK_TOPIC, "cbdc-bridge/v1/#")
    hsbchk = MosquittoSub(mqtt_of(live, "HSBCHK"), HSBCHK_TOPIC)
    hkma = MosquittoSub(mqtt_of(live, "HKMA"), "cbdc-bridge/v1/#")
    try:
        seen = [wait_seq(icbc, ready.receipt.seq)]  # retained or live: ICBC is subscribed
        # retained or live: HKMA is subscribed (any retained message of PBOC's banks is kept)
        hkma_seen: list[dict[str, Any]] = []
        hkma_seen.append(wait_seq(hkma, hkma_ready.receipt.seq, seen=hkma_seen))
        forged = {"v": 1, "seq": 10**9, "instruction_id": "forged", "prev_seq": 0}
        subprocess.run(
            [
                *("mosquitto_pub", "-h", icbc_settings.host, "-p", str(icbc_settings.port)),
                *("-u", "ICBC", "-P", str(icbc_settings.password), "-q", "1"),
                *("-t", ICBC_TOPIC, "-m", json.dumps(forged)),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        foreign = live.pay("HSBCHK", "BOCHK", 2, currency="HKD")
        own = live.pay("ICBC", "BOCQ", 3)
        closing = live.pay("HSBCHK", "BOCHK", 4, currency="HKD")
        assert wait_seq(hsbchk, foreign.receipt.seq)["instruction_id"] == (
            foreign.receipt.instruction_id
        )
        # had HKMA been allowed to read PBOC's topics, `own` would come before `closing`
        hkma_seen.append(wait_seq(hkma, foreign.receipt.seq, seen=hkma_seen))
        hkma_seen.append(wait_seq(hkma, closing.receipt.seq, seen=hkma_seen))
        assert foreign.receipt.seq in [event["seq"] for event in hkma_seen]
        hkma_banks = {"HKMA", "HSBCHK", "BOCHK"}
        assert all(set(event["parties"]) <= hkma_banks for event in hkma_seen), hkma_seen
        # had ICBC been allowed to read HSBCHK's topic, `foreign` would come before `own`;
        # had its own message been delivered, seq 10**9 would come before `own`
        seen.append(wait_seq(icbc, own.receipt.seq, seen=seen))
        assert all("ICBC" in event["parties"] for event in seen), seen
    finally:
        for sub in (icbc, hsbchk, hkma):
            sub.stop()


def wait_seq(
    sub: MosquittoSub, seq: int, seen: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Read settlement messages (recording them in `seen`) up to the one with `seq`."""
    while True:
        event = sub.event()
        if "seq" not in event:
            continue  # a blocks/final message
        if event["seq"] >= seq:
            assert event["seq"] == seq, f"expected seq {seq}, got {event}"
            return event
        if seen is not None:
            seen.append(event)


def test_wrong_or_foreign_credentials_are_refused(live: LiveNetwork) -> None:
    """A wrong password, or one bank's password under another's name, cannot connect."""
    icbc = mqtt_of(live, "ICBC")
    hsbchk = mqtt_of(live, "HSBCHK")
    for username, password in (("ICBC", "wrong"), ("ICBC", hsbchk.password)):
        run = subprocess.run(
            [
                *("mosquitto_sub", "-h", icbc.host, "-p", str(icbc.port), "-u", username),
                *("-P", str(password), "-t", ICBC_TOPIC, "-C", "1", "-W", "10"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode != 0
        assert "not authorised" in (run.stdout + run.stderr).lower()


def test_up_starts_a_broker_that_carries_a_banks_notifications(tmp_path: Path) -> None:
    """`cbdc-bridge up`, run from another directory, starts Mosquitto beside the nodes and
    lists it; an issuance made with `bank issue-request` reaches mosquitto_sub with the bank's
    credentials; SIGTERM stops the broker with the nodes."""
    require_mosquitto()
    env = {
        **os.environ,
        **{"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"},
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cli = [sys.executable, "-m", "participants.cli"]
    up = subprocess.Popen(
        [*cli, "up", "--network", "net", "--central-banks", "1", "--banks", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            printed.append(line)
            if "network is up" in line:
                break
        assert "network is up" in "".join(printed), "".join(printed)
        config = NetworkConfig.load(tmp_path / "net")
        assert config.mqtt_port
        assert any(
            "mqtt broker" in line and f"127.0.0.1:{config.mqtt_port}" in line for line in printed
        ), "".join(printed)
        cb = config.central_banks[0]
        bank = cb.banks[0].id
        issued = subprocess.run(
            [*cli, "bank", "issue-request", "25", "--network", "net", "--bank", bank],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert issued.returncode == 0, issued.stdout + issued.stderr
        settings = config.mqtt_settings(bank)
        assert settings is not None
        sub = MosquittoSub(settings, settlement_topic(cb.id, bank))
        try:
            # retained or live: the bank's admission may come first
            while (event := sub.event(timeout=60))["kind"] != "issue":
                pass
        finally:
            sub.stop()
        assert event["outcome"] == "ISSUED"
        assert event["legs"] == [[cb.id, bank, cb.currency, 25 * 10**cb.exponent]]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert up.returncode == 0
    with pytest.raises(ConnectionRefusedError):  # the broker stopped with the network
        socket.create_connection(("127.0.0.1", config.mqtt_port), timeout=5).close()
