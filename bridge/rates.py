"""The rate of a PvP and the rule that ties it to the two legs.

A PvP states its rate from the proposer's (for a dual-signed PvP, the submitter's) side: what it
receives per unit it pays, in major units (receive ÷ pay). Both amounts are rounded to their
currency's minor unit, so the rate agrees with them when some trade within half a minor unit of
each amount has exactly that rate:

    |receive - pay * rate|  <=  1/2 minor unit of receive  +  rate * 1/2 minor unit of pay

(in major units; the rule reads the same from the other side, with 1/rate). It is checked with
integers only, exactly. Rounding receive ÷ pay to one more significant digit than the receive
amount has in minor units always satisfies it; `implied_rate` gives the shortest rate that does.
"""

from __future__ import annotations

from fractions import Fraction

from bridge.amounts import format_amount

__all__ = [
    "MAX_RATE_DECIMALS",
    "counter_amount",
    "implied_rate",
    "inverse_rate",
    "rate_agrees",
    "rate_mismatch",
]

MAX_RATE_DECIMALS = 18  # the rate field's grammar: at most 18 digits after the point
_MAX_RATE_INTEGER_DIGITS = 18


def _parse(rate: str) -> tuple[int, int]:
    """(digits, decimals) of a well-formed rate: "1.0870" -> (10870, 4)."""
    whole, _, fraction = rate.partition(".")
    return int(whole + fraction), len(fraction)


def rate_agrees(
    pay: int, pay_exponent: int, receive: int, receive_exponent: int, rate: str
) -> bool:
    """Whether `rate` (receive per unit paid, major units) agrees with both amounts (minor
    units) within the rounding of their minor units. `rate` must be a well-formed decimal."""
    digits, decimals = _parse(rate)
    return _agrees(pay, pay_exponent, receive, receive_exponent, digits, decimals)


def _agrees(
    pay: int, pay_exponent: int, receive: int, receive_exponent: int, digits: int, decimals: int
) -> bool:
    """The rule for rate = digits / 10^decimals, in integers:
    |R/10^er - P·a/10^(ep+s)| ≤ 1/(2·10^er) + a/(2·10^(s+ep)), times 2·10^(er+ep+s)."""
    scale: int = 10 ** (pay_exponent + decimals)
    receive_unit: int = 10**receive_exponent
    difference = abs(2 * receive * scale - 2 * pay * digits * receive_unit)
    return difference <= scale + digits * receive_unit


def rate_mismatch(
    pay: tuple[str, int, int], receive: tuple[str, int, int], rate: str
) -> str | None:
    """Why `rate` contradicts the legs, in major units, or None when it agrees.

    `pay` and `receive` are (currency, amount in minor units, exponent)."""
    pay_code, pay_amount, pay_exponent = pay
    receive_code, receive_amount, receive_exponent = receive
    if rate_agrees(pay_amount, pay_exponent, receive_amount, receive_exponent, rate):
        return None
    implied = counter_amount(pay_amount, pay_exponent, rate, receive_exponent)
    return (
        f"rate {rate} gives {format_amount(implied, receive_exponent, receive_code)} for "
        f"{format_amount(pay_amount, pay_exponent, pay_code)}, not "
        f"{format_amount(receive_amount, receive_exponent, receive_code)}"
    )


def counter_amount(pay: int, pay_exponent: int, rate: str, receive_exponent: int) -> int:
    """What `pay` (minor units) buys at `rate`, in minor units of the receiving currency,
    rounded half to even: the receive amount that agrees with a quoted rate."""
    digits, decimals = _parse(rate)
    return round(Fraction(pay * digits * 10**receive_exponent, 10 ** (pay_exponent + decimals)))


def implied_rate(pay: int, pay_exponent: int, receive: int, receive_exponent: int) -> str:
    """receive ÷ pay in major units as the shortest decimal (fewest significant digits, at
    most 18 decimals) that agrees with both amounts; ValueError when none can."""
    if pay <= 0 or receive <= 0:
        raise ValueError("both amounts must be positive")
    numerator, denominator = receive * 10**pay_exponent, pay * 10**receive_exponent
    magnitude = len(str(numerator)) - len(str(denominator))  # floor(log10(receive / pay))
    if numerator * 10 ** max(-magnitude, 0) < denominator * 10 ** max(magnitude, 0):
        magnitude -= 1
    last = None
    for significant in range(1, 40):
        decimals = min(significant - 1 - magnitude, MAX_RATE_DECIMALS)
        if decimals == last:
            break
        last = decimals
        if decimals >= 0:
            digits = _round_half_even(numerator * 10**decimals, denominator)
            agrees = _agrees(pay, pay_exponent, receive, receive_exponent, digits, decimals)
        else:  # a whole number of tens: compare it with no decimals
            digits = _round_half_even(numerator, denominator * 10**-decimals)
            whole = digits * 10**-decimals
            agrees = _agrees(pay, pay_exponent, receive, receive_exponent, whole, 0)
        if agrees:
            text = _decimal_text(digits, decimals)
            if text is not None:
                return text
    raise ValueError(
        f"no rate of at most {MAX_RATE_DECIMALS} decimals agrees with {receive} / {pay}"
    )


def inverse_rate(rate: str) -> str:
    """The same rate stated from the other side (1 / rate): exact when it ends within 18
    decimals, else rounded to 20 significant digits; ValueError when the field cannot hold it.

    A signer of a dual-signed PvP quotes its own side; the instruction states the submitter's.
    The rule above reads the same from both sides, so an inverse that agrees from one side
    agrees from the other; 20 digits keep the rounding far below any minor unit in int64."""
    digits, decimals = _parse(rate)
    if digits <= 0:
        raise ValueError(f"rate {rate} is not positive")
    exact = Fraction(10**decimals, digits)
    for places in range(MAX_RATE_DECIMALS + 1):
        scaled = exact * 10**places
        if scaled.denominator == 1:
            text = _decimal_text(scaled.numerator, places)
            break
    else:
        places = min(19 - _magnitude(exact), MAX_RATE_DECIMALS)
        text = _decimal_text(round(exact * Fraction(10) ** places), places)
    if text is None:
        raise ValueError(f"rate {rate} has no inverse of at most {MAX_RATE_DECIMALS} decimals")
    return text


def _round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator (both positive) rounded half to even, in integers."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        quotient += 1
    return quotient


def _magnitude(value: Fraction) -> int:
    """floor(log10(value)) of a positive fraction, exactly."""
    magnitude = len(str(value.numerator)) - len(str(value.denominator))
    if value < Fraction(10) ** magnitude:
        magnitude -= 1
    return magnitude


def _decimal_text(digits: int, decimals: int) -> str | None:
    """digits * 10^-decimals as the rate field writes it ("1.087", "1200"), or None when it
    is zero or too large for the field."""
    if digits <= 0:
        return None
    if decimals <= 0:
        text = str(digits * 10**-decimals)
    else:
        whole, fraction = divmod(digits, 10**decimals)
        text = str(whole)
        fraction_text = str(fraction).rjust(decimals, "0").rstrip("0")
        if fraction_text:
            text += "." + fraction_text
    if len(text.partition(".")[0]) > _MAX_RATE_INTEGER_DIGITS:
        return None
    return text
