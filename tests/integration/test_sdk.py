"""The bank SDK against a running network: every BankClient method, its errors and retries.

One network (bridge, PBOC/CNY with ICBC and BOCQ, HKMA/HKD with HSBCHK and BOCHK) runs for the
whole module on free loopback ports and is always stopped. The retry tests also run a small
in-process gRPC server that fails on purpose, to see exactly what the client resends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import PrivateKey
from bridge.domain import DualPvp, Outcome, ParticipantStatus
from bridge.errors import Reason
from participants.launcher import Network, prepare_network
from participants.sdk import (
    AsyncBankClient,
    BankClient,
    BridgeRpcError,
    CentralBankAdminClient,
    RetryPolicy,
    SignedDualPvp,
    new_instruction_id,
)

FUNDS = {"ICBC": ("CNY", 50_000_000), "BOCQ": ("CNY", 1_000_000), "HSBCHK": ("HKD", 50_000_000)}
FUNDS |= {"BOCHK": ("HKD", 1_000_000)}


@dataclass
class Desks:
    """The module's network with a client per bank and per central bank."""

    network: Network
    banks: dict[str, BankClient]
    admins: dict[str, CentralBankAdminClient]

    @property
    def directory(self) -> Path:
        return self.network.directory

    def __getitem__(self, bank: str) -> BankClient:
        return self.banks[bank]

    def available(self, bank: str, currency: str) -> int:
        return self.banks[bank].balance(currency).available


@pytest.fixture(scope="module")
def desks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desks]:
    """A started two-jurisdiction network, funded banks and their clients; always stopped."""
    directory = tmp_path_factory.mktemp("sdk-network")
    network = prepare_network(directory, central_banks=2, banks_per_central_bank=2).start()
    banks: dict[str, BankClient] = {}
    admins: dict[str, CentralBankAdminClient] = {}
    try:
        for cb in network.config.central_banks:
            admins[cb.id] = CentralBankAdminClient.from_network(directory, cb.id)
            for bank in cb.banks:
                banks[bank.id] = BankClient.from_network(directory, bank.id)
                banks[bank.id].wait_ready(timeout=60)
        for bank_id, (currency, amount) in FUNDS.items():
            home = network.config.home_of(bank_id).id
            assert admins[home].issue(bank_id, currency, amount).outcome is Outcome.ISSUED
        yield Desks(network, banks, admins)
    finally:
        for client in banks.values():
            client.close()
        for admin in admins.values():
            admin.close()
        network.stop()


# ---------------------------------------------------------------------------- payments


def test_pay_settles_at_once_and_moves_the_amount(desks: Desks) -> None:
    """A payment answers SETTLED with its log position, and moves exactly its amount."""
    icbc_before, bocq_before = desks.available("ICBC", "CNY"), desks.available("BOCQ", "CNY")
    result = desks["ICBC"].pay("BOCQ", "CNY", 12_345, reference="INV-CQ-2025-0001")
    assert result.outcome is Outcome.SETTLED
    assert result.settled
    assert result.sender == "ICBC"
    assert result.seq > 0
    assert not result.duplicate
    assert desks.available("ICBC", "CNY") == icbc_before - 12_345
    assert desks.available("BOCQ", "CNY") == bocq_before + 12_345


def test_generated_instruction_ids_are_valid_and_unique(desks: Desks) -> None:
    """Generated ids fit the bridge's id pattern and differ call to call."""
    first = desks["ICBC"].pay("BOCQ", "CNY", 1)
    second = desks["ICBC"].pay("BOCQ", "CNY", 1)
    assert first.instruction_id != second.instruction_id
    assert len(first.instruction_id) <= 64
    assert first.instruction_id.isalnum()


