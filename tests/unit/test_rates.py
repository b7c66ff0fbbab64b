"""The PvP rate rule (bridge.rates): stated receive / pay, within the rounding of minor units."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.rates import counter_amount, implied_rate, inverse_rate, rate_agrees, rate_mismatch

RATE_TEXT = r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?"
amounts = st.integers(1, 10**15)
exponents = st.integers(0, 4)
rates = st.builds(
    lambda digits, places: format(Decimal(digits).scaleb(-places), "f"),
    st.integers(1, 10**12),
    st.integers(0, 12),
)


def agrees_by_definition(pay: int, pay_exp: int, receive: int, receive_exp: int, rate: str) -> bool:
    """The rule as docs/encoding.md states it, in exact fractions of major units."""
    q = Fraction(Decimal(rate))
    p, r = Fraction(pay, 10**pay_exp), Fraction(receive, 10**receive_exp)
    half_pay, half_receive = Fraction(1, 2 * 10**pay_exp), Fraction(1, 2 * 10**receive_exp)
    return abs(r - p * q) <= half_receive + q * half_pay


@given(amounts, exponents, amounts, exponents, rates)
def test_rate_agrees_is_the_documented_rule(
    pay: int, pay_exp: int, receive: int, receive_exp: int, rate: str
) -> None:
    """The integer check gives exactly the verdict of the rule in fractions."""
    expected = agrees_by_definition(pay, pay_exp, receive, receive_exp, rate)
    assert rate_agrees(pay, pay_exp, receive, receive_exp, rate) is expected


@given(amounts, exponents, exponents, rates)
def test_the_rounded_counter_amount_always_agrees(
    pay: int, pay_exp: int, receive_exp: int, rate: str
) -> None:
    """A receive amount computed from a quoted rate (rounded to its minor unit) agrees."""
    receive = counter_amount(pay, pay_exp, rate, receive_exp)
    if receive > 0:
        assert rate_agrees(pay, pay_exp, receive, receive_exp, rate)


@given(amounts, exponents, amounts, exponents)
@example(120_454_545_454_546, 0, 26, 4)  # 2.2e-17: no 18-decimal rate agrees
def test_the_implied_rate_agrees_and_reads_as_a_plain_decimal(
    pay: int, pay_exp: int, receive: int, receive_exp: int
) -> None:
    """implied_rate is the shortest receive / pay that agrees with both amounts."""
    try:
        rate = implied_rate(pay, pay_exp, receive, receive_exp)
    except ValueError:  # only when no rate the field can hold describes the trade
        exact = Fraction(receive * 10**pay_exp, pay * 10**receive_exp)
        scaled = exact * 10**18  # the rates that agree form an interval around `exact`:
        for digits in (scaled.numerator // scaled.denominator, -(-scaled // 1)):  # its neighbours
            text = format(Decimal(digits).scaleb(-18), "f")
            fits = digits > 0 and len(text.partition(".")[0]) <= 18
            assert not (fits and agrees_by_definition(pay, pay_exp, receive, receive_exp, text))
        return
    assert re.fullmatch(RATE_TEXT, rate)
    assert agrees_by_definition(pay, pay_exp, receive, receive_exp, rate)


def round_significant(value: Fraction, significant: int) -> str:
    """`value` rounded half-even to `significant` significant digits, as a plain decimal."""
    magnitude = len(str(value.numerator)) - len(str(value.denominator))
    if value < Fraction(10) ** magnitude:
        magnitude -= 1
    places = significant - 1 - magnitude
    return format(Decimal(round(value * Fraction(10) ** places)).scaleb(-places), "f")


@given(amounts, exponents, amounts, exponents)
def test_the_documented_precision_always_agrees(
    pay: int, pay_exp: int, receive: int, receive_exp: int
) -> None:
    """receive / pay to one more significant digit than the receive amount has agrees."""
    exact = Fraction(receive * 10**pay_exp, pay * 10**receive_exp)
    rate = round_significant(exact, len(str(receive)) + 1)
    assert rate_agrees(pay, pay_exp, receive, receive_exp, rate)


@given(rates)
def test_an_inverse_rate_is_close_to_one_over_the_rate(rate: str) -> None:
    """inverse_rate is 1 / rate, exact or within 20 significant digits (or 18 decimals)."""
    try:
        inverse = inverse_rate(rate)
    except ValueError:
        assert Fraction(Decimal(rate)) < Fraction(1, 10**17)
        return
    exact = 1 / Fraction(Decimal(rate))
    error = abs(Fraction(Decimal(inverse)) - exact)
    assert error <= max(exact / 10**19, Fraction(1, 2 * 10**18))


def test_inverse_rates_that_end_are_exact() -> None:
    """0.2 is 5 from the other side, 0.8 is 1.25, 1 is 1."""
    assert [inverse_rate(r) for r in ("0.2", "0.8", "1", "8", "0.000001")] == [
        "5",
        "1.25",
        "1",
        "0.125",
        "1000000",
    ]


def test_upside_down_rate_of_the_issue_is_a_mismatch() -> None:
    """920.00 CNY for 1,000.00 HKD is 1.087 HKD per CNY; 0.92 is refused with the arithmetic."""
    assert rate_mismatch(("CNY", 92_000, 2), ("HKD", 100_000, 2), "0.92") == (
        "rate 0.92 gives 846.40 HKD for 920.00 CNY, not 1,000.00 HKD"
    )
    assert rate_mismatch(("CNY", 92_000, 2), ("HKD", 100_000, 2), "1.08696") is None
    assert implied_rate(92_000, 2, 100_000, 2) == "1.08696"


@pytest.mark.parametrize(
    ("rate", "agrees"),
    [
        ("1.0852", True),  # exact: 1,000.00 x 1.0852 = 1,085.20
        ("1.08520499", True),  # 1,085.204990: within half a cent (and the pay side's share)
        ("1.08521", True),  # 1,085.21: within 0.005 + 1.085 x 0.005 = 0.0104...
        ("1.08522", False),  # 1,085.22: two cents off
        ("1.0851", False),
    ],
)
def test_the_tolerance_is_half_a_minor_unit_of_each_leg(rate: str, agrees: bool) -> None:
    """1,000.00 CNY for 1,085.20 HKD: rates within the rounding of both legs agree."""
    assert rate_agrees(100_000, 2, 108_520, 2, rate) is agrees
