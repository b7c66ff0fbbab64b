"""The pure ledger: every instruction kind, its refusals, idempotency, signatures, batches.

After every refusal, `assert_refused` checks that the state tables, the pending entries and
the next sequence number are exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from bridge.core.ledger import Ledger, PvpState, SignatureCheck, expiry_envelope, replay
from bridge.crypto import FastVerifier, PrivateKey, ReferenceVerifier
from bridge.domain import (
    BRIDGE_SENDER,
    CLOCK_SKEW_MS,
    DAY_MS,
    INT64_MAX,
    MAX_SIGNED_AGE_MS,
    AdmitBank,
    DualPvp,
    Entry,
    Envelope,
    ExpirePvp,
    Genesis,
    Issue,
    Outcome,
    ParticipantKind,
    ParticipantStatus,
    Pay,
    ProposePvp,
    Signature,
)
from bridge.errors import Reason, Refused
from bridge.signing import endorse, sign_as_party, signed
from tests.factories import (
    BANKS,
    SIGNED_AT,
    T0,
    Network,
    accept_pvp,
    admit_bank,
    assert_refused,
    assert_unchanged,
    cancel_pvp,
    corrupt,
    corrupt_endorsement,
    corrupt_party_signature,
    dual_pvp,
    freeze,
    fund,
    issue,
    make_ledger,
    network,
    new_id,
    pay,
    propose_pvp,
    pvp_proposal,
    redeem,
    reject_pvp,
    set_policy,
    set_status,
    sign,
    snapshot,
    with_signatures,
    without_signature,
)

SETTLE_BY = T0 + 3_600_000
FUNDS = {"ICBC": 1_000_000, "CCB": 500_000, "BOCHK": 2_000_000, "KBANK": 1_000_000, "ENBD": 900_000}


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def ledger(net: Network) -> Iterator[Ledger]:
    """A ledger with every bank admitted and funded in its home currency; conservation is
    checked when the test ends."""
    ledger = make_ledger(net)
    for bank, amount in FUNDS.items():
        fund(ledger, net, bank, amount)
    yield ledger
    assert ledger.conservation_errors() == []


def payment_of(envelope: Envelope) -> Pay:
    assert isinstance(envelope.body, Pay)
    return envelope.body


def proposal_of(envelope: Envelope) -> ProposePvp:
    assert isinstance(envelope.body, ProposePvp)
    return envelope.body


def foreign_signed(body: Pay | DualPvp, stranger: str, endorser: str, net: Network) -> Envelope:
    """A bank instruction where `stranger` (not registered) signs with a fresh key."""
    envelope = Envelope.of(body)
    for party in body.parties():
        key = PrivateKey.generate() if party == stranger else net.keys[party]
        envelope = sign_as_party(envelope, party, key)
    for party in body.parties():
        cb = endorser if party == stranger else net.home[party]
        envelope = endorse(envelope, party, cb, net.keys[cb])
    return envelope


# ---------------------------------------------------------------------------- construction


def test_ledger_founds_central_banks_and_currencies(net: Network) -> None:
    """Genesis registers each central bank as its own home and its currency with no supply."""
    ledger = Ledger(net.genesis, verifier=FastVerifier())
    pboc = ledger.participants["PBOC"]
    assert pboc.kind is ParticipantKind.CENTRAL_BANK
    assert pboc.home_central_bank == "PBOC"
    assert pboc.jurisdiction == "CN"
    assert ledger.currencies["HKD"].issuer == "HKMA"
    assert ledger.supply == {"CNY": (0, 0), "HKD": (0, 0), "THB": (0, 0), "AED": (0, 0)}
    assert ledger.pending_entries() == 0
    assert ledger.next_seq == 1


def test_ledger_requires_a_verifier_unless_checks_are_off(net: Network) -> None:
    """Without a verifier only SignatureCheck.NONE is allowed."""
    with pytest.raises(ValueError, match="verifier"):
        Ledger(net.genesis)
    Ledger(net.genesis, check=SignatureCheck.NONE)


def test_ledger_refuses_empty_genesis_or_bad_quorum(net: Network) -> None:
    """A genesis needs a central bank and a quorum between 1 and their number."""
    with pytest.raises(ValueError, match="central bank"):
        Ledger(Genesis("x", (), 1), check=SignatureCheck.NONE)
    for quorum in (0, 5):
        with pytest.raises(ValueError, match="quorum"):
            Ledger(replace(net.genesis, quorum=quorum), check=SignatureCheck.NONE)


# ---------------------------------------------------------------------------- admission


def test_admit_bank_registers_commercial_bank(net: Network) -> None:
    """An admitted bank takes its central bank's jurisdiction and home, and is active."""
    ledger = make_ledger(net, admit=False)
    receipt = ledger.apply(admit_bank(net, "HKMA", "BOCHK"), T0)
    assert receipt.outcome is Outcome.APPLIED
    bank = ledger.participants["BOCHK"]
    assert bank.kind is ParticipantKind.COMMERCIAL_BANK
    assert (bank.jurisdiction, bank.home_central_bank) == ("HK", "HKMA")
    assert bank.status is ParticipantStatus.ACTIVE
    assert bank.public_key == net.keys["BOCHK"].public_key


def test_admit_existing_participant_is_refused(ledger: Ledger, net: Network) -> None:
    """Admitting an existing bank or central bank id is ALREADY_REGISTERED."""
    assert_refused(ledger, admit_bank(net, "PBOC", "ICBC"), T0, Reason.ALREADY_REGISTERED)
    assert_refused(ledger, admit_bank(net, "HKMA", "ICBC"), T0, Reason.ALREADY_REGISTERED)
    body = AdmitBank(
        new_id(), "PBOC", T0 + 1, "HKMA", net.keys["HKMA"].public_key, signed_at=SIGNED_AT
    )
    assert_refused(ledger, sign(net, body), T0, Reason.ALREADY_REGISTERED)


def test_admit_bank_named_bridge_is_refused(ledger: Ledger, net: Network) -> None:
    """The bridge's own sender name cannot be taken by a bank."""
    body = AdmitBank(
        new_id(), "PBOC", T0 + 1, BRIDGE_SENDER, net.keys["ICBC"].public_key, signed_at=SIGNED_AT
    )
    assert_refused(ledger, sign(net, body), T0, Reason.ALREADY_REGISTERED)