def test_retry_with_same_id_returns_duplicate_and_moves_funds_once(desks: Desks) -> None:
    """Resubmitting an instruction id answers the original outcome and settles nothing twice."""
    before = desks.available("BOCQ", "CNY")
    instruction_id = new_instruction_id("retry-")
    first = desks["ICBC"].pay("BOCQ", "CNY", 777, "INV-7", instruction_id)
    again = desks["ICBC"].pay("BOCQ", "CNY", 777, "INV-7", instruction_id)
    assert not first.duplicate
    assert again.duplicate
    assert (again.seq, again.outcome, again.body_hash) == (
        first.seq,
        first.outcome,
        first.body_hash,
    )
    assert desks.available("BOCQ", "CNY") == before + 777


def test_retry_from_another_process_with_same_validity_and_signing_time_is_a_duplicate(
    desks: Desks,
) -> None:
    """A fresh client resending the same id and body (same valid_until and signed_at) gets the
    original; a fresh client with another signing time sends another body: ID_CONFLICT."""
    signed_at = int(time.time() * 1000)
    instruction_id, valid_until = new_instruction_id(), signed_at + 60_000
    first = desks["ICBC"].pay(
        "BOCQ",
        "CNY",
        5,
        instruction_id=instruction_id,
        valid_until=valid_until,
        signed_at=signed_at,
    )
    with BankClient.from_network(desks.directory, "ICBC") as other:
        again = other.pay(
            "BOCQ",
            "CNY",
            5,
            instruction_id=instruction_id,
            valid_until=valid_until,
            signed_at=signed_at,
        )
        assert again.duplicate
        assert again.seq == first.seq
    with (
        BankClient.from_network(desks.directory, "ICBC") as third,
        pytest.raises(BridgeRpcError) as info,
    ):
        third.pay(
            "BOCQ",
            "CNY",
            5,
            instruction_id=instruction_id,
            valid_until=valid_until,
            signed_at=signed_at + 1,
        )
    assert info.value.reason is Reason.ID_CONFLICT


def test_same_id_with_other_terms_is_refused_as_a_conflict(desks: Desks) -> None:
    """Reusing an id for a different body is refused with ID_CONFLICT / ALREADY_EXISTS."""
    instruction_id = new_instruction_id()
    desks["ICBC"].pay("BOCQ", "CNY", 10, instruction_id=instruction_id)
    with pytest.raises(BridgeRpcError) as info:
        desks["ICBC"].pay("BOCQ", "CNY", 11, instruction_id=instruction_id)
    assert info.value.reason is Reason.ID_CONFLICT
    assert info.value.code is grpc.StatusCode.ALREADY_EXISTS


def test_insufficient_funds_raises_with_reason_and_changes_nothing(desks: Desks) -> None:
    """Paying more than is available raises INSUFFICIENT_FUNDS / FAILED_PRECONDITION."""
    before = desks["BOCQ"].balances()
    with pytest.raises(BridgeRpcError) as info:
        desks["BOCQ"].pay("ICBC", "CNY", 10**15)
    assert info.value.reason is Reason.INSUFFICIENT_FUNDS
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert not info.value.transient
    assert "available" in info.value.message
    assert desks["BOCQ"].balances() == before


def test_unknown_payee_raises_not_found(desks: Desks) -> None:
    """Paying a bank the bridge does not know raises UNKNOWN_PARTICIPANT / NOT_FOUND."""
    with pytest.raises(BridgeRpcError) as info:
        desks["ICBC"].pay("NOSUCHBANK", "CNY", 100)
    assert info.value.reason is Reason.UNKNOWN_PARTICIPANT
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_bad_signature_raises_unauthenticated(desks: Desks) -> None:
    """Signing as ICBC with another key raises BAD_SIGNATURE / UNAUTHENTICATED."""
    address = desks.network.config.central_bank("PBOC").address
    with BankClient(address, "ICBC", PrivateKey.generate()) as impostor:
        with pytest.raises(BridgeRpcError) as paying:
            impostor.pay("BOCQ", "CNY", 100)
        with pytest.raises(BridgeRpcError) as reading:
            impostor.balances()
    for error in (paying.value, reading.value):
        assert error.reason is Reason.BAD_SIGNATURE
        assert error.code is grpc.StatusCode.UNAUTHENTICATED


