"""SIGKILL the bridge process while a client streams payments; restart it on the same store.

A client streams pre-signed, endorsed payments over BridgeLedger.Submit and records every
receipt it is sent. The bridge is killed mid-stream (SIGKILL, no grace) and restarted on the
same SQLite file, or the same PostgreSQL database (where the restarted process takes the
leadership again). Every payment acknowledged before the kill must be in the log exactly once,
at the sequence number it was acknowledged with; resubmitting it must return a duplicate
receipt and change nothing; the central bank nodes must reconnect on their own (their links
submit again, their replicas follow and attest the new blocks); and per currency the
outstanding supply must still equal the sum of every balance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import pytest

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Pay
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    network_on_each_store,
    new_id,
    now_ms,
    wait_for,
)

if TYPE_CHECKING:
    from participants.launcher import Network
    from tests.conftest import LiveNetwork

PAYMENTS = 1_500
ACKED_BEFORE_KILL = 200
ROUTES = (("ICBC", "BOCQ", "CNY"), ("HSBCHK", "BOCHK", "HKD"), ("ICBC", "HSBCHK", "CNY"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network with its one bridge process on each store."""
    yield from network_on_each_store(request, tmp_path_factory)


@pytest.fixture(scope="module")
def payments(live: LiveNetwork) -> list[tuple[Pay, types.SignedInstruction]]:
    """Funds for the payers, and the payments pre-signed and endorsed."""
    live.issue("ICBC", 10**12)
    live.issue("HSBCHK", 10**12)
    out = []
    for index in range(PAYMENTS):
        payer, payee, currency = ROUTES[index % len(ROUTES)]
        body = Pay(
            new_id("stream"),
            payer,
            now_ms() + 10 * VALID_FOR_MS,
            payee,
            currency,
            1 + index,
            "",
            signed_at=now_ms(),
        )
        out.append((body, live.endorsed(body)))
    return out


class StreamingClient:
    """Streams the payments on one Submit call in a thread, recording what was acknowledged."""

    def __init__(
        self, live: LiveNetwork, payments: list[tuple[Pay, types.SignedInstruction]]
    ) -> None:
        self.live = live
        self.payments = payments
        self.acked: dict[int, bridge_pb.SubmitResponse] = {}
        self.broke: grpc.StatusCode | None = None
        self.thread = threading.Thread(target=self._run, name="streaming-client")

    def _requests(self) -> Iterator[bridge_pb.SubmitRequest]:
        for index, (_, message) in enumerate(self.payments):
            yield bridge_pb.SubmitRequest(correlation_id=index + 1, instruction=message)
            if index % 25 == 24:
                time.sleep(0.005)  # a steady stream, so the kill lands in the middle of it

    def _run(self) -> None:
        try:
            for response in self.live.bridge.Submit(self._requests(), timeout=120):
                self.acked[response.correlation_id] = response
        except grpc.RpcError as error:
            self.broke = error.code()

    def body(self, correlation_id: int) -> Pay:
        return self.payments[correlation_id - 1][0]


def resubmit(
    live: LiveNetwork, messages: list[types.SignedInstruction]
) -> list[bridge_pb.SubmitResponse]:
    """Send the messages on a fresh Submit stream; answers in correlation-id order."""
    requests = [
        bridge_pb.SubmitRequest(correlation_id=i + 1, instruction=m) for i, m in enumerate(messages)
    ]
    answers = {r.correlation_id: r for r in live.bridge.Submit(iter(requests), timeout=120)}
    return [answers[i + 1] for i in range(len(messages))]


