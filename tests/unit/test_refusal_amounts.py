"""Refusal messages state amounts in major units of their currency, never bare minor units."""

from __future__ import annotations

import re

import pytest

from bridge.amounts import format_amount, format_major
from bridge.core.ledger import Ledger
from bridge.domain import Envelope
from bridge.errors import Reason
from tests.factories import (
    CENTRAL_BANKS,
    T0,
    assert_refused,
    dual_pvp,
    fund,
    make_ledger,
    network,
    pay,
    propose_pvp,
    redeem,
    set_policy,
)

NET = network()
EXPONENT = {currency: exponent for _, _, currency, exponent in CENTRAL_BANKS}
# an amount written as bare digits (no decimal point, no grouping) right before a currency
_BARE_AMOUNT = re.compile(r"(?<![\d.,])(\d+) ([A-Z]{3})\b")


def refused_messages() -> list[tuple[Reason, str]]:
    """One refusal of each kind that speaks of an amount, from a funded ledger."""
    ledger: Ledger = make_ledger(NET)
    fund(ledger, NET, "ICBC", 4_800_000_000)  # 48,000,000.00 CNY
    fund(ledger, NET, "KBANK", 10_000_000)  # 100,000.00 THB
    ledger.apply(set_policy(NET, "BOT", per_transfer_limit=10_000, per_day_limit=25_000), T0)
    ledger.apply(pay(NET, "KBANK", "ENBD", 9_000), T0)
    ledger.apply(pay(NET, "KBANK", "ENBD", 9_000), T0)
    cases: list[tuple[Envelope, Reason]] = [
        (pay(NET, "ICBC", "CCB", 100_000_000_000), Reason.INSUFFICIENT_FUNDS),
        (redeem(NET, "ICBC", 100_000_000_000), Reason.INSUFFICIENT_FUNDS),
        (pay(NET, "KBANK", "ENBD", 10_000_000), Reason.TRANSFER_LIMIT_EXCEEDED),
        (pay(NET, "KBANK", "ENBD", 9_000), Reason.DAILY_LIMIT_EXCEEDED),
        (dual_pvp(NET, "BOCHK", "ICBC", 100_000, 92_000), Reason.INSUFFICIENT_FUNDS),
        (propose_pvp(NET, "ICBC", "BOCHK", 92_000, 100_000, rate="0.92"), Reason.RATE_MISMATCH),
    ]
    return [
        (reason, assert_refused(ledger, envelope, T0, reason).message) for envelope, reason in cases
    ]


def test_no_refusal_message_prints_minor_units_beside_a_currency() -> None:
    """No refusal names an amount as bare minor-unit digits next to a currency code."""
    messages = refused_messages()
    assert len(messages) == 6
    for reason, message in messages:
        bare = [m.group(0) for m in _BARE_AMOUNT.finditer(message) if EXPONENT[m.group(2)] > 0]
        assert not bare, f"{reason.value}: {message!r} prints minor units {bare}"


def test_refusal_messages_read_in_major_units() -> None:
    """Funds, limits and rates are stated like "48,000,000.00 CNY" in their messages."""
    messages = [message for _, message in refused_messages()]
    assert messages[0] == "ICBC has 48,000,000.00 CNY available, needs 1,000,000,000.00 CNY"
    assert messages[1] == messages[0]  # a redemption says the same
    assert messages[2] == "100,000.00 THB exceeds the per-transfer limit of 100.00 THB"
    assert messages[3] == (
        "KBANK has sent 180.00 THB today; 90.00 THB more exceeds the daily limit of 250.00 THB"
    )
    assert messages[4] == "BOCHK has 0.00 HKD available, needs 1,000.00 HKD"
    assert messages[5] == (
        "pvp_propose: rate 0.92 gives 846.40 HKD for 920.00 CNY, not 1,000.00 HKD"
    )


def test_funds_refusal_of_a_redemption_reads_in_major_units() -> None:
    """A redemption beyond the balance says what is available in major units."""
    ledger = make_ledger(NET)
    fund(ledger, NET, "ICBC", 4_800_000_000)
    refusal = assert_refused(
        ledger, redeem(NET, "ICBC", 4_800_000_001), T0, Reason.INSUFFICIENT_FUNDS
    )
    assert refusal.message == ("ICBC has 48,000,000.00 CNY available, needs 48,000,000.01 CNY")


@pytest.mark.parametrize(
    ("minor", "exponent", "text"),
    [
        (4_800_000_000, 2, "48,000,000.00"),
        (5, 2, "0.05"),
        (-1_050, 2, "-10.50"),
        (1_234, 0, "1,234"),
        (1, 3, "0.001"),
        (0, 2, "0.00"),
    ],
)
def test_format_major_uses_the_currency_exponent(minor: int, exponent: int, text: str) -> None:
    """Minor units become major units with exactly `exponent` decimals and grouping."""
    assert format_major(minor, exponent) == text
    assert format_amount(minor, exponent, "CNY") == f"{text} CNY"