def test_malformed_instruction_is_refused_before_it_is_sent(desks: Desks) -> None:
    """A non-positive amount raises NON_POSITIVE_AMOUNT / INVALID_ARGUMENT locally."""
    with pytest.raises(BridgeRpcError) as info:
        desks["ICBC"].pay("BOCQ", "CNY", 0)
    assert info.value.reason is Reason.NON_POSITIVE_AMOUNT
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------- two-phase PvP


def propose(desks: Desks, cny: int = 100_000, hkd: int = 108_500) -> str:
    result = desks["ICBC"].propose_pvp(
        "HSBCHK",
        pay=("CNY", cny),
        receive=("HKD", hkd),
        rate="1.085",
        settle_within_ms=60_000,
        reference="FX for INV-CQ-2025-0117",
    )
    assert result.outcome is Outcome.HELD
    return result.instruction_id


def test_propose_holds_and_accept_settles_both_legs(desks: Desks) -> None:
    """Proposing holds our leg; accepting (terms fetched) settles both legs atomically."""
    icbc_cny, hsbc_hkd = desks["ICBC"].balance("CNY"), desks["HSBCHK"].balance("HKD")
    pvp_id = propose(desks)
    held = desks["ICBC"].balance("CNY")
    assert (held.available, held.held) == (icbc_cny.available - 100_000, icbc_cny.held + 100_000)
    info = desks["HSBCHK"].pvp("ICBC", pvp_id)
    assert info.pending
    assert info.counterparty == "HSBCHK"
    assert (info.pay, info.receive, info.rate) == (("CNY", 100_000), ("HKD", 108_500), "1.085")
    accepted = desks["HSBCHK"].accept_pvp("ICBC", pvp_id)
    assert accepted.outcome is Outcome.SETTLED
    assert accepted.sender == "HSBCHK"
    assert desks["ICBC"].balance("CNY").held == icbc_cny.held
    assert desks["HSBCHK"].balance("HKD").available == hsbc_hkd.available - 108_500
    assert desks["HSBCHK"].balance("CNY").available >= 100_000
    closed = desks["ICBC"].pvp("ICBC", pvp_id)
    assert closed.status is Outcome.SETTLED
    assert closed.closed_seq == accepted.seq


def test_accept_with_other_terms_is_refused(desks: Desks) -> None:
    """Accepting with a terms hash that is not the proposal's raises PVP_TERMS_MISMATCH."""
    pvp_id = propose(desks)
    with pytest.raises(BridgeRpcError) as info:
        desks["HSBCHK"].accept_pvp("ICBC", pvp_id, terms_hash="0" * 64)
    assert info.value.reason is Reason.PVP_TERMS_MISMATCH
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    desks["ICBC"].cancel_pvp(pvp_id)


def test_reject_releases_the_proposers_hold(desks: Desks) -> None:
    """The counterparty's rejection closes the PvP as REJECTED and releases the hold."""
    before = desks["ICBC"].balance("CNY")
    pvp_id = propose(desks)
    result = desks["HSBCHK"].reject_pvp("ICBC", pvp_id)
    assert result.outcome is Outcome.REJECTED
    assert desks["ICBC"].balance("CNY") == before
    assert desks["HSBCHK"].pvp("ICBC", pvp_id).status is Outcome.REJECTED


def test_cancel_releases_our_hold_and_blocks_acceptance(desks: Desks) -> None:
    """Cancelling our proposal releases the hold; a later acceptance is PVP_NOT_PENDING."""
    before = desks["ICBC"].balance("CNY")
    pvp_id = propose(desks)
    terms = desks["HSBCHK"].pvp("ICBC", pvp_id).terms_hash
    assert desks["ICBC"].cancel_pvp(pvp_id).outcome is Outcome.CANCELLED
    assert desks["ICBC"].balance("CNY") == before
    with pytest.raises(BridgeRpcError) as info:
        desks["HSBCHK"].accept_pvp("ICBC", pvp_id, terms_hash=terms)
    assert info.value.reason is Reason.PVP_NOT_PENDING


