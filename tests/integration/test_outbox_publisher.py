"""The outbox publisher against a real Mosquitto started on a free port for the test.

A settlement engine writes blocks (holds, settlements, expiries) to a SQLite store; the
publisher drains its outbox to the broker; a subscriber with a bank's credentials receives
each of the bank's entries once, in order, chained by `prev_seq`; the cursor moves to the
last row; a new publisher on the same store resumes after it, keeping the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge.crypto import FastVerifier
from bridge.domain import BRIDGE_SENDER, ProposePvp, Receipt
from bridge.errors import StoreError
from bridge.log.blocks import Attestation
from bridge.node import publisher as publisher_module
from bridge.node.feed import ChainFeed
from bridge.node.publisher import CONSUMER, OutboxPublisher
from bridge.notify import (
    BRIDGE_USER,
    FINAL_TOPIC,
    MqttSettings,
    settlement_topic,
    write_broker_files,
)
from bridge.settlement import SettlementEngine
from bridge.store.sqlite import SqliteStore
from participants.broker import Broker
from participants.launcher import free_ports
from tests.factories import (
    BANKS,
    CENTRAL_BANKS,
    T0,
    Network,
    accept_pvp,
    admit_bank,
    issue,
    network,
    pay,
    propose_pvp,
)
from tests.mqtt_support import Collector, require_mosquitto

HOUR = 3_600_000
PASSWORDS = {BRIDGE_USER: "bridge-pw", "ICBC": "icbc-pw", "PBOC": "pboc-pw"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto on a free loopback port with a generated configuration, stopped after."""
    require_mosquitto()
    banks = {cb: [bank for bank, home in BANKS if home == cb] for cb, *_ in CENTRAL_BANKS}
    write_broker_files(tmp_path / "mqtt", PASSWORDS, banks)
    broker = Broker(tmp_path / "mqtt", free_ports(1)[0]).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture(params=["own-packets", "paho", "public-api"])
