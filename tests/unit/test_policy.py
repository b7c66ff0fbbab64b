"""Central bank policy: limits, daily usage and its refunds, freezes, corridors, suspension.

The first part drives the leg checks directly on a `StateView`; the rest goes through the
ledger, asserting after each refusal that nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.core.ledger import Ledger
from bridge.core.policy import (
    LEG_CHECKS,
    RECEIVING_CHECKS,
    StateView,
    check_credit_fits,
    check_daily_limit,
    check_funds,
    day_of,
    require,
)
from bridge.domain import (
    DAY_MS,
    INT64_MAX,
    Currency,
    Leg,
    Outcome,
    Participant,
    ParticipantKind,
    ParticipantStatus,
    Policy,
)
from bridge.errors import Reason, Refused
from tests.factories import (
    T0,
    Network,
    accept_pvp,
    assert_refused,
    cancel_pvp,
    dual_pvp,
    freeze,
    fund,
    make_ledger,
    network,
    pay,
    pvp_proposal,
    reject_pvp,
    set_policy,
    set_status,
    sign,
)

TODAY = T0 // DAY_MS
TOMORROW = T0 + DAY_MS


# ---------------------------------------------------------------------------- pure checks


def view(**overrides: object) -> StateView:
    """A small state: PBOC issues CNY; ICBC (CN) and BOCHK (HK) are banks."""
    participants = {
        "PBOC": Participant("PBOC", ParticipantKind.CENTRAL_BANK, "CN", b"", "PBOC"),
        "HKMA": Participant("HKMA", ParticipantKind.CENTRAL_BANK, "HK", b"", "HKMA"),
        "ICBC": Participant("ICBC", ParticipantKind.COMMERCIAL_BANK, "CN", b"", "PBOC"),
        "BOCHK": Participant("BOCHK", ParticipantKind.COMMERCIAL_BANK, "HK", b"", "HKMA"),
    }
    fields: dict[str, object] = {
        "participants": participants,
        "currencies": {"CNY": Currency("CNY", 2, "PBOC"), "HKD": Currency("HKD", 2, "HKMA")},
        "policies": {},
        "balances": {("ICBC", "CNY"): (1_000, 500)},
        "frozen": {},
        "usage": {},
    }
    fields.update(overrides)
    return StateView(**fields)  # type: ignore[arg-type]


def first_refusal(state: StateView, leg: Leg) -> Reason | None:
    try:
        require(state, leg, T0, LEG_CHECKS)
    except Refused as refusal:
        return refusal.reason
    return None


def test_checks_run_in_documented_order() -> None:
    """The first refusal is the most basic one: currency, parties, freeze, corridor,
    limits, funds, credit."""
    assert [check.__name__ for check in LEG_CHECKS] == [
        "check_currency_known",
        "check_parties_active",
        "check_not_frozen",
        "check_corridor",
        "check_transfer_limit",
        "check_daily_limit",
        "check_funds",
        "check_credit_fits",
    ]
    assert set(RECEIVING_CHECKS) <= set(LEG_CHECKS)
    assert "check_funds" not in [check.__name__ for check in RECEIVING_CHECKS]


def test_first_failing_check_wins() -> None:
    """An unfunded payment from a frozen account reports the freeze, not the funds."""
    state = view(frozen={("ICBC", "CNY"): True})
    assert first_refusal(state, Leg("ICBC", "BOCHK", "CNY", 10**9)) is Reason.ACCOUNT_FROZEN
    assert first_refusal(view(), Leg("ICBC", "BOCHK", "CNY", 10**9)) is Reason.INSUFFICIENT_FUNDS
    assert first_refusal(view(), Leg("ICBC", "BOCHK", "CNY", 1_000)) is None


def test_funds_check_ignores_held_amounts() -> None:
    """Only the available balance can pay; held funds are reserved."""
    assert check_funds(view(), Leg("ICBC", "BOCHK", "CNY", 1_000), T0) is None
    refusal = check_funds(view(), Leg("ICBC", "BOCHK", "CNY", 1_001), T0)
    assert refusal is not None
    assert refusal.reason is Reason.INSUFFICIENT_FUNDS


def test_credit_check_refuses_int64_overflow() -> None:
    """A credit that would take available plus held past int64 is BALANCE_OVERFLOW."""
    state = view(balances={("BOCHK", "CNY"): (INT64_MAX - 10, 5)})
    assert check_credit_fits(state, Leg("ICBC", "BOCHK", "CNY", 5), T0) is None
    refusal = check_credit_fits(state, Leg("ICBC", "BOCHK", "CNY", 6), T0)
    assert refusal is not None
    assert refusal.reason is Reason.BALANCE_OVERFLOW


def test_daily_limit_reads_usage_of_the_current_day_only() -> None:
    """Yesterday's usage does not count against today's limit."""
    state = view(
        policies={"PBOC": Policy(per_day_limit=1_000)},
        usage={("ICBC", "CNY", TODAY - 1): 1_000, ("ICBC", "CNY", TODAY): 400},
    )
    assert check_daily_limit(state, Leg("ICBC", "BOCHK", "CNY", 600), T0) is None
    refusal = check_daily_limit(state, Leg("ICBC", "BOCHK", "CNY", 601), T0)
    assert refusal is not None
    assert refusal.reason is Reason.DAILY_LIMIT_EXCEEDED


def test_day_of_splits_at_midnight() -> None:
    """Day numbers change exactly at multiples of 24 hours of logical time."""
    assert day_of(DAY_MS - 1) == 0
    assert day_of(DAY_MS) == 1


def test_suspended_or_non_bank_party_is_refused_by_checks() -> None:
    """Legs are between active commercial banks only."""
    suspended = dict(view().participants)
    suspended["BOCHK"] = Participant(
        "BOCHK",
        ParticipantKind.COMMERCIAL_BANK,
        "HK",
        b"",
        "HKMA",
        ParticipantStatus.SUSPENDED,
    )
    state = view(participants=suspended)
    assert first_refusal(state, Leg("ICBC", "BOCHK", "CNY", 1)) is Reason.PARTICIPANT_SUSPENDED
    assert first_refusal(view(), Leg("ICBC", "HKMA", "CNY", 1)) is Reason.NOT_A_BANK
    assert first_refusal(view(), Leg("ICBC", "NOBODY", "CNY", 1)) is Reason.UNKNOWN_PARTICIPANT
    assert first_refusal(view(), Leg("ICBC", "BOCHK", "SGD", 1)) is Reason.UNKNOWN_CURRENCY


# ---------------------------------------------------------------------------- through the ledger


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def ledger(net: Network) -> Iterator[Ledger]:
    ledger = make_ledger(net)
    for bank, amount in {"ICBC": 1_000_000, "CCB": 1_000_000, "BOCHK": 1_000_000}.items():
        fund(ledger, net, bank, amount)
    fund(ledger, net, "KBANK", 1_000_000)
    ledger.apply(pay(net, "ICBC", "BOCHK", 200_000, "CNY"), T0)
    ledger.apply(pay(net, "ICBC", "KBANK", 200_000, "CNY"), T0)
    ledger.take_batch()
    yield ledger
    assert ledger.conservation_errors() == []


def usage(ledger: Ledger, payer: str, currency: str, now: int = T0) -> int:
    return ledger.usage.get((payer, currency, now // DAY_MS), 0)


def test_transfer_limit_refuses_larger_payment(ledger: Ledger, net: Network) -> None:
    """A payment above the issuer's per-transfer limit is refused; at the limit it settles."""
    ledger.apply(set_policy(net, "PBOC", per_transfer_limit=10_000), T0)
    envelope = pay(net, "CCB", "BOCHK", 10_001, "CNY")
    assert_refused(ledger, envelope, T0, Reason.TRANSFER_LIMIT_EXCEEDED)
    assert ledger.apply(pay(net, "CCB", "BOCHK", 10_000, "CNY"), T0).outcome is Outcome.SETTLED