def test_pvp_of_others_is_not_visible(desks: Desks) -> None:
    """A bank that is not a party to a PvP cannot read it: to it the PvP does not exist."""
    pvp_id = propose(desks)
    with pytest.raises(BridgeRpcError) as info:
        desks["BOCQ"].pvp("ICBC", pvp_id)
    assert info.value.reason is Reason.UNKNOWN_PVP
    desks["ICBC"].cancel_pvp(pvp_id)


# ---------------------------------------------------------------------------- dual-signed PvP


def test_dual_pvp_signed_offline_settles_across_jurisdictions(desks: Desks) -> None:
    """HSBCHK signs its side to JSON; ICBC adds its signature, submits, both legs settle."""
    icbc_hkd, hsbc_cny = desks.available("ICBC", "HKD"), desks.available("HSBCHK", "CNY")
    offer = desks["HSBCHK"].sign_dual_pvp(
        "ICBC", pay=("HKD", 54_000), receive=("CNY", 50_000), rate="0.925926", reference="INV-88"
    )
    assert offer.submitter == "ICBC"
    assert offer.signer == "HSBCHK"
    received = SignedDualPvp.from_json(offer.to_json())
    assert received == offer
    result = desks["ICBC"].submit_dual_pvp(received)
    assert result.outcome is Outcome.SETTLED
    assert result.sender == "ICBC"
    assert desks.available("ICBC", "HKD") == icbc_hkd + 54_000
    assert desks.available("HSBCHK", "CNY") == hsbc_cny + 50_000


def test_dual_pvp_submitted_by_the_wrong_bank_is_refused(desks: Desks) -> None:
    """Only the bank the offer names as submitter may submit it (NOT_A_PARTY, nothing sent)."""
    offer = desks["HSBCHK"].sign_dual_pvp("ICBC", pay=("HKD", 10), receive=("CNY", 9), rate="0.9")
    with pytest.raises(BridgeRpcError) as info:
        desks["BOCQ"].submit_dual_pvp(offer)
    assert info.value.reason is Reason.NOT_A_PARTY


def test_tampered_dual_pvp_is_refused(desks: Desks) -> None:
    """Changing the signed terms breaks the counterparty's signature (BAD_SIGNATURE)."""
    offer = desks["HSBCHK"].sign_dual_pvp("ICBC", pay=("HKD", 10), receive=("CNY", 9), rate="0.9")
    tampered = SignedDualPvp(replace(offer.body, pay_amount=1), offer.signature)
    assert isinstance(tampered.body, DualPvp)
    with pytest.raises(BridgeRpcError) as info:
        desks["ICBC"].submit_dual_pvp(tampered)
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_dual_pvp_document_must_be_well_formed() -> None:
    """A document that is not a signed dual PvP raises ValueError when read."""
    with pytest.raises(ValueError, match="dual-pvp"):
        SignedDualPvp.from_json('{"format": "something else"}')
    with pytest.raises(ValueError, match="invalid"):
        SignedDualPvp.from_json('{"format": "cbdc-bridge/dual-pvp/v1", "body": {}}')


# ---------------------------------------------------------------------------- issuance


def test_request_issuance_credits_our_central_banks_currency(desks: Desks) -> None:
    """The home central bank issues its currency on request; the result names its instruction."""
    before = desks.available("BOCQ", "CNY")
    result = desks["BOCQ"].request_issuance(250_000)
    assert result.outcome is Outcome.ISSUED
    assert result.sender == "PBOC"
    assert result.instruction_id.startswith("issue-BOCQ-")
    assert desks.available("BOCQ", "CNY") == before + 250_000
    final = desks["BOCQ"].wait_final(result.instruction_id, sender="PBOC")
    assert final.final
    assert final.seq == result.seq