def publish_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The publisher's three ways of publishing: PUBLISH packets it packs itself queued on
    aiomqtt 2's paho client (their PUBACKs taken before paho decodes them), batches handed to
    that client's `publish`, and aiomqtt's public `publish` (each taken when the internals
    the one before needs are not there)."""
    if request.param != "own-packets":
        monkeypatch.setattr(publisher_module, "_own_acknowledgements", lambda client: None)
    if request.param == "public-api":
        monkeypatch.setattr(publisher_module, "_paho_of", lambda client: None)
    return str(request.param)


def settings(broker: Broker, user: str) -> MqttSettings:
    return MqttSettings("127.0.0.1", broker.port, user, PASSWORDS[user])


def settle(engine: SettlementEngine, batch: list[Any], now: int) -> list[Receipt]:
    results = engine.settle(batch, now).results
    assert all(isinstance(r, Receipt) for r in results), results
    return [r for r in results if isinstance(r, Receipt)]


async def receive(
    broker: Broker, topic: str, count: int, subscribed: asyncio.Event
) -> list[dict[str, Any]]:
    """`count` messages of `topic` as ICBC sees them; `subscribed` is set once the broker has
    acknowledged the subscription."""
    s = settings(broker, "ICBC")
    got: list[dict[str, Any]] = []
    async with aiomqtt.Client(s.host, s.port, username=s.username, password=s.password) as c:
        await c.subscribe(topic, qos=1)
        subscribed.set()
        async with asyncio.timeout(30):
            async for message in c.messages:
                assert isinstance(message.payload, bytes)
                got.append(json.loads(message.payload))
                if len(got) == count:
                    break
    return got


def publisher(broker: Broker, db: Path, marks: SqliteStore) -> OutboxPublisher:
    return OutboxPublisher(
        settings(broker, BRIDGE_USER),
        reader=SqliteStore(db),
        mark=lambda upto: marks.set_outbox_cursor(CONSUMER, upto),
    )


async def test_publisher_delivers_holds_settlements_and_expiries_in_order(
    broker: Broker, net: Network, tmp_path: Path, publish_path: str
) -> None:
    """ICBC receives its hold, settlement, payment and expiry once each, in seq order, each
    message naming the previous seq of its topic; the cursor reaches the last outbox row, and
    a restarted publisher resumes after it with the chain intact."""
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    settle(engine, [issue(net, cb, bank, 10**6) for bank, cb in BANKS], T0)
    proposal = propose_pvp(net, "ICBC", "BOCHK", 1_000, 1_080)
    assert isinstance(proposal.body, ProposePvp)
    expiring = propose_pvp(net, "ICBC", "BOCHK", 500, 540, settle_by=T0 + HOUR // 2)
    mine = settle(engine, [proposal, expiring], T0 + 1)
    mine += settle(engine, [accept_pvp(net, proposal.body)], T0 + 2)
    mine += settle(engine, [pay(net, "ICBC", "CCB", 7)], T0 + 3)
    engine.settle([], T0 + HOUR)  # the second proposal expires
    topic = settlement_topic("PBOC", "ICBC")
    marks = SqliteStore(db)
    first = publisher(broker, db, marks)
    subscribed = asyncio.Event()
    listening = asyncio.create_task(receive(broker, topic, 6, subscribed))
    await subscribed.wait()
    first.start()
    got = await listening
    # marked published once the broker acknowledged the whole batch
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
    await first.stop()
    assert got[0]["kind"] == "issue"
    assert [(m["kind"], m["outcome"]) for m in got[1:]] == [
        ("pvp_propose", "HELD"),
        ("pvp_propose", "HELD"),
        ("pvp_accept", "SETTLED"),
        ("pay", "SETTLED"),
        ("pvp_expire", "EXPIRED"),
    ]
    assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
    assert [m["prev_seq"] for m in got[1:]] == [m["seq"] for m in got[:-1]]
    assert [m["instruction_id"] for m in got[1:5]] == [r.instruction_id for r in mine]

    later = settle(engine, [pay(net, "ICBC", "CCB", 8)], T0 + HOUR + 1)[0]
    second = publisher(broker, db, marks)
    second.start()
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
    await second.stop()
    # the topic's retained message is now the new payment, chained to the expiry
    (retained,) = await receive(broker, topic, 1, asyncio.Event())
    assert retained["seq"] == later.seq
    assert retained["instruction_id"] == later.instruction_id
    assert retained["prev_seq"] == got[-1]["seq"]
    for opened in (store, marks, first.reader, second.reader):
        opened.close()


async def test_cursor_writes_failing_are_logged_once_with_their_cause(
    broker: Broker,
    net: Network,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While its cursor cannot be stored (the store refuses writes), the publisher goes on
    publishing block after block and logs one ERROR line naming the cause, without traceback;
    once writes work again, one line on recovery, and the stored cursor catches up."""
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, "PBOC", "ICBC")], T0)
    marks = SqliteStore(db)
    marks._db.execute("PRAGMA query_only = ON")  # every cursor write refused by SQLite itself
    # a cursor write for every acknowledged block (they are coalesced to one per interval)
    monkeypatch.setattr(publisher_module, "MARK_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, logger="bridge")
    running = publisher(broker, db, marks)
    running.start()
    for number in range(3):  # three blocks, each published and its cursor write failing
        settle(engine, [issue(net, "PBOC", "ICBC", 10 + number)], T0 + 1 + number)
        running.block_committed()
        last = store.outbox_last_id()
        await wait_until(lambda: running._acked == last)  # noqa: B023 - awaited at once
        marking = running._marking
        assert marking is not None
        await asyncio.wait([marking])
        assert marking.exception() is not None
    assert store.outbox_cursor(CONSUMER) == 0
    marks._db.execute("PRAGMA query_only = OFF")
    settle(engine, [issue(net, "PBOC", "ICBC", 99)], T0 + 10)
    running.block_committed()
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
    await running.stop()
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    assert problems[0].levelno == logging.ERROR
    assert "attempt to write a readonly database" in problems[0].getMessage()
    assert problems[0].exc_info is None, "an expected store failure is logged without traceback"
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert "after 3 failures" in recovered[0]
    for opened in (store, marks, running.reader):
        opened.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


class FailingOnce(SqliteStore):
    """A store whose first cursor read(s) and first outbox read(s) fail, as a database does
    while it restarts."""

    def __init__(self, path: Path, cursor_failures: int = 1, outbox_failures: int = 1) -> None:
        super().__init__(path)
        self.failures = {"outbox_cursor": cursor_failures, "outbox_after": outbox_failures}

    def _fail_once(self, name: str) -> None:
        if self.failures[name]:
            self.failures[name] -= 1
            raise StoreError(f"{name}: the database is restarting")

    def outbox_cursor(self, consumer: str) -> int:
        self._fail_once("outbox_cursor")
        return super().outbox_cursor(consumer)

    def outbox_after(self, last_id: int, limit: int = 500) -> list[tuple[int, bytes]]:
        self._fail_once("outbox_after")
        return super().outbox_after(last_id, limit)


async def test_publisher_outlives_a_store_that_cannot_be_read(
    broker: Broker, net: Network, tmp_path: Path
) -> None:
    """The outbox cannot be read at the publisher's start, then once more: the publisher
    retries instead of ending, and the bank receives its entries and the cursor reaches the
    last outbox row."""
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    settle(engine, [issue(net, cb, bank, 10**6) for bank, cb in BANKS], T0)
    paid = settle(engine, [pay(net, "ICBC", "CCB", 7)], T0 + 1)[0]
    marks = SqliteStore(db)
    reader = FailingOnce(db)
    failing = OutboxPublisher(
        settings(broker, BRIDGE_USER),
        reader=reader,
        mark=lambda upto: marks.set_outbox_cursor(CONSUMER, upto),
    )
    subscribed = asyncio.Event()
    listening = asyncio.create_task(
        receive(broker, settlement_topic("PBOC", "ICBC"), 2, subscribed)
    )
    await subscribed.wait()
    failing.start()
    got = await listening
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
    await failing.stop()
    assert reader.failures == {"outbox_cursor": 0, "outbox_after": 0}
    assert [m["kind"] for m in got] == ["issue", "pay"]
    assert (got[1]["seq"], got[1]["instruction_id"]) == (paid.seq, paid.instruction_id)
    for opened in (store, marks, reader):
        opened.close()


async def test_an_outbox_that_cannot_be_read_is_logged_once_per_episode(
    broker: Broker, net: Network, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three failed reads of the outbox in a row give one ERROR line with the store's cause and
    no traceback, then one line when reading works again, not an ERROR with a traceback for
    every retry."""
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    marks = SqliteStore(db)
    reader = FailingOnce(db, cursor_failures=3, outbox_failures=0)
    failing = OutboxPublisher(
        settings(broker, BRIDGE_USER),
        reader=reader,
        mark=lambda upto: marks.set_outbox_cursor(CONSUMER, upto),
    )
    with caplog.at_level(logging.INFO, logger=publisher_module.log.name):
        failing.start()
        await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
        await failing.stop()
    reads = [r for r in caplog.records if r.getMessage().startswith("outbox reads")]
    assert reader.failures["outbox_cursor"] == 0
    errors = [r for r in reads if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in reads]
    assert "the database is restarting" in errors[0].getMessage()
    assert errors[0].exc_info is None
    recovered = [r.getMessage() for r in reads if r.levelno == logging.INFO]
    assert len(recovered) == 1, recovered
    assert "recovered after 3 failures" in recovered[0]
    for opened in (store, marks, reader):
        opened.close()


async def test_cursor_writes_are_coalesced_and_the_last_lands_at_stop(
    broker: Broker, net: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks published one by one move the stored cursor once per MARK_INTERVAL, not once per
    block (each is a write on the ledger's writer thread), and stopping stores the last
    acknowledged row."""
    monkeypatch.setattr(publisher_module, "MARK_INTERVAL", 3600.0)
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    settle(engine, [issue(net, cb, bank, 10**6) for bank, cb in BANKS], T0)
    marks = SqliteStore(db)
    marked: list[int] = []

    def mark(upto: int) -> None:
        marked.append(upto)
        marks.set_outbox_cursor(CONSUMER, upto)

    watcher = OutboxPublisher(settings(broker, BRIDGE_USER), reader=SqliteStore(db), mark=mark)
    watcher.start()
    await wait_until(lambda: watcher.stats.published_blocks == store.outbox_last_id())
    for amount in range(1, 6):
        settle(engine, [pay(net, "ICBC", "CCB", amount)], T0 + amount)
        watcher.block_committed()
        await wait_until(lambda: watcher.stats.published_blocks == store.outbox_last_id())
    assert marked == [marked[0]]  # the first acknowledgement only, within the interval
    await watcher.stop()
    assert marked[-1] == store.outbox_last_id() == store.outbox_cursor(CONSUMER)
    assert len(marked) == 2
    for opened in (store, marks, watcher.reader):
        opened.close()


async def test_final_height_messages_are_coalesced_and_the_highest_is_kept(
    broker: Broker, net: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final height moving 20 times, 10 ms apart, within FINAL_INTERVAL makes at most two
    `blocks/final` messages (not one per height), the last with the highest final height."""
    monkeypatch.setattr(publisher_module, "FINAL_INTERVAL", 2.0)
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS], T0)
    for amount in range(1, 21):
        settle(engine, [issue(net, "PBOC", "ICBC", amount)], T0 + amount)
    head = store.head()
    assert head is not None
    assert head.height >= 20
    feed = ChainFeed(store, 1)
    watcher = OutboxPublisher(
        settings(broker, BRIDGE_USER),
        reader=SqliteStore(db),
        mark=lambda upto: None,
        feed=feed,
    )
    finals: list[dict[str, Any]] = []
    s = settings(broker, "ICBC")
    async with aiomqtt.Client(s.host, s.port, username=s.username, password=s.password) as c:
        await c.subscribe(FINAL_TOPIC, qos=1)
        watcher.start()
        await wait_until(lambda: watcher.stats.connected)
        for height in range(head.height - 19, head.height + 1):
            feed.attested(Attestation(height, bytes(32), "PBOC", b""))
            await asyncio.sleep(0.01)
        async with asyncio.timeout(30):
            async for message in c.messages:
                assert isinstance(message.payload, bytes)
                finals.append(json.loads(message.payload))
                if finals[-1]["final_height"] == head.height:
                    break
    await watcher.stop()
    assert len(finals) <= 2, finals
    assert [f["final_height"] for f in finals] == sorted(f["final_height"] for f in finals)
    for opened in (store, watcher.reader):
        opened.close()


class CountingStore(SqliteStore):
    """A real store that records the id of every outbox row it is asked to read."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read_rows: list[int] = []

    def outbox_after(self, last_id: int, limit: int = 500) -> list[tuple[int, bytes]]:
        rows = super().outbox_after(last_id, limit)
        self.read_rows += [row_id for row_id, _ in rows]
        return rows


def handed(engine: SettlementEngine, running: OutboxPublisher, batch: list[Any], now: int) -> int:
    """Settle `batch` as the sequencer does, handing the block's events to `running` in
    memory; the block's outbox row id."""
    settled = engine.settle(batch, now)
    assert all(isinstance(r, Receipt) for r in settled.results), settled.results
    assert settled.outbox is not None
    running.block_committed(settled.outbox)
    return settled.outbox.row_id


def message_count(store: SqliteStore) -> int:
    """The MQTT messages the whole outbox makes: one per event and bank party."""
    return sum(
        len([party for party in event["parties"] if party != BRIDGE_SENDER])
        for _, payload in store.outbox_after(0, 10_000)
        for event in json.loads(payload)
    )


async def record_live(
    broker: Broker, got: list[tuple[str, bytes]], subscribed: asyncio.Event, count: int = 0
) -> None:
    """Append to `got` (topic, payload) of every settlement message then published to any
    bank, in arrival order, as the bridge's user sees them (retained ones left out), until
    `count` (0: until cancelled)."""
    s = settings(broker, BRIDGE_USER)
    async with aiomqtt.Client(s.host, s.port, username=s.username, password=s.password) as c:
        await c.subscribe("cbdc-bridge/v1/+/+/settlements", qos=1)
        subscribed.set()
        async with asyncio.timeout(60):
            async for message in c.messages:
                if not message.retain:
                    assert isinstance(message.payload, bytes)
                    got.append((message.topic.value, message.payload))
                if len(got) == count:
                    return


async def recorded(
    broker: Broker, got: list[tuple[str, bytes]], count: int = 0
) -> asyncio.Task[None]:
    """`record_live` running, subscribed."""
    subscribed = asyncio.Event()
    task = asyncio.create_task(record_live(broker, got, subscribed, count))
    await subscribed.wait()
    return task


async def test_blocks_handed_in_memory_publish_what_the_outbox_would(
    broker: Broker, net: Network, tmp_path: Path
) -> None:
    """Blocks handed to the publisher in memory as they commit make the same messages, byte
    for byte and in the same order, as a publisher reading the whole outbox from the store;
    once caught up, a handed block's row is not read back (a block with a party whose topic is
    not known yet is read from the store, from the cursor)."""
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, cb, bank) for bank, cb in BANKS if bank != "ENBD"], T0)
    settle(engine, [issue(net, cb, bank, 10**6) for bank, cb in BANKS if bank != "ENBD"], T0)
    marks = SqliteStore(db)
    reader = CountingStore(db)
    first = OutboxPublisher(
        settings(broker, BRIDGE_USER),
        reader=reader,
        mark=lambda upto: marks.set_outbox_cursor(CONSUMER, upto),
    )
    sent: list[tuple[str, bytes]] = []
    recording = await recorded(broker, sent)
    first.start()
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
    proposal = propose_pvp(net, "ICBC", "BOCHK", 1_000, 1_080)
    assert isinstance(proposal.body, ProposePvp)
    expiring = propose_pvp(net, "CCB", "KBANK", 500, 540, settle_by=T0 + HOUR // 2)
    in_memory = [
        handed(engine, first, [proposal, expiring, pay(net, "ICBC", "CCB", 5)], T0 + 1),
        handed(engine, first, [accept_pvp(net, proposal.body)], T0 + 2),
    ]
    # CBUAE's first entry, then ENBD's (an admission concerns its central bank only)
    admitted = handed(engine, first, [admit_bank(net, "CBUAE", "ENBD")], T0 + 3)
    learnt = handed(engine, first, [issue(net, "CBUAE", "ENBD", 77)], T0 + 4)
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == learnt)
    in_memory += [
        handed(engine, first, [issue(net, "CBUAE", "ENBD", 1), pay(net, "CCB", "ICBC", 3)], T0 + 5),
        handed(engine, first, [], T0 + HOUR),  # the second proposal expires
    ]
    await wait_until(lambda: store.outbox_cursor(CONSUMER) == store.outbox_last_id())
    total = message_count(store)
    await wait_until(lambda: len(sent) == total)
    await first.stop()
    recording.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await recording
    assert {admitted, learnt} <= set(reader.read_rows)  # the new topics learnt from the store
    assert not set(in_memory) & set(reader.read_rows)

    marks.set_outbox_cursor(CONSUMER, 0)  # the whole outbox once more, read from the store
    from_store: list[tuple[str, bytes]] = []
    again = await recorded(broker, from_store, total)
    second = publisher(broker, db, marks)
    second.start()
    await again
    await second.stop()
    assert from_store == sent
    assert settlement_topic("CBUAE", "ENBD") in {topic for topic, _ in sent}
    for opened in (store, marks, reader, second.reader):
        opened.close()


