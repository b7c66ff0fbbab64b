"""`cbdc-bridge bench events`: what MQTT notifications cost, and how fast they arrive.

One network with its Mosquitto broker, one machine, five Locust runs of the steady scenario
(PvPs only, like `bench e2e`), each `seconds` long:

1. **without** / **with**, in the order without, with, with, without (so that a drift of the
   machine's load over the runs affects both alike), back to back. Without: the bridge
   restarted with `--no-mqtt` (nothing publishes; events wait in the outbox). With: the bridge
   restarted with its publisher, which first drains the backlog (not timed). The means are
   `pvp_per_s_without_publisher` and `pvp_per_s_with_publisher`, and
   `publisher_cost = 1 - with / without` (goal: at most 0.10). On a shared machine the rates
   of identical runs can differ by more than the publisher costs, so the CPU seconds of every
   node per settled PvP are reported too, and `publisher_cpu_cost = with / without - 1`: on a
   CPU-bound machine, the share of throughput the publisher takes;
2. **half**: with the publisher, paced at half the "with" rate (the `bench e2e` way), while a
   subscriber on every bank's topic records settlement-to-delivery latency: the time from the
   entry's ledger time (taken when its block is sealed, before the commit) to the message's
   arrival, p50 / p99 (goal: p99 at most 100 ms). The full-rate latencies are reported too
   (`delivery_at_max_*`), and judged against the same goal: at full rate the publisher shares
   the bridge's CPU with settlement.

The subscriber connects as the bridge's MQTT user (the one user whose ACL covers every bank),
counts each seq once (its first delivery) and reports how many messages it received and how
many entries settled during the runs with the publisher never reached it (`delivery_missing`,
goal 0; `ok` is false otherwise); a run's latencies are taken once it has received the newest
entry. `goals_met` judges each goal from
its own figure, and a goal whose figure is missing is not met.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt

from bridge.node.publisher import CONSUMER
from bridge.notify import BRIDGE_USER, ROOT, MqttSettings
from bridge.store.sqlite import SqliteStore
from loadtest.bench_e2e import PVP_NAMES, PVP_ONLY
from loadtest.benchkit import CpuMeter, bench_network, node_pids
from loadtest.runner import LocustSettings, RunResult, run_locust, scenario_path
from participants.launcher import Network

__all__ = ["EventsSettings", "describe", "run"]

# without, with, with, without: a drift of the machine over the runs affects both alike
ORDER = (False, True, True, False)


@dataclass(frozen=True, slots=True)
class EventsSettings:
    locust: LocustSettings
    half_users: int = 10
    replica_check: str = "none"
    central_banks: int = 4
    banks_per_central_bank: int = 2
    reports: Path | None = None


@dataclass
class DeliveryMeter:
    """A subscriber on every settlement topic, in its own thread, recording latencies."""

    settings: MqttSettings
    latencies_ms: list[float] = field(default_factory=list)
    messages: int = 0
    highest_seq: int = 0  # the highest seq received
    since_ms: float = float("inf")  # record entries settled from this wall-clock time on
    subscribed: threading.Event = field(default_factory=threading.Event)
    _seen: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DeliveryMeter:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        if not self.subscribed.wait(30):
            raise TimeoutError("the delivery meter could not subscribe")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def record_from_now(self) -> None:
        self.since_ms = time.time() * 1000

    def missing(self, after: int, upto: int) -> int:
        """How many entries `after` < seq <= `upto` never arrived (on any topic)."""
        return sum(1 for seq in range(after + 1, upto + 1) if seq not in self._seen)

    def take(self) -> list[float]:
        taken, self.latencies_ms = self.latencies_ms, []
        self.since_ms = float("inf")
        return taken

    async def _run(self) -> None:
        s = self.settings
        async with aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password
        ) as client:
            await client.subscribe(f"{ROOT}/+/+/settlements", qos=1)
            self.subscribed.set()
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        async for message in client.messages:
                            self._record(message)

    def _record(self, message: aiomqtt.Message) -> None:
        arrived = time.time() * 1000
        self.messages += 1
        if message.retain or not isinstance(message.payload, bytes | bytearray):
            return
        event = json.loads(message.payload)
        self.highest_seq = max(self.highest_seq, event["seq"])
        if event["seq"] in self._seen:
            return
        self._seen.add(event["seq"])
        if event["time"] >= self.since_ms:
            self.latencies_ms.append(arrived - event["time"])


def restart_bridge(network: Network, *, mqtt: bool) -> None:
    node = network.bridge
    node.stop()
    node.args = [a for a in node.args if a != "--no-mqtt"] + ([] if mqtt else ["--no-mqtt"])
    network.restart_bridge()


def wait_drained(db: Path, timeout: float = 120.0) -> None:
    """Wait until the publisher's cursor reaches the last outbox row."""
    store = SqliteStore(db)
    try:
        deadline = time.monotonic() + timeout
        while store.outbox_cursor(CONSUMER) < store.outbox_last_id():
            if time.monotonic() > deadline:
                raise TimeoutError("the publisher did not drain the outbox in time")
            time.sleep(0.2)
    finally:
        store.close()


