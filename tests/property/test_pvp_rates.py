"""PvP rates through the ledger: every consistent rate is accepted, every other one refused.

"Consistent" is the documented rule (docs/encoding.md), written here in exact fractions:
some trade within half a minor unit of each amount has exactly the stated rate.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge.core.ledger import Ledger
from bridge.domain import Outcome
from bridge.errors import Reason
from tests.factories import (
    T0,
    assert_refused,
    dual_pvp,
    fund,
    make_ledger,
    network,
    propose_pvp,
)

NET = network()
FUNDS = 10**14
amounts = st.integers(1, 10**12)
kinds = st.sampled_from(["propose", "dual"])
# any positive plain decimal the rate field accepts, near and far from the legs' ratio
rates = st.builds(
    lambda digits, places: format(Decimal(digits).scaleb(-places), "f"),
    st.integers(1, 10**15),
    st.integers(0, 18),
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def agrees(pay: int, receive: int, rate: str) -> bool:
    """The rule for two currencies of exponent 2 (CNY and HKD), in fractions of major units."""
    q = Fraction(Decimal(rate))
    return abs(Fraction(receive, 100) - Fraction(pay, 100) * q) <= Fraction(1, 200) * (1 + q)


def documented_rate(pay: int, receive: int) -> str:
    """receive / pay rounded half-even to one more significant digit than `receive` has."""
    exact = Fraction(receive, pay)
    magnitude = len(str(exact.numerator)) - len(str(exact.denominator))
    if exact < Fraction(10) ** magnitude:
        magnitude -= 1
    places = len(str(receive)) - magnitude
    return format(Decimal(round(exact * Fraction(10) ** places)).scaleb(-places), "f")


def funded() -> Ledger:
    ledger = make_ledger(NET)
    fund(ledger, NET, "ICBC", FUNDS)
    fund(ledger, NET, "BOCHK", FUNDS)
    return ledger


def submit(ledger: Ledger, kind: str, pay: int, receive: int, rate: str) -> Outcome:
    """ICBC pays CNY for BOCHK's HKD, proposed or dual-signed, at `rate`."""
    if kind == "propose":
        envelope = propose_pvp(NET, "ICBC", "BOCHK", pay, receive, rate=rate)
    else:
        envelope = dual_pvp(NET, "ICBC", "BOCHK", pay, receive, rate=rate)
    return ledger.apply(envelope, T0).outcome


@SETTINGS
@given(kinds, amounts, amounts)
def test_a_rate_rounded_to_the_documented_precision_is_accepted(
    kind: str, pay: int, receive: int
) -> None:
    """receive / pay to (digits of the receive amount + 1) significant digits settles."""
    rate = documented_rate(pay, receive)
    assume(len(rate.partition(".")[2]) <= 18)  # the rate field's 18 decimals
    outcome = submit(funded(), kind, pay, receive, rate)
    assert outcome is (Outcome.HELD if kind == "propose" else Outcome.SETTLED)


@SETTINGS
@given(kinds, amounts, amounts, rates)
def test_a_rate_is_accepted_exactly_when_it_agrees_with_the_legs(
    kind: str, pay: int, receive: int, rate: str
) -> None:
    """Any stated rate: accepted if the rule holds, else RATE_MISMATCH and nothing changes."""
    ledger = funded()
    if agrees(pay, receive, rate):
        assert submit(ledger, kind, pay, receive, rate) in (Outcome.HELD, Outcome.SETTLED)
        return
    make = propose_pvp if kind == "propose" else dual_pvp
    envelope = make(NET, "ICBC", "BOCHK", pay, receive, rate=rate)
    refusal = assert_refused(ledger, envelope, T0, Reason.RATE_MISMATCH)
    assert refusal.message.startswith(f"pvp_{kind}: rate {rate} gives ")


@SETTINGS
@given(kinds, amounts, amounts)
def test_a_rate_near_the_true_one_is_judged_at_the_boundary(
    kind: str, pay: int, receive: int
) -> None:
    """Rates just inside and just outside the tolerance are accepted and refused."""
    ledger = funded()
    judged = 0
    exact = Fraction(receive, pay)
    slack = Fraction(1, 200) * (1 + exact) / Fraction(pay, 100)  # rate error the rule allows
    for factor, inside in ((Fraction(99, 100), True), (Fraction(101, 100), False)):
        for sign in (1, -1):
            q = exact + sign * slack * factor
            rate = format(Decimal(round(q * 10**18)).scaleb(-18), "f")
            if q <= 0 or agrees(pay, receive, rate) is not inside:
                continue  # rounding to 18 decimals crossed the boundary
            envelope = (propose_pvp if kind == "propose" else dual_pvp)(
                NET, "ICBC", "BOCHK", pay, receive, rate=rate
            )
            if inside:
                ledger.apply(envelope, T0)
            else:
                assert_refused(ledger, envelope, T0, Reason.RATE_MISMATCH)
            judged += 1
    assume(judged > 0)
