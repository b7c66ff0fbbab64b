"""Three bridge processes on one PostgreSQL database: kill the leader, restart the database.

Banks pay through their central bank nodes from several threads without pause; each payment is
resubmitted with the same instruction id while it is answered UNAVAILABLE (the only answer a
bank may see meanwhile: retryable, never a final refusal). The leading bridge process is killed
with SIGKILL mid-load; later the PostgreSQL server itself is restarted mid-load. Afterwards every
acknowledged payment is in the log exactly once at the seq it was acknowledged with, the log is
one hash chain without gaps or forks (the new leader went on at the next height), every central
bank attests the new blocks, per currency the supply equals the sum of the balances, and the
whole database verifies offline (`log verify`: signatures, state commitments, stored state).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import psycopg
import pytest

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Pay
from bridge.errors import Reason
from bridge.log.source import open_source
from bridge.log.verify import verify_log
from participants.central_bank.channels import bridge_channel
from participants.launcher import Network, NodeProcess
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    LiveNetwork,
    new_id,
    now_ms,
    reason_of,
    start_network,
    wait_for,
)
from tests.pg import PostgresServer, start_server

ROUTES = (("ICBC", "BOCQ"), ("HSBCHK", "BOCHK"), ("BOCQ", "ICBC"), ("BOCHK", "HSBCHK"))
ACKED_AFTER_FAULT = 40
RETRY_FOR = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this module's own: one test restarts it."""
    started = start_server()
    try:
        yield started
    finally:
        started.remove()


