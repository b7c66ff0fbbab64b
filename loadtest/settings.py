"""What a load scenario is pointed at and how hard it pushes, read from the environment.

Locust imports a locustfile in every load-generator process before any option reaches it, so
scenario settings are environment variables (inherited by `--processes` workers). The network
directory and the run id can also be given as Locust options (`--bridge-network`, `--run-id`),
which the master forwards to its workers and the web UI shows.

| variable | meaning | default |
|---|---|---|
| `BRIDGE_NETWORK` | network directory (network.json, keys/) | `demo-network` |
| `LOADTEST_RUN_ID` | prefix of every instruction id of the run (for the cross-check) | generated |
| `LOADTEST_USER_RATE` | tasks per second per user (0: back to back) | `0` |
| `LOADTEST_WEIGHTS` | steady/large task mix, e.g. `pay=2,pvp=3,dual=3` | `pay=2,pvp=3,dual=3` |
| `LOADTEST_FINALITY` | `settled` (durable receipt) or `final` (quorum-attested block) | `settled` |
| `LOADTEST_ECHO` | address of the echo service (echo scenario) | none |
| `LOADTEST_MARKET_MAKER` | the hotspot's market maker bank | first bank |
| `LOADTEST_DRAIN_CURRENCY` | the currency the liquidity scenario drains | second currency |
| `LOADTEST_BURST_STEP_USERS` / `_STEP_SECONDS` / `_MAX_USERS` | burst's steps | 10 / 10 / 100 |
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_WEIGHTS", "LoadSettings", "new_run_id", "parse_weights"]

DEFAULT_WEIGHTS = {"pay": 2, "pvp": 3, "dual": 3}
FINALITY_MODES = ("settled", "final")


def new_run_id() -> str:
    """A short, unique, id-safe prefix: 'lt' + base-36 seconds + 4 random hex digits."""
    return f"lt{_base36(int(time.time()))}{secrets.token_hex(2)}"


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
        if value == 0:
            return out


def parse_weights(text: str) -> dict[str, int]:
    """'pay=2,pvp=3,dual=0' -> {'pay': 2, 'pvp': 3, 'dual': 0}; unknown kinds are refused."""
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        if kind not in DEFAULT_WEIGHTS or not value.isdigit():
            raise ValueError(
                f"LOADTEST_WEIGHTS: expected kind=integer with kind in pay, pvp, dual; got {part!r}"
            )
        weights[kind] = int(value)
    if not any(weights.values()):
        raise ValueError("LOADTEST_WEIGHTS: at least one weight must be positive")
    return weights


@dataclass(frozen=True, slots=True)
class LoadSettings:
    network: Path = Path("demo-network")
    run_id: str = field(default_factory=new_run_id)
    user_rate: float = 0.0
    weights: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    finality: str = "settled"
    echo_address: str = ""
    market_maker: str = ""
    drain_currency: str = ""
    burst_step_users: int = 10
    burst_step_seconds: float = 10.0
    burst_max_users: int = 100

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> LoadSettings:
        env = os.environ if env is None else env
        finality = env.get("LOADTEST_FINALITY", "settled")
        if finality not in FINALITY_MODES:
            raise ValueError(f"LOADTEST_FINALITY must be settled or final, not {finality!r}")
        return cls(
            network=Path(env.get("BRIDGE_NETWORK", "demo-network")),
            run_id=env.get("LOADTEST_RUN_ID") or _PROCESS_RUN_ID,
            user_rate=float(env.get("LOADTEST_USER_RATE", "0") or 0),
            weights=parse_weights(env.get("LOADTEST_WEIGHTS", "")),
            finality=finality,
            echo_address=env.get("LOADTEST_ECHO", ""),
            market_maker=env.get("LOADTEST_MARKET_MAKER", ""),
            drain_currency=env.get("LOADTEST_DRAIN_CURRENCY", ""),
            burst_step_users=int(env.get("LOADTEST_BURST_STEP_USERS", "10")),
            burst_step_seconds=float(env.get("LOADTEST_BURST_STEP_SECONDS", "10")),
            burst_max_users=int(env.get("LOADTEST_BURST_MAX_USERS", "100")),
        )

    def with_options(self, options: Any) -> LoadSettings:
        """Apply Locust's `--bridge-network` / `--run-id` when given (they win over env)."""
        network = getattr(options, "bridge_network", "") or ""
        run_id = getattr(options, "run_id", "") or ""
        return replace(
            self,
            network=Path(network) if network else self.network,
            run_id=run_id or self.run_id,
        )

    def wait_time(self) -> Callable[[Any], float]:
        """Back to back, or `user_rate` task runs per second per user (Locust's pacing)."""
        from locust import constant, constant_throughput

        if self.user_rate > 0:
            wait: Callable[[Any], float] = constant_throughput(self.user_rate)
        else:
            wait = constant(0)
        return wait


# One id per process tree: locust forks its --processes workers after importing the
# locustfile, so they inherit this value; the master also forwards --run-id to them.
_PROCESS_RUN_ID = os.environ.get("LOADTEST_RUN_ID") or new_run_id()
