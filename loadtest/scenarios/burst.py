"""burst: the steady mix under a step load that climbs until the bridge saturates.

    BRIDGE_NETWORK=demo-network locust -f loadtest/scenarios/burst.py --headless \\
        --csv reports/burst --html reports/burst.html

`StepLoad` (a Locust `LoadTestShape`) starts LOADTEST_BURST_STEP_USERS users, adds as many
again every LOADTEST_BURST_STEP_SECONDS until LOADTEST_BURST_MAX_USERS, holds the top step
for one more step, then stops (defaults 10 / 10 s / 100). The shape replaces -u, -r and -t.
Saturation is where `<prefix>_stats_history.csv` (one row per second) shows the settlement
rate flat while the response times keep climbing with each step; the HTML report charts both.

Tags as in steady (`burst` on every task, plus `pay`, `pvp`, `dual`).
"""

from __future__ import annotations

from locust import LoadTestShape, tag, task

from loadtest.grpc_user import stop_and_collect
from loadtest.scenarios.steady import SETTINGS, WEIGHTS, CorridorUser


class BurstUser(CorridorUser):
    """The steady desk, under the step load."""

    @tag("burst", "pay")
    @task(WEIGHTS["pay"])
    def pay_invoice(self) -> None:
        self.trade_payment()

    @tag("burst", "pvp")
    @task(WEIGHTS["pvp"])
    def fx_pvp(self) -> None:
        self.trade_pvp()

    @tag("burst", "dual")
    @task(WEIGHTS["dual"])
    def fx_dual_pvp(self) -> None:
        self.trade_dual_pvp()


class StepLoad(LoadTestShape):
    """Steps of `step_users` more users every `step_seconds`, up to `max_users`, then stop."""

    step_users = max(1, SETTINGS.burst_step_users)
    step_seconds = max(1.0, SETTINGS.burst_step_seconds)
    max_users = max(SETTINGS.burst_max_users, SETTINGS.burst_step_users)

    def tick(self) -> tuple[int, float] | None:
        steps = -(-self.max_users // self.step_users)  # ceil: steps to reach the top
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        step = int(elapsed // self.step_seconds)
        if step > steps:  # the top step has been held for one step
            # stop here, like --graceful-run-time (users finish, workers report): Locust
            # quits as soon as this returns None, without waiting for the workers' figures
            stop_and_collect(self.runner)
            return None
        users = min(self.max_users, (step + 1) * self.step_users)
        return users, float(self.step_users)
