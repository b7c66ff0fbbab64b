"""The leg checks' quick test passes only legs that every check passes.

`require` first asks `passes_every_check` and runs the checks (whose first refusal names the
reason) only when it says no. Random states (banks and central banks, active or suspended,
frozen accounts, corridor rules, per-transfer and daily limits, daily usage, balances up to
int64) and random legs must get from `require` exactly the refusal the checks give in their
order, for both lists of checks, so the quick test never lets through what a check refuses.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.policy import (
    LEG_CHECKS,
    RECEIVING_CHECKS,
    LegCheck,
    StateView,
    day_of,
    passes_every_check,
    require,
)
from bridge.domain import (
    INT64_MAX,
    Currency,
    Leg,
    Participant,
    ParticipantKind,
    ParticipantStatus,
    Policy,
)
from bridge.errors import Refused

T0 = 1_763_889_940_000
WHO = ("PBOC", "HKMA", "ICBC", "BOCHK", "CCB", "NOBODY")
CODES = ("CNY", "HKD", "XXX")
BANKS = ("ICBC", "BOCHK", "CCB")
AMOUNTS = st.one_of(st.integers(1, 10**6), st.integers(INT64_MAX - 10**6, INT64_MAX))


@st.composite
def states(draw: st.DrawFn) -> StateView:
    participants = {}
    for who, home, jurisdiction in (
        ("PBOC", "PBOC", "CN"), ("HKMA", "HKMA", "HK"),
        ("ICBC", "PBOC", "CN"), ("BOCHK", "HKMA", "HK"), ("CCB", "PBOC", "CN"),
    ):  # fmt: skip
        if who != home and draw(st.integers(0, 9)) == 0:
            continue  # a bank not admitted (central banks are there from genesis)
        kind = ParticipantKind.CENTRAL_BANK if who == home else ParticipantKind.COMMERCIAL_BANK
        if draw(st.integers(0, 9)) == 0:
            kind = ParticipantKind.CENTRAL_BANK  # a central bank as a leg's party
        status = draw(
            st.sampled_from([ParticipantStatus.ACTIVE] * 4 + [ParticipantStatus.SUSPENDED])
        )
        participants[who] = Participant(who, kind, jurisdiction, b"", home, status)
    currencies = {"CNY": Currency("CNY", 2, "PBOC"), "HKD": Currency("HKD", 2, "HKMA")}
    policies = {
        issuer: Policy(
            draw(st.one_of(st.just(0), AMOUNTS)),
            draw(st.one_of(st.just(0), st.just(0), AMOUNTS)),
            draw(st.sampled_from([(), (), ("HK",), ("CN",), ("TH",)])),
        )
        for issuer in draw(st.sets(st.sampled_from(["PBOC", "HKMA"])))
    }
    accounts = [(who, code) for who in WHO for code in CODES]
    funded = [(who, code) for who in BANKS for code in CODES[:2]]  # mostly there
    balances = {
        account: (draw(st.one_of(st.just(10**6), AMOUNTS)), draw(st.one_of(st.just(0), AMOUNTS)))
        for account in [*draw(st.sets(st.sampled_from(accounts))), *funded]
        if draw(st.integers(0, 9))
    }
    frozen = dict.fromkeys(draw(st.sets(st.sampled_from(accounts), max_size=2)), True)
    day = day_of(T0)
    usage = {
        (who, code, day): draw(AMOUNTS)
        for who, code in draw(st.sets(st.sampled_from(accounts), max_size=3))
    }
    return StateView(participants, currencies, policies, balances, frozen, usage)


PARTIES = st.one_of(st.sampled_from(BANKS), st.sampled_from(WHO))  # mostly banks
legs = st.builds(
    Leg,
    PARTIES,
    PARTIES,
    st.one_of(st.sampled_from(CODES[:2]), st.sampled_from(CODES)),
    st.one_of(st.integers(1, 1_000), AMOUNTS),
)


def checked_in_order(state: StateView, leg: Leg, checks: tuple[LegCheck, ...]) -> str | None:
    for check in checks:
        refusal = check(state, leg, T0)
        if refusal is not None:
            return f"{refusal.reason.value}: {refusal.message}"
    return None


def required(state: StateView, leg: Leg, checks: tuple[LegCheck, ...]) -> str | None:
    try:
        require(state, leg, T0, checks)
    except Refused as refusal:
        return f"{refusal.reason.value}: {refusal.message}"
    return None


@settings(max_examples=2000, deadline=None)
@given(states(), legs)
def test_require_refuses_exactly_as_the_checks_in_their_order(state: StateView, leg: Leg) -> None:
    """Any state, any leg: `require` gives the checks' first refusal (or none), and the
    quick test passes a leg only when no check refuses it."""
    for checks in (LEG_CHECKS, RECEIVING_CHECKS):
        assert required(state, leg, checks) == checked_in_order(state, leg, checks)
    if passes_every_check(state, leg):
        assert checked_in_order(state, leg, LEG_CHECKS) is None