async def test_blocks_handed_while_the_broker_is_down_are_read_from_the_store(
    broker: Broker, net: Network, tmp_path: Path
) -> None:
    """Blocks handed over in memory while the broker is down are published once it is back,
    read from the store from the acknowledged position, in order and chained by `prev_seq`;
    the blocks after that go from memory again."""
    broker.stop()
    broker.persistence = tmp_path / "sessions"  # the subscriber's session outlives the restart
    broker.persistence.mkdir()
    broker.start()
    db = tmp_path / "ledger.sqlite"
    store = SqliteStore(db)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    settle(engine, [admit_bank(net, "PBOC", bank) for bank in ("ICBC", "CCB")], T0)
    settle(engine, [issue(net, "PBOC", bank, 10**6) for bank in ("ICBC", "CCB")], T0)
    marks = SqliteStore(db)
    reader = CountingStore(db)
    running = OutboxPublisher(
        settings(broker, BRIDGE_USER),
        reader=reader,
        mark=lambda upto: marks.set_outbox_cursor(CONSUMER, upto),
    )
    topic = settlement_topic("PBOC", "ICBC")
    collector = Collector(settings(broker, "ICBC"), topic, identifier="handed-while-down")
    assert await asyncio.to_thread(collector.subscribed.wait, 30)
    running.start()

    def published(row: int) -> Callable[[], bool]:
        return lambda: store.outbox_cursor(CONSUMER) == row and running._caught_up

    try:
        await wait_until(published(store.outbox_last_id()))
        before = handed(engine, running, [pay(net, "ICBC", "CCB", 1)], T0 + 1)
        await wait_until(published(before))
        broker.stop()
        await wait_until(lambda: not running.stats.connected)
        during = [
            handed(engine, running, [pay(net, "ICBC", "CCB", 2)], T0 + 2),
            handed(engine, running, [pay(net, "CCB", "ICBC", 3)], T0 + 3),
        ]
        broker.start()
        await wait_until(published(during[-1]), timeout=60)
        after = handed(engine, running, [pay(net, "ICBC", "CCB", 4)], T0 + 4)
        await wait_until(published(after))
        await running.stop()
        assert set(during) <= set(reader.read_rows)
        assert not {before, after} & set(reader.read_rows)
        expected = [
            event["seq"]
            for _, payload in store.outbox_after(0, 1000)
            for event in json.loads(payload)
            if "ICBC" in event["parties"]
        ]
        await wait_until(lambda: list(dict.fromkeys(collector.seqs())) == expected, timeout=60)
        firsts = {m["seq"]: m for m in reversed(collector.snapshot())}
        assert [firsts[seq]["prev_seq"] for seq in expected] == [0, *expected[:-1]]
    finally:
        collector.stop()
        for opened in (store, marks, reader):
            opened.close()