@pytest.fixture(scope="module")
def network(server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    started = start_network(
        tmp_path_factory.mktemp("failover"), bridge_store=server.create_database(), bridges=3
    )
    try:
        yield started
    finally:
        started.stop()


class FailoverNetwork(LiveNetwork):
    """The harness, reading from whichever bridge process answers (a killed one does not)."""

    @property
    def bridge(self) -> bridge_grpc.BridgeLedgerStub:
        for address in self.config.bridge_addresses:
            stub = bridge_stub(self, address)
            try:
                stub.GetGenesis(bridge_pb.GetGenesisRequest(), timeout=2)
            except grpc.RpcError:
                continue
            return stub
        raise AssertionError("no bridge process answers")


@pytest.fixture(scope="module")
def live(network: Network) -> Iterator[LiveNetwork]:
    harness = FailoverNetwork(network)
    harness.issue("ICBC", 10**12)
    harness.issue("HSBCHK", 10**12)
    harness.issue("BOCQ", 10**12)
    harness.issue("BOCHK", 10**12)
    try:
        yield harness
    finally:
        harness.close()


class Load:
    """Threads paying through the central bank nodes until stopped, resubmitting the same
    instruction id while it is UNAVAILABLE; records acknowledgements and every error seen."""

    def __init__(self, live: LiveNetwork, threads: int = 4) -> None:
        self.live = live
        self.acked: dict[tuple[str, str], types.Receipt] = {}
        self.errors: list[tuple[grpc.StatusCode, Reason]] = []
        self.failures: list[BaseException] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(ROUTES[i % len(ROUTES)],), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(RETRY_FOR + 30)

    def _run(self, route: tuple[str, str]) -> None:
        payer, payee = route
        amount = 1
        while not self.stopping.is_set():
            try:
                self._pay_once(payer, payee, amount)
            except BaseException as failure:  # recorded, the test fails on it
                self.failures.append(failure)
                return
            amount += 1

    def _pay_once(self, payer: str, payee: str, amount: int) -> None:
        body = Pay(
            new_id("load"),
            payer,
            now_ms() + VALID_FOR_MS,
            payee,
            self.live.currency_of(payer),
            amount,
            "",
            signed_at=now_ms(),
        )
        message = self.live.signed(body)
        node = self.live.node(self.live.home_of(payer))
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                status = node.Pay(message, timeout=RPC_TIMEOUT)
            except grpc.RpcError as error:
                with self._lock:
                    self.errors.append((error.code(), reason_of(error)))
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            with self._lock:
                self.acked[(payer, body.instruction_id)] = status.receipt
            return

    def count(self) -> int:
        with self._lock:
            return len(self.acked)


def bridge_stub(live: LiveNetwork, address: str) -> bridge_grpc.BridgeLedgerStub:
    """One bridge process, called as PBOC's node calls it (signed calls with PBOC's key)."""
    key = f"bridge@{address}"
    if key not in live._channels:
        port = int(address.rsplit(":", 1)[1])
        config = replace(live.config, bridge_port=port)
        live._channels[key] = bridge_channel(config, live.central_bank_ids[0])
    return bridge_grpc.BridgeLedgerStub(live._channels[key])


def leader_process(network: Network, url: str) -> NodeProcess:
    """The bridge process that leads now (the database names it: host/pid)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM leader").fetchone()
    assert row is not None
    pid = int(str(row[0]).rsplit("/", 1)[1])
    for node in (network.bridge, *network.standby_bridges):
        if node.process is not None and node.process.pid == pid:
            return node
    raise AssertionError(f"no bridge process of this network has pid {pid}")


def leader_epoch(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT epoch FROM leader").fetchone()
    assert row is not None
    return int(row[0])


def assert_one_chain(stub: bridge_grpc.BridgeLedgerStub, genesis_hash: bytes) -> int:
    """Heights 1..head, each linking to the one before: no gap, no fork. Returns the head."""
    previous, height = genesis_hash, 0
    while True:
        page = stub.GetBlocks(
            bridge_pb.GetBlocksRequest(from_height=height + 1), timeout=RPC_TIMEOUT
        ).blocks
        if not page:
            return height
        for block in page:
            header = wire.header_from_proto(block.header)
            assert header.height == height + 1, f"gap after height {height}"
            assert header.prev_hash == previous, f"block {header.height} does not link"
            previous, height = header.hash(), header.height
            assert sum(1 for _ in block.entries) == header.entry_count


def assert_acknowledged_once(live: LiveNetwork, load: Load) -> None:
    """Every acknowledged payment is logged once, at the seq it was acknowledged with."""
    assert not load.failures, load.failures
    for (sender, instruction_id), receipt in load.acked.items():
        assert live.entries_of_instruction(sender, instruction_id) == 1, instruction_id
        status = live.bridge.GetReceipt(
            bridge_pb.GetReceiptRequest(sender=sender, instruction_id=instruction_id),
            timeout=RPC_TIMEOUT,
        )
        assert status.receipt.seq == receipt.seq
    assert all(
        code == grpc.StatusCode.UNAVAILABLE and reason.retryable for code, reason in load.errors
    )


def assert_log_verifies(live: LiveNetwork) -> None:
    """The database, read as `log verify postgresql://...` reads it, agrees with its signed log."""
    with open_source(live.config.bridge_store) as source:
        report = verify_log(source, trusted_genesis=live.config.genesis())
    assert report.ok, report.failures
    assert report.entries == live.entry_count()


def test_standby_processes_refuse_instructions_retryably_and_serve_reads(
    live: LiveNetwork,
) -> None:
    """A bridge process that does not lead answers UNAVAILABLE ("not the leader", retryable)
    to an instruction and serves the same committed state as the leader."""
    leader, *standbys = live.config.bridge_addresses
    paid = live.pay("ICBC", "BOCQ", 5)
    body = Pay(
        new_id("direct"), "ICBC", now_ms() + VALID_FOR_MS, "BOCQ", "CNY", 7, "", signed_at=now_ms()
    )
    for address in standbys:
        stub = bridge_stub(live, address)
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitOne(live.endorsed(body), timeout=RPC_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(refused.value) is Reason.UNAVAILABLE
        assert reason_of(refused.value).retryable
        assert "not the leader" in str(refused.value.details())

        def sees_payment(stub: bridge_grpc.BridgeLedgerStub = stub) -> bool:
            reply = stub.GetReceipt(
                bridge_pb.GetReceiptRequest(
                    sender="ICBC", instruction_id=paid.receipt.instruction_id
                ),
                timeout=RPC_TIMEOUT,
            )
            return reply.receipt.seq == paid.receipt.seq

        wait_for(sees_payment, timeout=10, what="the standby to read the payment")
    assert live.entries_of_instruction("ICBC", body.instruction_id) == 0
    bridge_stub(live, leader).SubmitOne(live.endorsed(body), timeout=RPC_TIMEOUT)
    assert live.entries_of_instruction("ICBC", body.instruction_id) == 1
    assert leader == live.config.bridge_address  # the first process started leads


def test_killing_the_leader_under_load_loses_and_doubles_nothing(
    live: LiveNetwork, network: Network
) -> None:
    """SIGKILL of the leading bridge mid-load: another process leads at the next height,
    acknowledged payments are logged once, banks only ever saw retryable errors."""
    store = live.config.bridge_store
    epoch = leader_epoch(store)
    with Load(live) as load:
        wait_for(lambda: load.count() >= 20, timeout=60, what="payments before the kill")
        network.bridge.kill()
        killed_at = load.count()
        wait_for(
            lambda: load.count() >= killed_at + ACKED_AFTER_FAULT or load.failures,
            timeout=90,
            what="payments after the kill",
        )
    live.reset_channels()
    assert leader_epoch(store) > epoch, "no other process took the lead"
    assert_acknowledged_once(live, load)
    assert_one_chain(live.bridge, live.config.genesis().hash())
    live.wait_all_final(timeout=60)
    live.assert_conserved()
    assert_log_verifies(live)


def test_restarting_postgresql_under_load_loses_and_doubles_nothing(
    live: LiveNetwork, server: PostgresServer
) -> None:
    """The database restarts mid-load: the bridges reconnect, one leads again, acknowledged
    payments are logged once and the chain has no gap or fork."""
    store = live.config.bridge_store
    epoch = leader_epoch(store)
    with Load(live) as load:
        wait_for(lambda: load.count() >= 20, timeout=60, what="payments before the restart")
        server.restart()
        restarted_at = load.count()
        wait_for(
            lambda: load.count() >= restarted_at + ACKED_AFTER_FAULT or load.failures,
            timeout=120,
            what="payments after the restart",
        )
    live.reset_channels()
    assert leader_epoch(store) > epoch, "leadership was not taken again after the restart"
    assert_acknowledged_once(live, load)
    assert_one_chain(live.bridge, live.config.genesis().hash())
    live.wait_all_final(timeout=60)
    live.assert_conserved()
    assert_log_verifies(live)


def test_pausing_the_leader_under_load_loses_and_doubles_nothing(
    live: LiveNetwork, network: Network
) -> None:
    """SIGSTOP of the leading bridge mid-load (it stops answering but its connections stay
    open): another process leads, the central bank nodes move to it, banks only ever see
    retryable errors; resumed, the old leader commits nothing more. Acknowledged payments are
    logged once and the chain has no gap or fork."""
    store = live.config.bridge_store
    epoch = leader_epoch(store)
    paused = leader_process(network, store)
    with Load(live) as load:
        wait_for(lambda: load.count() >= 20, timeout=60, what="payments before the pause")
        paused.signal(signal.SIGSTOP)
        try:
            paused_at = load.count()
            wait_for(
                lambda: load.count() >= paused_at + ACKED_AFTER_FAULT or load.failures,
                timeout=90,
                what="payments while the leader is paused",
            )
        finally:
            paused.signal(signal.SIGCONT)
        resumed_at = load.count()
        wait_for(
            lambda: load.count() >= resumed_at + ACKED_AFTER_FAULT or load.failures,
            timeout=90,
            what="payments after the old leader resumed",
        )
    live.reset_channels()
    assert leader_epoch(store) > epoch, "no other process took the lead"
    assert leader_process(network, store) is not paused
    assert_acknowledged_once(live, load)
    assert_one_chain(live.bridge, live.config.genesis().hash())
    live.wait_all_final(timeout=60)
    live.assert_conserved()
    assert_log_verifies(live)
