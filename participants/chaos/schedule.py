"""The campaign's plan: which fault, on which process or link, when; a pure function of the seed.

`plan(seed, profile)` draws every choice from `random.Random(seed)`, so the same seed gives the
same schedule (`schedule_digest` names it in the figures). Scenarios group faults of one kind;
the campaign checks every invariant after each scenario.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

BRIDGE_PHASES = ("random", "before-commit", "during-commit", "after-commit")


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: `kind` on `target`, `after` seconds into its scenario's load, for `hold` s."""

    kind: str
    target: str
    after: float
    hold: float = 0.0
    phase: str = ""
    mode: str = ""
    delay: float = 0.0
    loss: float = 0.0
    offset_ms: int = 0
    blocks: int = 0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    faults: tuple[Fault, ...]
    needs: str = ""  # a feature the branch may not have yet: "mqtt", "postgres"


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    bridge_kills: int
    node_kills: int
    load_kills: int
    outages: int
    net_faults: int
    disk_fulls: int
    clock_jumps: int
    rate: float
    workers: int
    leader_kills: int = 2
    lossy_links: int = 2  # one per link: loss on the CB-bridge link, then on the bank-CB link
    broker_outage_s: float = 30.0
    settle_within_s: float = 2.5
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def kills(self) -> int:
        return self.bridge_kills + self.node_kills + self.load_kills


QUICK = Profile(
    "quick",
    bridge_kills=4,
    node_kills=2,
    load_kills=2,
    outages=1,
    net_faults=4,
    disk_fulls=1,
    clock_jumps=2,
    rate=12.0,
    workers=3,
    broker_outage_s=10.0,
)
FULL = Profile(
    "full",
    bridge_kills=10,
    node_kills=6,
    load_kills=4,
    outages=2,
    net_faults=8,
    disk_fulls=2,
    clock_jumps=4,
    rate=20.0,
    workers=4,
    leader_kills=4,
)
PROFILES = {p.name: p for p in (QUICK, FULL)}


def plan(seed: int, profile: Profile, central_banks: list[str]) -> list[Scenario]:
    rng = random.Random(seed)

    def moment() -> float:
        return round(rng.uniform(0.3, 2.0), 3)

    bridge = tuple(
        Fault(
            "kill",
            "bridge",
            moment(),
            phase=BRIDGE_PHASES[i % len(BRIDGE_PHASES)],
            blocks=rng.randrange(2, 12),
        )
        for i in range(profile.bridge_kills)
    )
    nodes = tuple(
        Fault("kill", rng.choice(central_banks), moment()) for _ in range(profile.node_kills)
    )
    loads = tuple(Fault("kill", "load", moment()) for _ in range(profile.load_kills))
    outages = tuple(
        Fault(
            "outage", rng.choice(central_banks[1:]), moment(), hold=2 * profile.settle_within_s + 2
        )
        for _ in range(profile.outages)
    )
    links = ("bridge-link", "bank-link")
    modes = ("delay", "reset", "blackhole")
    net = tuple(
        Fault(
            "net",
            links[i % 2],
            moment(),
            hold=round(rng.uniform(2.0, 4.0), 2),
            mode=modes[i % 3],
            delay=round(rng.uniform(0.05, 0.4), 3),
        )
        for i in range(profile.net_faults)
    )
    disk = tuple(
        Fault("disk-full", "bridge-store", moment(), hold=round(rng.uniform(3.0, 5.0), 2))
        for _ in range(profile.disk_fulls)
    )
    clock = tuple(
        Fault(
            "clock",
            "bridge",
            moment(),
            hold=3.0,
            offset_ms=(1 if i % 2 == 0 else -1) * rng.randrange(5_000, 15_000),
        )
        for i in range(profile.clock_jumps)
    )
    scenarios = [
        Scenario("bridge-kills", bridge),
        Scenario("central-bank-node-kills", nodes),
        Scenario("load-client-kills", loads),
        Scenario("central-bank-node-outage", outages),
        Scenario("network-faults", net),
        Scenario("clock-jumps", clock),
        Scenario("disk-full", disk),
        Scenario("mqtt-publisher-kill", (Fault("kill", "mqtt-publisher", moment()),), "mqtt"),
        Scenario(
            "mqtt-broker-outage",
            (Fault("outage", "broker", moment(), hold=profile.broker_outage_s),),
            "mqtt",
        ),
        Scenario(
            "postgres-leader-kill",
            tuple(Fault("kill", "leading-bridge", moment()) for _ in range(profile.leader_kills)),
            "postgres",
        ),
        Scenario(
            "postgres-restart", (Fault("outage", "postgres", moment(), hold=3.0),), "postgres"
        ),
    ]
    # drawn last, so that every fault planned before loss was a mode keeps its draws
    lossy = tuple(
        Fault(
            "net",
            links[i % 2],
            moment(),
            hold=round(rng.uniform(2.0, 4.0), 2),
            mode="loss",
            loss=round(rng.uniform(0.1, 0.4), 2),
        )
        for i in range(profile.lossy_links)
    )
    after = next(i for i, s in enumerate(scenarios) if s.name == "network-faults") + 1
    scenarios.insert(after, Scenario("network-loss", lossy))
    return scenarios


def schedule_digest(scenarios: list[Scenario]) -> str:
    """A short hash of the whole schedule: equal seeds give equal digests."""
    text = json.dumps([asdict(s) for s in scenarios], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