def test_transfer_limit_binds_foreign_holders_of_the_currency(ledger: Ledger, net: Network) -> None:
    """PBOC's limit applies to a Hong Kong bank paying in CNY, not to HKD payments."""
    ledger.apply(set_policy(net, "PBOC", per_transfer_limit=10_000), T0)
    envelope = pay(net, "BOCHK", "KBANK", 10_001, "CNY")
    assert_refused(ledger, envelope, T0, Reason.TRANSFER_LIMIT_EXCEEDED)
    assert ledger.apply(pay(net, "BOCHK", "KBANK", 10_001, "HKD"), T0).outcome is Outcome.SETTLED


def test_zero_limits_mean_no_limit(ledger: Ledger, net: Network) -> None:
    """A policy of zeros restricts nothing."""
    ledger.apply(set_policy(net, "PBOC", per_transfer_limit=0, per_day_limit=0), T0)
    assert ledger.apply(pay(net, "CCB", "ICBC", 1_000_000), T0).outcome is Outcome.SETTLED


def test_transfer_limit_applies_to_every_pvp_leg(ledger: Ledger, net: Network) -> None:
    """Proposals, acceptances and dual PvPs each respect the per-transfer limit."""
    ledger.apply(set_policy(net, "HKMA", per_transfer_limit=50_000), T0)
    too_big = pvp_proposal(net, "BOCHK", "ICBC", 50_001, 1)
    assert_refused(ledger, sign(net, too_big), T0, Reason.TRANSFER_LIMIT_EXCEEDED)
    counter_leg = pvp_proposal(net, "ICBC", "BOCHK", 1, 50_001)
    ledger.apply(sign(net, counter_leg), T0)
    envelope = accept_pvp(net, counter_leg)
    assert_refused(ledger, envelope, T0, Reason.TRANSFER_LIMIT_EXCEEDED)
    envelope = dual_pvp(net, "ICBC", "BOCHK", 1, 50_001)
    assert_refused(ledger, envelope, T0, Reason.TRANSFER_LIMIT_EXCEEDED)


