"""Who may do what: the authorization matrix of the network, over real node processes.

A bank cannot pay from, read, or accept for another bank's account, through its own central
bank's node or a foreign one; a central bank cannot issue, freeze or supervise another's
currency; admin calls need the central bank's own token; unsigned, wrongly signed, replayed
and expired instructions are refused. Each refusal must carry the status code DESIGN.md and
`bridge.errors.STATUS_OF_REASON` give its reason, and after each one every balance, every
supply, the sealed height and the entry count are exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import PrivateKey
from bridge.domain import (
    AcceptPvp,
    CancelPvp,
    DualPvp,
    Envelope,
    Instruction,
    Pay,
    ProposePvp,
    Redeem,
    RejectPvp,
    Signature,
    party_message,
)
from bridge.errors import STATUS_OF_REASON, Reason
from bridge.signing import endorse, sign_as_party
from participants.auth import sign_query
from tests.conftest import (
    DESIGN_CODES,
    RPC_TIMEOUT,
    VALID_FOR_MS,
    new_id,
    now_ms,
    reason_of,
    refusal_of,
)

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork

FUNDS = {"ICBC": 10_000_000, "BOCQ": 1_000_000, "HSBCHK": 10_000_000, "BOCHK": 1_000_000}


@dataclass(frozen=True)
class Scenario:
    """What the refusals aim at: settled payments and a PvP held for HSBCHK to answer."""

    icbc_pay: Pay  # settled, sent by ICBC
    bocq_pay: Pay  # settled, BOCQ to HSBCHK: ICBC is no party to it
    pvp: ProposePvp  # held, ICBC to HSBCHK, settles within ten minutes


@pytest.fixture(scope="module")
def scenario(live: LiveNetwork) -> Iterator[Scenario]:
    for bank, amount in FUNDS.items():
        live.issue(bank, amount)
    icbc_pay = Pay(
        new_id("pay"), "ICBC", now_ms() + VALID_FOR_MS, "BOCQ", "CNY", 1_000, "", signed_at=now_ms()
    )
    live.node("PBOC").Pay(live.signed(icbc_pay), timeout=RPC_TIMEOUT)
    bocq_pay = Pay(
        new_id("pay"),
        "BOCQ",
        now_ms() + VALID_FOR_MS,
        "HSBCHK",
        "CNY",
        2_000,
        "",
        signed_at=now_ms(),
    )
    live.node("PBOC").Pay(live.signed(bocq_pay), timeout=RPC_TIMEOUT)
    pvp = ProposePvp(
        new_id("pvp"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "HSBCHK",
        "CNY",
        100_000,
        "HKD",
        108_000,
        "1.08",
        now_ms() + 600_000,
        "",
        signed_at=now_ms(),
    )
    live.node("PBOC").ProposePvp(live.signed(pvp), timeout=RPC_TIMEOUT)
    yield Scenario(icbc_pay, bocq_pay, pvp)
    cancel = CancelPvp(
        new_id("cancel"), "ICBC", now_ms() + VALID_FOR_MS, pvp.instruction_id, signed_at=now_ms()
    )
    live.node("PBOC").CancelPvp(live.signed(cancel), timeout=RPC_TIMEOUT)


def soon() -> int:
    return now_ms() + VALID_FOR_MS


def pay(sender: str, payee: str = "HSBCHK", amount: int = 500, currency: str = "CNY") -> Pay:
    return Pay(new_id("pay"), sender, soon(), payee, currency, amount, "", signed_at=now_ms())


def with_signatures(body: Instruction, signatures: list[Signature]) -> types.SignedInstruction:
    return wire.envelope_to_proto(Envelope.of(body, tuple(signatures)))


def stream_first(call: Callable[[], Iterator[object]]) -> Callable[[], object]:
    """A server-stream call as a one-shot: read its first message, then cancel it."""

    def first() -> object:
        stream = call()
        try:
            return next(stream)
        finally:
            stream.cancel()  # type: ignore[attr-defined]

    return first


Call = Callable[[], object]
Case = Callable[["LiveNetwork", Scenario], Call]
CASES: dict[str, tuple[Case, grpc.StatusCode, Reason | None]] = {}


def case(name: str, code: grpc.StatusCode, reason: Reason | None = None) -> Callable[[Case], Case]:
    """Register one refusal of the matrix; its code must be the one its reason maps to."""
    if reason is not None:
        assert grpc.StatusCode[STATUS_OF_REASON[reason]] == code, name

    def register(build: Case) -> Case:
        CASES[name] = (build, code, reason)
        return build

    return register


# ---------------------------------------------------------------------------- paying from others


@case(
    "pay_from_another_bank_through_own_node", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    forged = live.signed(pay("BOCQ"), signer="ICBC")
    return lambda: live.node("PBOC").Pay(forged, timeout=RPC_TIMEOUT)


@case(
    "pay_from_another_bank_through_foreign_node",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    forged = live.signed(pay("BOCQ"), signer="ICBC")
    return lambda: live.node("HKMA").Pay(forged, timeout=RPC_TIMEOUT)


@case(
    "pay_from_a_foreign_bank_through_its_node",
    grpc.StatusCode.UNAUTHENTICATED,
    Reason.BAD_SIGNATURE,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    forged = live.signed(pay("ICBC"), signer="HSBCHK")
    return lambda: live.node("PBOC").Pay(forged, timeout=RPC_TIMEOUT)


@case(
    "own_payment_through_a_foreign_node",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    own = live.signed(pay("ICBC"))
    return lambda: live.node("HKMA").Pay(own, timeout=RPC_TIMEOUT)


@case("pay_from_an_unknown_bank", grpc.StatusCode.UNAUTHENTICATED, Reason.UNKNOWN_SIGNER)
def _(live: LiveNetwork, s: Scenario) -> Call:
    body = pay("SHADOWBANK")
    envelope = sign_as_party(Envelope.of(body), "SHADOWBANK", PrivateKey.generate())
    return lambda: live.node("PBOC").Pay(wire.envelope_to_proto(envelope), timeout=RPC_TIMEOUT)


@case("redeem_another_banks_funds", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    forged = live.signed(
        Redeem(new_id("redeem"), "BOCQ", soon(), "CNY", 100, signed_at=now_ms()), signer="ICBC"
    )
    return lambda: live.node("PBOC").RequestRedemption(forged, timeout=RPC_TIMEOUT)


@case(
    "dual_pvp_with_a_forged_counterparty_signature",
    grpc.StatusCode.UNAUTHENTICATED,
    Reason.BAD_SIGNATURE,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    body = DualPvp(
        new_id("dual"),
        "ICBC",
        soon(),
        "HSBCHK",
        "CNY",
        100,
        "HKD",
        108,
        "1.08",
        "",
        signed_at=now_ms(),
    )
    envelope = sign_as_party(Envelope.of(body), "ICBC", live.key("ICBC"))
    envelope = sign_as_party(envelope, "HSBCHK", live.key("ICBC"))
    return lambda: live.node("PBOC").SubmitDualPvp(
        wire.envelope_to_proto(envelope), timeout=RPC_TIMEOUT
    )


# ---------------------------------------------------------------------------- signatures and replay


@case("unsigned_instruction", grpc.StatusCode.UNAUTHENTICATED, Reason.MISSING_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    unsigned = with_signatures(pay("ICBC"), [])
    return lambda: live.node("PBOC").Pay(unsigned, timeout=RPC_TIMEOUT)


@case("body_changed_after_signing", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(pay("ICBC", amount=500))
    message.instruction.pay.amount = 500_000
    return lambda: live.node("PBOC").Pay(message, timeout=RPC_TIMEOUT)


@case("tampered_signature", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(pay("ICBC"))
    value = bytearray(message.signatures[0].value)
    value[10] ^= 0x01
    message.signatures[0].value = bytes(value)
    return lambda: live.node("PBOC").Pay(message, timeout=RPC_TIMEOUT)


@case("self_made_endorsement", grpc.StatusCode.INVALID_ARGUMENT, Reason.MALFORMED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    envelope = sign_as_party(Envelope.of(pay("ICBC")), "ICBC", live.key("ICBC"))
    endorsed = endorse(envelope, "ICBC", "PBOC", live.key("ICBC"))
    return lambda: live.node("PBOC").Pay(wire.envelope_to_proto(endorsed), timeout=RPC_TIMEOUT)


@case("replayed_id_with_a_different_body", grpc.StatusCode.ALREADY_EXISTS, Reason.ID_CONFLICT)
def _(live: LiveNetwork, s: Scenario) -> Call:
    changed = live.signed(replace(s.icbc_pay, amount=s.icbc_pay.amount + 1))
    return lambda: live.node("PBOC").Pay(changed, timeout=RPC_TIMEOUT)


@case("expired_instruction", grpc.StatusCode.DEADLINE_EXCEEDED, Reason.INSTRUCTION_EXPIRED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    body = replace(pay("ICBC"), valid_until=now_ms() - 1_000, signed_at=now_ms() - 2_000)
    expired = live.signed(body)
    return lambda: live.node("PBOC").Pay(expired, timeout=RPC_TIMEOUT)


# ---------------------------------------------------------------------------- reading others


@case("balances_of_another_bank", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = live.query("GetBalances", cb_pb.BalancesQuery(), "BOCQ", signer="ICBC")
    return lambda: live.node("PBOC").GetBalances(query, timeout=RPC_TIMEOUT)


@case(
    "balances_of_another_bank_through_a_foreign_node",
    grpc.StatusCode.UNAUTHENTICATED,
    Reason.BAD_SIGNATURE,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = live.query("GetBalances", cb_pb.BalancesQuery(), "HSBCHK", signer="ICBC")
    return lambda: live.node("HKMA").GetBalances(query, timeout=RPC_TIMEOUT)


@case(
    "own_balances_through_a_foreign_node",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = live.query("GetBalances", cb_pb.BalancesQuery(), "ICBC")
    return lambda: live.node("HKMA").GetBalances(query, timeout=RPC_TIMEOUT)


@case(
    "status_of_an_instruction_between_others",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_A_PARTY,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.InstructionStatusQuery(sender="BOCQ", instruction_id=s.bocq_pay.instruction_id)
    query = live.query("GetInstructionStatus", request, "ICBC")
    return lambda: live.node("PBOC").GetInstructionStatus(query, timeout=RPC_TIMEOUT)


@case("history_of_another_bank", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=1), "BOCQ", signer="ICBC")
    return lambda: live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT)


@case("pvp_between_others", grpc.StatusCode.NOT_FOUND, Reason.UNKNOWN_PVP)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.PvpQuery(proposer="ICBC", pvp_id=s.pvp.instruction_id)
    query = live.query("GetPvp", request, "BOCHK")
    return lambda: live.node("HKMA").GetPvp(query, timeout=RPC_TIMEOUT)


@case("watch_another_banks_settlements", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.WatchSettlementsQuery(from_seq=1)
    query = live.query("WatchSettlements", request, "BOCQ", signer="ICBC")
    return stream_first(lambda: live.node("PBOC").WatchSettlements(query, timeout=RPC_TIMEOUT))


@case("query_changed_after_signing", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = live.query("GetBalances", cb_pb.BalancesQuery(currency="CNY"), "ICBC")
    query.currency = "HKD"
    return lambda: live.node("PBOC").GetBalances(query, timeout=RPC_TIMEOUT)


@case("query_signed_for_another_method", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = live.query("GetBalances", cb_pb.HistoryQuery(from_seq=1), "ICBC")
    return lambda: live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT)


@case("stale_query", grpc.StatusCode.DEADLINE_EXCEEDED, Reason.INSTRUCTION_EXPIRED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    query = sign_query(
        "/bridge.v1.CentralBank/GetBalances",
        cb_pb.BalancesQuery(),
        "ICBC",
        live.key("ICBC"),
        now_ms() - 3_600_000,
    )
    return lambda: live.node("PBOC").GetBalances(query, timeout=RPC_TIMEOUT)


@case("issuance_asked_for_another_bank", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.IssuanceRequest(request_id=new_id("req"), valid_until=soon(), amount=10**9)
    query = live.query("RequestIssuance", request, "BOCQ", signer="ICBC")
    return lambda: live.node("PBOC").RequestIssuance(query, timeout=RPC_TIMEOUT)


@case(
    "issuance_asked_of_a_foreign_central_bank",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.IssuanceRequest(request_id=new_id("req"), valid_until=soon(), amount=10**9)
    query = live.query("RequestIssuance", request, "ICBC")
    return lambda: live.node("HKMA").RequestIssuance(query, timeout=RPC_TIMEOUT)


# ---------------------------------------------------------------------------- answering for others


def accept(s: Scenario, sender: str) -> AcceptPvp:
    return AcceptPvp(
        new_id("accept"),
        sender,
        soon(),
        "ICBC",
        s.pvp.instruction_id,
        s.pvp.terms_hash(),
        signed_at=now_ms(),
    )


@case(
    "accept_by_a_bank_that_is_not_the_counterparty",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_A_PARTY,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(accept(s, "BOCHK"))
    return lambda: live.node("HKMA").AcceptPvp(message, timeout=RPC_TIMEOUT)


@case(
    "accept_for_the_counterparty_with_another_key",
    grpc.StatusCode.UNAUTHENTICATED,
    Reason.BAD_SIGNATURE,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(accept(s, "HSBCHK"), signer="BOCHK")
    return lambda: live.node("HKMA").AcceptPvp(message, timeout=RPC_TIMEOUT)


@case(
    "accept_through_the_proposers_node",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(accept(s, "HSBCHK"))
    return lambda: live.node("PBOC").AcceptPvp(message, timeout=RPC_TIMEOUT)


@case(
    "reject_by_a_bank_that_is_not_the_counterparty",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_A_PARTY,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    body = RejectPvp(
        new_id("reject"), "BOCHK", soon(), "ICBC", s.pvp.instruction_id, signed_at=now_ms()
    )
    return lambda: live.node("HKMA").RejectPvp(live.signed(body), timeout=RPC_TIMEOUT)


@case("cancel_by_a_bank_that_did_not_propose", grpc.StatusCode.NOT_FOUND, Reason.UNKNOWN_PVP)
def _(live: LiveNetwork, s: Scenario) -> Call:
    body = CancelPvp(new_id("cancel"), "HSBCHK", soon(), s.pvp.instruction_id, signed_at=now_ms())
    return lambda: live.node("HKMA").CancelPvp(live.signed(body), timeout=RPC_TIMEOUT)


# ---------------------------------------------------------------------------- to the bridge


@case(
    "bridge_leg_endorsed_by_a_foreign_central_bank",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    envelope = sign_as_party(Envelope.of(pay("ICBC")), "ICBC", live.key("ICBC"))
    envelope = endorse(envelope, "ICBC", "HKMA", live.key("HKMA"))
    return lambda: live.bridge.SubmitOne(wire.envelope_to_proto(envelope), timeout=RPC_TIMEOUT)


@case("bridge_leg_without_endorsement", grpc.StatusCode.UNAUTHENTICATED, Reason.MISSING_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(pay("ICBC"))
    return lambda: live.bridge.SubmitOne(message, timeout=RPC_TIMEOUT)


@case("bridge_forged_endorsement", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE)
def _(live: LiveNetwork, s: Scenario) -> Call:
    envelope = sign_as_party(Envelope.of(pay("ICBC")), "ICBC", live.key("ICBC"))
    envelope = endorse(envelope, "ICBC", "PBOC", live.key("HKMA"))
    return lambda: live.bridge.SubmitOne(wire.envelope_to_proto(envelope), timeout=RPC_TIMEOUT)


# ---------------------------------------------------------------------------- central banks


def issue_request(to: str, currency: str) -> cb_pb.IssueRequest:
    return cb_pb.IssueRequest(
        instruction_id=new_id("issue"),
        valid_until=soon(),
        body=types.Issue(to=to, currency=currency, amount=10**9),
    )


@case("issue_another_central_banks_currency", grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_ISSUER)
def _(live: LiveNetwork, s: Scenario) -> Call:
    return lambda: live.admin("PBOC").Issue(
        issue_request("HSBCHK", "HKD"), metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )


@case(
    "issue_own_currency_to_a_foreign_bank",
    grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_HOME_CENTRAL_BANK,
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    return lambda: live.admin("PBOC").Issue(
        issue_request("HSBCHK", "CNY"), metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )


@case("freeze_another_central_banks_currency", grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_ISSUER)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.FreezeAccountRequest(
        instruction_id=new_id("freeze"),
        valid_until=soon(),
        body=types.FreezeAccount(participant="HSBCHK", currency="HKD", frozen=True),
    )
    return lambda: live.admin("PBOC").FreezeAccount(
        request, metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )


@case("suspend_a_foreign_bank", grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_HOME_CENTRAL_BANK)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = cb_pb.BankStatusRequest(
        instruction_id=new_id("suspend"), valid_until=soon(), bank="HSBCHK"
    )
    return lambda: live.admin("PBOC").SuspendBank(
        request, metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )


@case("redeem_for_a_foreign_bank", grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_HOME_CENTRAL_BANK)
def _(live: LiveNetwork, s: Scenario) -> Call:
    message = live.signed(
        Redeem(new_id("redeem"), "HSBCHK", soon(), "CNY", 1_000, signed_at=now_ms())
    )
    return lambda: live.admin("PBOC").Redeem(
        message, metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )


@case(
    "supply_of_another_central_banks_currency", grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_ISSUER
)
def _(live: LiveNetwork, s: Scenario) -> Call:
    request = types.CurrencySupplyRequest(currency="HKD")
    return lambda: live.admin("PBOC").GetCurrencySupply(
        request, metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT
    )


@case("admin_issue_without_a_token", grpc.StatusCode.UNAUTHENTICATED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    return lambda: live.admin("PBOC").Issue(issue_request("ICBC", "CNY"), timeout=RPC_TIMEOUT)


@case("admin_issue_with_a_wrong_token", grpc.StatusCode.UNAUTHENTICATED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    metadata = (("authorization", "Bearer not-the-token"),)
    return lambda: live.admin("PBOC").Issue(
        issue_request("ICBC", "CNY"), metadata=metadata, timeout=RPC_TIMEOUT
    )


@case("admin_issue_with_another_central_banks_token", grpc.StatusCode.UNAUTHENTICATED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    return lambda: live.admin("PBOC").Issue(
        issue_request("ICBC", "CNY"), metadata=live.admin_metadata("HKMA"), timeout=RPC_TIMEOUT
    )


@case("admin_token_without_bearer_scheme", grpc.StatusCode.UNAUTHENTICATED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    metadata = (("authorization", live.admin_token("PBOC")),)
    return lambda: live.admin("PBOC").Issue(
        issue_request("ICBC", "CNY"), metadata=metadata, timeout=RPC_TIMEOUT
    )


@case("admin_list_accounts_without_a_token", grpc.StatusCode.UNAUTHENTICATED)
def _(live: LiveNetwork, s: Scenario) -> Call:
    return lambda: live.admin("PBOC").ListAccounts(cb_pb.ListAccountsRequest(), timeout=RPC_TIMEOUT)


@pytest.mark.parametrize("name", sorted(CASES))
def test_refusal_has_the_designed_code_and_changes_nothing(
    live: LiveNetwork, scenario: Scenario, name: str
) -> None:
    """Each entry of the authorization matrix is refused precisely, leaving all state as it was."""
    build, code, reason = CASES[name]
    live.assert_refused_unchanged(build(live, scenario), code, reason)


def test_the_held_pvp_is_untouched_by_every_foreign_answer(
    live: LiveNetwork, scenario: Scenario
) -> None:
    """After the matrix the PvP others tried to answer is still held for its counterparty."""
    query = live.query(
        "GetPvp", cb_pb.PvpQuery(proposer="ICBC", pvp_id=scenario.pvp.instruction_id), "HSBCHK"
    )
    status = live.node("HKMA").GetPvp(query, timeout=RPC_TIMEOUT)
    assert status.status == types.OUTCOME_HELD
    assert live.balance("ICBC", "CNY")[1] >= scenario.pvp.pay_amount


# ---------------------------------------------------------------------------- hostile payments

BANK_IDS = ["ICBC", "BOCQ", "HSBCHK", "BOCHK", "KBANK", "SCB", "ENBD", "FAB"]
INT64 = 2**63


@dataclass(frozen=True)
class Hostile:
    sender: str
    payee: str
    currency: str
    amount: int
    reference: str
    valid_for: int
    signing: str
    node: str


HOME_CURRENCY = {"ICBC": "CNY", "BOCQ": "CNY", "HSBCHK": "HKD", "BOCHK": "HKD"}
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=0x2FFF, categories=["L", "N", "P", "Zs"])
# What a hostile client may get wrong, and the values it may send instead of a good one.
FLAWS: dict[str, st.SearchStrategy[object]] = {
    "sender": st.one_of(st.sampled_from(["PBOC", "SHADOWBANK", "KBANK"]), st.text(max_size=8)),
    "payee": st.one_of(
        st.sampled_from(["PBOC", "HKMA", "NOBODY", "", "ICBC", "HSBCHK"]), st.text(max_size=12)
    ),
    "currency": st.one_of(
        st.sampled_from(["THB", "AED", "SAR", "XXX", "cny", ""]), st.text(max_size=4)
    ),
    "amount": st.one_of(
        st.sampled_from([0, -1, INT64 - 1, -INT64]), st.integers(-INT64, INT64 - 1)
    ),
    "reference": st.text(max_size=200),
    "valid_for": st.sampled_from([-5_000, -1, -VALID_FOR_MS]),
    "signing": st.sampled_from(["none", "other_key", "tampered", "short", "endorsed", "twice"]),
    "node": st.sampled_from(["PBOC", "HKMA", "BOT", "CBUAE"]),
}


@st.composite
def hostile_pays(draw: st.DrawFn) -> Hostile:
    """A well-formed payment from a funded bank with up to two things made hostile."""
    sender = draw(st.sampled_from(sorted(HOME_CURRENCY)))
    payment = Hostile(
        sender=sender,
        payee=draw(st.sampled_from([b for b in BANK_IDS if b != sender])),
        currency=HOME_CURRENCY[sender],
        amount=draw(st.integers(1, 5_000)),
        reference=draw(st.text(PRINTABLE, max_size=40)),
        valid_for=VALID_FOR_MS,
        signing="sender",
        node="home",
    )
    for flaw in draw(st.lists(st.sampled_from(sorted(FLAWS)), max_size=2, unique=True)):
        payment = replace(payment, **{flaw: draw(FLAWS[flaw])})
    return payment


def hostile_message(live: LiveNetwork, h: Hostile) -> types.SignedInstruction:
    """The payment as raw proto fields, signed (or not) as the case says."""
    body = Pay(
        new_id("hostile"),
        h.sender,
        now_ms() + h.valid_for,
        h.payee,
        h.currency,
        h.amount,
        h.reference,
        signed_at=now_ms(),
    )
    key = live.key(h.sender) if h.sender in live.participants else PrivateKey.generate()
    value = key.sign(party_message(body.canonical_bytes()))
    signatures = [types.Signature(signer=h.sender, value=value)]
    if h.signing == "none":
        signatures = []
    elif h.signing == "other_key":
        signatures[0].value = live.key("BOCHK").sign(party_message(body.canonical_bytes()))
    elif h.signing == "tampered":
        signatures[0].value = value[:-1] + bytes([value[-1] ^ 0x80])
    elif h.signing == "short":
        signatures[0].value = value[:40]
    elif h.signing == "endorsed":
        signatures.append(types.Signature(signer="PBOC", value=value, endorses=h.sender))
    elif h.signing == "twice":
        signatures.append(types.Signature(signer=h.sender, value=value))
    instruction = types.Instruction(
        instruction_id=body.instruction_id,
        sender=h.sender,
        valid_until=body.valid_until,
        signed_at=body.signed_at,
        pay=types.Pay(payee=h.payee, currency=h.currency, amount=h.amount, reference=h.reference),
    )
    return types.SignedInstruction(instruction=instruction, signatures=signatures)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(h=hostile_pays())
def test_hostile_payments_are_refused_cleanly_or_settle_conserving(
    live: LiveNetwork, scenario: Scenario, h: Hostile
) -> None:
    """A random malformed or hostile Pay is refused with a DESIGN.md code, or settles exactly."""
    node = live.home_of(h.sender) if h.node == "home" and h.sender in live.participants else h.node
    node = "PBOC" if node == "home" else node
    message = hostile_message(live, h)
    before = live.snapshot()
    try:
        status = live.node(node).Pay(message, timeout=RPC_TIMEOUT)
    except grpc.RpcError as error:
        refused: grpc.RpcError | None = error
    else:
        refused = None
    if refused is not None:
        event(f"refused {refused.code().name}")
        assert refused.code() in DESIGN_CODES, (refused.code(), refused.details())
        assert live.snapshot() == before
        return
    event("settled")
    assert status.receipt.outcome == types.OUTCOME_SETTLED
    after = live.snapshot()
    assert after.entries == before.entries + 1
    expected = dict(before.accounts)
    payer = expected.get((h.sender, h.currency), (0, 0, False))
    expected[(h.sender, h.currency)] = (payer[0] - h.amount, payer[1], payer[2])
    payee = expected.get((h.payee, h.currency), (0, 0, False))
    expected[(h.payee, h.currency)] = (payee[0] + h.amount, payee[1], payee[2])
    assert after.accounts == expected
    assert after.supply == before.supply
    live.assert_conserved(after)


def test_reason_of_refusal_round_trips_through_rich_status(live: LiveNetwork) -> None:
    """A refused call carries its reason in the rich status details, not only in the message."""
    error = refusal_of(
        lambda: live.node("PBOC").Pay(with_signatures(pay("ICBC"), []), timeout=RPC_TIMEOUT)
    )
    assert reason_of(error) is Reason.MISSING_SIGNATURE
    assert error.details()