def test_redeem_destroys_currency_at_its_issuer(desks: Desks) -> None:
    """Redeeming lowers our balance and the currency's outstanding supply by the amount."""
    supply = desks.admins["PBOC"].supply()
    before = desks.available("ICBC", "CNY")
    result = desks["ICBC"].redeem("CNY", 30_000)
    assert result.outcome is Outcome.REDEEMED
    assert desks.available("ICBC", "CNY") == before - 30_000
    after = desks.admins["PBOC"].supply()
    assert after.redeemed == supply.redeemed + 30_000
    assert after.outstanding == supply.outstanding - 30_000


# ---------------------------------------------------------------------------- reads


def test_balances_list_each_currency_held(desks: Desks) -> None:
    """balances() maps each currency we hold to its account; balance() of others is zero."""
    balances = desks["ICBC"].balances()
    assert "CNY" in balances
    assert balances["CNY"].available > 0
    assert list(balances) == sorted(balances)
    only = desks["ICBC"].balances("CNY")
    assert list(only) == ["CNY"]
    assert desks["BOCQ"].balance("SGD").total == 0


def test_status_and_wait_final_report_the_block(desks: Desks) -> None:
    """status() finds our instruction; wait_final() returns once its block is final."""
    result = desks["ICBC"].pay("BOCQ", "CNY", 42)
    status = desks["ICBC"].wait_settled(result.instruction_id, timeout=10)
    assert (status.seq, status.outcome) == (result.seq, Outcome.SETTLED)
    final = desks["ICBC"].wait_final(result.instruction_id, timeout=20)
    assert final.final
    assert final.block_height > 0
    assert desks["ICBC"].status(result.instruction_id).final


def test_status_of_unknown_instruction_is_not_found(desks: Desks) -> None:
    """An id the bridge never recorded is UNKNOWN_INSTRUCTION; waiting for it times out so."""
    with pytest.raises(BridgeRpcError) as info:
        desks["ICBC"].status("never-sent")
    assert info.value.reason is Reason.UNKNOWN_INSTRUCTION
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    started = time.monotonic()
    with pytest.raises(BridgeRpcError) as waited:
        desks["ICBC"].wait_settled("never-sent", timeout=0.5)
    assert waited.value.reason is Reason.UNKNOWN_INSTRUCTION
    assert time.monotonic() - started < 3


def test_history_lists_our_entries_in_order_with_legs(desks: Desks) -> None:
    """history() pages through entries we are party to, oldest first, with what moved."""
    paid = desks["BOCHK"].pay("HSBCHK", "HKD", 321, reference="B/L MSCU7712093")
    desks["BOCHK"].wait_final(paid.instruction_id)
    entries = desks["BOCHK"].history()
    seqs = [e.seq for e in entries]
    assert seqs == sorted(set(seqs))
    mine = next(e for e in entries if e.instruction_id == paid.instruction_id)
    assert mine.kind == "pay"
    assert mine.outcome is Outcome.SETTLED
    assert mine.reference == "B/L MSCU7712093"
    assert mine.block_height > 0
    assert [(leg.payer, leg.payee, leg.amount) for leg in mine.legs] == [("BOCHK", "HSBCHK", 321)]
    parties = [{e.sender, *(p for leg in e.legs for p in (leg.payer, leg.payee))} for e in entries]
    assert all("BOCHK" in involved for involved in parties)
    first_page = desks["BOCHK"].history(limit=1)
    rest = desks["BOCHK"].history(first_page[-1].seq + 1)
    assert [e.seq for e in [*first_page, *rest]] == seqs


