"""Amounts between major units (typed and shown) and minor units (kept by the ledger)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.domain import INT64_MAX
from participants.sdk import AmountError, format_minor, to_minor


@pytest.mark.parametrize(
    ("text", "exponent", "minor"),
    [
        ("1234.56", 2, 123_456),
        ("1,234.56", 2, 123_456),
        ("1_234.5", 2, 123_450),
        ("0.01", 2, 1),
        ("7", 2, 700),
        ("1.50", 1, 15),
        ("2.000", 0, 2),
        ("0", 2, 0),
        ("  42.1 ", 3, 42_100),
        ("-3.2", 2, -320),
        ("92,233,720,368,547,758.07", 2, INT64_MAX),
    ],
)
def test_major_units_convert_exactly(text: str, exponent: int, minor: int) -> None:
    """Decimal strings in major units become the exact integer of minor units."""
    assert to_minor(text, exponent) == minor


def test_decimals_and_integers_convert_too() -> None:
    """Decimal and int inputs follow the same exact rules as strings."""
    assert to_minor(Decimal("12.34"), 2) == 1234
    assert to_minor(Decimal("1E+2"), 2) == 10_000
    assert to_minor(5, 0) == 5


@pytest.mark.parametrize(
    ("amount", "exponent", "message"),
    [
        ("1.005", 2, "too many decimals"),
        ("0.5", 0, "no decimal places"),
        ("1.0000000000000000000000000000001", 2, "too many decimals"),
        ("92,233,720,368,547,758.08", 2, "too large"),
        ("1" + "0" * 60, 2, "too large"),
        ("12,34.5", 2, "not a decimal"),
        ("1e3", 2, "not a decimal"),
        ("nan", 2, "not a decimal"),
        ("", 2, "not a decimal"),
        ("1.2.3", 2, "not a decimal"),
        (Decimal("Infinity"), 2, "not a finite"),
        (0.1, 2, "too many decimals"),  # a float is never an exact amount
        (True, 2, "not an amount"),
        ("1", 19, "exponent"),
    ],
)
def test_inexact_or_malformed_amounts_are_refused(
    amount: str | Decimal | float, exponent: int, message: str
) -> None:
    """Anything that would be rounded, overflow int64 or is not a plain number is refused."""
    with pytest.raises(AmountError, match=message):
        to_minor(amount, exponent)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("minor", "exponent", "text"),
    [
        (123_456, 2, "1,234.56"),
        (5, 2, "0.05"),
        (-5, 2, "-0.05"),
        (100, 0, "100"),
        (1_000_000, 3, "1,000.000"),
        (INT64_MAX, 2, "92,233,720,368,547,758.07"),
    ],
)
def test_minor_units_format_in_major_units(minor: int, exponent: int, text: str) -> None:
    """Minor units are shown in major units with thousands separators and every decimal."""
    assert format_minor(minor, exponent) == text


def test_grouping_can_be_turned_off() -> None:
    """format_minor(grouping=False) writes digits only."""
    assert format_minor(123_456_789, 2, grouping=False) == "1234567.89"


@given(st.integers(-INT64_MAX, INT64_MAX), st.integers(0, 18), st.booleans())
def test_formatting_then_parsing_gives_the_same_amount(
    minor: int, exponent: int, grouping: bool
) -> None:
    """Every int64 amount survives format_minor then to_minor unchanged, at every exponent."""
    assert to_minor(format_minor(minor, exponent, grouping=grouping), exponent) == minor