def last_seq(db: Path) -> int:
    """Seq of the newest entry in the bridge's store (0 if none)."""
    store = SqliteStore(db)
    try:
        head = store.head()
        return 0 if head is None else head.first_seq + head.entry_count - 1
    finally:
        store.close()


def wait_delivered(meter: DeliveryMeter, db: Path, timeout: float = 30.0) -> None:
    """Wait until the meter received the newest entry: the broker acknowledged every message
    (the publisher drained the outbox) before it has delivered them all to the subscriber, and
    the last ones to arrive are the ones a latency percentile must not leave out."""
    wait_drained(db)
    newest = last_seq(db)
    deadline = time.monotonic() + timeout
    while meter.highest_seq < newest and time.monotonic() < deadline:
        time.sleep(0.05)


def run(settings: EventsSettings) -> dict[str, Any]:
    """Start a network with a broker, run the three Locust runs, return the figures."""
    locust = settings.locust
    reports = settings.reports or Path(tempfile.mkdtemp(prefix="bench-events-reports-"))
    with bench_network(
        None,
        central_banks=settings.central_banks,
        banks_per_central_bank=settings.banks_per_central_bank,
        replica_check=settings.replica_check,
    ) as network:
        observer = network.config.mqtt_settings(BRIDGE_USER)
        if observer is None:
            raise RuntimeError("bench events needs mosquitto (apt-get install mosquitto)")
        steady = scenario_path("steady")
        common: dict[str, Any] = {"reports": reports, "network": network.directory}
        meter = DeliveryMeter(observer).start()
        try:
            runs: dict[bool, list[RunResult]] = {False: [], True: []}
            cpu_s = {False: 0.0, True: 0.0}  # CPU seconds of every node during the runs
            bridge_cpu_s = {False: 0.0, True: 0.0}  # of the bridge node alone
            at_max: list[float] = []
            missing = 0  # entries settled in a measured run that never reached the meter
            for mqtt in ORDER:
                restart_bridge(network, mqtt=mqtt)
                if mqtt:
                    wait_drained(network.config.bridge_db)
                    meter.record_from_now()
                before = last_seq(network.config.bridge_db)
                label = "with" if mqtt else "without"
                with CpuMeter(node_pids(network)) as cpu:
                    result = run_locust(
                        steady,
                        label=f"pvp-{label}-publisher-{len(runs[mqtt]) + 1}",
                        settings=locust,
                        env={"LOADTEST_WEIGHTS": PVP_ONLY},
                        verify_log=False,
                        **common,
                    )
                runs[mqtt].append(result)
                cpu_s[mqtt] += cpu.total
                bridge_cpu_s[mqtt] += cpu.seconds.get("bridge", 0.0)
                if mqtt:
                    wait_delivered(meter, network.config.bridge_db)
                    at_max += meter.take()
                    missing += meter.missing(before, last_seq(network.config.bridge_db))
            restart_bridge(network, mqtt=True)
            wait_drained(network.config.bridge_db)
            with_rate = mean_rate(runs[True])
            half_rate = with_rate / 2
            paced = replace(locust, users=settings.half_users, spawn_rate=settings.half_users)
            meter.record_from_now()
            before = last_seq(network.config.bridge_db)
            half = run_locust(
                steady, label="pvp-half-with-publisher", settings=paced,
                env={
                    "LOADTEST_WEIGHTS": PVP_ONLY,
                    "LOADTEST_USER_RATE": f"{max(half_rate, 0.1) / paced.users:.6f}",
                },
                **common,
            )  # fmt: skip
            wait_delivered(meter, network.config.bridge_db)
            at_half = meter.take()
            missing += meter.missing(before, last_seq(network.config.bridge_db))
        finally:
            meter.stop()
    cpu_seconds = {"all": cpu_s, "bridge": bridge_cpu_s}
    delivery = {"messages": meter.messages, "missing": missing}
    return _figures(settings, runs, half, at_max, at_half, delivery, cpu_seconds)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def mean_rate(runs: list[RunResult]) -> float:
    return sum(r.rate("settlement", PVP_NAMES) for r in runs) / len(runs)