def test_admit_by_commercial_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """Only central banks send administrative instructions."""
    body = AdmitBank(
        new_id(), "ICBC", T0 + 1, "ICBC2", net.keys["CCB"].public_key, signed_at=SIGNED_AT
    )
    assert_refused(ledger, sign(net, body), T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_set_status_of_foreign_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """A central bank suspends only its own banks."""
    envelope = set_status(net, "HKMA", "ICBC", "suspended")
    assert_refused(ledger, envelope, T0, Reason.NOT_HOME_CENTRAL_BANK)
    assert_refused(ledger, set_status(net, "PBOC", "HKMA", "suspended"), T0, Reason.NOT_A_BANK)
    envelope = set_status(net, "PBOC", "NOBANK", "suspended")
    assert_refused(ledger, envelope, T0, Reason.UNKNOWN_PARTICIPANT)


def test_set_status_suspends_and_reactivates(ledger: Ledger, net: Network) -> None:
    """Status changes are applied and reversible."""
    statuses = []
    for status in ("suspended", "active"):
        ledger.apply(set_status(net, "PBOC", "ICBC", status), T0)
        statuses.append(ledger.participants["ICBC"].status)
    assert statuses == [ParticipantStatus.SUSPENDED, ParticipantStatus.ACTIVE]


def test_set_policy_by_commercial_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank cannot set policy."""
    envelope = set_policy(net, "ICBC", per_transfer_limit=1)
    assert_refused(ledger, envelope, T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_freeze_in_foreign_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """A central bank freezes accounts only in its own currency."""
    assert_refused(ledger, freeze(net, "HKMA", "ICBC", "CNY"), T0, Reason.NOT_ISSUER)
    assert_refused(ledger, freeze(net, "PBOC", "ICBC", "XYZ"), T0, Reason.UNKNOWN_CURRENCY)


def test_freeze_unknown_or_central_bank_account_is_refused(ledger: Ledger, net: Network) -> None:
    """Only commercial bank accounts can be frozen."""
    assert_refused(ledger, freeze(net, "PBOC", "NOBANK", "CNY"), T0, Reason.UNKNOWN_PARTICIPANT)
    assert_refused(ledger, freeze(net, "PBOC", "HKMA", "CNY"), T0, Reason.UNKNOWN_PARTICIPANT)


def test_freeze_foreign_bank_in_own_currency(ledger: Ledger, net: Network) -> None:
    """PBOC may freeze a Hong Kong bank's CNY account; unfreezing removes the row."""
    ledger.apply(pay(net, "ICBC", "BOCHK", 1_000, "CNY"), T0)
    ledger.apply(freeze(net, "PBOC", "BOCHK", "CNY"), T0)
    assert ("BOCHK", "CNY") in ledger.frozen
    assert_refused(ledger, pay(net, "BOCHK", "ICBC", 1, "CNY"), T0, Reason.ACCOUNT_FROZEN)
    ledger.apply(freeze(net, "PBOC", "BOCHK", "CNY", frozen=False), T0)
    assert ("BOCHK", "CNY") not in ledger.frozen
    assert ledger.apply(pay(net, "BOCHK", "ICBC", 1, "CNY"), T0).outcome is Outcome.SETTLED


# ---------------------------------------------------------------------------- issuance


def test_issue_credits_own_bank_and_supply(net: Network) -> None:
    """Issuance by the issuer credits its bank and raises the issued total."""
    ledger = make_ledger(net)
    receipt = ledger.apply(issue(net, "PBOC", "ICBC", 500_000), T0)
    assert receipt.outcome is Outcome.ISSUED
    assert ledger.balance("ICBC", "CNY") == (500_000, 0)
    assert ledger.supply["CNY"] == (500_000, 0)
    assert ledger.conservation_errors() == []


def test_issue_of_foreign_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """PBOC cannot issue HKD, even to a Hong Kong bank."""
    assert_refused(ledger, issue(net, "PBOC", "ICBC", 1, "HKD"), T0, Reason.NOT_ISSUER)
    assert_refused(ledger, issue(net, "PBOC", "BOCHK", 1, "HKD"), T0, Reason.NOT_ISSUER)


def test_issue_to_foreign_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """PBOC issues CNY only to banks it admitted."""
    envelope = issue(net, "PBOC", "BOCHK", 1, "CNY")
    assert_refused(ledger, envelope, T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_issue_to_unknown_or_central_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """Issuance goes to an admitted commercial bank only."""
    assert_refused(ledger, issue(net, "PBOC", "NOBANK", 1), T0, Reason.UNKNOWN_PARTICIPANT)
    assert_refused(ledger, issue(net, "PBOC", "PBOC", 1), T0, Reason.NOT_A_BANK)


def test_issue_of_unknown_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """Issuing a currency nobody issues is UNKNOWN_CURRENCY."""
    assert_refused(ledger, issue(net, "PBOC", "ICBC", 1, "SGD"), T0, Reason.UNKNOWN_CURRENCY)


def test_issue_by_commercial_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank cannot mint money for itself."""
    body = Issue(new_id(), "ICBC", T0 + 1, "ICBC", "CNY", 1, signed_at=SIGNED_AT)
    assert_refused(ledger, sign(net, body), T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_issue_by_unknown_sender_is_refused(ledger: Ledger, net: Network) -> None:
    """An instruction from an unregistered sender is UNKNOWN_SIGNER."""
    body = Issue(new_id(), "MAS", T0 + 1, "ICBC", "CNY", 1, signed_at=SIGNED_AT)
    assert_refused(ledger, signed(body, PrivateKey.generate()), T0, Reason.UNKNOWN_SIGNER)


def test_issue_to_suspended_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """No money is issued to a suspended bank."""
    ledger.apply(set_status(net, "PBOC", "ICBC", "suspended"), T0)
    assert_refused(ledger, issue(net, "PBOC", "ICBC", 1), T0, Reason.PARTICIPANT_SUSPENDED)


def test_issue_to_frozen_account_is_refused(ledger: Ledger, net: Network) -> None:
    """No money is issued into a frozen account."""
    ledger.apply(freeze(net, "PBOC", "ICBC", "CNY"), T0)
    assert_refused(ledger, issue(net, "PBOC", "ICBC", 1), T0, Reason.ACCOUNT_FROZEN)


def test_issue_beyond_int64_total_is_refused(net: Network) -> None:
    """Total issuance of a currency never passes int64, even spread over banks."""
    ledger = make_ledger(net)
    ledger.apply(issue(net, "PBOC", "ICBC", INT64_MAX - 10), T0)
    assert_refused(ledger, issue(net, "PBOC", "CCB", 11), T0, Reason.AMOUNT_OVERFLOW)
    assert ledger.apply(issue(net, "PBOC", "CCB", 10), T0).outcome is Outcome.ISSUED
    assert ledger.supply["CNY"] == (INT64_MAX, 0)


def test_issue_of_non_positive_or_oversized_amount_is_refused(ledger: Ledger, net: Network) -> None:
    """Zero, negative and beyond-int64 issuance is refused before anything else."""
    assert_refused(ledger, issue(net, "PBOC", "ICBC", 0), T0, Reason.NON_POSITIVE_AMOUNT)
    assert_refused(ledger, issue(net, "PBOC", "ICBC", -7), T0, Reason.NON_POSITIVE_AMOUNT)
    assert_refused(ledger, issue(net, "PBOC", "ICBC", INT64_MAX + 1), T0, Reason.AMOUNT_OVERFLOW)


# ---------------------------------------------------------------------------- redemption


def test_redeem_destroys_money(ledger: Ledger, net: Network) -> None:
    """Redemption debits the bank and raises the redeemed total."""
    receipt = ledger.apply(redeem(net, "ICBC", 400_000), T0)
    assert receipt.outcome is Outcome.REDEEMED
    assert ledger.balance("ICBC", "CNY") == (600_000, 0)
    assert ledger.supply["CNY"] == (1_500_000, 400_000)


def test_redeem_more_than_available_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank cannot redeem more than it holds."""
    envelope = redeem(net, "ICBC", 1_000_001)
    assert_refused(ledger, envelope, T0, Reason.INSUFFICIENT_FUNDS)


def test_redeem_of_held_funds_is_refused(ledger: Ledger, net: Network) -> None:
    """Funds held for a pending PvP cannot be redeemed."""
    ledger.apply(propose_pvp(net, "ICBC", "BOCHK", 900_000, 1), T0)
    assert_refused(ledger, redeem(net, "ICBC", 200_000), T0, Reason.INSUFFICIENT_FUNDS)
    assert ledger.apply(redeem(net, "ICBC", 100_000), T0).outcome is Outcome.REDEEMED


def test_redeem_of_foreign_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """A Hong Kong bank holding CNY cannot redeem it at PBOC over the bridge."""
    ledger.apply(pay(net, "ICBC", "BOCHK", 1_000, "CNY"), T0)
    envelope = redeem(net, "BOCHK", 1_000, "CNY")
    assert_refused(ledger, envelope, T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_redeem_by_central_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """Redemption is for commercial banks."""
    assert_refused(ledger, redeem(net, "PBOC", 1), T0, Reason.NOT_A_BANK)


def test_redeem_of_unknown_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """Redeeming an unknown currency is UNKNOWN_CURRENCY."""
    assert_refused(ledger, redeem(net, "ICBC", 1, "SGD"), T0, Reason.UNKNOWN_CURRENCY)


def test_redeem_by_suspended_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """A suspended bank cannot redeem."""
    ledger.apply(set_status(net, "PBOC", "ICBC", "suspended"), T0)
    assert_refused(ledger, redeem(net, "ICBC", 1), T0, Reason.PARTICIPANT_SUSPENDED)


def test_redeem_from_frozen_account_is_refused(ledger: Ledger, net: Network) -> None:
    """A frozen account cannot be redeemed."""
    ledger.apply(freeze(net, "PBOC", "ICBC", "CNY"), T0)
    assert_refused(ledger, redeem(net, "ICBC", 1), T0, Reason.ACCOUNT_FROZEN)


# ---------------------------------------------------------------------------- payments


def test_pay_moves_funds_and_counts_usage(ledger: Ledger, net: Network) -> None:
    """A payment debits the payer, credits the payee and records one entry."""
    pending, seq = ledger.pending_entries(), ledger.next_seq
    envelope = pay(net, "ICBC", "CCB", 250_000, reference="INV-2025-0042")
    receipt = ledger.apply(envelope, T0)
    assert receipt.outcome is Outcome.SETTLED
    assert (receipt.sender, receipt.instruction_id) == ("ICBC", envelope.body.instruction_id)
    assert receipt.seq == seq
    assert receipt.body_hash == envelope.body_hash()
    assert not receipt.duplicate
    assert ledger.balance("ICBC", "CNY") == (750_000, 0)
    assert ledger.balance("CCB", "CNY") == (750_000, 0)
    assert ledger.usage[("ICBC", "CNY", T0 // DAY_MS)] == 250_000
    assert ledger.pending_entries() == pending + 1
    assert ledger.next_seq == seq + 1


def test_cross_border_payment_credits_foreign_bank(ledger: Ledger, net: Network) -> None:
    """A Chinese bank pays a Thai bank in CNY; the Thai bank now holds CNY."""
    ledger.apply(pay(net, "ICBC", "KBANK", 80_000, "CNY"), T0)
    assert ledger.balance("KBANK", "CNY") == (80_000, 0)
    assert list(ledger.accounts_of("KBANK")) == [("CNY", (80_000, 0)), ("THB", (1_000_000, 0))]


def test_pay_without_funds_is_refused(ledger: Ledger, net: Network) -> None:
    """Paying more than the available balance, or in an unheld currency, is refused."""
    assert_refused(ledger, pay(net, "ICBC", "CCB", 1_000_001), T0, Reason.INSUFFICIENT_FUNDS)
    envelope = pay(net, "ICBC", "BOCHK", 1, "HKD")
    assert_refused(ledger, envelope, T0, Reason.INSUFFICIENT_FUNDS)


def test_pay_whole_balance_is_allowed(ledger: Ledger, net: Network) -> None:
    """A bank can pay away exactly all it has."""
    ledger.apply(pay(net, "CCB", "ICBC", 500_000), T0)
    assert ledger.balance("CCB", "CNY") == (0, 0)


def test_pay_to_unknown_or_central_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """The payee must be an admitted commercial bank."""
    assert_refused(ledger, pay(net, "ICBC", "NOBANK", 1), T0, Reason.UNKNOWN_PARTICIPANT)
    assert_refused(ledger, pay(net, "ICBC", "PBOC", 1), T0, Reason.NOT_A_BANK)


def test_pay_by_central_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """A central bank does not make payments."""
    assert_refused(ledger, pay(net, "PBOC", "ICBC", 1, "CNY"), T0, Reason.NOT_A_BANK)


def test_pay_by_unknown_sender_is_refused(ledger: Ledger, net: Network) -> None:
    """A payment from an unregistered bank is UNKNOWN_SIGNER."""
    body = Pay(new_id(), "NOBANK", T0 + 1, "ICBC", "CNY", 1, signed_at=SIGNED_AT)
    envelope = foreign_signed(body, "NOBANK", "PBOC", net)
    assert_refused(ledger, envelope, T0, Reason.UNKNOWN_SIGNER)


def test_pay_in_unknown_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """A payment in a currency not on the bridge is UNKNOWN_CURRENCY."""
    assert_refused(ledger, pay(net, "ICBC", "CCB", 1, "SGD"), T0, Reason.UNKNOWN_CURRENCY)


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        (0, Reason.NON_POSITIVE_AMOUNT),
        (-1, Reason.NON_POSITIVE_AMOUNT),
        (INT64_MAX + 1, Reason.AMOUNT_OVERFLOW),
    ],
)
def test_pay_of_bad_amount_is_refused(
    ledger: Ledger, net: Network, amount: int, reason: Reason
) -> None:
    """Zero, negative and beyond-int64 payments are refused, even correctly signed."""
    assert_refused(ledger, pay(net, "ICBC", "CCB", amount), T0, reason)


def test_pay_to_self_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank cannot pay itself."""
    assert_refused(ledger, pay(net, "ICBC", "ICBC", 1), T0, Reason.SAME_PARTY)


# ---------------------------------------------------------------------------- PvP propose/accept


def test_propose_pvp_holds_proposer_leg(ledger: Ledger, net: Network) -> None:
    """A proposal reserves the proposer's leg and nothing else."""
    envelope = propose_pvp(net, "ICBC", "BOCHK", 100_000, 108_500, rate="1.085")
    receipt = ledger.apply(envelope, T0)
    assert receipt.outcome is Outcome.HELD
    assert ledger.balance("ICBC", "CNY") == (900_000, 100_000)
    assert ledger.balance("BOCHK", "HKD") == (2_000_000, 0)
    assert ledger.balance("BOCHK", "CNY") == (0, 0)
    state = ledger.pvps[("ICBC", envelope.body.instruction_id)]
    assert state == PvpState(proposal_of(envelope), Outcome.HELD, T0 // DAY_MS)


def test_accept_pvp_settles_both_legs(ledger: Ledger, net: Network) -> None:
    """Acceptance moves the held leg and the counterparty's leg in one step."""
    proposal = proposal_of(propose_pvp(net, "ICBC", "BOCHK", 100_000, 108_500))
    ledger.apply(sign(net, proposal), T0)
    receipt = ledger.apply(accept_pvp(net, proposal), T0 + 1_000)
    assert receipt.outcome is Outcome.SETTLED
    assert ledger.balance("ICBC", "CNY") == (900_000, 0)
    assert ledger.balance("BOCHK", "CNY") == (100_000, 0)
    assert ledger.balance("BOCHK", "HKD") == (2_000_000 - 108_500, 0)
    assert ledger.balance("ICBC", "HKD") == (108_500, 0)
    state = ledger.pvps[("ICBC", proposal.instruction_id)]
    assert (state.status, state.closed_seq) == (Outcome.SETTLED, receipt.seq)


def test_acceptance_never_fails_for_proposer_funds(ledger: Ledger, net: Network) -> None:
    """After proposing, the proposer spends all it has left; acceptance still settles."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 400_000, 430_000)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(pay(net, "ICBC", "CCB", 600_000), T0)
    assert ledger.balance("ICBC", "CNY") == (0, 400_000)
    assert ledger.apply(accept_pvp(net, proposal), T0).outcome is Outcome.SETTLED
    assert ledger.balance("ICBC", "CNY") == (0, 0)
    assert ledger.balance("BOCHK", "CNY") == (400_000, 0)


def test_accept_without_counterparty_funds_is_refused_and_keeps_hold(
    ledger: Ledger, net: Network
) -> None:
    """A counterparty short of its leg cannot accept; the proposer's hold stays."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 2_000_001)
    ledger.apply(sign(net, proposal), T0)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.INSUFFICIENT_FUNDS)
    assert ledger.balance("ICBC", "CNY") == (900_000, 100_000)
    assert ledger.pvps[("ICBC", proposal.instruction_id)].status is Outcome.HELD


def test_accept_of_someone_elses_pvp_is_refused(ledger: Ledger, net: Network) -> None:
    """Only the named counterparty can accept; not a third bank, not the proposer."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    assert_refused(ledger, accept_pvp(net, proposal, acceptor="CCB"), T0, Reason.NOT_A_PARTY)
    assert_refused(ledger, accept_pvp(net, proposal, acceptor="ICBC"), T0, Reason.NOT_A_PARTY)


def test_accept_with_wrong_terms_is_refused(ledger: Ledger, net: Network) -> None:
    """Acceptance binds to the exact proposal body through its terms hash."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    other_terms = replace(proposal, receive_amount=1).terms_hash()
    envelope = accept_pvp(net, proposal, terms_hash=other_terms)
    assert_refused(ledger, envelope, T0, Reason.PVP_TERMS_MISMATCH)


def test_accept_of_unknown_pvp_is_refused(ledger: Ledger, net: Network) -> None:
    """Accepting a PvP that was never proposed is UNKNOWN_PVP."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.UNKNOWN_PVP)


def test_accept_at_or_after_settle_by_is_refused(ledger: Ledger, net: Network) -> None:
    """A PvP cannot be accepted once its settlement deadline is reached."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    assert_refused(ledger, accept_pvp(net, proposal), SETTLE_BY, Reason.PVP_EXPIRED)
    assert ledger.apply(accept_pvp(net, proposal), SETTLE_BY - 1).outcome is Outcome.SETTLED


def test_second_acceptance_is_refused(ledger: Ledger, net: Network) -> None:
    """A settled PvP cannot settle again under a new acceptance id."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(accept_pvp(net, proposal), T0)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)


def test_propose_with_past_settle_by_is_refused(ledger: Ledger, net: Network) -> None:
    """A proposal must leave time to settle."""
    envelope = propose_pvp(net, "ICBC", "BOCHK", 1, 1, settle_by=T0)
    assert_refused(ledger, envelope, T0, Reason.PVP_EXPIRED)


def test_propose_without_funds_is_refused(ledger: Ledger, net: Network) -> None:
    """The proposer must have its leg available to hold."""
    envelope = propose_pvp(net, "ICBC", "BOCHK", 1_000_001, 1)
    assert_refused(ledger, envelope, T0, Reason.INSUFFICIENT_FUNDS)


def test_propose_to_unknown_counterparty_is_refused(ledger: Ledger, net: Network) -> None:
    """The counterparty must exist."""
    envelope = propose_pvp(net, "ICBC", "CCB", 1, 1, receive_currency="HKD")
    body = replace(proposal_of(envelope), counterparty="NOBANK")
    assert_refused(ledger, sign(net, body), T0, Reason.UNKNOWN_PARTICIPANT)


def test_propose_in_unknown_currency_is_refused(ledger: Ledger, net: Network) -> None:
    """Either leg in a currency not on the bridge is UNKNOWN_CURRENCY."""
    envelope = propose_pvp(net, "ICBC", "BOCHK", 1, 1, receive_currency="SGD")
    assert_refused(ledger, envelope, T0, Reason.UNKNOWN_CURRENCY)
    envelope = propose_pvp(net, "ICBC", "BOCHK", 1, 1, pay_currency="SGD")
    assert_refused(ledger, envelope, T0, Reason.UNKNOWN_CURRENCY)


def test_propose_into_frozen_receiving_account_is_refused(ledger: Ledger, net: Network) -> None:
    """A proposal whose second leg could not be credited is refused up front."""
    ledger.apply(freeze(net, "HKMA", "ICBC", "HKD"), T0)
    envelope = propose_pvp(net, "ICBC", "BOCHK", 1, 1)
    assert_refused(ledger, envelope, T0, Reason.ACCOUNT_FROZEN)


def test_propose_of_bad_shape_is_refused(ledger: Ledger, net: Network) -> None:
    """Self-PvP, single-currency PvP and non-positive legs are refused."""
    envelope = propose_pvp(net, "ICBC", "CCB", 1, 1, receive_currency="HKD")
    body = proposal_of(envelope)
    assert_refused(ledger, sign(net, replace(body, counterparty="ICBC")), T0, Reason.SAME_PARTY)
    same = replace(body, receive_currency="CNY")
    assert_refused(ledger, sign(net, same), T0, Reason.SAME_CURRENCY)
    zero = replace(body, receive_amount=0)
    assert_refused(ledger, sign(net, zero), T0, Reason.NON_POSITIVE_AMOUNT)
    assert_refused(ledger, sign(net, replace(body, rate="0")), T0, Reason.MALFORMED)


def test_shape_is_checked_unless_a_decoder_checked_this_body() -> None:
    """An envelope built in code is shape-checked by `apply` (a bad one refused, nothing
    changed); envelopes decoded from canonical fields are marked as checked, and the mark
    follows added signatures but not a new body."""
    net = network()
    ledger = make_ledger(net)
    fund(ledger, net, "ICBC", 1_000)
    good = pay(net, "ICBC", "CCB", 5)
    body = good.body
    assert isinstance(body, Pay)
    bad = sign(net, replace(body, payee="ICBC"))
    assert not bad.shape_checked
    assert_refused(ledger, bad, T0, Reason.SAME_PARTY)
    decoded = Envelope.from_fields(good.body.to_fields(), good.signatures_fields())
    assert decoded.shape_checked
    assert decoded == good
    assert decoded.with_signature(good.signatures[0]).shape_checked
    assert not Envelope.of(decoded.body, decoded.signatures).shape_checked
    with pytest.raises(Refused) as caught:  # a decoder refuses a bad shape itself
        Envelope.from_fields(bad.body.to_fields(), bad.signatures_fields())
    assert caught.value.reason is Reason.SAME_PARTY
    assert ledger.apply(decoded, T0).outcome is Outcome.SETTLED


# ---------------------------------------------------------------------------- PvP reject/cancel


def test_pvp_reject_releases_hold(ledger: Ledger, net: Network) -> None:
    """The counterparty's rejection frees the proposer's funds and closes the PvP."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    receipt = ledger.apply(reject_pvp(net, proposal), T0)
    assert receipt.outcome is Outcome.REJECTED
    assert ledger.balance("ICBC", "CNY") == (1_000_000, 0)
    assert ledger.balance("BOCHK", "CNY") == (0, 0)
    state = ledger.pvps[("ICBC", proposal.instruction_id)]
    assert (state.status, state.closed_seq) == (Outcome.REJECTED, receipt.seq)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)


def test_reject_by_proposer_or_third_party_is_refused(ledger: Ledger, net: Network) -> None:
    """Only the counterparty rejects."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    assert_refused(ledger, reject_pvp(net, proposal, rejecter="ICBC"), T0, Reason.NOT_A_PARTY)
    assert_refused(ledger, reject_pvp(net, proposal, rejecter="KBANK"), T0, Reason.NOT_A_PARTY)


def test_reject_of_settled_or_unknown_pvp_is_refused(ledger: Ledger, net: Network) -> None:
    """A settled PvP cannot be rejected; an unknown one is UNKNOWN_PVP."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    assert_refused(ledger, reject_pvp(net, proposal), T0, Reason.UNKNOWN_PVP)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(accept_pvp(net, proposal), T0)
    assert_refused(ledger, reject_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)


def test_pvp_cancel_releases_hold(ledger: Ledger, net: Network) -> None:
    """The proposer's cancellation frees its funds and closes the PvP."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    receipt = ledger.apply(cancel_pvp(net, proposal), T0)
    assert receipt.outcome is Outcome.CANCELLED
    assert ledger.balance("ICBC", "CNY") == (1_000_000, 0)
    assert ledger.pvps[("ICBC", proposal.instruction_id)].status is Outcome.CANCELLED
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)
    assert_refused(ledger, cancel_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)


def test_cancel_by_counterparty_is_refused(ledger: Ledger, net: Network) -> None:
    """A counterparty cannot cancel: it names no PvP of its own."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    assert_refused(ledger, cancel_pvp(net, proposal, canceller="BOCHK"), T0, Reason.UNKNOWN_PVP)


def test_cancel_after_settlement_is_refused(ledger: Ledger, net: Network) -> None:
    """A settled PvP cannot be cancelled."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(accept_pvp(net, proposal), T0)
    assert_refused(ledger, cancel_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)


# ---------------------------------------------------------------------------- PvP expiry


def test_pvp_expiry_releases_hold(ledger: Ledger, net: Network) -> None:
    """At settle_by the bridge expires a held PvP and releases the hold."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    receipts = ledger.expire_due(SETTLE_BY)
    assert [r.outcome for r in receipts] == [Outcome.EXPIRED]
    assert receipts[0].sender == BRIDGE_SENDER
    assert ledger.balance("ICBC", "CNY") == (1_000_000, 0)
    assert ledger.pvps[("ICBC", proposal.instruction_id)].status is Outcome.EXPIRED
    assert ledger.expire_due(SETTLE_BY + DAY_MS) == []
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.PVP_NOT_PENDING)


def test_expire_due_before_settle_by_changes_nothing(ledger: Ledger, net: Network) -> None:
    """Nothing expires one millisecond before the deadline."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    before = snapshot(ledger)
    assert ledger.expire_due(SETTLE_BY - 1) == []
    assert_unchanged(ledger, before)


def test_expire_due_skips_closed_pvps_and_orders_by_deadline(ledger: Ledger, net: Network) -> None:
    """Settled and cancelled PvPs never expire; due ones expire earliest first."""
    settled = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=T0 + 10)
    cancelled = pvp_proposal(net, "ICBC", "BOCHK", 2, 2, settle_by=T0 + 20)
    late = pvp_proposal(net, "KBANK", "ENBD", 3, 3, settle_by=T0 + 40)
    early = pvp_proposal(net, "CCB", "KBANK", 4, 4, settle_by=T0 + 30)
    for proposal in (settled, cancelled, late, early):
        ledger.apply(sign(net, proposal), T0)
    ledger.apply(accept_pvp(net, settled), T0)
    ledger.apply(cancel_pvp(net, cancelled), T0)
    receipts = ledger.expire_due(T0 + 100)
    assert [r.outcome for r in receipts] == [Outcome.EXPIRED, Outcome.EXPIRED]
    statuses = {key[1]: state.status for key, state in ledger.pvps.items()}
    assert statuses[settled.instruction_id] is Outcome.SETTLED
    assert statuses[cancelled.instruction_id] is Outcome.CANCELLED
    assert statuses[late.instruction_id] is Outcome.EXPIRED
    assert statuses[early.instruction_id] is Outcome.EXPIRED
    closing = [ledger.pvps[(p.sender, p.instruction_id)].closed_seq for p in (early, late)]
    assert closing == [r.seq for r in receipts]


def test_expire_before_settle_by_is_refused(ledger: Ledger, net: Network) -> None:
    """The bridge's own expiry instruction is refused before the deadline."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    envelope = expiry_envelope("ICBC", proposal.instruction_id, SETTLE_BY - 1)
    assert_refused(ledger, envelope, SETTLE_BY - 1, Reason.NOT_YET_EXPIRED)


def test_expire_of_closed_or_unknown_pvp_is_refused(ledger: Ledger, net: Network) -> None:
    """Expiring a settled PvP is PVP_NOT_PENDING; an unknown one is UNKNOWN_PVP."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=SETTLE_BY)
    envelope = expiry_envelope("ICBC", proposal.instruction_id, SETTLE_BY)
    assert_refused(ledger, envelope, SETTLE_BY, Reason.UNKNOWN_PVP)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(accept_pvp(net, proposal), T0)
    assert_refused(ledger, envelope, SETTLE_BY, Reason.PVP_NOT_PENDING)


def test_expire_sent_by_a_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """Only the bridge, unsigned, expires a PvP; a bank cannot force an expiry."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    body = ExpirePvp(
        new_id(), "BOCHK", SETTLE_BY, "ICBC", proposal.instruction_id, signed_at=SIGNED_AT
    )
    forged = sign_as_party(Envelope.of(body), "BOCHK", net.keys["BOCHK"])
    assert_refused(ledger, forged, SETTLE_BY, Reason.NOT_A_PARTY)
    bridge = expiry_envelope("ICBC", proposal.instruction_id, SETTLE_BY)
    signed_bridge = sign_as_party(bridge, "BOCHK", net.keys["BOCHK"])
    assert_refused(ledger, signed_bridge, SETTLE_BY, Reason.NOT_A_PARTY)


