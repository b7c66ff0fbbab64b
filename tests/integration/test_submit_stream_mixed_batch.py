"""A mixed batch on `CentralBank.SubmitStream`, handled by the node as one batch, over real gRPC.

A network (bridge and four central bank nodes) runs on loopback. ICBC (PBOC) sends one message
whose instructions go different ways: dual PvPs whose counterparties are banks of two other
central banks (HKMA's and BOT's nodes endorse their legs), a payment PBOC alone endorses, and
instructions PBOC refuses itself (a forged signature, an unknown counterparty, a kind
SubmitStream does not take), one dual PvP twice. Each answer is the instruction's own, in order;
the ledger holds one entry for each instruction that settled and none for the refused ones.
With BOT's node down, only the legs BOT must endorse fail, retryable, and settle once resent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import DualPvp, Issue, Pay
from bridge.errors import Reason
from bridge.rates import implied_rate
from tests.conftest import RPC_TIMEOUT, VALID_FOR_MS, new_id, now_ms, wait_for

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork, Snapshot

CURRENCY = {"ICBC": "CNY", "BOCQ": "CNY", "HSBCHK": "HKD", "KBANK": "THB"}


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """ICBC, HSBCHK and KBANK hold some of their own currency."""
    for bank in ("ICBC", "HSBCHK", "KBANK"):
        assert live.issue(bank, 10_000_000).receipt.outcome == types.OUTCOME_ISSUED


def dual(counterparty: str, amount: int, theirs: int) -> DualPvp:
    """ICBC's CNY `amount` against `counterparty`'s `theirs` in its own currency."""
    return DualPvp(
        new_id("dual"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        counterparty,
        "CNY",
        amount,
        CURRENCY[counterparty],
        theirs,
        implied_rate(amount, 2, theirs, 2),
        "LC-CQ-2025-118",
        signed_at=now_ms(),
    )


def pay(amount: int) -> Pay:
    return Pay(
        new_id("pay"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "BOCQ",
        "CNY",
        amount,
        "INV-1",
        signed_at=now_ms(),
    )


def submit(live: LiveNetwork, items: list[types.SignedInstruction]) -> list[cb_pb.BankSubmitResult]:
    """The results of one SubmitStream message to PBOC's node carrying `items` as a batch."""
    request = cb_pb.BankSubmitRequest(correlation_id=11, instructions=items)
    (response,) = list(live.node("PBOC").SubmitStream(iter([request]), timeout=RPC_TIMEOUT))
    assert response.correlation_id == 11
    assert len(response.results) == len(items)
    return list(response.results)


def settled(result: cb_pb.BankSubmitResult) -> types.Receipt:
    assert result.WhichOneof("result") == "status", result
    assert result.status.receipt.outcome == types.OUTCOME_SETTLED, result
    receipt: types.Receipt = result.status.receipt
    return receipt


def refused(result: cb_pb.BankSubmitResult) -> tuple[str, str]:
    assert result.WhichOneof("result") == "refusal", result
    return result.refusal.code, result.refusal.reason


def moved(before: Snapshot, after: Snapshot, bank: str) -> int:
    """How much `bank`'s balance in its own currency changed from `before` to `after`."""
    currency = CURRENCY[bank]
    return after.available(bank, currency) - before.available(bank, currency)


def recorded_refusals(live: LiveNetwork) -> dict[str, cb_pb.RecordedRefusal]:
    """The refusals PBOC's node recorded for ICBC, by instruction id."""
    page = live.admin("PBOC").ListRefusals(
        cb_pb.ListRefusalsRequest(limit=500, sender="ICBC"),
        metadata=live.admin_metadata("PBOC"),
        timeout=RPC_TIMEOUT,
    )
    return {row.instruction_id: row for row in page.refusals}


