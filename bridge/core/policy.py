"""Checks of one leg (payer -> payee, one currency) against ledger state and policy.

Each check is a small pure function returning a refusal or None; `LEG_CHECKS` lists them in the
order they run, so the first refusal a bank sees is the most basic one. They read state only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bridge.amounts import format_amount
from bridge.domain import (
    DAY_MS,
    INT64_MAX,
    Currency,
    CurrencyCode,
    Leg,
    Millis,
    Participant,
    ParticipantId,
    ParticipantKind,
    ParticipantStatus,
    Policy,
)
from bridge.errors import Reason, Refused

AccountKey = tuple[ParticipantId, CurrencyCode]
Balance = tuple[int, int]  # (available, held)
UsageKey = tuple[ParticipantId, CurrencyCode, int]  # (payer, currency, day number)
NO_BALANCE: Balance = (0, 0)
NO_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class StateView:
    """Read-only view of what the leg checks need."""

    participants: Mapping[ParticipantId, Participant]
    currencies: Mapping[CurrencyCode, Currency]
    policies: Mapping[ParticipantId, Policy]
    balances: Mapping[AccountKey, Balance]
    frozen: Mapping[AccountKey, bool]
    usage: Mapping[UsageKey, int]


LegCheck = Callable[[StateView, Leg, Millis], Refused | None]


def day_of(now: Millis) -> int:
    return now // DAY_MS


def _shower(state: StateView, currency: CurrencyCode) -> Callable[[int], str]:
    """Formats minor units of `currency` (a known one) in major units with its code."""
    exponent = state.currencies[currency].exponent
    return lambda minor: format_amount(minor, exponent, currency)


def check_currency_known(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    if leg.currency not in state.currencies:
        return Refused(Reason.UNKNOWN_CURRENCY, f"unknown currency {leg.currency}")
    return None


def check_parties_active(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    for who in (leg.payer, leg.payee):
        participant = state.participants.get(who)
        if participant is None:
            return Refused(Reason.UNKNOWN_PARTICIPANT, f"unknown participant {who}")
        if participant.kind is not ParticipantKind.COMMERCIAL_BANK:
            return Refused(Reason.NOT_A_BANK, f"{who} is not a commercial bank")
        if participant.status is not ParticipantStatus.ACTIVE:
            return Refused(Reason.PARTICIPANT_SUSPENDED, f"participant {who} is suspended")
    return None


def check_not_frozen(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    for who in (leg.payer, leg.payee):
        if (who, leg.currency) in state.frozen:
            return Refused(Reason.ACCOUNT_FROZEN, f"account {who}/{leg.currency} is frozen")
    return None


def check_corridor(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    issuer = state.currencies[leg.currency].issuer
    allowed = state.policies.get(issuer, NO_POLICY).allowed_jurisdictions
    if not allowed:
        return None
    home = state.participants[issuer].jurisdiction
    for who in (leg.payer, leg.payee):
        jurisdiction = state.participants[who].jurisdiction
        if jurisdiction != home and jurisdiction not in allowed:
            return Refused(
                Reason.CORRIDOR_NOT_ALLOWED,
                f"{leg.currency} is not allowed for {who} ({jurisdiction}) by {issuer}'s policy",
            )
    return None


def check_transfer_limit(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    issuer = state.currencies[leg.currency].issuer
    limit = state.policies.get(issuer, NO_POLICY).per_transfer_limit
    if limit and leg.amount > limit:
        show = _shower(state, leg.currency)
        return Refused(
            Reason.TRANSFER_LIMIT_EXCEEDED,
            f"{show(leg.amount)} exceeds the per-transfer limit of {show(limit)}",
        )
    return None


def check_daily_limit(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    issuer = state.currencies[leg.currency].issuer
    limit = state.policies.get(issuer, NO_POLICY).per_day_limit
    if not limit:
        return None
    used = state.usage.get((leg.payer, leg.currency, day_of(now)), 0)
    if used + leg.amount > limit:
        show = _shower(state, leg.currency)
        return Refused(
            Reason.DAILY_LIMIT_EXCEEDED,
            f"{leg.payer} has sent {show(used)} today; {show(leg.amount)} more exceeds "
            f"the daily limit of {show(limit)}",
        )
    return None


def check_funds(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    available = state.balances.get((leg.payer, leg.currency), NO_BALANCE)[0]
    if available < leg.amount:
        show = _shower(state, leg.currency)
        return Refused(
            Reason.INSUFFICIENT_FUNDS,
            f"{leg.payer} has {show(available)} available, needs {show(leg.amount)}",
        )
    return None


def check_credit_fits(state: StateView, leg: Leg, now: Millis) -> Refused | None:
    available, held = state.balances.get((leg.payee, leg.currency), NO_BALANCE)
    if available + held + leg.amount > INT64_MAX:
        return Refused(
            Reason.BALANCE_OVERFLOW, f"crediting {leg.payee}/{leg.currency} would exceed int64"
        )
    return None


# Checks that concern the receiving side only: run on the proposer's leg of a PvP the
# counterparty has not funded yet, and on the leg an acceptance credits.
RECEIVING_CHECKS: tuple[LegCheck, ...] = (
    check_currency_known,
    check_parties_active,
    check_not_frozen,
    check_corridor,
    check_credit_fits,
)

LEG_CHECKS: tuple[LegCheck, ...] = (
    check_currency_known,
    check_parties_active,
    check_not_frozen,
    check_corridor,
    check_transfer_limit,
    check_daily_limit,
    check_funds,
    check_credit_fits,
)


def passes_every_check(state: StateView, leg: Leg) -> bool:
    """A quick test that only a leg passing every check of `LEG_CHECKS` passes (whatever the
    time): known currency, two active commercial banks, no frozen account, no corridor rule
    or daily limit of the issuer (those are left to the checks themselves), within the
    per-transfer limit, the payer's funds and the payee's int64 room. False says nothing:
    the checks decide."""
    currency = state.currencies.get(leg.currency)
    if currency is None:
        return False
    participants = state.participants
    for who in (leg.payer, leg.payee):
        participant = participants.get(who)
        if (
            participant is None
            or participant.kind is not ParticipantKind.COMMERCIAL_BANK
            or participant.status is not ParticipantStatus.ACTIVE
        ):
            return False
    frozen = state.frozen
    if frozen and ((leg.payer, leg.currency) in frozen or (leg.payee, leg.currency) in frozen):
        return False
    policy = state.policies.get(currency.issuer, NO_POLICY)
    limit = policy.per_transfer_limit
    if policy.allowed_jurisdictions or policy.per_day_limit or (limit and leg.amount > limit):
        return False
    balances = state.balances
    if balances.get((leg.payer, leg.currency), NO_BALANCE)[0] < leg.amount:
        return False
    available, held = balances.get((leg.payee, leg.currency), NO_BALANCE)
    return available + held + leg.amount <= INT64_MAX


def require(state: StateView, leg: Leg, now: Millis, checks: tuple[LegCheck, ...]) -> None:
    """Raise the first refusal any check gives for this leg (`checks`: `LEG_CHECKS` or some
    of them). A leg that passes the quick test passes them all: they run only otherwise."""
    if passes_every_check(state, leg):
        return
    for check in checks:
        refusal = check(state, leg, now)
        if refusal is not None:
            raise refusal