def test_expiry_envelope_id_is_deterministic() -> None:
    """The expiry of one PvP always carries the same instruction id."""
    first = expiry_envelope("ICBC", "pvp-1", T0)
    assert first.body.instruction_id == expiry_envelope("ICBC", "pvp-1", T0 + 5).body.instruction_id
    assert first.body.instruction_id != expiry_envelope("ICBC", "pvp-2", T0).body.instruction_id


# ---------------------------------------------------------------------------- dual-signed PvP


def test_dual_pvp_settles_both_legs(ledger: Ledger, net: Network) -> None:
    """A dual-signed PvP moves both legs at once."""
    envelope = dual_pvp(net, "KBANK", "ENBD", 500_000, 52_000, rate="0.104")
    receipt = ledger.apply(envelope, T0)
    assert receipt.outcome is Outcome.SETTLED
    assert ledger.balance("KBANK", "THB") == (500_000, 0)
    assert ledger.balance("ENBD", "THB") == (500_000, 0)
    assert ledger.balance("ENBD", "AED") == (900_000 - 52_000, 0)
    assert ledger.balance("KBANK", "AED") == (52_000, 0)


def test_dual_pvp_with_one_leg_unfunded_is_refused_whole(ledger: Ledger, net: Network) -> None:
    """If either bank lacks its leg, neither leg moves."""
    envelope = dual_pvp(net, "KBANK", "ENBD", 500_000, 900_001)
    assert_refused(ledger, envelope, T0, Reason.INSUFFICIENT_FUNDS)
    envelope = dual_pvp(net, "KBANK", "ENBD", 1_000_001, 1)
    assert_refused(ledger, envelope, T0, Reason.INSUFFICIENT_FUNDS)