def test_mixed_batch_answers_each_instruction_and_settles_each_good_one_once(
    live: LiveNetwork,
) -> None:
    """Dual PvPs to two peers' banks, a payment, refused ones and a repeat: each answered alone."""
    to_hk = [dual("HSBCHK", 10_000 + n, 10_850 + n) for n in range(3)]
    to_th = [dual("KBANK", 20_000 + n, 95_000 + n) for n in range(2)]
    payment = pay(1_500)
    forged = dual("HSBCHK", 30_000, 32_550)
    unknown = replace(dual("HSBCHK", 31_000, 33_600), counterparty="NOSUCHBANK")
    wrong_kind = Issue(
        new_id("issue"), "ICBC", now_ms() + VALID_FOR_MS, "ICBC", "CNY", 5, signed_at=now_ms()
    )
    forged_message = live.dual_signed(forged)
    forged_message.signatures[0].value = bytes(64)  # ICBC's signature no longer verifies
    unknown_message = live.signed(unknown)  # the counterparty cannot sign: it does not exist
    items = [
        live.dual_signed(to_hk[0]),
        live.dual_signed(to_th[0]),
        forged_message,
        live.signed(payment),
        live.dual_signed(to_hk[1]),
        unknown_message,
        live.dual_signed(to_hk[0]),  # the same id again, the same body
        live.signed(wrong_kind),
        live.dual_signed(to_th[1]),
        live.dual_signed(to_hk[2]),
    ]
    before = live.snapshot()
    results = submit(live, items)

    good = {0: to_hk[0], 1: to_th[0], 3: payment, 4: to_hk[1], 8: to_th[1], 9: to_hk[2]}
    receipts = {index: settled(results[index]) for index in good}
    assert len({r.seq for r in receipts.values()}) == len(good)
    assert all(not r.duplicate for r in receipts.values())
    again = settled(results[6])  # the repeat: the same entry, answered as a duplicate
    assert again.duplicate
    assert again.seq == receipts[0].seq
    assert refused(results[2]) == ("UNAUTHENTICATED", Reason.BAD_SIGNATURE.value)
    assert refused(results[5]) == ("NOT_FOUND", Reason.UNKNOWN_PARTICIPANT.value)
    assert refused(results[7]) == ("INVALID_ARGUMENT", Reason.MALFORMED.value)

    for body in good.values():
        assert live.entries_of_instruction("ICBC", body.instruction_id) == 1
    for body in (forged, unknown, wrong_kind):
        assert live.entries_of_instruction("ICBC", body.instruction_id) == 0
    after = live.snapshot()
    assert after.entries == before.entries + len(good)
    cny = sum(b.pay_amount for b in (*to_hk, *to_th)) + payment.amount
    assert moved(before, after, "ICBC") == -cny
    assert moved(before, after, "BOCQ") == payment.amount
    assert moved(before, after, "HSBCHK") == -sum(b.receive_amount for b in to_hk)
    assert moved(before, after, "KBANK") == -sum(b.receive_amount for b in to_th)
    live.assert_conserved(after)

    rows = recorded_refusals(live)
    assert not rows[forged.instruction_id].authenticated  # its signature did not verify
    assert rows[unknown.instruction_id].authenticated  # ICBC did sign it
    assert rows[unknown.instruction_id].reason == Reason.UNKNOWN_PARTICIPANT.value
    assert rows[wrong_kind.instruction_id].reason == Reason.MALFORMED.value
    assert not {b.instruction_id for b in good.values()} & set(rows)


def test_legs_for_a_peer_node_that_is_down_fail_retryable_and_the_rest_settle(
    live: LiveNetwork,
) -> None:
    """With BOT's node down, its banks' PvPs are UNAVAILABLE (retryable, not recorded, nothing
    settled); the rest of the batch settles; resent once BOT is back, they settle exactly once."""
    to_hk, to_th = dual("HSBCHK", 40_000, 43_400), dual("KBANK", 41_000, 195_000)
    later_th, payment = dual("KBANK", 42_000, 200_000), pay(2_500)
    items = [
        live.dual_signed(to_th),
        live.dual_signed(to_hk),
        live.signed(payment),
        live.dual_signed(later_th),
    ]
    live.network.central_banks["BOT"].kill()
    try:
        before = live.snapshot()
        results = submit(live, items)
        for index in (0, 3):
            assert refused(results[index]) == ("UNAVAILABLE", Reason.UNAVAILABLE.value)
        first = {index: settled(results[index]) for index in (1, 2)}
        assert live.entries_of_instruction("ICBC", to_th.instruction_id) == 0
        assert live.entries_of_instruction("ICBC", later_th.instruction_id) == 0
        during = live.snapshot()
        assert during.entries == before.entries + 2
        assert moved(before, during, "KBANK") == 0
        assert not {to_th.instruction_id, later_th.instruction_id} & set(recorded_refusals(live))
    finally:
        live.network.restart_central_bank("BOT")
        live.reset_channels()

    def all_settled() -> list[cb_pb.BankSubmitResult] | None:
        answers = submit(live, items)  # resending the same instructions is safe
        return answers if all(a.WhichOneof("result") == "status" for a in answers) else None

    resent = wait_for(all_settled, timeout=30, what="BOT's node to endorse again", every=0.5)
    for index in (1, 2):
        receipt = settled(resent[index])
        assert receipt.duplicate
        assert receipt.seq == first[index].seq
    for body in (to_hk, to_th, later_th):
        assert live.entries_of_instruction("ICBC", body.instruction_id) == 1
    assert live.entries_of_instruction("ICBC", payment.instruction_id) == 1
    after = live.snapshot()
    assert after.entries == before.entries + 4
    assert moved(before, after, "KBANK") == -(to_th.receive_amount + later_th.receive_amount)
    live.assert_conserved(after)
