"""The banks of a network as load generators drive them, and trades that look like the corridor.

Nothing here imports Locust (which patches the standard library for gevent when imported), so
benchmarks that drive the network with asyncio use it too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bridge import reference_rates
from bridge.crypto import PrivateKey
from bridge.rates import counter_amount, implied_rate
from participants.network_config import NetworkConfig

__all__ = [
    "Desk",
    "LoadNetwork",
    "payment_amount",
    "rate",
    "trade_amounts",
    "trade_reference",
]

LOT_MAJOR = 10_000  # FX trades are quoted in round lots of this many major units


@dataclass(frozen=True, slots=True)
class Desk:
    """One bank as a load test drives it: its key and its central bank's node."""

    bank: str
    central_bank: str
    currency: str
    address: str
    key: PrivateKey
    exponent: int = 2  # minor-unit exponent of `currency`


@dataclass(frozen=True, slots=True)
class LoadNetwork:
    """Every bank of a network directory with its key (loaded once per process)."""

    config: NetworkConfig
    desks: tuple[Desk, ...]

    @staticmethod
    @cache
    def load(directory: Path) -> LoadNetwork:
        config = NetworkConfig.load(directory)
        desks = tuple(
            Desk(bank.id, cb.id, cb.currency, cb.address, config.load_key(bank.id), cb.exponent)
            for cb in config.central_banks
            for bank in cb.banks
        )
        if not desks:
            raise RuntimeError(f"{directory}: the network has no commercial banks")
        return LoadNetwork(config, desks)

    def desk(self, bank: str) -> Desk:
        for desk in self.desks:
            if desk.bank == bank:
                return desk
        raise KeyError(f"no bank {bank} in {self.config.directory}")

    def foreign(self, desk: Desk) -> tuple[Desk, ...]:
        """Banks of other central banks (a cross-border counterparty, another currency)."""
        return tuple(d for d in self.desks if d.central_bank != desk.central_bank)


def rate(payer: Desk, pay_amount: int, receiver: Desk, receive_amount: int) -> str:
    """The rate the instruction carries, from the payer's side: what it receives per unit it
    pays, in major units, stated just precisely enough to agree with both amounts."""
    return implied_rate(pay_amount, payer.exponent, receive_amount, receiver.exponent)


def trade_amounts(rng: random.Random, pay: Desk, receive: Desk) -> tuple[int, int]:
    """A trade of the corridor: the value of a typical trade (`bridge.reference_rates`) in
    round lots of the pay currency, and its counter-amount at the reference rate with a small
    spread (receive = pay x quoted rate, rounded to the minor unit, so the legs agree with a
    rate; `rate` states the shortest one)."""
    value = reference_rates.trade_value_cny(rng) * reference_rates.units_per_cny(pay.currency)
    lots = max(1, round(value / LOT_MAJOR))
    pay_amount = lots * LOT_MAJOR * 10**pay.exponent
    mid = reference_rates.mid_rate(pay.currency, receive.currency)
    quoted = reference_rates.quote(mid, rng)
    return pay_amount, counter_amount(pay_amount, pay.exponent, quoted, receive.exponent)


def payment_amount(rng: random.Random, payer: Desk) -> int:
    """A trade payment in the payer's currency, sized like the corridor's trades."""
    value = reference_rates.trade_value_cny(rng) * reference_rates.units_per_cny(payer.currency)
    return reference_rates.to_minor(value, payer.exponent)


def trade_reference(rng: random.Random) -> str:
    """A trade document reference of the corridor (bill of lading, invoice, L/C)."""
    kind = rng.choice(("BL-CQSG", "INV-CQ", "LC-NWLSC"))
    return f"{kind}-{rng.randrange(10**7):07d}"
