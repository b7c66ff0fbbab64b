"""Reference FX rates and bank liquidity of the corridor, shared by every generator of trades.

The sample log generator, the demo and the load tests all quote trades from here, so FX and
liquidity views of any log they produce show the same market: indicative mid rates of the
mBridge currencies (plus SGD) against the yuan, a small spread around them, and issuance sized
like a bank's real liquidity (a few billion yuan equivalent), not an endless balance.

A quoted trade is consistent with the rule every PvP obeys: the rate is stated from the
proposer's side, as units of the receive currency per unit of the pay currency (both in major
units), and the receive amount is the pay amount times that exact decimal rate, rounded to the
receive currency's minor unit (`bridge.rates.counter_amount`), so the legs always agree with
the rate (`bridge.rates.rate_agrees`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from bridge.rates import counter_amount

# indicative mid rates, 2025: units of each currency per 1 CNY
UNITS_PER_CNY: Mapping[str, float] = {
    "CNY": 1.0,
    "HKD": 1.09,
    "THB": 4.55,
    "AED": 0.51,
    "SAR": 0.52,
    "SGD": 0.18,
}
SPREAD = 0.0015  # a dealer quotes within +-0.15 % of mid
RATE_PLACES = 6  # decimals of a quoted rate
LIQUIDITY_CNY = 2_000_000_000  # what a bank holds on the bridge, CNY equivalent, major units
TRADE_MEDIAN_CNY = 250_000.0  # median trade, CNY equivalent, major units
TRADE_SIGMA = 1.1  # log-normal spread of trade sizes
_LOG_MEDIAN = math.log(TRADE_MEDIAN_CNY)


def units_per_cny(currency: str) -> float:
    """Mid rate of `currency` against the yuan; KeyError for a currency of no reference."""
    return UNITS_PER_CNY[currency]


def mid_rate(pay_currency: str, receive_currency: str) -> float:
    """Units of `receive_currency` per unit of `pay_currency`, at mid."""
    return units_per_cny(receive_currency) / units_per_cny(pay_currency)


def quote(mid: float, rng: random.Random, spread: float = SPREAD) -> str:
    """A rate within `spread` of `mid`, as the decimal text an instruction carries."""
    rate = mid * rng.uniform(1.0 - spread, 1.0 + spread)
    return f"{rate:.{RATE_PLACES}f}"


def to_minor(major: float, exponent: int) -> int:
    """Major units (a float from a model, never from a user) as minor units, at least 1."""
    return max(1, round(major * 10.0**exponent))


def trade_value_cny(rng: random.Random) -> float:
    """A trade's value in CNY major units: log-normal around a typical corridor trade."""
    return rng.lognormvariate(_LOG_MEDIAN, TRADE_SIGMA)


def trade(
    rng: random.Random,
    pay_currency: str,
    receive_currency: str,
    *,
    pay_exponent: int = 2,
    receive_exponent: int = 2,
    value_cny: float | None = None,
) -> tuple[int, str, int]:
    """(pay amount, rate, receive amount) of an FX trade at the reference rate with a spread."""
    value = trade_value_cny(rng) if value_cny is None else value_cny
    pay_amount = to_minor(value * units_per_cny(pay_currency), pay_exponent)
    rate = quote(mid_rate(pay_currency, receive_currency), rng)
    return pay_amount, rate, counter_amount(pay_amount, pay_exponent, rate, receive_exponent)


def liquidity(currency: str, exponent: int = 2, cny_equivalent: float = LIQUIDITY_CNY) -> int:
    """A bank's starting balance in `currency` (minor units): `cny_equivalent` yuan's worth."""
    return to_minor(cny_equivalent * units_per_cny(currency), exponent)
