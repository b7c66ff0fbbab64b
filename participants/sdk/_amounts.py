"""Amounts between major units (what people read and type) and minor units (what the ledger keeps).

The ledger holds integers in minor units (fen for CNY: exponent 2). People write "1,234.56".
Conversion is exact, with `Decimal`: an amount with more decimals than the currency's exponent
is refused, never rounded, and so is one past int64.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from bridge.amounts import format_major
from bridge.domain import INT64_MAX

__all__ = ["AmountError", "format_minor", "to_minor"]

# digits with optional thousands separators ("1,234,567"), then an optional fraction
_MAJOR_PATTERN = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
MAX_EXPONENT = 18
_MAX_DIGITS = 40  # far past int64: refuse before computing with huge powers of ten


class AmountError(ValueError):
    """Raised when an amount cannot be converted exactly to minor units."""


def to_minor(amount: str | Decimal | int, exponent: int) -> int:
    """Minor units of `amount` given in major units, e.g. ("1,234.56", 2) -> 123456.

    Refuses anything that is not a plain decimal number, has more decimal places than
    `exponent` allows, or does not fit in int64.
    """
    _check_exponent(exponent)
    if isinstance(amount, bool):
        raise AmountError(f"not an amount: {amount!r}")
    if isinstance(amount, str):
        text = amount.strip().replace("_", "")
        if not _MAJOR_PATTERN.fullmatch(text):
            raise AmountError(f"not a decimal amount: {amount!r}")
        value = Decimal(text.replace(",", ""))
    else:
        try:
            value = Decimal(amount)
        except (InvalidOperation, TypeError, ValueError) as exc:
            raise AmountError(f"not an amount: {amount!r}") from exc
    if not value.is_finite():
        raise AmountError(f"not a finite amount: {amount!r}")
    if value.adjusted() > _MAX_DIGITS:
        raise AmountError(f"{amount!r} is too large")
    sign, digits, power = value.as_tuple()
    assert isinstance(power, int)  # finite
    coefficient = int("".join(map(str, digits)) or "0")
    while power < 0 and coefficient and coefficient % 10 == 0:  # 1.50 has one decimal place
        coefficient //= 10
        power += 1
    shift = power + exponent
    if shift < 0 and coefficient:
        places = "no decimal places" if exponent == 0 else f"at most {exponent} decimal places"
        raise AmountError(f"{amount!r} has too many decimals: this currency allows {places}")
    scale: int = 10 ** max(shift, 0)
    minor = coefficient * scale
    result = -minor if sign else minor
    if abs(result) > INT64_MAX:
        raise AmountError(f"{amount!r} is too large: at most {format_minor(INT64_MAX, exponent)}")
    return result


def format_minor(amount: int, exponent: int, *, grouping: bool = True) -> str:
    """Major units of `amount` in minor units, e.g. (123456, 2) -> "1,234.56"."""
    _check_exponent(exponent)
    return format_major(amount, exponent, grouping=grouping)


def _check_exponent(exponent: int) -> None:
    if isinstance(exponent, bool) or not 0 <= exponent <= MAX_EXPONENT:
        raise AmountError(f"currency exponent must be 0..{MAX_EXPONENT}: got {exponent}")