def test_daily_limit_refuses_when_day_total_exceeded(ledger: Ledger, net: Network) -> None:
    """Payments add up per payer and day; the one that passes the limit is refused."""
    ledger.apply(set_policy(net, "PBOC", per_day_limit=50_000), T0)
    ledger.apply(pay(net, "CCB", "ICBC", 30_000), T0)
    assert_refused(ledger, pay(net, "CCB", "ICBC", 20_001), T0, Reason.DAILY_LIMIT_EXCEEDED)
    ledger.apply(pay(net, "CCB", "ICBC", 20_000), T0)
    assert usage(ledger, "CCB", "CNY") == 50_000
    assert ledger.apply(pay(net, "BOCHK", "CCB", 50_000, "CNY"), T0).outcome is Outcome.SETTLED


def test_daily_limit_resets_next_day(ledger: Ledger, net: Network) -> None:
    """A new logical day starts a new allowance."""
    ledger.apply(set_policy(net, "PBOC", per_day_limit=50_000), T0)
    ledger.apply(pay(net, "CCB", "ICBC", 50_000), T0)
    assert_refused(ledger, pay(net, "CCB", "ICBC", 1), T0, Reason.DAILY_LIMIT_EXCEEDED)
    envelope = pay(net, "CCB", "ICBC", 50_000, valid_until=TOMORROW)
    assert ledger.apply(envelope, TOMORROW).outcome is Outcome.SETTLED


def test_daily_limit_counts_the_held_pvp_leg(ledger: Ledger, net: Network) -> None:
    """A proposal uses the proposer's allowance as soon as its leg is held."""
    ledger.apply(set_policy(net, "PBOC", per_day_limit=50_000), T0)
    ledger.apply(sign(net, pvp_proposal(net, "CCB", "BOCHK", 40_000, 1)), T0)
    assert usage(ledger, "CCB", "CNY") == 40_000
    assert_refused(ledger, pay(net, "CCB", "ICBC", 10_001), T0, Reason.DAILY_LIMIT_EXCEEDED)


@pytest.mark.parametrize("close", ["cancel", "reject", "expire"])
def test_daily_limit_is_refunded_when_pvp_does_not_settle(
    ledger: Ledger, net: Network, close: str
) -> None:
    """Cancel, rejection and expiry give the held leg back to the day's allowance."""
    ledger.apply(set_policy(net, "PBOC", per_day_limit=50_000), T0)
    proposal = pvp_proposal(net, "CCB", "BOCHK", 40_000, 1, settle_by=T0 + 60_000)
    ledger.apply(sign(net, proposal), T0)
    assert_refused(ledger, pay(net, "CCB", "ICBC", 10_001), T0, Reason.DAILY_LIMIT_EXCEEDED)
    now = T0 + 60_000
    if close == "cancel":
        ledger.apply(cancel_pvp(net, proposal), now)
    elif close == "reject":
        ledger.apply(reject_pvp(net, proposal), now)
    else:
        assert len(ledger.expire_due(now)) == 1
    assert usage(ledger, "CCB", "CNY") == 0
    assert ("CCB", "CNY", TODAY) not in ledger.usage
    assert ledger.apply(pay(net, "CCB", "ICBC", 50_000), now).outcome is Outcome.SETTLED


