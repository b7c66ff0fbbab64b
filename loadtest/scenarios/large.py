"""large: the steady mix on a network of 10 central banks with 50 banks each (500 banks).

    .venv/bin/cbdc-bridge up --network large-network --central-banks 10 --banks 50 --fresh &
    BRIDGE_NETWORK=large-network locust -f loadtest/scenarios/large.py --headless \\
        -u 200 -r 50 -t 120s --csv reports/large --html reports/large.html

Same tasks as steady (tags `large` plus `pay`, `pvp`, `dual`), over 90 corridors: every user
is a different bank while users <= 500, and its counterparties are the 450 banks of the other
central banks. A smaller network still runs, with a warning: the figures then are not those
of the large scenario.
"""

from __future__ import annotations

import logging

from locust import tag, task

from loadtest.scenarios.steady import WEIGHTS, CorridorUser

log = logging.getLogger("loadtest")
CENTRAL_BANKS = 10
BANKS_PER_CENTRAL_BANK = 50
_warned: list[bool] = []


class LargeNetworkUser(CorridorUser):
    """A bank of the large network, trading across every corridor."""

    def on_start(self) -> None:
        super().on_start()
        config = self.network.config
        small = len(config.central_banks) < CENTRAL_BANKS or any(
            len(cb.banks) < BANKS_PER_CENTRAL_BANK for cb in config.central_banks
        )
        if small and not _warned:
            _warned.append(True)
            log.warning(
                "large expects %d central banks x %d banks; %s has %d central banks, %d banks",
                CENTRAL_BANKS, BANKS_PER_CENTRAL_BANK, config.directory,
                len(config.central_banks), len(self.network.desks),
            )  # fmt: skip

    @tag("large", "pay")
    @task(WEIGHTS["pay"])
    def pay_invoice(self) -> None:
        self.trade_payment()

    @tag("large", "pvp")
    @task(WEIGHTS["pvp"])
    def fx_pvp(self) -> None:
        self.trade_pvp()

    @tag("large", "dual")
    @task(WEIGHTS["dual"])
    def fx_dual_pvp(self) -> None:
        self.trade_dual_pvp()
