"""The banks of a network as load generators drive them, and trades that look like the corridor.

Nothing here imports Locust (which patches the standard library for gevent when imported), so
benchmarks that drive the network with asyncio use it too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bridge.crypto import PrivateKey
from bridge.rates import implied_rate
from participants.network_config import NetworkConfig

__all__ = ["Desk", "LoadNetwork", "rate", "trade_amounts", "trade_reference"]


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


def trade_amounts(rng: random.Random) -> tuple[int, int]:
    """A trade-sized pay amount (minor units) and its counter-amount at a plausible rate."""
    pay_amount = rng.randrange(10_000, 5_000_000)
    return pay_amount, max(1, int(pay_amount * rng.uniform(0.05, 20.0)))


def trade_reference(rng: random.Random) -> str:
    """A trade document reference of the corridor (bill of lading, invoice, L/C)."""
    kind = rng.choice(("BL-CQSG", "INV-CQ", "LC-NWLSC"))
    return f"{kind}-{rng.randrange(10**7):07d}"