def test_daily_limit_refund_goes_to_the_day_of_the_proposal(ledger: Ledger, net: Network) -> None:
    """A PvP proposed today and cancelled tomorrow frees today's allowance, not tomorrow's."""
    ledger.apply(set_policy(net, "PBOC", per_day_limit=50_000), T0)
    proposal = pvp_proposal(net, "CCB", "BOCHK", 40_000, 1, settle_by=TOMORROW + 1)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(pay(net, "CCB", "ICBC", 5_000, valid_until=TOMORROW), TOMORROW)
    ledger.apply(cancel_pvp(net, proposal, valid_until=TOMORROW), TOMORROW)
    assert usage(ledger, "CCB", "CNY", T0) == 0
    assert usage(ledger, "CCB", "CNY", TOMORROW) == 5_000


def test_acceptance_counts_only_the_counterparty_leg(ledger: Ledger, net: Network) -> None:
    """On acceptance the counterparty's leg is counted; the proposer's is not counted twice."""
    ledger.apply(set_policy(net, "PBOC", per_day_limit=50_000), T0)
    ledger.apply(set_policy(net, "HKMA", per_day_limit=100_000), T0)
    proposal = pvp_proposal(net, "CCB", "BOCHK", 40_000, 60_000)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(pay(net, "BOCHK", "KBANK", 40_001, "HKD"), T0)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.DAILY_LIMIT_EXCEEDED)
    ledger.apply(set_policy(net, "HKMA", per_day_limit=100_001), T0)
    assert ledger.apply(accept_pvp(net, proposal), T0).outcome is Outcome.SETTLED
    assert usage(ledger, "CCB", "CNY") == 40_000
    assert usage(ledger, "BOCHK", "HKD") == 100_001


def test_dual_pvp_counts_both_legs(ledger: Ledger, net: Network) -> None:
    """A dual PvP uses each payer's allowance in its own currency."""
    ledger.apply(dual_pvp(net, "CCB", "BOCHK", 7_000, 8_000), T0)
    assert usage(ledger, "CCB", "CNY") == 7_000
    assert usage(ledger, "BOCHK", "HKD") == 8_000


def test_frozen_payer_or_payee_is_refused(ledger: Ledger, net: Network) -> None:
    """A frozen account can neither send nor receive in that currency."""
    ledger.apply(freeze(net, "PBOC", "CCB", "CNY"), T0)
    assert_refused(ledger, pay(net, "CCB", "ICBC", 1), T0, Reason.ACCOUNT_FROZEN)
    assert_refused(ledger, pay(net, "ICBC", "CCB", 1), T0, Reason.ACCOUNT_FROZEN)
    proposal = pvp_proposal(net, "BOCHK", "CCB", 1, 1)
    assert_refused(ledger, sign(net, proposal), T0, Reason.ACCOUNT_FROZEN)


def test_freeze_is_per_currency(ledger: Ledger, net: Network) -> None:
    """Freezing BOCHK's CNY leaves its HKD free."""
    ledger.apply(freeze(net, "PBOC", "BOCHK", "CNY"), T0)
    assert_refused(ledger, pay(net, "BOCHK", "KBANK", 1, "CNY"), T0, Reason.ACCOUNT_FROZEN)
    assert ledger.apply(pay(net, "BOCHK", "KBANK", 1, "HKD"), T0).outcome is Outcome.SETTLED


def test_freeze_after_proposal_blocks_acceptance_but_not_cancel(
    ledger: Ledger, net: Network
) -> None:
    """A freeze between proposal and acceptance stops settlement; the proposer can still
    cancel and get its hold back."""
    proposal = pvp_proposal(net, "CCB", "BOCHK", 10_000, 1)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(freeze(net, "PBOC", "CCB", "CNY"), T0)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.ACCOUNT_FROZEN)
    assert ledger.apply(cancel_pvp(net, proposal), T0).outcome is Outcome.CANCELLED
    assert ledger.balance("CCB", "CNY") == (1_000_000, 0)