def _figures(
    settings: EventsSettings,
    by_mode: dict[bool, list[RunResult]],
    half: RunResult,
    at_max: list[float],
    at_half: list[float],
    delivery: dict[str, int],
    cpu: dict[str, dict[bool, float]],
) -> dict[str, Any]:
    rate_without = mean_rate(by_mode[False])
    rate_with = mean_rate(by_mode[True])
    cost = 1 - rate_with / rate_without if rate_without else 0.0
    p99 = percentile(at_half, 0.99)
    p99_at_max = percentile(at_max, 0.99)
    runs = (*by_mode[False], *by_mode[True], half)
    pvps = {mode: sum(r.count("settlement", PVP_NAMES) for r in by_mode[mode]) for mode in by_mode}

    def per_pvp(seconds: dict[bool, float]) -> dict[str, float | None]:
        return {
            label: round(1000 * seconds[mode] / pvps[mode], 3) if pvps[mode] else None
            for label, mode in (("without", False), ("with", True))
        }

    server = per_pvp(cpu["all"])
    measured_cpu = server["with"] is not None and server["without"]
    cpu_cost = (server["with"] or 0) / server["without"] - 1 if server["without"] else 0.0
    return {
        "pvp_per_s_without_publisher": round(rate_without, 1),
        "pvp_per_s_with_publisher": round(rate_with, 1),
        "pvp_per_s_runs": {
            "without": [round(r.rate("settlement", PVP_NAMES), 1) for r in by_mode[False]],
            "with": [round(r.rate("settlement", PVP_NAMES), 1) for r in by_mode[True]],
        },
        "publisher_cost": round(cost, 3),
        "server_cpu_ms_per_pvp": server,
        "bridge_cpu_ms_per_pvp": per_pvp(cpu["bridge"]),
        "publisher_cpu_cost": round(cpu_cost, 3),
        "delivery_p50_ms": round(percentile(at_half, 0.50), 1),
        "delivery_p99_ms": round(p99, 1),
        "delivery_events": len(at_half),
        "half_rate_pvp_per_s": round(half.rate("settlement", PVP_NAMES), 1),
        "delivery_at_max_p50_ms": round(percentile(at_max, 0.50), 1),
        "delivery_at_max_p99_ms": round(p99_at_max, 1),
        "delivery_at_max_events": len(at_max),
        "messages_received": delivery["messages"],
        # entries settled during the runs with the publisher that never reached the subscriber
        "delivery_missing": delivery["missing"],
        # a goal without its figures (no event delivered, no PvP settled) is not met
        "goals_met": {
            "p99_le_100ms_at_half_rate": 0 < p99 <= 100,
            "p99_le_100ms_at_full_rate": 0 < p99_at_max <= 100,
            "publisher_cost_le_10pct": bool(rate_without and rate_with) and cost <= 0.10,
            "publisher_cpu_cost_le_10pct": bool(measured_cpu) and cpu_cost <= 0.10,
        },
        "settings": {
            "users": settings.locust.users,
            "seconds": settings.locust.seconds,
            "half_rate_users": settings.half_users,
            "central_banks": settings.central_banks,
            "banks_per_central_bank": settings.banks_per_central_bank,
            "replica_check": settings.replica_check,
            "mix": PVP_ONLY,
        },
        "checks": {r.label: {"failures": r.unexpected_failures, "ok": r.ok} for r in runs},
        "ok": all(r.ok for r in runs) and delivery["missing"] == 0,
    }


def describe(figures: dict[str, Any]) -> str:
    goals = figures["goals_met"]

    def verdict(goal: str) -> str:
        return "met" if goals[goal] else "not met"

    return "\n".join(
        [
            f"PvP settled without publisher: {figures['pvp_per_s_without_publisher']:.0f} /s",
            f"PvP settled with publisher:    {figures['pvp_per_s_with_publisher']:.0f} /s "
            f"(cost {figures['publisher_cost']:.1%}; goal <= 10%: "
            f"{verdict('publisher_cost_le_10pct')})",
            f"delivery at half rate:         p50 {figures['delivery_p50_ms']:.0f} ms, "
            f"p99 {figures['delivery_p99_ms']:.0f} ms over {figures['delivery_events']} events "
            f"(goal p99 <= 100 ms: {verdict('p99_le_100ms_at_half_rate')})",
            f"delivery at full rate:         p50 {figures['delivery_at_max_p50_ms']:.0f} ms, "
            f"p99 {figures['delivery_at_max_p99_ms']:.0f} ms over "
            f"{figures['delivery_at_max_events']} events "
            f"(goal p99 <= 100 ms: {verdict('p99_le_100ms_at_full_rate')})",
            f"server CPU per PvP:            {figures['server_cpu_ms_per_pvp']} ms "
            f"(publisher {figures['publisher_cpu_cost']:+.1%}; goal <= 10%: "
            f"{verdict('publisher_cpu_cost_le_10pct')})",
            f"entries never delivered:       {figures['delivery_missing']}",
            f"Locust runs and deliveries:    {'OK' if figures['ok'] else 'PROBLEM'}",
        ]
    )
