"""liquidity: banks drain one currency; refusals for insufficient funds are expected.

    BRIDGE_NETWORK=demo-network locust -f loadtest/scenarios/liquidity.py --headless \\
        -u 30 -r 30 -t 60s --csv reports/liquidity --html reports/liquidity.html

The drained currency is LOADTEST_DRAIN_CURRENCY (default: the second central bank's). Users
are banks of the other central banks. At start each user's bank receives a small float of
it from a bank of its issuing central bank (a payment, counted as a settlement); then:

- `drain` (tag `pay`, weight 6): pays a slice of the float back to the issuer's banks, until
  the balance runs out and the bridge refuses with INSUFFICIENT_FUNDS;
- `refill` (tag `dual`, weight 1): buys the currency back with a dual-signed PvP (the bank
  pays its home currency).

Refusals for INSUFFICIENT_FUNDS are the point of the scenario: they are reported as requests
of type `refused`, name `INSUFFICIENT_FUNDS`, never as failures; any other error is a failure.
Tag `liquidity` on every task.
"""

from __future__ import annotations

import random

from locust import tag, task

from loadtest.bank_user import BankUser, Desk, trade_reference
from loadtest.settings import LoadSettings

SETTINGS = LoadSettings.from_environment()
FLOAT = 1_000_000  # minor units of the drained currency given to each user's bank


class LiquidityUser(BankUser):
    """A bank spending down its float of one foreign currency."""

    wait_time = SETTINGS.wait_time()
    expected_refusals = frozenset({"INSUFFICIENT_FUNDS"})

    def choose_desk(self, desks: tuple[Desk, ...]) -> Desk:
        currencies = list(dict.fromkeys(d.currency for d in desks))
        if len(currencies) < 2:
            raise RuntimeError("liquidity needs banks of at least two central banks")
        self.drained = self.settings.drain_currency or currencies[1]
        self.issuers = tuple(d for d in desks if d.currency == self.drained)
        if not self.issuers:
            raise RuntimeError(f"LOADTEST_DRAIN_CURRENCY={self.drained}: no bank issues it")
        return super().choose_desk(tuple(d for d in desks if d.currency != self.drained))

    def on_start(self) -> None:
        super().on_start()
        self.rng = random.Random()
        source = self.rng.choice(self.issuers)
        self.pay(source, self.desk, self.drained, FLOAT, "float for the liquidity scenario")
        # slices of what the bank holds now (earlier runs may have left it more than the
        # float), so that it runs dry after a handful of payments whatever it started with
        self.holding = max(FLOAT, self.available(self.desk, self.drained))

    @tag("liquidity", "pay")
    @task(6)
    def drain(self) -> None:
        amount = self.rng.randrange(self.holding // 20, self.holding // 5)
        payee = self.rng.choice(self.issuers)
        self.pay(self.desk, payee, self.drained, amount, trade_reference(self.rng))

    @tag("liquidity", "dual")
    @task(1)
    def refill(self) -> None:
        seller = self.rng.choice(self.issuers)
        amount = FLOAT // 4
        self.dual_pvp(self.desk, seller, self.rng.randrange(10_000, 500_000), amount)