def test_dual_pvp_without_counterparty_signature_is_refused(ledger: Ledger, net: Network) -> None:
    """Both banks and both endorsements must be present."""
    envelope = dual_pvp(net, "KBANK", "ENBD", 1, 1)
    unsigned = without_signature(without_signature(envelope, "ENBD"), "CBUAE", "ENBD")
    assert_refused(ledger, unsigned, T0, Reason.MISSING_SIGNATURE)
    unendorsed = without_signature(envelope, "CBUAE", "ENBD")
    assert_refused(ledger, unendorsed, T0, Reason.MISSING_SIGNATURE)
    doubled = with_signatures(
        envelope, (*without_signature(envelope, "ENBD").signatures, envelope.signatures[0])
    )
    assert_refused(ledger, doubled, T0, Reason.MISSING_SIGNATURE)


def test_dual_pvp_endorsed_by_wrong_central_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank's leg must be endorsed by its own central bank, not another."""
    envelope = dual_pvp(net, "KBANK", "ENBD", 1, 1, endorsers={"ENBD": "BOT"})
    assert_refused(ledger, envelope, T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_dual_pvp_with_unknown_counterparty_is_refused(ledger: Ledger, net: Network) -> None:
    """An unregistered counterparty is UNKNOWN_PARTICIPANT."""
    body = DualPvp(
        new_id(), "KBANK", T0 + 1, "NOBANK", "THB", 1, "AED", 1, "1", signed_at=SIGNED_AT
    )
    envelope = foreign_signed(body, "NOBANK", "CBUAE", net)
    assert_refused(ledger, envelope, T0, Reason.UNKNOWN_PARTICIPANT)


def test_dual_pvp_with_frozen_account_is_refused(ledger: Ledger, net: Network) -> None:
    """A frozen account on either leg refuses the whole PvP."""
    ledger.apply(freeze(net, "CBUAE", "KBANK", "AED"), T0)
    assert_refused(ledger, dual_pvp(net, "KBANK", "ENBD", 1, 1), T0, Reason.ACCOUNT_FROZEN)


# ---------------------------------------------------------------------------- idempotency


def test_same_id_same_body_returns_original_receipt(ledger: Ledger, net: Network) -> None:
    """Resubmitting an instruction returns its first receipt, marked duplicate, and
    changes nothing."""
    envelope = pay(net, "ICBC", "BOCHK", 1_000, "CNY")
    first = ledger.apply(envelope, T0)
    before = snapshot(ledger)
    again = ledger.apply(envelope, T0 + 5)
    assert again == replace(first, duplicate=True)
    assert_unchanged(ledger, before)


def test_same_body_with_fresh_signatures_is_a_duplicate(ledger: Ledger, net: Network) -> None:
    """Re-signing the same body (new nonces) still resolves to the original receipt."""
    envelope = pay(net, "ICBC", "BOCHK", 1_000, "CNY")
    first = ledger.apply(envelope, T0)
    resigned = sign(net, envelope.body)
    assert resigned.signatures != envelope.signatures
    before = snapshot(ledger)
    assert ledger.apply(resigned, T0) == replace(first, duplicate=True)
    assert_unchanged(ledger, before)


def test_same_id_different_body_is_refused(ledger: Ledger, net: Network) -> None:
    """Reusing an instruction id for another body is ID_CONFLICT."""
    envelope = pay(net, "ICBC", "BOCHK", 1_000, "CNY")
    ledger.apply(envelope, T0)
    changed = sign(net, replace(payment_of(envelope), amount=1_001))
    assert_refused(ledger, changed, T0, Reason.ID_CONFLICT)


def test_same_id_for_another_kind_is_refused(ledger: Ledger, net: Network) -> None:
    """An id used for a payment cannot name a PvP proposal of the same sender."""
    envelope = pay(net, "ICBC", "CCB", 1)
    ledger.apply(envelope, T0)
    proposal = propose_pvp(net, "ICBC", "BOCHK", 1, 1, instruction_id=envelope.body.instruction_id)
    assert_refused(ledger, proposal, T0, Reason.ID_CONFLICT)


def test_same_id_of_another_sender_is_independent(ledger: Ledger, net: Network) -> None:
    """Instruction ids are scoped per sender."""
    ledger.apply(pay(net, "ICBC", "CCB", 1, instruction_id="inv-7"), T0)
    receipt = ledger.apply(pay(net, "CCB", "ICBC", 1, instruction_id="inv-7"), T0)
    assert not receipt.duplicate
    assert receipt.outcome is Outcome.SETTLED


def test_refused_instruction_id_stays_free(ledger: Ledger, net: Network) -> None:
    """A refusal records nothing, so the id can be used again."""
    envelope = pay(net, "ICBC", "CCB", 2_000_000)
    assert_refused(ledger, envelope, T0, Reason.INSUFFICIENT_FUNDS)
    smaller = sign(net, replace(payment_of(envelope), amount=2_000))
    assert ledger.apply(smaller, T0).outcome is Outcome.SETTLED


def test_duplicate_is_answered_after_valid_until(ledger: Ledger, net: Network) -> None:
    """A late resubmission still gets the original outcome rather than an expiry error."""
    envelope = pay(net, "ICBC", "CCB", 1, valid_until=T0 + 10)
    first = ledger.apply(envelope, T0)
    assert ledger.apply(envelope, T0 + DAY_MS) == replace(first, duplicate=True)


def test_duplicate_proposal_after_settlement_does_not_hold_again(
    ledger: Ledger, net: Network
) -> None:
    """Resubmitting a settled proposal returns HELD as recorded and holds nothing new."""
    envelope = propose_pvp(net, "ICBC", "BOCHK", 100_000, 108_500)
    first = ledger.apply(envelope, T0)
    ledger.apply(accept_pvp(net, proposal_of(envelope)), T0)
    before = snapshot(ledger)
    assert ledger.apply(envelope, T0) == replace(first, duplicate=True)
    assert_unchanged(ledger, before)
    assert ledger.balance("ICBC", "CNY") == (900_000, 0)


def test_duplicate_expiry_changes_nothing(ledger: Ledger, net: Network) -> None:
    """Re-applying the bridge's logged expiry is a duplicate, not a second release."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 1, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    [receipt] = ledger.expire_due(SETTLE_BY)
    before = snapshot(ledger)
    again = ledger.apply(expiry_envelope("ICBC", proposal.instruction_id, SETTLE_BY), SETTLE_BY)
    assert again == replace(receipt, duplicate=True)
    assert_unchanged(ledger, before)


# ---------------------------------------------------------------------------- stale instructions


def test_expired_instruction_is_refused(ledger: Ledger, net: Network) -> None:
    """An instruction applied after its valid_until is INSTRUCTION_EXPIRED."""
    envelope = pay(net, "ICBC", "CCB", 1, valid_until=T0 - 1)
    assert_refused(ledger, envelope, T0, Reason.INSTRUCTION_EXPIRED)
    envelope = issue(net, "PBOC", "ICBC", 1, valid_until=T0 - 1)
    assert_refused(ledger, envelope, T0, Reason.INSTRUCTION_EXPIRED)


def test_instruction_is_valid_up_to_valid_until(ledger: Ledger, net: Network) -> None:
    """valid_until is inclusive."""
    envelope = pay(net, "ICBC", "CCB", 1, valid_until=T0)
    assert ledger.apply(envelope, T0).outcome is Outcome.SETTLED


# ---------------------------------------------------------------------------- signatures


def test_unsigned_instruction_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank or central bank instruction with no signature is MISSING_SIGNATURE."""
    body = pay(net, "ICBC", "CCB", 1).body
    assert_refused(ledger, Envelope.of(body), T0, Reason.MISSING_SIGNATURE)
    body = issue(net, "PBOC", "ICBC", 1).body
    assert_refused(ledger, Envelope.of(body), T0, Reason.MISSING_SIGNATURE)


def test_missing_endorsement_is_refused(ledger: Ledger, net: Network) -> None:
    """A bank's own signature without its central bank's endorsement is not enough."""
    envelope = pay(net, "ICBC", "CCB", 1)
    assert_refused(
        ledger, without_signature(envelope, "PBOC", "ICBC"), T0, Reason.MISSING_SIGNATURE
    )
    own = envelope.party_signature("ICBC")
    assert own is not None
    twice = with_signatures(envelope, (own, own))
    assert_refused(ledger, twice, T0, Reason.MISSING_SIGNATURE)


def test_missing_party_signature_is_refused(ledger: Ledger, net: Network) -> None:
    """An endorsement without the bank's own signature is refused."""
    envelope = pay(net, "ICBC", "CCB", 1)
    endorsement = envelope.endorsement("ICBC")
    assert endorsement is not None
    twice = with_signatures(envelope, (endorsement, endorsement))
    assert_refused(ledger, twice, T0, Reason.MISSING_SIGNATURE)


def test_extra_signature_is_refused(ledger: Ledger, net: Network) -> None:
    """Unexpected additional signatures make the envelope MALFORMED."""
    envelope = pay(net, "ICBC", "CCB", 1)
    extra = envelope.with_signature(Signature("HKMA", b"\x01" * 64, "ICBC"))
    assert_refused(ledger, extra, T0, Reason.MALFORMED)
    envelope = issue(net, "PBOC", "ICBC", 1)
    extra = envelope.with_signature(envelope.signatures[0])
    assert_refused(ledger, extra, T0, Reason.MISSING_SIGNATURE)


def test_endorsement_by_wrong_central_bank_is_refused(ledger: Ledger, net: Network) -> None:
    """HKMA cannot endorse a Chinese bank's payment, however valid its signature."""
    body = pay(net, "ICBC", "CCB", 1).body
    envelope = sign(net, body, endorsers={"ICBC": "HKMA"})
    assert_refused(ledger, envelope, T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_bad_endorsement_is_refused(ledger: Ledger, net: Network) -> None:
    """A corrupted central bank endorsement is BAD_SIGNATURE."""
    envelope = corrupt_endorsement(pay(net, "ICBC", "CCB", 1), "ICBC")
    assert_refused(ledger, envelope, T0, Reason.BAD_SIGNATURE)


def test_endorsement_covers_the_bank_signature(ledger: Ledger, net: Network) -> None:
    """Changing the bank's signature after endorsement breaks the endorsement."""
    envelope = corrupt_party_signature(pay(net, "ICBC", "CCB", 1), "ICBC")
    assert_refused(ledger, envelope, T0, Reason.BAD_SIGNATURE)


def test_bad_central_bank_signature_is_refused(ledger: Ledger, net: Network) -> None:
    """A central bank instruction with a corrupted or foreign signature is refused."""
    envelope = issue(net, "PBOC", "ICBC", 1)
    bad = with_signatures(envelope, (corrupt(envelope.signatures[0]),))
    assert_refused(ledger, bad, T0, Reason.BAD_SIGNATURE)
    by_hkma = with_signatures(
        envelope, (Signature("PBOC", signed(envelope.body, net.keys["HKMA"]).signatures[0].value),)
    )
    assert_refused(ledger, by_hkma, T0, Reason.BAD_SIGNATURE)


def test_signatures_of_another_body_are_refused(ledger: Ledger, net: Network) -> None:
    """Signatures lifted from one payment do not authorise another."""
    small = pay(net, "ICBC", "CCB", 1)
    large = Envelope.of(replace(payment_of(small), amount=900_000), small.signatures)
    assert_refused(ledger, large, T0, Reason.BAD_SIGNATURE)


def bank_signature_over_wrong_message(net: Network, signer: str = "ICBC") -> Envelope:
    """A payment by ICBC whose bank signature is invalid but duly endorsed by PBOC."""
    body = pay(net, "ICBC", "CCB", 1).body
    bad = Signature("ICBC", net.keys[signer].sign(b"not the body"))
    return endorse(Envelope.of(body, (bad,)), "ICBC", "PBOC", net.keys["PBOC"])


def test_bad_bank_signature_is_refused_in_all_mode(net: Network) -> None:
    """Offline verification (ALL) checks each bank's own signature too."""
    ledger = make_ledger(net, check=SignatureCheck.ALL)
    fund(ledger, net, "ICBC", 10)
    assert_refused(ledger, bank_signature_over_wrong_message(net), T0, Reason.BAD_SIGNATURE)
    wrong_key = corrupt_party_signature(pay(net, "ICBC", "CCB", 1), "ICBC")
    assert_refused(ledger, wrong_key, T0, Reason.BAD_SIGNATURE)
    lifted = sign(net, pay(net, "ICBC", "CCB", 1).body)
    by_ccb = Signature("ICBC", net.keys["CCB"].sign(b"x"))
    forged = endorse(Envelope.of(lifted.body, (by_ccb,)), "ICBC", "PBOC", net.keys["PBOC"])
    assert_refused(ledger, forged, T0, Reason.BAD_SIGNATURE)
    assert ledger.apply(lifted, T0).outcome is Outcome.SETTLED


def test_endorsements_mode_trusts_the_endorsing_central_bank(net: Network) -> None:
    """In the bridge's ENDORSEMENTS mode a bank signature is vouched for by the endorsement."""
    ledger = make_ledger(net, check=SignatureCheck.ENDORSEMENTS)
    fund(ledger, net, "ICBC", 10)
    receipt = ledger.apply(bank_signature_over_wrong_message(net), T0)
    assert receipt.outcome is Outcome.SETTLED


def test_signature_check_none_skips_cryptography_not_structure(net: Network) -> None:
    """With checks off, bad signatures pass but missing ones and wrong endorsers do not."""
    ledger = make_ledger(net, check=SignatureCheck.NONE)
    fund(ledger, net, "ICBC", 10)
    bad = corrupt_endorsement(pay(net, "ICBC", "CCB", 1), "ICBC")
    assert ledger.apply(bad, T0).outcome is Outcome.SETTLED
    unsigned = Envelope.of(pay(net, "ICBC", "CCB", 1).body)
    assert_refused(ledger, unsigned, T0, Reason.MISSING_SIGNATURE)
    wrong = sign(net, pay(net, "ICBC", "CCB", 1).body, endorsers={"ICBC": "HKMA"})
    assert_refused(ledger, wrong, T0, Reason.NOT_HOME_CENTRAL_BANK)


def test_reference_verifier_drives_the_ledger(net: Network) -> None:
    """The pure-Python verifier accepts the fast signer's envelopes in ALL mode."""
    ledger = Ledger(net.genesis, verifier=ReferenceVerifier(), check=SignatureCheck.ALL)
    ledger.apply(admit_bank(net, "PBOC", "ICBC"), T0)
    ledger.apply(admit_bank(net, "PBOC", "CCB"), T0)
    fund(ledger, net, "ICBC", 10)
    assert ledger.apply(pay(net, "ICBC", "CCB", 3), T0).outcome is Outcome.SETTLED
    assert_refused(
        ledger, corrupt_endorsement(pay(net, "ICBC", "CCB", 1), "ICBC"), T0, Reason.BAD_SIGNATURE
    )


# ---------------------------------------------------------------------------- batches and replay


def busy_day(ledger: Ledger, net: Network) -> None:
    """A mix of every kind of change, for batch and replay tests."""
    ledger.apply(pay(net, "ICBC", "KBANK", 10_000, "CNY"), T0)
    ledger.apply(redeem(net, "CCB", 5_000), T0)
    settled = pvp_proposal(net, "ICBC", "BOCHK", 100_000, 108_500, settle_by=SETTLE_BY)
    ledger.apply(sign(net, settled), T0)
    ledger.apply(accept_pvp(net, settled), T0 + 10)
    held = pvp_proposal(net, "KBANK", "ENBD", 50_000, 5_000, settle_by=SETTLE_BY + 1)
    ledger.apply(sign(net, held), T0 + 20)
    expiring = pvp_proposal(net, "CCB", "KBANK", 1_000, 900, settle_by=T0 + 100)
    ledger.apply(sign(net, expiring), T0 + 30)
    ledger.expire_due(T0 + 100)
    ledger.apply(dual_pvp(net, "BOCHK", "ENBD", 20_000, 9_000), T0 + 200)
    ledger.apply(freeze(net, "BOT", "ENBD", "THB"), T0 + 300)
    ledger.apply(set_policy(net, "HKMA", per_transfer_limit=1_000_000, per_day_limit=9_000_000), T0)
    ledger.apply(set_status(net, "CBUAE", "ENBD", "suspended"), T0 + 400)
    ledger.apply(issue(net, "BOT", "KBANK", 77), T0 + 500)


def test_take_batch_hands_over_entries_and_changed_rows(ledger: Ledger, net: Network) -> None:
    """take_batch returns the new entries and the new value of each changed row."""
    ledger.take_batch()
    envelope = pay(net, "ICBC", "CCB", 1_000)
    receipt = ledger.apply(envelope, T0)
    batch = ledger.take_batch()
    assert [(e.seq, e.time, e.envelope, e.outcome) for e in batch.entries] == [
        (receipt.seq, T0, envelope, Outcome.SETTLED)
    ]
    assert batch.next_seq == receipt.seq + 1
    assert batch.changes["balances"] == {
        ("ICBC", "CNY"): (999_000, 0),
        ("CCB", "CNY"): (501_000, 0),
    }
    assert batch.changes["receipts"] == {("ICBC", envelope.body.instruction_id): receipt}
    assert batch.changes["usage"] == {("ICBC", "CNY", T0 // DAY_MS): 1_000}
    assert ledger.pending_entries() == 0
    assert ledger.take_batch().entries == ()


def test_pending_changes_are_the_pending_batch_changes(ledger: Ledger, net: Network) -> None:
    """pending_changes gives the rows and receipts pending_batch gives, and clears nothing."""
    ledger.take_batch()
    ledger.apply(pay(net, "ICBC", "CCB", 1_000), T0)
    ledger.apply(freeze(net, "PBOC", "CCB", "CNY"), T0)
    changes = ledger.pending_changes()
    assert changes == ledger.pending_batch().changes
    assert set(changes) == {"balances", "usage", "frozen", "receipts"}
    assert ledger.pending_entries() == 2


def test_batch_reports_deleted_rows_as_none(ledger: Ledger, net: Network) -> None:
    """A row removed in the batch (unfreeze) is reported with value None."""
    ledger.apply(freeze(net, "PBOC", "ICBC", "CNY"), T0)
    ledger.take_batch()
    ledger.apply(freeze(net, "PBOC", "ICBC", "CNY", frozen=False), T0)
    assert ledger.take_batch().changes["frozen"] == {("ICBC", "CNY"): None}


def test_pending_batch_keeps_state_until_confirm(ledger: Ledger, net: Network) -> None:
    """pending_batch only looks; confirm forgets the undo journal."""
    ledger.take_batch()
    ledger.apply(pay(net, "ICBC", "CCB", 1), T0)
    assert len(ledger.pending_batch().entries) == 1
    assert ledger.pending_entries() == 1
    ledger.confirm()
    assert ledger.pending_entries() == 0
    before = snapshot(ledger)
    ledger.rollback()
    assert_unchanged(ledger, before)


def test_rollback_restores_state_exactly(ledger: Ledger, net: Network) -> None:
    """Undoing a batch of every kind of change restores every table and the sequence."""
    ledger.take_batch()
    before = snapshot(ledger)
    busy_day(ledger, net)
    assert ledger.pending_entries() > 10
    ledger.rollback()
    assert_unchanged(ledger, before)


def test_rollback_undoes_only_the_current_batch(ledger: Ledger, net: Network) -> None:
    """Rows committed by an earlier batch survive a rollback."""
    ledger.apply(pay(net, "ICBC", "CCB", 1_000), T0)
    ledger.take_batch()
    before = snapshot(ledger)
    ledger.apply(pay(net, "ICBC", "CCB", 2_000), T0)
    ledger.apply(pay(net, "CCB", "ICBC", 5), T0)
    ledger.rollback()
    assert_unchanged(ledger, before)
    assert ledger.balance("ICBC", "CNY") == (999_000, 0)


def test_rollback_frees_ids_and_sequence_numbers(ledger: Ledger, net: Network) -> None:
    """After a rollback the same instruction applies afresh at the same seq."""
    ledger.take_batch()
    envelope = pay(net, "ICBC", "CCB", 1_000)
    first = ledger.apply(envelope, T0)
    ledger.rollback()
    again = ledger.apply(envelope, T0)
    assert again == first
    assert not again.duplicate


def test_rollback_restores_expiry_schedule(ledger: Ledger, net: Network) -> None:
    """A rolled-back proposal never expires; a rolled-back cancel leaves the PvP to expire."""
    ledger.take_batch()
    ghost = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=T0 + 10)
    ledger.apply(sign(net, ghost), T0)
    ledger.rollback()
    assert ledger.expire_due(T0 + 10) == []
    held = pvp_proposal(net, "ICBC", "BOCHK", 1, 1, settle_by=T0 + 20)
    ledger.apply(sign(net, held), T0)
    ledger.take_batch()
    ledger.apply(cancel_pvp(net, held), T0)
    ledger.rollback()
    assert [r.outcome for r in ledger.expire_due(T0 + 20)] == [Outcome.EXPIRED]
    assert ledger.balance("ICBC", "CNY") == (1_000_000, 0)


def test_rollback_of_expire_due_restores_the_hold(ledger: Ledger, net: Network) -> None:
    """An expiry rolled back is attempted again by the next expire_due."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 7, 1, settle_by=T0 + 10)
    ledger.apply(sign(net, proposal), T0)
    ledger.take_batch()
    before = snapshot(ledger)
    assert len(ledger.expire_due(T0 + 10)) == 1
    ledger.rollback()
    assert_unchanged(ledger, before)
    assert len(ledger.expire_due(T0 + 11)) == 1


def test_replay_reproduces_state(net: Network) -> None:
    """Replaying the log from genesis rebuilds exactly the same state."""
    ledger = make_ledger(net)
    for bank, amount in FUNDS.items():
        fund(ledger, net, bank, amount)
    busy_day(ledger, net)
    entries = ledger.take_batch().entries
    for check in (SignatureCheck.ALL, SignatureCheck.ENDORSEMENTS, SignatureCheck.NONE):
        replayed = replay(net.genesis, entries, verifier=FastVerifier(), check=check)
        assert replayed.tables() == ledger.tables()
        assert replayed.next_seq == ledger.next_seq
        assert replayed.pending_entries() == 0
        assert replayed.conservation_errors() == []


def test_replay_survives_canonical_round_trip(ledger: Ledger, net: Network) -> None:
    """Entries stored as canonical bytes and parsed back replay to the same state."""
    busy_day(ledger, net)
    entries = ledger.take_batch().entries
    parsed = [Entry.from_canonical_bytes(e.canonical_bytes()) for e in entries]
    replayed = replay(net.genesis, parsed, verifier=FastVerifier(), check=SignatureCheck.ALL)
    assert replayed.tables() == ledger.tables()


def test_replay_refuses_gaps_and_wrong_outcomes(ledger: Ledger, net: Network) -> None:
    """A missing entry or a falsified outcome is detected during replay."""
    busy_day(ledger, net)
    entries = list(ledger.take_batch().entries)
    with pytest.raises(Refused, match="expected seq") as caught:
        replay(net.genesis, entries[1:], verifier=FastVerifier(), check=SignatureCheck.ALL)
    assert caught.value.reason is Reason.MALFORMED
    settled = next(i for i, e in enumerate(entries) if e.outcome is Outcome.SETTLED)
    entries[settled] = replace(entries[settled], outcome=Outcome.HELD)
    with pytest.raises(Refused, match="replay gives") as caught:
        replay(net.genesis, entries, verifier=FastVerifier(), check=SignatureCheck.ALL)
    assert caught.value.reason is Reason.MALFORMED


def test_replay_refuses_forged_signature(ledger: Ledger, net: Network) -> None:
    """A log entry whose endorsement was tampered with fails replay."""
    busy_day(ledger, net)
    entries = list(ledger.take_batch().entries)
    index = next(i for i, e in enumerate(entries) if isinstance(e.envelope.body, Pay))
    entry = entries[index]
    entries[index] = replace(
        entry, envelope=corrupt_endorsement(entry.envelope, entry.envelope.body.sender)
    )
    with pytest.raises(Refused) as caught:
        replay(net.genesis, entries, verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS)
    assert caught.value.reason is Reason.BAD_SIGNATURE


def test_load_table_restores_a_ledger(ledger: Ledger, net: Network) -> None:
    """A fresh ledger loaded table by table matches the original, expiry schedule included."""
    busy_day(ledger, net)
    ledger.take_batch()
    copy = Ledger(net.genesis, verifier=FastVerifier())
    for name, rows in ledger.tables().items():
        copy.load_table(name, list(rows.items()))
    copy.set_next_seq(ledger.next_seq)
    assert copy.tables() == ledger.tables()
    assert [r.outcome for r in copy.expire_due(SETTLE_BY + 1)] == [Outcome.EXPIRED]
    assert [r.outcome for r in ledger.expire_due(SETTLE_BY + 1)] == [Outcome.EXPIRED]
    assert copy.tables() == ledger.tables()


def test_conservation_holds_after_a_busy_day(ledger: Ledger, net: Network) -> None:
    """Balances plus holds equal issued minus redeemed in every currency."""
    busy_day(ledger, net)
    assert ledger.conservation_errors() == []
    held = sum(held for (_, currency), (_, held) in ledger.balances.items() if currency == "THB")
    assert held == 50_000


def test_conservation_errors_report_corruption(net: Network) -> None:
    """A balance that does not match supply, or is negative, is reported."""
    ledger = make_ledger(net)
    fund(ledger, net, "ICBC", 100)
    ledger.balances[("ICBC", "CNY")] = (101, 0)
    assert ledger.conservation_errors() == ["CNY: balances 101 != issued 100 - redeemed 0"]
    ledger.balances[("ICBC", "CNY")] = (-1, 101)
    assert ledger.conservation_errors() == ["negative balance ICBC/CNY: -1/101"]


# ---------------------------------------------------------------------------- signing time


def test_signing_time_ahead_of_the_ledger_beyond_the_skew_is_refused(
    ledger: Ledger, net: Network
) -> None:
    """A body signed more than CLOCK_SKEW_MS ahead of the ledger's time is INVALID_TIME,
    changing nothing; at exactly the tolerance it settles."""
    ahead = pay(net, "ICBC", "BOCHK", 1_000, "CNY", signed_at=T0 + CLOCK_SKEW_MS + 1)
    refusal = assert_refused(ledger, ahead, T0, Reason.INVALID_TIME)
    assert "ahead of the ledger's time" in refusal.message
    assert "2024-10-04T09:05:00.001Z" in refusal.message
    at_tolerance = pay(net, "ICBC", "BOCHK", 1_000, "CNY", signed_at=T0 + CLOCK_SKEW_MS)
    assert ledger.apply(at_tolerance, T0).outcome is Outcome.SETTLED


def test_signing_time_older_than_the_age_bound_is_refused(ledger: Ledger, net: Network) -> None:
    """A body signed more than MAX_SIGNED_AGE_MS before the ledger's time is INVALID_TIME,
    changing nothing; at exactly the bound it settles."""
    now = T0 + MAX_SIGNED_AGE_MS
    until = now + 60_000
    stale = pay(net, "ICBC", "BOCHK", 1_000, "CNY", signed_at=T0 - 1, valid_until=until)
    refusal = assert_refused(ledger, stale, now, Reason.INVALID_TIME)
    assert "more than 30 days before" in refusal.message
    oldest = pay(net, "ICBC", "BOCHK", 1_000, "CNY", signed_at=T0, valid_until=until)
    assert ledger.apply(oldest, now).outcome is Outcome.SETTLED


def test_signing_time_is_judged_by_the_time_passed_in_so_replay_agrees(net: Network) -> None:
    """The verdict depends on the ledger time `apply` is given, never on a clock: the same
    envelope is refused at one time and settles at another, and a replay of the log long
    after (at each entry's own time) rebuilds the same state."""
    ledger = make_ledger(net)
    fund(ledger, net, "ICBC", 5_000)
    envelope = pay(net, "ICBC", "BOCHK", 1_000, "CNY", signed_at=T0 + DAY_MS)
    assert_refused(ledger, envelope, T0, Reason.INVALID_TIME)
    assert ledger.apply(envelope, T0 + DAY_MS - 1).outcome is Outcome.SETTLED
    entries = ledger.take_batch().entries
    assert entries[-1].time - entries[-1].envelope.body.signed_at == -1
    replayed = replay(net.genesis, entries, verifier=FastVerifier(), check=SignatureCheck.ALL)
    assert replayed.tables() == ledger.tables()


def test_a_recorded_instruction_resubmitted_later_is_a_duplicate_whatever_its_age(
    ledger: Ledger, net: Network
) -> None:
    """Idempotency comes before the signing-time check: a resubmission of a recorded body
    returns its receipt even once the body is too old to be accepted anew."""
    envelope = pay(net, "ICBC", "BOCHK", 1_000, "CNY", valid_until=T0 + 2 * MAX_SIGNED_AGE_MS)
    first = ledger.apply(envelope, T0)
    again = ledger.apply(envelope, T0 + MAX_SIGNED_AGE_MS + DAY_MS)
    assert again.duplicate
    assert again.seq == first.seq


def test_the_bridges_expiry_is_signed_at_its_own_time(ledger: Ledger, net: Network) -> None:
    """`pvp_expire` carries the ledger time it is applied at as its signing time."""
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1_000, 1_000, settle_by=SETTLE_BY)
    ledger.apply(sign(net, proposal), T0)
    (receipt,) = ledger.expire_due(SETTLE_BY + 5)
    entry = ledger.take_batch().entries[-1]
    assert entry.seq == receipt.seq
    assert entry.envelope.body.signed_at == entry.time == SETTLE_BY + 5


def test_expiry_heap_stays_the_size_of_what_is_held() -> None:
    """A ledger that never runs `expire_due` (a replica: expiries come in the log) and keeps
    closed PvPs out of memory does not keep a heap entry for every PvP it ever saw."""
    net = network()
    stored: dict[tuple[str, str], PvpState] = {}  # where closed PvPs are read back from
    ledger = Ledger(net.genesis, check=SignatureCheck.NONE, closed_pvps=stored.get)
    for bank, cb in BANKS:
        ledger.apply(admit_bank(net, cb, bank), T0)
    fund(ledger, net, "ICBC", 10_000_000)
    fund(ledger, net, "BOCHK", 10_000_000)
    ledger.take_batch()
    for n in range(3_000):
        proposal = pvp_proposal(
            net, "ICBC", "BOCHK", 10, 11, settle_by=T0 + 100_000, instruction_id=f"p-{n}"
        )
        ledger.apply(sign(net, proposal), T0 + 1)
        ledger.apply(accept_pvp(net, proposal), T0 + 2)
        stored.update(ledger.take_batch().changes["pvps"])
    assert ledger.pvps == {}
    assert len(ledger._expiries) <= 1_024
    late = accept_pvp(net, proposal, instruction_id="late")
    assert_refused(ledger, late, T0 + 3, Reason.PVP_NOT_PENDING)  # read back, not in memory
    assert ledger.conservation_errors() == []
