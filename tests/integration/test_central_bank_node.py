"""The central bank node's CentralBank and CentralBankAdmin services over gRPC, end to end.

Banks call their own central bank's node with instructions they signed and queries they signed;
operators call the admin service with the central bank's bearer token. Every RPC is called at
least once with its answer checked against the bridge's committed state, and refused where a
refusal makes sense. The module runs twice: with the bridge on a SQLite file, and with two bridge
processes on a PostgreSQL database (the first leads, the second stands by).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc
import pytest

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    AcceptPvp,
    CancelPvp,
    DualPvp,
    Entry,
    Envelope,
    Outcome,
    Pay,
    ProposePvp,
    Redeem,
    RejectPvp,
    endorsement_message,
)
from bridge.errors import Reason
from bridge.rates import implied_rate
from bridge.signing import endorse
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    cross_border_dual_pvp,
    network_on_each_store,
    new_id,
    now_ms,
    reason_of,
    refusal_of,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from participants.launcher import Network
    from tests.conftest import LiveNetwork

FUNDS = {
    "ICBC": 40_000_000,
    "BOCQ": 4_000_000,
    "HSBCHK": 40_000_000,
    "BOCHK": 4_000_000,
    "KBANK": 9_000_000,
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network on each store: one bridge on SQLite, or two bridge processes sharing a
    PostgreSQL database."""
    yield from network_on_each_store(request, tmp_path_factory, bridges=2)


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """Issue working balances once for the module (this exercises admin Issue)."""
    for bank, amount in FUNDS.items():
        status = live.issue(bank, amount)
        assert status.receipt.outcome == types.OUTCOME_ISSUED


def valid_until() -> int:
    return now_ms() + VALID_FOR_MS


def proposal(
    proposer: str = "ICBC",
    counterparty: str = "HSBCHK",
    pay_amount: int = 100_000,
    receive_amount: int = 108_500,
    settle_in_ms: int = 60_000,
) -> ProposePvp:
    return ProposePvp(
        new_id("pvp"),
        proposer,
        valid_until(),
        counterparty,
        "CNY",
        pay_amount,
        "HKD",
        receive_amount,
        implied_rate(pay_amount, 2, receive_amount, 2),  # HKD per CNY, agreeing with the legs
        now_ms() + settle_in_ms,
        "LC-CQ-2025-118 Chongqing to Hong Kong",
        signed_at=now_ms(),
    )


def history(live: LiveNetwork, bank: str, from_seq: int, limit: int) -> cb_pb.HistoryPage:
    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=from_seq, limit=limit), bank)
    page: cb_pb.HistoryPage = live.node(live.home_of(bank)).GetHistory(query, timeout=RPC_TIMEOUT)
    return page


def logged_entry(live: LiveNetwork, bank: str, seq: int) -> Entry:
    """The entry at `seq` from the bank's history, once its node's replica has indexed it."""

    def indexed() -> Entry | None:
        page = history(live, bank, seq, 1)
        if page.entries and page.entries[0].entry.seq == seq:
            return Entry.from_canonical_bytes(bytes(page.entries[0].entry.canonical))
        return None

    return wait_for(indexed, timeout=10, what=f"{bank}'s history to hold entry {seq}")


# ---------------------------------------------------------------------------- payments


def test_pay_settles_through_the_payers_central_bank(live: LiveNetwork) -> None:
    """Pay: the node endorses its bank's leg and answers once the bridge recorded it."""
    before = live.snapshot()
    status = live.pay("ICBC", "HSBCHK", 12_345, reference="INV-CQ-0001")
    assert status.receipt.outcome == types.OUTCOME_SETTLED
    assert status.receipt.sender == "ICBC"
    assert not status.receipt.duplicate
    after = live.snapshot()
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") - 12_345
    assert after.available("HSBCHK", "CNY") == before.available("HSBCHK", "CNY") + 12_345
    assert after.entries == before.entries + 1


def test_pay_resubmitted_returns_the_original_outcome(live: LiveNetwork) -> None:
    """Pay twice with the same id and body: one settlement, the second answer is a duplicate."""
    body = Pay(new_id("pay"), "BOCQ", valid_until(), "ICBC", "CNY", 5_000, "", signed_at=now_ms())
    first = live.node("PBOC").Pay(live.signed(body), timeout=RPC_TIMEOUT)
    before = live.snapshot()
    second = live.node("PBOC").Pay(live.signed(body), timeout=RPC_TIMEOUT)
    assert second.receipt.duplicate
    assert second.receipt.seq == first.receipt.seq
    assert live.snapshot() == before


