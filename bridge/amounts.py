"""Amounts as people read them: minor units shown in major units with the currency's exponent.

The ledger keeps integers in minor units (fen for CNY: exponent 2); every message, log line and
screen shows them in major units, e.g. 4800000000 fen as "48,000,000.00 CNY". Pure functions,
used by the ledger core's refusal messages and by the SDK and CLI alike.
"""

from __future__ import annotations

__all__ = ["format_amount", "format_major"]


def format_major(minor: int, exponent: int, *, grouping: bool = True) -> str:
    """Major units of `minor`, e.g. (123456, 2) -> "1,234.56", (5, 0) -> "5"."""
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    text = f"{whole:,}" if grouping else str(whole)
    if exponent:
        text += "." + str(fraction).rjust(exponent, "0")
    return sign + text


def format_amount(minor: int, exponent: int, currency: str) -> str:
    """An amount with its currency, e.g. (4800000000, 2, "CNY") -> "48,000,000.00 CNY"."""
    return f"{format_major(minor, exponent)} {currency}"