def test_corridor_refuses_jurisdictions_not_allowed(ledger: Ledger, net: Network) -> None:
    """PBOC allows CNY for Hong Kong only: Thai holders cannot send or receive it."""
    ledger.apply(set_policy(net, "PBOC", allowed_jurisdictions=("HK",)), T0)
    assert ledger.apply(pay(net, "ICBC", "BOCHK", 1, "CNY"), T0).outcome is Outcome.SETTLED
    assert ledger.apply(pay(net, "ICBC", "CCB", 1, "CNY"), T0).outcome is Outcome.SETTLED
    assert_refused(ledger, pay(net, "ICBC", "KBANK", 1, "CNY"), T0, Reason.CORRIDOR_NOT_ALLOWED)
    assert_refused(ledger, pay(net, "KBANK", "ICBC", 1, "CNY"), T0, Reason.CORRIDOR_NOT_ALLOWED)
    assert_refused(ledger, pay(net, "BOCHK", "KBANK", 1, "CNY"), T0, Reason.CORRIDOR_NOT_ALLOWED)


def test_corridor_applies_to_the_receiving_leg_of_a_proposal(ledger: Ledger, net: Network) -> None:
    """A Thai bank cannot propose to receive CNY when PBOC's corridor excludes Thailand."""
    ledger.apply(set_policy(net, "PBOC", allowed_jurisdictions=("HK",)), T0)
    proposal = pvp_proposal(net, "KBANK", "ICBC", 1_000, 200)
    assert_refused(ledger, sign(net, proposal), T0, Reason.CORRIDOR_NOT_ALLOWED)
    ledger.apply(set_policy(net, "PBOC", allowed_jurisdictions=("HK", "TH")), T0)
    assert ledger.apply(sign(net, proposal), T0).outcome is Outcome.HELD


def test_policy_of_one_currency_does_not_touch_another(ledger: Ledger, net: Network) -> None:
    """HKMA's tight limits leave CNY payments alone."""
    ledger.apply(set_policy(net, "HKMA", per_transfer_limit=1, per_day_limit=1), T0)
    assert ledger.apply(pay(net, "ICBC", "BOCHK", 500_000, "CNY"), T0).outcome is Outcome.SETTLED


def test_suspended_bank_can_neither_pay_nor_be_paid(ledger: Ledger, net: Network) -> None:
    """Suspension stops a bank's payments both ways until it is reactivated."""
    ledger.apply(set_status(net, "PBOC", "CCB", "suspended"), T0)
    assert_refused(ledger, pay(net, "CCB", "ICBC", 1), T0, Reason.PARTICIPANT_SUSPENDED)
    assert_refused(ledger, pay(net, "ICBC", "CCB", 1), T0, Reason.PARTICIPANT_SUSPENDED)
    envelope = dual_pvp(net, "BOCHK", "CCB", 1, 1)
    assert_refused(ledger, envelope, T0, Reason.PARTICIPANT_SUSPENDED)
    ledger.apply(set_status(net, "PBOC", "CCB", "active"), T0)
    assert ledger.apply(pay(net, "CCB", "ICBC", 1), T0).outcome is Outcome.SETTLED


def test_suspended_proposer_blocks_acceptance_but_may_cancel(ledger: Ledger, net: Network) -> None:
    """A PvP whose proposer is suspended cannot settle; the hold can still be released."""
    proposal = pvp_proposal(net, "CCB", "BOCHK", 10_000, 1)
    ledger.apply(sign(net, proposal), T0)
    ledger.apply(set_status(net, "PBOC", "CCB", "suspended"), T0)
    assert_refused(ledger, accept_pvp(net, proposal), T0, Reason.PARTICIPANT_SUSPENDED)
    assert ledger.apply(cancel_pvp(net, proposal), T0).outcome is Outcome.CANCELLED


def test_policy_change_is_recorded_per_central_bank(ledger: Ledger, net: Network) -> None:
    """set_policy stores the central bank's policy as one row, replacing the previous one."""
    ledger.apply(set_policy(net, "BOT", per_transfer_limit=5, allowed_jurisdictions=("CN",)), T0)
    ledger.apply(set_policy(net, "BOT", per_day_limit=9), T0)
    assert ledger.policies == {"BOT": Policy(0, 9, ())}