def test_history_shows_the_legs_an_acceptance_settled(desks: Desks) -> None:
    """An accepted PvP's entry carries both legs, even from a history page that starts at it."""
    pvp_id = propose(desks, cny=1_000, hkd=1_085)
    accepted = desks["HSBCHK"].accept_pvp("ICBC", pvp_id)
    desks["HSBCHK"].wait_final(accepted.instruction_id)
    with BankClient.from_network(desks.directory, "HSBCHK") as fresh:
        (entry,) = fresh.history(accepted.seq, limit=1)
    assert entry.kind == "pvp_accept"
    assert entry.seq == accepted.seq
    assert {(leg.payer, leg.currency, leg.amount) for leg in entry.legs} == {
        ("ICBC", "CNY", 1_000),
        ("HSBCHK", "HKD", 1_085),
    }


class CallCounter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary calls a client makes, by method."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append(details.method.rsplit("/", 1)[-1])
        return continuation(details, request)


def test_accept_of_a_proposal_already_read_makes_one_call(desks: Desks) -> None:
    """Accepting a proposal the client read in its history signs its terms without fetching."""
    pvp_id = propose(desks, cny=2_000, hkd=2_170)
    proposed = desks["ICBC"].status(pvp_id)
    with BankClient.from_network(desks.directory, "HSBCHK") as client:
        (entry,) = client.history(proposed.seq, limit=1)
        assert (entry.kind, entry.instruction.instruction_id) == ("pvp_propose", pvp_id)
        counter = CallCounter()
        client._stub = pb_grpc.CentralBankStub(grpc.intercept_channel(client._channel, counter))
        accepted = client.accept_pvp("ICBC", pvp_id)
    assert accepted.outcome is Outcome.SETTLED
    assert counter.calls == ["AcceptPvp"]


def test_watch_resumes_from_a_seq_without_duplicates(desks: Desks) -> None:
    """watch() replays from a seq, then streams live; resuming at last + 1 repeats nothing."""
    bank = desks["BOCHK"]
    start = bank.pay("HSBCHK", "HKD", 11)
    first: list[int] = []
    for entry in bank.watch(start.seq, timeout=20):
        first.append(entry.seq)
        break
    received: list[int] = []

    def follow() -> None:
        for entry in bank.watch(first[-1] + 1, timeout=20):
            received.append(entry.seq)
            if len(received) == 2:
                return

    follower = threading.Thread(target=follow)
    follower.start()
    later = [bank.pay("HSBCHK", "HKD", 12 + n).seq for n in range(2)]
    follower.join(timeout=25)
    assert first == [start.seq]
    assert received == later
    assert len(set(first + received)) == 3


async def test_async_client_pays_proposes_and_watches(desks: Desks) -> None:
    """AsyncBankClient offers the same operations, awaited, with the same results."""
    async with (
        AsyncBankClient.from_network(desks.directory, "ICBC") as icbc,
        AsyncBankClient.from_network(desks.directory, "HSBCHK") as hsbc,
    ):
        await icbc.wait_ready()
        before = await icbc.balance("CNY")
        paid = await icbc.pay("BOCQ", "CNY", 500, reference="async")
        assert paid.outcome is Outcome.SETTLED
        proposed = await icbc.propose_pvp(
            "HSBCHK", pay=("CNY", 10), receive=("HKD", 11), rate="1.1"
        )
        accepted = await hsbc.accept_pvp("ICBC", proposed.instruction_id)
        assert accepted.outcome is Outcome.SETTLED
        assert (await icbc.balance("CNY")).available == before.available - 510
        final = await icbc.wait_final(paid.instruction_id)
        assert final.final
        seen = []
        async for entry in icbc.watch(paid.seq, timeout=20):
            seen.append(entry)
            if len(seen) == 3:
                break
        assert [e.seq for e in seen] == [paid.seq, proposed.seq, accepted.seq]
        assert seen[2].legs
        assert (await icbc.history(paid.seq, limit=1))[0].seq == paid.seq
        with pytest.raises(BridgeRpcError) as info:
            await icbc.pay("BOCQ", "CNY", 10**15)
        assert info.value.reason is Reason.INSUFFICIENT_FUNDS


