"""Generated trades quote reference rates with a small spread, consistent with their legs."""

from __future__ import annotations

import json
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from analysis.sample import SampleOptions, generate
from bridge import reference_rates
from bridge.rates import rate_agrees
from loadtest.corridor import LOT_MAJOR, Desk, payment_amount, rate, trade_amounts

CURRENCIES = tuple(reference_rates.UNITS_PER_CNY)


def desk(currency: str, exponent: int = 2) -> Desk:
    return Desk(f"B{currency}", f"CB{currency}", currency, "127.0.0.1:1", None, exponent)  # type: ignore[arg-type]


@pytest.mark.parametrize("pay", CURRENCIES)
def test_quotes_stay_within_the_spread_of_mid(pay: str) -> None:
    """Every quoted rate is within 0.15 % of the reference cross rate."""
    rng = random.Random(pay)
    for receive in CURRENCIES:
        if receive == pay:
            continue
        mid = reference_rates.mid_rate(pay, receive)
        for _ in range(200):
            quoted = float(reference_rates.quote(mid, rng))
            # the spread, plus the rounding of the quote to six decimals
            assert abs(quoted - mid) <= mid * reference_rates.SPREAD + 0.5e-6 + 1e-12


@pytest.mark.parametrize(("pay_exp", "receive_exp"), [(2, 2), (0, 2), (2, 0), (3, 2)])
def test_quoted_trades_agree_with_their_rate(pay_exp: int, receive_exp: int) -> None:
    """A quoted trade's legs agree with its rate under the ledger's rule, at any exponents."""
    rng = random.Random(pay_exp * 10 + receive_exp)
    for _ in range(500):
        pay, receive = rng.sample(CURRENCIES, 2)
        pay_amount, quoted, receive_amount = reference_rates.trade(
            rng, pay, receive, pay_exponent=pay_exp, receive_exponent=receive_exp
        )
        assert rate_agrees(pay_amount, pay_exp, receive_amount, receive_exp, quoted)


def test_load_trades_carry_a_rate_that_agrees_with_their_legs() -> None:
    """Load-test trades: round lots near the reference rate; the stated rate agrees."""
    rng = random.Random(3)
    for _ in range(2_000):
        pay, receive = rng.sample(CURRENCIES, 2)
        pay_amount, receive_amount = trade_amounts(rng, desk(pay), desk(receive))
        stated_text = rate(desk(pay), pay_amount, desk(receive), receive_amount)
        assert rate_agrees(pay_amount, 2, receive_amount, 2, stated_text)
        assert pay_amount % (LOT_MAJOR * 100) == 0
        stated = Decimal(receive_amount) / Decimal(pay_amount)
        mid = Decimal(reference_rates.mid_rate(pay, receive))
        # the spread, the quote's six places, and the rounding of receive to a minor unit
        spread = mid * Decimal(reference_rates.SPREAD) + Decimal("0.5e-6") + Decimal("1e-12")
        assert abs(stated - mid) <= spread + Decimal("0.5") / pay_amount


def test_payments_and_liquidity_are_sized_like_banks() -> None:
    """Payments are trade-sized; a bank's liquidity is about 2bn CNY worth in any currency."""
    rng = random.Random(5)
    amounts = sorted(payment_amount(rng, desk("CNY")) for _ in range(2_001))
    median_cny = amounts[1_000] / 100
    assert 100_000 < median_cny < 600_000
    for currency in CURRENCIES:
        worth_cny = (
            reference_rates.liquidity(currency) / 100 / reference_rates.UNITS_PER_CNY[currency]
        )
        assert worth_cny == pytest.approx(reference_rates.LIQUIDITY_CNY, rel=1e-9)


def test_sample_log_trades_at_reference_rates(tmp_path: Path) -> None:
    """In a sample log every PvP's rate is near the reference rate and equals its legs."""
    log = generate(tmp_path / "log.sqlite", SampleOptions(entries=400, block_size=50, seed=9))
    db = sqlite3.connect(log.path)
    try:
        bodies = [
            json.loads(data)["body"]
            for (data,) in db.execute(
                "SELECT data FROM entries WHERE kind IN ('pvp_dual', 'pvp_propose')"
            )
        ]
    finally:
        db.close()
    assert len(bodies) > 50
    for body in bodies:
        mid = reference_rates.mid_rate(body["pay_currency"], body["receive_currency"])
        stated = Decimal(body["rate"])
        assert abs(float(stated) / mid - 1) < 0.01  # spread plus the slow drift of mid rates
        assert rate_agrees(body["pay_amount"], 2, body["receive_amount"], 2, body["rate"])