def test_pay_refusals_change_nothing(live: LiveNetwork) -> None:
    """Pay refused for lack of funds, for a wrong body kind, for a zero amount."""
    broke = Pay(new_id("pay"), "BOCQ", valid_until(), "ICBC", "CNY", 10**15, "", signed_at=now_ms())
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").Pay(live.signed(broke), timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.INSUFFICIENT_FUNDS,
    )
    wrong_kind = live.signed(proposal())
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").Pay(wrong_kind, timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MALFORMED,
    )
    zero = Pay(new_id("pay"), "ICBC", valid_until(), "BOCQ", "CNY", 0, "", signed_at=now_ms())
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").Pay(live.signed(zero), timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.NON_POSITIVE_AMOUNT,
    )


# ---------------------------------------------------------------------------- two-phase PvP


def get_pvp(live: LiveNetwork, bank: str, proposer: str, pvp_id: str) -> types.PvpStatus:
    query = live.query("GetPvp", cb_pb.PvpQuery(proposer=proposer, pvp_id=pvp_id), bank)
    status: types.PvpStatus = live.node(live.home_of(bank)).GetPvp(query, timeout=RPC_TIMEOUT)
    return status


def test_pvp_proposed_in_cny_and_accepted_in_hkd_settles_both_legs(live: LiveNetwork) -> None:
    """ProposePvp holds ICBC's CNY; HSBCHK's AcceptPvp through HKMA settles both legs at once."""
    before = live.snapshot()
    body = proposal(pay_amount=200_000, receive_amount=217_000)
    held = live.node("PBOC").ProposePvp(live.signed(body), timeout=RPC_TIMEOUT)
    assert held.receipt.outcome == types.OUTCOME_HELD
    middle = live.snapshot()
    assert middle.held("ICBC", "CNY") == before.held("ICBC", "CNY") + 200_000
    assert middle.available("ICBC", "CNY") == before.available("ICBC", "CNY") - 200_000

    seen = get_pvp(live, "HSBCHK", "ICBC", body.instruction_id)
    assert seen.status == types.OUTCOME_HELD
    accept = AcceptPvp(
        new_id("accept"),
        "HSBCHK",
        valid_until(),
        "ICBC",
        body.instruction_id,
        "0" * 64,
        signed_at=now_ms(),
    )
    live.assert_refused_unchanged(
        lambda: live.node("HKMA").AcceptPvp(live.signed(accept), timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.PVP_TERMS_MISMATCH,
    )
    accept = AcceptPvp(
        new_id("accept"),
        "HSBCHK",
        valid_until(),
        "ICBC",
        body.instruction_id,
        seen.terms_hash,
        signed_at=now_ms(),
    )
    settled = live.node("HKMA").AcceptPvp(live.signed(accept), timeout=RPC_TIMEOUT)
    assert settled.receipt.outcome == types.OUTCOME_SETTLED
    after = live.snapshot()
    assert after.held("ICBC", "CNY") == before.held("ICBC", "CNY")
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") - 200_000
    assert after.available("HSBCHK", "CNY") == before.available("HSBCHK", "CNY") + 200_000
    assert after.available("HSBCHK", "HKD") == before.available("HSBCHK", "HKD") - 217_000
    assert after.available("ICBC", "HKD") == before.available("ICBC", "HKD") + 217_000
    assert get_pvp(live, "ICBC", "ICBC", body.instruction_id).status == types.OUTCOME_SETTLED
    again = AcceptPvp(
        new_id("accept"),
        "HSBCHK",
        valid_until(),
        "ICBC",
        body.instruction_id,
        seen.terms_hash,
        signed_at=now_ms(),
    )
    live.assert_refused_unchanged(
        lambda: live.node("HKMA").AcceptPvp(live.signed(again), timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.PVP_NOT_PENDING,
    )
    live.assert_conserved(after)


def test_reject_pvp_releases_the_proposers_hold(live: LiveNetwork) -> None:
    """RejectPvp by the counterparty releases the hold; the proposer cannot reject its own."""
    before = live.snapshot()
    body = proposal(pay_amount=50_000, receive_amount=54_000)
    live.node("PBOC").ProposePvp(live.signed(body), timeout=RPC_TIMEOUT)
    own = RejectPvp(
        new_id("reject"), "ICBC", valid_until(), "ICBC", body.instruction_id, signed_at=now_ms()
    )
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").RejectPvp(live.signed(own), timeout=RPC_TIMEOUT),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.NOT_A_PARTY,
    )
    reject = RejectPvp(
        new_id("reject"), "HSBCHK", valid_until(), "ICBC", body.instruction_id, signed_at=now_ms()
    )
    status = live.node("HKMA").RejectPvp(live.signed(reject), timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_REJECTED
    after = live.snapshot()
    assert after.accounts[("ICBC", "CNY")] == before.accounts[("ICBC", "CNY")]
    assert get_pvp(live, "HSBCHK", "ICBC", body.instruction_id).status == types.OUTCOME_REJECTED


def test_cancel_pvp_releases_the_proposers_hold(live: LiveNetwork) -> None:
    """CancelPvp by the proposer releases the hold; cancelling an unknown PvP: NOT_FOUND."""
    before = live.snapshot()
    body = proposal(pay_amount=70_000, receive_amount=75_950)
    live.node("PBOC").ProposePvp(live.signed(body), timeout=RPC_TIMEOUT)
    cancel = CancelPvp(
        new_id("cancel"), "ICBC", valid_until(), body.instruction_id, signed_at=now_ms()
    )
    status = live.node("PBOC").CancelPvp(live.signed(cancel), timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_CANCELLED
    assert live.snapshot().accounts[("ICBC", "CNY")] == before.accounts[("ICBC", "CNY")]
    unknown = CancelPvp(new_id("cancel"), "ICBC", valid_until(), "no-such-pvp", signed_at=now_ms())
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").CancelPvp(live.signed(unknown), timeout=RPC_TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        Reason.UNKNOWN_PVP,
    )


def test_get_pvp_answers_parties_only(live: LiveNetwork) -> None:
    """GetPvp: either party reads it; to a bank that is no party, as to anyone asking for an
    unknown id, it is NOT_FOUND."""
    body = proposal(pay_amount=1_000, receive_amount=1_085)
    live.node("PBOC").ProposePvp(live.signed(body), timeout=RPC_TIMEOUT)
    try:
        for bank in ("ICBC", "HSBCHK"):
            status = get_pvp(live, bank, "ICBC", body.instruction_id)
            assert status.proposal.pvp_propose.counterparty == "HSBCHK"
            assert status.terms_hash == body.terms_hash()
        error = refusal_of(lambda: get_pvp(live, "BOCHK", "ICBC", body.instruction_id))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(error) is Reason.UNKNOWN_PVP
        error = refusal_of(lambda: get_pvp(live, "ICBC", "ICBC", "no-such-pvp"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    finally:
        cancel = CancelPvp(
            new_id("cancel"), "ICBC", valid_until(), body.instruction_id, signed_at=now_ms()
        )
        live.node("PBOC").CancelPvp(live.signed(cancel), timeout=RPC_TIMEOUT)


# ---------------------------------------------------------------------------- dual-signed PvP


def dual(amount_cny: int = 30_000, amount_hkd: int = 32_550) -> DualPvp:
    return cross_border_dual_pvp(amount_cny, amount_hkd, "trade settlement, dual-signed")


def test_dual_pvp_across_two_jurisdictions_settles_whole(live: LiveNetwork) -> None:
    """SubmitDualPvp at PBOC gets HKMA's endorsement from its peer node; both legs move."""
    before = live.snapshot()
    body = dual()
    status = live.node("PBOC").SubmitDualPvp(live.dual_signed(body), timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_SETTLED
    after = live.snapshot()
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") - 30_000
    assert after.available("HSBCHK", "CNY") == before.available("HSBCHK", "CNY") + 30_000
    assert after.available("HSBCHK", "HKD") == before.available("HSBCHK", "HKD") - 32_550
    assert after.available("ICBC", "HKD") == before.available("ICBC", "HKD") + 32_550
    logged = logged_entry(live, "HSBCHK", status.receipt.seq)
    signatures = {(s.signer, s.endorses) for s in logged.envelope.signatures}
    assert signatures == {("ICBC", ""), ("HSBCHK", ""), ("PBOC", "ICBC"), ("HKMA", "HSBCHK")}


def test_dual_pvp_refusals_change_nothing(live: LiveNetwork) -> None:
    """SubmitDualPvp: a missing counterparty signature, or a leg without funds, changes nothing."""
    body = dual()
    only_sender = live.signed(body)
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").SubmitDualPvp(only_sender, timeout=RPC_TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.MISSING_SIGNATURE,
    )
    broke = dual(amount_hkd=10**15)
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").SubmitDualPvp(live.dual_signed(broke), timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.INSUFFICIENT_FUNDS,
    )


def test_endorse_dual_pvp_adds_the_counterparty_central_banks_endorsement(
    live: LiveNetwork,
) -> None:
    """EndorseDualPvp at HKMA, called by PBOC's node, endorses HSBCHK's leg of a PBOC-endorsed
    body, without settling."""
    body = dual()
    envelope = wire.envelope_from_proto(live.dual_signed(body))
    unendorsed = wire.envelope_to_proto(envelope)
    as_pboc = live.signed_call("PBOC", "HKMA", "/bridge.v1.CentralBank/EndorseDualPvp")
    live.assert_refused_unchanged(
        lambda: live.node("HKMA").EndorseDualPvp(unendorsed, metadata=as_pboc, timeout=RPC_TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.MISSING_SIGNATURE,
    )
    proposer_endorsed = endorse(envelope, "ICBC", "PBOC", live.key("PBOC"))
    before = live.snapshot()
    reply = live.node("HKMA").EndorseDualPvp(
        wire.envelope_to_proto(proposer_endorsed), metadata=as_pboc, timeout=RPC_TIMEOUT
    )
    returned = wire.envelope_from_proto(reply)
    assert returned.body_bytes == envelope.body_bytes
    endorsement = returned.endorsement("HSBCHK")
    assert endorsement is not None
    assert endorsement.signer == "HKMA"
    party = returned.party_signature("HSBCHK")
    assert party is not None
    assert FastVerifier().verify(
        live.key("HKMA").public_key,
        endorsement_message(returned.body_bytes, party.value, endorsement) or b"",
        endorsement.value,
    )
    assert live.snapshot() == before


# ---------------------------------------------------------------------------- issuance, redemption


def test_request_issuance_issues_the_central_banks_currency(live: LiveNetwork) -> None:
    """RequestIssuance: the node writes and signs the issue at the requested signing time; a
    retry (same id, validity and signing time) is a duplicate."""
    before = live.snapshot()
    request = cb_pb.IssuanceRequest(
        request_id=new_id("req"), valid_until=valid_until(), amount=9_999, signed_at=now_ms()
    )
    signed = live.query("RequestIssuance", request, "KBANK")
    status = live.node("BOT").RequestIssuance(signed, timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_ISSUED
    assert status.receipt.sender == "BOT"
    after = live.snapshot()
    assert after.available("KBANK", "THB") == before.available("KBANK", "THB") + 9_999
    assert after.supply["THB"][0] == before.supply["THB"][0] + 9_999
    retry = live.query("RequestIssuance", request, "KBANK")
    assert live.node("BOT").RequestIssuance(retry, timeout=RPC_TIMEOUT).receipt.duplicate
    assert live.snapshot() == after
    issued = logged_entry(live, "KBANK", status.receipt.seq)
    assert issued.envelope.body.signed_at == request.signed_at
    forged = cb_pb.IssuanceRequest(request_id=new_id("req"), valid_until=valid_until(), amount=1)
    forged = live.query("RequestIssuance", forged, "KBANK", signer="SCB")
    live.assert_refused_unchanged(
        lambda: live.node("BOT").RequestIssuance(forged, timeout=RPC_TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.BAD_SIGNATURE,
    )


def test_a_retry_without_a_signing_time_is_a_duplicate_not_a_conflict(live: LiveNetwork) -> None:
    """Admin Issue and RequestIssuance sent raw without signed_at (the node stamps its clock):
    the very same request again is the recorded receipt with duplicate set, and issues
    nothing more; the same id with another amount is still ID_CONFLICT."""
    before = live.snapshot()
    issue = cb_pb.IssueRequest(
        instruction_id=new_id("issue"),
        valid_until=valid_until(),
        body=types.Issue(to="ICBC", currency="CNY", amount=700),
    )
    first = admin_call(live, "PBOC", "Issue", issue)
    assert first.receipt.outcome == types.OUTCOME_ISSUED
    time.sleep(0.002)  # the node's clock has moved on when it stamps the retry
    again = admin_call(live, "PBOC", "Issue", issue)
    assert again.receipt.duplicate
    assert again.receipt.seq == first.receipt.seq
    other = cb_pb.IssueRequest()
    other.CopyFrom(issue)
    other.body.amount = 701
    live.assert_refused_unchanged(
        lambda: admin_call(live, "PBOC", "Issue", other),
        grpc.StatusCode.ALREADY_EXISTS,
        Reason.ID_CONFLICT,
    )

    request = cb_pb.IssuanceRequest(request_id=new_id("req"), valid_until=valid_until(), amount=900)
    bot = live.node("BOT")
    issued = bot.RequestIssuance(
        live.query("RequestIssuance", request, "KBANK"), timeout=RPC_TIMEOUT
    )
    assert issued.receipt.outcome == types.OUTCOME_ISSUED
    time.sleep(0.002)
    retry = bot.RequestIssuance(
        live.query("RequestIssuance", request, "KBANK"), timeout=RPC_TIMEOUT
    )
    assert retry.receipt.duplicate
    assert retry.receipt.seq == issued.receipt.seq
    after = live.snapshot()
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") + 700
    assert after.available("KBANK", "THB") == before.available("KBANK", "THB") + 900
    assert live.entries_of_instruction("PBOC", issue.instruction_id) == 1


def test_request_redemption_destroys_currency_at_its_issuer(live: LiveNetwork) -> None:
    """RequestRedemption: the bank's balance and outstanding supply fall by the amount."""
    before = live.snapshot()
    body = Redeem(new_id("redeem"), "BOCQ", valid_until(), "CNY", 40_000, signed_at=now_ms())
    status = live.node("PBOC").RequestRedemption(live.signed(body), timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_REDEEMED
    after = live.snapshot()
    assert after.available("BOCQ", "CNY") == before.available("BOCQ", "CNY") - 40_000
    assert after.supply["CNY"] == (before.supply["CNY"][0], before.supply["CNY"][1] + 40_000)
    live.assert_conserved(after)
    too_much = Redeem(new_id("redeem"), "BOCQ", valid_until(), "CNY", 10**15, signed_at=now_ms())
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").RequestRedemption(live.signed(too_much), timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.INSUFFICIENT_FUNDS,
    )
    foreign = Redeem(new_id("redeem"), "HSBCHK", valid_until(), "CNY", 1, signed_at=now_ms())
    live.assert_refused_unchanged(
        lambda: live.node("HKMA").RequestRedemption(live.signed(foreign), timeout=RPC_TIMEOUT),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.NOT_HOME_CENTRAL_BANK,
    )


def test_admin_redeem_completes_a_bank_signed_redemption(live: LiveNetwork) -> None:
    """CentralBankAdmin.Redeem endorses and submits a bank-signed redeem; no token: refused."""
    body = Redeem(new_id("redeem"), "ICBC", valid_until(), "CNY", 1_234, signed_at=now_ms())
    live.assert_refused_unchanged(
        lambda: live.admin("PBOC").Redeem(live.signed(body), timeout=RPC_TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    before = live.snapshot()
    status = live.admin("PBOC").Redeem(
        live.signed(body), metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )
    assert status.receipt.outcome == types.OUTCOME_REDEEMED
    after = live.snapshot()
    assert after.supply["CNY"][1] == before.supply["CNY"][1] + 1_234


# ---------------------------------------------------------------------------- reads


def test_get_balances_returns_the_requesters_own_accounts(live: LiveNetwork) -> None:
    """GetBalances: the signed requester's accounts, optionally one currency; unsigned: refused."""
    live.pay("ICBC", "HSBCHK", 1)
    node = live.node("HKMA")
    reply = node.GetBalances(
        live.query("GetBalances", cb_pb.BalancesQuery(), "HSBCHK"), timeout=RPC_TIMEOUT
    )
    assert {a.participant for a in reply.accounts} == {"HSBCHK"}
    assert {a.currency for a in reply.accounts} >= {"HKD", "CNY"}
    assert (reply.accounts[0].available, reply.accounts[0].held) == live.balance(
        "HSBCHK", reply.accounts[0].currency
    )
    only_hkd = node.GetBalances(
        live.query("GetBalances", cb_pb.BalancesQuery(currency="HKD"), "HSBCHK"),
        timeout=RPC_TIMEOUT,
    )
    assert [a.currency for a in only_hkd.accounts] == ["HKD"]
    error = refusal_of(lambda: node.GetBalances(cb_pb.BalancesQuery(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) is Reason.MISSING_SIGNATURE


def test_get_instruction_status_reports_receipt_and_block(live: LiveNetwork) -> None:
    """GetInstructionStatus: the sender's receipt with its block; empty sender is the requester."""
    pay_id = new_id("pay")
    paid = live.pay("BOCHK", "HSBCHK", 808, instruction_id=pay_id)
    node = live.node("HKMA")
    query = cb_pb.InstructionStatusQuery(sender="BOCHK", instruction_id=pay_id)
    status = node.GetInstructionStatus(
        live.query("GetInstructionStatus", query, "BOCHK"), timeout=RPC_TIMEOUT
    )
    assert status.receipt.seq == paid.receipt.seq
    assert status.receipt.outcome == types.OUTCOME_SETTLED
    assert status.block_height >= 1
    implicit = cb_pb.InstructionStatusQuery(instruction_id=pay_id)
    status = node.GetInstructionStatus(
        live.query("GetInstructionStatus", implicit, "BOCHK"), timeout=RPC_TIMEOUT
    )
    assert status.receipt.seq == paid.receipt.seq
    unknown = cb_pb.InstructionStatusQuery(sender="BOCHK", instruction_id="no-such-id")
    error = refusal_of(
        lambda: node.GetInstructionStatus(
            live.query("GetInstructionStatus", unknown, "BOCHK"), timeout=RPC_TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_get_instruction_status_answers_the_payee_of_a_payment(live: LiveNetwork) -> None:
    """GetInstructionStatus: a payee is a party to the payment, so it may read its status."""
    pay_id = new_id("pay")
    paid = live.pay("ICBC", "BOCQ", 909, instruction_id=pay_id)
    query = cb_pb.InstructionStatusQuery(sender="ICBC", instruction_id=pay_id)

    def read() -> types.InstructionStatus:
        status: types.InstructionStatus = live.node("PBOC").GetInstructionStatus(
            live.query("GetInstructionStatus", query, "BOCQ"), timeout=RPC_TIMEOUT
        )
        return status

    logged_entry(live, "BOCQ", paid.receipt.seq)  # PBOC's replica has indexed it
    assert read().receipt.seq == paid.receipt.seq
    outsider = live.query("GetInstructionStatus", query, "BOCHK")
    error = refusal_of(
        lambda: live.node("HKMA").GetInstructionStatus(outsider, timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) is Reason.NOT_A_PARTY


def test_get_history_pages_through_the_banks_entries(live: LiveNetwork) -> None:
    """GetHistory: pages of the bank's own entries in seq order, next_seq 0 at the end."""
    ids = [live.pay("KBANK", "SCB", 10 + i).receipt.seq for i in range(5)]
    logged_entry(live, "SCB", ids[-1])
    seen: list[int] = []
    next_seq, pages = 1, 0
    while next_seq:
        page = history(live, "SCB", next_seq, 2)
        assert len(page.entries) <= 2
        seen.extend(e.entry.seq for e in page.entries)
        next_seq = page.next_seq
        pages += 1
        assert pages < 50, "paging does not end"
    assert seen == sorted(set(seen))
    assert set(ids) <= set(seen)
    for seq in seen:
        entry = Entry.from_canonical_bytes(
            bytes(history(live, "SCB", seq, 1).entries[0].entry.canonical)
        )
        body = entry.envelope.body
        assert "SCB" in (
            body.sender,
            getattr(body, "payee", ""),
            getattr(body, "to", ""),
            getattr(body, "bank", ""),
        )
    forged = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=1), "SCB", signer="KBANK")
    error = refusal_of(lambda: live.node("BOT").GetHistory(forged, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_watch_settlements_resumes_from_seq_without_duplicates(live: LiveNetwork) -> None:
    """WatchSettlements: the bank's entries from a seq on, live ones after; resume repeats none."""
    node = live.node("HKMA")
    first = [live.pay("HSBCHK", "BOCHK", 100 + i).receipt.seq for i in range(3)]

    def watch(from_seq: int) -> object:
        query = live.query(
            "WatchSettlements", cb_pb.WatchSettlementsQuery(from_seq=from_seq), "BOCHK"
        )
        return node.WatchSettlements(query, timeout=RPC_TIMEOUT)

    stream = watch(first[0])
    try:
        received = [next(stream).entry.seq for _ in range(3)]  # type: ignore[call-overload]
    finally:
        stream.cancel()  # type: ignore[attr-defined]
    assert received == first
    second = [live.pay("HSBCHK", "BOCHK", 200 + i).receipt.seq for i in range(2)]
    stream = watch(received[-1] + 1)
    try:
        resumed = [next(stream).entry.seq for _ in range(2)]  # type: ignore[call-overload]
        live_seq = live.pay("BOCHK", "HSBCHK", 55).receipt.seq
        following = next(stream)  # type: ignore[call-overload]
    finally:
        stream.cancel()  # type: ignore[attr-defined]
    assert resumed == second
    assert following.entry.seq == live_seq
    assert not set(resumed) & set(received)
    entry = wire.entry_from_proto(following.entry)
    assert entry.outcome is Outcome.SETTLED
    assert following.block_height >= 1


# ---------------------------------------------------------------------------- admin


def admin_call(
    live: LiveNetwork, central_bank: str, method: str, request: object
) -> types.InstructionStatus:
    rpc = getattr(live.admin(central_bank), method)
    status: types.InstructionStatus = rpc(
        request, metadata=live.admin_metadata(central_bank), timeout=RPC_TIMEOUT
    )
    return status


def test_admit_bank_lets_a_new_bank_transact(live: LiveNetwork) -> None:
    """AdmitBank: a new PBOC bank can then be issued CNY and pay; admitting twice is refused."""
    key = PrivateKey.generate()
    bank = new_id("CQRCB").replace("-", "")[:20]
    status = admin_call(
        live,
        "PBOC",
        "AdmitBank",
        cb_pb.AdmitBankRequest(
            instruction_id=new_id("admit"),
            valid_until=valid_until(),
            body=types.AdmitBank(bank=bank, public_key=key.public_key),
        ),
    )
    assert status.receipt.outcome == types.OUTCOME_APPLIED
    live.add_key(bank, key)
    listed = live.admin("PBOC").ListBanks(
        cb_pb.ListBanksRequest(), metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )
    assert bank in {p.id for p in listed.participants}

    def issued() -> types.InstructionStatus | None:
        try:
            request = cb_pb.IssuanceRequest(
                request_id="first", valid_until=valid_until(), amount=500
            )
            reply: types.InstructionStatus = live.node("PBOC").RequestIssuance(
                live.query("RequestIssuance", request, bank), timeout=RPC_TIMEOUT
            )
            return reply
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            return None

    assert wait_for(issued, timeout=10, what="the new bank to be known").receipt.outcome == (
        types.OUTCOME_ISSUED
    )
    pay = Pay(
        new_id("pay"), bank, valid_until(), "ICBC", "CNY", 200, "first payment", signed_at=now_ms()
    )
    assert live.node("PBOC").Pay(live.signed(pay), timeout=RPC_TIMEOUT).receipt.outcome == (
        types.OUTCOME_SETTLED
    )
    live.assert_refused_unchanged(
        lambda: admin_call(
            live,
            "PBOC",
            "AdmitBank",
            cb_pb.AdmitBankRequest(
                instruction_id=new_id("admit"),
                valid_until=valid_until(),
                body=types.AdmitBank(bank="ICBC", public_key=key.public_key),
            ),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        Reason.ALREADY_REGISTERED,
    )


def test_suspend_and_reactivate_bank(live: LiveNetwork) -> None:
    """SuspendBank stops a bank's payments; ReactivateBank restores them; foreign bank refused."""
    suspended = admin_call(
        live,
        "PBOC",
        "SuspendBank",
        cb_pb.BankStatusRequest(
            instruction_id=new_id("suspend"), valid_until=valid_until(), bank="BOCQ"
        ),
    )
    assert suspended.receipt.outcome == types.OUTCOME_APPLIED
    try:
        listed = live.admin("PBOC").ListBanks(
            cb_pb.ListBanksRequest(status=types.PARTICIPANT_STATUS_SUSPENDED),
            metadata=live.admin_metadata("PBOC"),
            timeout=RPC_TIMEOUT,
        )
        assert [p.id for p in listed.participants] == ["BOCQ"]
        live.assert_refused_unchanged(
            lambda: live.pay("ICBC", "BOCQ", 10),
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.PARTICIPANT_SUSPENDED,
        )
    finally:
        reactivated = admin_call(
            live,
            "PBOC",
            "ReactivateBank",
            cb_pb.BankStatusRequest(
                instruction_id=new_id("reactivate"), valid_until=valid_until(), bank="BOCQ"
            ),
        )
    assert reactivated.receipt.outcome == types.OUTCOME_APPLIED
    assert live.pay("ICBC", "BOCQ", 10).receipt.outcome == types.OUTCOME_SETTLED
    live.assert_refused_unchanged(
        lambda: admin_call(
            live,
            "PBOC",
            "SuspendBank",
            cb_pb.BankStatusRequest(
                instruction_id=new_id("suspend"), valid_until=valid_until(), bank="HSBCHK"
            ),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.NOT_HOME_CENTRAL_BANK,
    )


def test_set_policy_limits_transfers_in_the_currency(live: LiveNetwork) -> None:
    """SetPolicy: a per-transfer limit refuses larger payments; a bad jurisdiction is refused."""

    def set_policy(limit: int, jurisdictions: tuple[str, ...] = ()) -> types.InstructionStatus:
        return admin_call(
            live,
            "BOT",
            "SetPolicy",
            cb_pb.SetPolicyRequest(
                instruction_id=new_id("policy"),
                valid_until=valid_until(),
                body=types.SetPolicy(per_transfer_limit=limit, allowed_jurisdictions=jurisdictions),
            ),
        )

    assert set_policy(1_000).receipt.outcome == types.OUTCOME_APPLIED
    try:
        live.assert_refused_unchanged(
            lambda: live.pay("KBANK", "SCB", 1_001),
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.TRANSFER_LIMIT_EXCEEDED,
        )
        assert live.pay("KBANK", "SCB", 1_000).receipt.outcome == types.OUTCOME_SETTLED
        live.assert_refused_unchanged(
            lambda: set_policy(0, ("thailand",)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.MALFORMED,
        )
    finally:
        set_policy(0)
    assert live.pay("KBANK", "SCB", 1_001).receipt.outcome == types.OUTCOME_SETTLED


def test_issue_refuses_a_non_positive_amount(live: LiveNetwork) -> None:
    """Admin Issue of zero is refused INVALID_ARGUMENT and changes nothing."""
    request = cb_pb.IssueRequest(
        instruction_id=new_id("issue"),
        valid_until=valid_until(),
        body=types.Issue(to="ICBC", currency="CNY", amount=0),
    )
    live.assert_refused_unchanged(
        lambda: admin_call(live, "PBOC", "Issue", request),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.NON_POSITIVE_AMOUNT,
    )


def test_freeze_account_blocks_its_payments_until_unfrozen(live: LiveNetwork) -> None:
    """FreezeAccount: a frozen account cannot pay; unfrozen it can; foreign currency refused."""

    def freeze(frozen: bool) -> types.InstructionStatus:
        return admin_call(
            live,
            "HKMA",
            "FreezeAccount",
            cb_pb.FreezeAccountRequest(
                instruction_id=new_id("freeze"),
                valid_until=valid_until(),
                body=types.FreezeAccount(participant="BOCHK", currency="HKD", frozen=frozen),
            ),
        )

    assert freeze(True).receipt.outcome == types.OUTCOME_APPLIED
    try:
        assert live.balance("BOCHK", "HKD") == live.balance("BOCHK", "HKD")
        accounts = live.admin("HKMA").ListAccounts(
            cb_pb.ListAccountsRequest(participant="BOCHK", currency="HKD"),
            metadata=live.admin_metadata("HKMA"),
            timeout=RPC_TIMEOUT,
        )
        assert [a.frozen for a in accounts.accounts] == [True]
        live.assert_refused_unchanged(
            lambda: live.pay("BOCHK", "HSBCHK", 1),
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.ACCOUNT_FROZEN,
        )
    finally:
        assert freeze(False).receipt.outcome == types.OUTCOME_APPLIED
    assert live.pay("BOCHK", "HSBCHK", 1).receipt.outcome == types.OUTCOME_SETTLED


def test_list_banks_lists_the_central_banks_own_banks(live: LiveNetwork) -> None:
    """ListBanks: HKMA's commercial banks only, not itself; no token: UNAUTHENTICATED."""
    listed = live.admin("HKMA").ListBanks(
        cb_pb.ListBanksRequest(), metadata=live.admin_metadata("HKMA"), timeout=RPC_TIMEOUT
    )
    assert sorted(p.id for p in listed.participants) == ["BOCHK", "HSBCHK"]
    assert all(p.kind == types.PARTICIPANT_KIND_COMMERCIAL_BANK for p in listed.participants)
    error = refusal_of(
        lambda: live.admin("HKMA").ListBanks(cb_pb.ListBanksRequest(), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_admin_currency_supply_is_the_central_banks_own_currency(live: LiveNetwork) -> None:
    """GetCurrencySupply (admin): own currency, also when left empty; another's is refused."""
    admin = live.admin("BOT")
    metadata = live.admin_metadata("BOT")
    named = admin.GetCurrencySupply(
        types.CurrencySupplyRequest(currency="THB"), metadata=metadata, timeout=RPC_TIMEOUT
    )
    assert named.currency == "THB"
    assert named.outstanding == named.issued - named.redeemed > 0
    implicit = admin.GetCurrencySupply(
        types.CurrencySupplyRequest(), metadata=metadata, timeout=RPC_TIMEOUT
    )
    assert implicit == named
    error = refusal_of(
        lambda: admin.GetCurrencySupply(
            types.CurrencySupplyRequest(currency="CNY"), metadata=metadata, timeout=RPC_TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) is Reason.NOT_ISSUER


def test_list_accounts_covers_the_currency_and_the_central_banks_banks(live: LiveNetwork) -> None:
    """ListAccounts: every CNY account (wherever held) and every account of PBOC's banks."""
    live.pay("ICBC", "HSBCHK", 1)
    logged_entry(live, "ICBC", live.pay("HSBCHK", "ICBC", 1).receipt.seq)  # PBOC replayed both

    def listed_accounts() -> set[tuple[str, str]]:
        listed = live.admin("PBOC").ListAccounts(
            cb_pb.ListAccountsRequest(), metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
        )
        for account in listed.accounts:
            assert account.currency == "CNY" or live.home_of(account.participant) == "PBOC"
        return {(a.participant, a.currency) for a in listed.accounts}

    seen = listed_accounts()
    assert ("HSBCHK", "CNY") in seen
    assert ("ICBC", "HKD") in seen
    assert ("HSBCHK", "HKD") not in seen
    assert ("KBANK", "THB") not in seen
    only_cny = live.admin("PBOC").ListAccounts(
        cb_pb.ListAccountsRequest(currency="CNY"),
        metadata=live.admin_metadata("PBOC"),
        timeout=RPC_TIMEOUT,
    )
    assert {a.currency for a in only_cny.accounts} == {"CNY"}


def test_the_node_signs_admin_instructions_with_the_central_banks_key(live: LiveNetwork) -> None:
    """An admin instruction in the log carries exactly the central bank's verifying signature."""
    status = live.issue("BOCHK", 321)
    entry = logged_entry(live, "BOCHK", status.receipt.seq)
    assert entry.seq == status.receipt.seq
    assert entry.outcome is Outcome.ISSUED
    (signature,) = entry.envelope.signatures
    assert signature.signer == "HKMA"
    assert FastVerifier().verify(
        live.key("HKMA").public_key,
        b"cbdc-bridge/v1/instruction\x00" + entry.envelope.body_bytes,
        signature.value,
    )
    assert isinstance(entry.envelope, Envelope)