# ---------------------------------------------------------------------------- central bank desk


def test_admin_admits_a_bank_that_can_then_pay(desks: Desks, tmp_path: Path) -> None:
    """A bank admitted through the admin client can sign, be funded and pay at once."""
    key = PrivateKey.generate()
    key.save(tmp_path / "CQRCB.pem")
    pboc = desks.admins["PBOC"]
    assert pboc.admit_bank("CQRCB", key.public_key).outcome is Outcome.APPLIED
    assert "CQRCB" in {p.id for p in pboc.list_banks()}
    with BankClient.from_network(
        desks.directory, "CQRCB", central_bank="PBOC", key_path=tmp_path / "CQRCB.pem"
    ) as newcomer:
        newcomer.wait_ready()
        pboc.issue("CQRCB", "CNY", 9_000)
        assert newcomer.pay("ICBC", "CNY", 1_000).settled
        assert newcomer.balance("CNY").available == 8_000
    accounts = pboc.list_accounts(participant="CQRCB")
    assert [(a.currency, a.available) for a in accounts] == [("CNY", 8_000)]


def test_admin_suspension_freeze_and_policy_refuse_payments(desks: Desks) -> None:
    """Suspending, freezing and a transfer limit each refuse a payment, and are undone."""
    pboc = desks.admins["PBOC"]
    pboc.suspend_bank("BOCQ")
    try:
        assert {p.id for p in pboc.list_banks(status=ParticipantStatus.SUSPENDED)} == {"BOCQ"}
        with pytest.raises(BridgeRpcError) as suspended:
            desks["BOCQ"].pay("ICBC", "CNY", 1)
        assert suspended.value.reason is Reason.PARTICIPANT_SUSPENDED
    finally:
        pboc.reactivate_bank("BOCQ")
    pboc.freeze("BOCQ")
    try:
        with pytest.raises(BridgeRpcError) as frozen:
            desks["BOCQ"].pay("ICBC", "CNY", 1)
        assert frozen.value.reason is Reason.ACCOUNT_FROZEN
        assert desks["BOCQ"].balance("CNY").frozen
    finally:
        pboc.unfreeze("BOCQ")
    pboc.set_policy(per_transfer_limit=100)
    try:
        with pytest.raises(BridgeRpcError) as limited:
            desks["BOCQ"].pay("ICBC", "CNY", 101)
        assert limited.value.reason is Reason.TRANSFER_LIMIT_EXCEEDED
    finally:
        pboc.set_policy()
    assert desks["BOCQ"].pay("ICBC", "CNY", 101).settled


def test_admin_calls_need_the_token(desks: Desks) -> None:
    """An admin client with a wrong token is refused UNAUTHENTICATED."""
    address = desks.network.config.central_bank("PBOC").admin_address
    with (
        CentralBankAdminClient(address, "PBOC", "wrong-token", currency="CNY") as intruder,
        pytest.raises(BridgeRpcError) as info,
    ):
        intruder.issue("ICBC", "CNY", 1)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------- deadlines and retries


