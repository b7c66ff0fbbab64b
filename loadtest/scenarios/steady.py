"""steady: mixed cross-border payments and PvPs over every corridor of the network.

    BRIDGE_NETWORK=demo-network locust -f loadtest/scenarios/steady.py --headless \\
        -u 50 -r 50 -t 60s --csv reports/steady --html reports/steady.html

Each user trades from one bank (round-robin over the network's banks) with a counterparty
drawn at random from the banks of the other central banks, so every corridor carries traffic.
Task mix (LOADTEST_WEIGHTS, default `pay=2,pvp=3,dual=3`):

- `pay`: a trade payment in the payer's currency, carrying a trade document reference;
- `pvp`: an FX PvP by propose/accept (two RPCs, to two central bank nodes);
- `dual`: a dual-signed FX PvP (one RPC; the proposer's node fetches the counterparty
  central bank's endorsement).

Tags: `steady` on every task, plus `pay`, `pvp`, `dual` (`--tags pvp dual`: PvPs only).
No refusal is expected: any error is a failure.
"""

from __future__ import annotations

import random

from locust import tag, task

from loadtest.bank_user import BankUser, trade_amounts, trade_reference
from loadtest.corridor import payment_amount
from loadtest.settings import LoadSettings

SETTINGS = LoadSettings.from_environment()
WEIGHTS = SETTINGS.weights


class CorridorUser(BankUser):
    """A bank trading with banks of every other central bank (the scenarios' shared desk)."""

    abstract = True
    wait_time = SETTINGS.wait_time()

    def on_start(self) -> None:
        super().on_start()
        self.rng = random.Random()
        self.counterparties = self.network.foreign(self.desk)

    def trade_payment(self) -> None:
        payee = self.rng.choice(self.counterparties)
        amount = payment_amount(self.rng, self.desk)
        self.pay(self.desk, payee, self.desk.currency, amount, trade_reference(self.rng))

    def trade_pvp(self) -> None:
        other = self.rng.choice(self.counterparties)
        self.pvp(self.desk, other, *trade_amounts(self.rng, self.desk, other))

    def trade_dual_pvp(self) -> None:
        other = self.rng.choice(self.counterparties)
        self.dual_pvp(self.desk, other, *trade_amounts(self.rng, self.desk, other))


class SteadyUser(CorridorUser):
    """Payments and PvPs across the corridor in the configured mix."""

    @tag("steady", "pay")
    @task(WEIGHTS["pay"])
    def pay_invoice(self) -> None:
        self.trade_payment()

    @tag("steady", "pvp")
    @task(WEIGHTS["pvp"])
    def fx_pvp(self) -> None:
        self.trade_pvp()

    @tag("steady", "dual")
    @task(WEIGHTS["dual"])
    def fx_dual_pvp(self) -> None:
        self.trade_dual_pvp()
