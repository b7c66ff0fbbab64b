"""hotspot: many banks trading PvPs against one market maker (one hot set of accounts).

    BRIDGE_NETWORK=demo-network locust -f loadtest/scenarios/hotspot.py --headless \\
        -u 50 -r 50 -t 60s --csv reports/hotspot --html reports/hotspot.html

Every user is a bank of another central bank than the market maker's (LOADTEST_MARKET_MAKER,
default the network's first bank); every trade has the market maker on the other side, so
every settlement moves the same few accounts and every acceptance or endorsement of the
market maker's leg goes through the same central bank node. Tasks:

- `bank_proposes` (tags `pvp`): the bank proposes, the market maker accepts;
- `maker_quotes` (tags `pvp`): the market maker proposes (its funds held), the bank accepts;
- `dual` (tags `dual`): dual-signed PvP submitted by the bank.

Tag `hotspot` on every task. No refusal is expected.
"""

from __future__ import annotations

import random

from locust import tag, task

from loadtest.bank_user import BankUser, Desk, trade_amounts
from loadtest.settings import LoadSettings

SETTINGS = LoadSettings.from_environment()


class HotspotUser(BankUser):
    """A bank whose every trade is with the market maker."""

    wait_time = SETTINGS.wait_time()

    def on_start(self) -> None:
        super().on_start()
        self.rng = random.Random()

    def choose_desk(self, desks: tuple[Desk, ...]) -> Desk:
        name = self.settings.market_maker or desks[0].bank
        maker = next((d for d in desks if d.bank == name), None)
        if maker is None:
            raise RuntimeError(f"LOADTEST_MARKET_MAKER={name}: no such bank in the network")
        self.maker: Desk = maker
        clients = tuple(d for d in desks if d.central_bank != maker.central_bank)
        if not clients:
            raise RuntimeError("hotspot needs banks of at least two central banks")
        return super().choose_desk(clients)

    @tag("hotspot", "pvp")
    @task(2)
    def bank_proposes(self) -> None:
        self.pvp(self.desk, self.maker, *trade_amounts(self.rng, self.desk, self.maker))

    @tag("hotspot", "pvp")
    @task(1)
    def maker_quotes(self) -> None:
        self.pvp(self.maker, self.desk, *trade_amounts(self.rng, self.maker, self.desk))

    @tag("hotspot", "dual")
    @task(2)
    def dual(self) -> None:
        self.dual_pvp(self.desk, self.maker, *trade_amounts(self.rng, self.desk, self.maker))