class FlakyNode(pb_grpc.CentralBankServicer):
    """A CentralBank that fails the first `failures` Pay calls with `code`, or stalls."""

    def __init__(self, failures: int, code: grpc.StatusCode, stall: float = 0.0) -> None:
        self.failures = failures
        self.code = code
        self.stall = stall
        self.requests: list[bytes] = []

    def Pay(self, request: types.SignedInstruction, context: Any) -> types.InstructionStatus:  # noqa: N802
        self.requests.append(request.SerializeToString(deterministic=True))
        if self.stall:
            time.sleep(self.stall)
        if len(self.requests) <= self.failures:
            context.abort(self.code, "node restarting")
        receipt = types.Receipt(
            sender="ICBC",
            instruction_id=request.instruction.instruction_id,
            body_hash=b"\x01" * 32,
            outcome=types.OUTCOME_SETTLED,
            seq=7,
        )
        return types.InstructionStatus(receipt=receipt)


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyNode, str]]:
    """An in-process CentralBank server whose behaviour each test sets."""
    node = FlakyNode(0, grpc.StatusCode.UNAVAILABLE)  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CentralBankServicer_to_server(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield node, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_unavailable_is_retried_with_the_same_signed_instruction(
    flaky: tuple[FlakyNode, str],
) -> None:
    """Two UNAVAILABLE answers, then success: the same bytes (same id, same signature) thrice."""
    node, address = flaky
    node.failures = 2
    retry = RetryPolicy(max_attempts=5, initial_backoff=0.01)
    with BankClient(address, "ICBC", PrivateKey.generate(), retry=retry) as client:
        result = client.pay("BOCQ", "CNY", 100)
    assert result.outcome is Outcome.SETTLED
    assert len(node.requests) == 3
    assert len(set(node.requests)) == 1


def test_retries_are_bounded(flaky: tuple[FlakyNode, str]) -> None:
    """A node that stays UNAVAILABLE gets max_attempts tries, then a transient error."""
    node, address = flaky
    node.failures = 100
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with (
        BankClient(address, "ICBC", PrivateKey.generate(), retry=retry) as client,
        pytest.raises(BridgeRpcError) as info,
    ):
        client.pay("BOCQ", "CNY", 100)
    assert len(node.requests) == 3
    assert info.value.transient
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_refusals_are_not_retried(flaky: tuple[FlakyNode, str]) -> None:
    """A refusal on the merits (here FAILED_PRECONDITION) is raised after one try."""
    node, address = flaky
    node.failures, node.code = 100, grpc.StatusCode.FAILED_PRECONDITION
    with (
        BankClient(address, "ICBC", PrivateKey.generate()) as client,
        pytest.raises(BridgeRpcError) as info,
    ):
        client.pay("BOCQ", "CNY", 100)
    assert len(node.requests) == 1
    assert not info.value.transient


def test_every_call_has_a_deadline(flaky: tuple[FlakyNode, str]) -> None:
    """A node that does not answer in time raises a transient DEADLINE_EXCEEDED error."""
    node, address = flaky
    node.stall = 2.0
    started = time.monotonic()
    with (
        BankClient(address, "ICBC", PrivateKey.generate()) as client,
        pytest.raises(BridgeRpcError) as info,
    ):
        client.pay("BOCQ", "CNY", 100, timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.transient


def test_async_client_retries_unavailable_too(flaky: tuple[FlakyNode, str]) -> None:
    """AsyncBankClient resends the same instruction after UNAVAILABLE as well."""
    node, address = flaky
    node.failures = 1

    async def pay() -> Outcome:
        retry = RetryPolicy(initial_backoff=0.01)
        async with AsyncBankClient(address, "ICBC", PrivateKey.generate(), retry=retry) as client:
            return (await client.pay("BOCQ", "CNY", 100)).outcome

    assert asyncio.run(pay()) is Outcome.SETTLED
    assert len(node.requests) == 2
    assert len(set(node.requests)) == 1


def test_payment_survives_a_central_bank_node_restart(desks: Desks) -> None:
    """With the node down, pay() keeps retrying the same instruction until it is back."""
    node = desks.network.central_banks["PBOC"]
    node.stop()
    restarter = threading.Timer(1.0, desks.network.restart_central_bank, args=("PBOC",))
    restarter.start()
    before = desks.available("HSBCHK", "CNY")
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.1, max_backoff=0.5)
    with BankClient.from_network(desks.directory, "ICBC", retry=patient) as client:
        result = client.pay("HSBCHK", "CNY", 2_000, timeout=45)
    restarter.join()
    assert result.outcome is Outcome.SETTLED
    assert desks.available("HSBCHK", "CNY") == before + 2_000