def pay_retrying(live: LiveNetwork, payer: str, payee: str, amount: int) -> types.InstructionStatus:
    """Pay through the payer's node, resubmitting the same instruction while it is UNAVAILABLE."""
    instruction_id = new_id("after")
    deadline = time.monotonic() + 30
    while True:
        try:
            return live.pay(payer, payee, amount, instruction_id=instruction_id)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_acknowledged_payments_survive_a_bridge_crash_exactly_once(
    live: LiveNetwork, payments: list[tuple[Pay, types.SignedInstruction]]
) -> None:
    """Every payment acknowledged before SIGKILL is logged once; resubmitted, it is a duplicate."""
    live.wait_all_final()
    client = StreamingClient(live, payments)
    client.thread.start()
    wait_for(
        lambda: len(client.acked) >= ACKED_BEFORE_KILL,
        timeout=60,
        what=f"{ACKED_BEFORE_KILL} acknowledged payments",
        every=0.005,
    )
    live.network.bridge.kill()
    client.thread.join(30)
    assert not client.thread.is_alive()
    acked = dict(client.acked)
    assert client.broke is not None, "the stream ended although the bridge was killed"
    assert len(acked) < PAYMENTS, "the kill came after the last payment"

    live.network.restart_bridge()
    live.reset_channels()

    receipts = {}
    for correlation_id, response in acked.items():
        body = client.body(correlation_id)
        assert response.WhichOneof("result") == "receipt", response
        assert response.receipt.outcome == types.OUTCOME_SETTLED
        assert live.entries_of_instruction(body.sender, body.instruction_id) == 1
        status = live.bridge.GetReceipt(
            bridge_pb.GetReceiptRequest(sender=body.sender, instruction_id=body.instruction_id),
            timeout=RPC_TIMEOUT,
        )
        assert status.receipt.seq == response.receipt.seq
        assert bytes(status.receipt.body_hash) == bytes(response.receipt.body_hash)
        receipts[correlation_id] = status.receipt

    before = live.snapshot()
    again = resubmit(live, [payments[cid - 1][1] for cid in sorted(acked)])
    for correlation_id, answer in zip(sorted(acked), again, strict=True):
        assert answer.WhichOneof("result") == "receipt", answer
        assert answer.receipt.duplicate
        assert answer.receipt.seq == receipts[correlation_id].seq
    assert live.snapshot() == before, "a resubmitted payment settled twice"
    live.assert_conserved(before)


def test_unacknowledged_payments_settle_at_most_once_when_resent(
    live: LiveNetwork, payments: list[tuple[Pay, types.SignedInstruction]]
) -> None:
    """Resending every payment after the crash: each id ends up in the log exactly once."""
    before = live.snapshot()
    answers = resubmit(live, [message for _, message in payments])
    fresh = [a for a in answers if a.WhichOneof("result") == "receipt" and not a.receipt.duplicate]
    assert all(a.WhichOneof("result") == "receipt" for a in answers)
    after = live.snapshot()
    assert after.entries == before.entries + len(fresh)
    for body, _ in payments[:: max(1, PAYMENTS // 200)]:
        assert live.entries_of_instruction(body.sender, body.instruction_id) == 1
    live.assert_conserved(after)


def test_central_bank_nodes_reconnect_and_their_replicas_continue(live: LiveNetwork) -> None:
    """After the crash each node's link submits again and all four attest the new blocks."""
    paid = [
        pay_retrying(live, "ICBC", "BOCQ", 11),
        pay_retrying(live, "HSBCHK", "BOCHK", 22),
    ]
    assert all(p.receipt.outcome == types.OUTCOME_SETTLED for p in paid)
    height = live.wait_all_final(timeout=60)
    live.wait_attested_by_all(height, timeout=60)
    for payment in paid:
        status = live.bridge.GetReceipt(
            bridge_pb.GetReceiptRequest(
                sender=payment.receipt.sender, instruction_id=payment.receipt.instruction_id
            ),
            timeout=RPC_TIMEOUT,
        )
        assert status.final
    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=paid[0].receipt.seq), "BOCQ")
    page = live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT)
    assert page.entries[0].entry.seq == paid[0].receipt.seq
    live.assert_conserved()
    for currency in live.currencies:
        supply = live.bridge.GetCurrencySupply(
            types.CurrencySupplyRequest(currency=currency), timeout=RPC_TIMEOUT
        )
        balances = sum(
            a + h for (_, c), (a, h, _) in live.snapshot().accounts.items() if c == currency
        )
        assert supply.outstanding == balances
