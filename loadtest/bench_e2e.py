"""`cbdc-bridge bench e2e`: PvPs settled per second through the whole network, by Locust.

One run, one machine, three Locust runs with the same settings (users, spawn rate, duration,
load-generator processes):

1. **echo**: the Locust gRPC user code against a trivial echo service (`loadtest.echo`): the
   RPC rate the load generator itself can drive here, `echo_rpc_per_s`;
2. **max**: the steady scenario with PvPs only (propose/accept and dual-signed, half each),
   back to back: `pvp_settled_per_s`, and `rpcs_per_pvp` (Locust RPCs per settled PvP);
3. **half**: the same at half the measured rate (Locust's `constant_throughput` pacing):
   settlement latency p50 / p95 / p99 as the banks see it (first instruction sent until the
   SETTLED receipt, i.e. the block is durably committed). A paced run needs few users, and
   every gevent user adds scheduling delay to every call (an echo at 100 RPC/s answers in
   ~5 ms with 10 users and ~20 ms with 50 on the project's machine), so this run uses
   `half_users` users (default 10) to measure the bridge rather than the load generator.

`efficiency = pvp_settled_per_s * rpcs_per_pvp / echo_rpc_per_s`: the share of the load
generator's own ceiling that the bridge sustains; 1.0 would mean the bridge costs no more than
an echo. The echo server's CPU per call in the same run (`echo_server_cpu_ms_per_rpc`) is
gRPC's floor for one unary call on this machine at that moment; times `rpcs_per_pvp` it is
`bank_call_floor_cpu_ms_per_pvp`, what the banks' calls alone would cost the central bank
nodes if serving one cost no more than an echo: a lower bound of one part of
`server_cpu_ms_per_pvp`, which also holds the bridge, the node-to-bridge and node-to-node
messages and the replicas (and an echo of tiny messages is cheaper than any real call).

Each Locust settlement row has its own percentiles; the reported p50/p95/p99 are the largest
over the two PvP forms, an upper bound of the merged percentile.

After each bridge run the cross-check compares Locust's settlement count with the ledger and
verifies the whole log offline.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtest.benchkit import (
    CpuMeter,
    Profiler,
    StageMeter,
    bench_network,
    describe_budget,
    describe_core_per_node,
    echo_server,
    metrics_ports,
    node_pids,
)
from loadtest.runner import LocustSettings, RunResult, run_locust, scenario_path

__all__ = ["E2eSettings", "describe", "run"]

PVP_NAMES = frozenset({"pvp", "pvp_dual"})
PVP_ONLY = "pay=0,pvp=1,dual=1"


@dataclass(frozen=True, slots=True)
class E2eSettings:
    locust: LocustSettings
    half_users: int = 10
    replica_check: str = "none"
    central_banks: int = 4
    banks_per_central_bank: int = 2
    reports: Path | None = None
    profile: Path | None = None
    network: Path | None = None


def _percentiles(result: RunResult) -> dict[str, float]:
    rows = result.rows_of("settlement", PVP_NAMES)
    return {
        f"settlement_{label}_ms": max((r.percentile(f"{label[1:]}%") for r in rows), default=0.0)
        for label in ("p50", "p95", "p99")
    }


def _check(result: RunResult) -> dict[str, Any]:
    return {
        "failures": result.unexpected_failures,
        "crosscheck": None if result.check is None else result.check.to_json(),
        "report": str(result.html),
    }


def run(settings: E2eSettings) -> dict[str, Any]:
    """Start a network and an echo server, run the three Locust runs, return the figures."""
    locust = settings.locust
    reports = settings.reports or Path(tempfile.mkdtemp(prefix="bench-e2e-reports-"))
    if True:
        with (
            bench_network(
                settings.network,
                central_banks=settings.central_banks,
                banks_per_central_bank=settings.banks_per_central_bank,
                replica_check=settings.replica_check,
            ) as network,
            echo_server() as echo,
        ):
            with CpuMeter({"echo": echo.pid}) as echo_cpu:
                echo_run = run_locust(
                    scenario_path("echo"), label="echo", reports=reports, settings=locust,
                    host=echo.address, check=False,
                )  # fmt: skip
            pids = node_pids(network)
            with (
                StageMeter(metrics_ports(network)) as stages,
                CpuMeter(pids) as cpu,
                Profiler(settings.profile, pids, max(1.0, locust.seconds - 2)),
            ):
                max_run = run_locust(
                    scenario_path("steady"), label="pvp-max", reports=reports, settings=locust,
                    network=network.directory, env={"LOADTEST_WEIGHTS": PVP_ONLY},
                )  # fmt: skip
            pvp_rate = max_run.rate("settlement", PVP_NAMES)
            half_rate = pvp_rate / 2
            paced = replace(locust, users=settings.half_users, spawn_rate=settings.half_users)
            half_run = run_locust(
                scenario_path("steady"), label="pvp-half", reports=reports, settings=paced,
                network=network.directory,
                env={
                    "LOADTEST_WEIGHTS": PVP_ONLY,
                    "LOADTEST_USER_RATE": f"{max(half_rate, 0.1) / paced.users:.6f}",
                },
            )  # fmt: skip
    return _figures(settings, echo_run, max_run, half_run, cpu, stages, echo_cpu)


def _figures(
    settings: E2eSettings,
    echo_run: RunResult,
    max_run: RunResult,
    half_run: RunResult,
    cpu: CpuMeter,
    stages: StageMeter,
    echo_cpu: CpuMeter | None = None,
) -> dict[str, Any]:
    echo_rate = echo_run.rpc_per_s
    # what the echo server spent per call: gRPC's floor for one unary call in this run
    echo_cpu_ms = 1000 * echo_cpu.total / echo_run.rpcs if echo_cpu and echo_run.rpcs else None
    pvps = max_run.count("settlement", PVP_NAMES)
    pvp_rate = max_run.rate("settlement", PVP_NAMES)
    rpcs_per_pvp = max_run.rpcs / pvps if pvps else 0.0
    efficiency = pvp_rate * rpcs_per_pvp / echo_rate if echo_rate else 0.0
    latency = _percentiles(half_run)
    locust = settings.locust
    return {
        "echo_rpc_per_s": round(echo_rate, 1),
        "pvp_settled_per_s": round(pvp_rate, 1),
        "rpcs_per_pvp": round(rpcs_per_pvp, 3),
        "efficiency": round(efficiency, 3),
        **{name: round(value, 1) for name, value in latency.items()},
        "half_rate_target_pvp_per_s": round(pvp_rate / 2, 1),
        "half_rate_pvp_per_s": round(half_run.rate("settlement", PVP_NAMES), 1),
        "server_cpu_ms_per_pvp": round(1000 * cpu.total / pvps, 3) if pvps else None,
        "server_cpu_s": {name: round(s, 2) for name, s in sorted(cpu.seconds.items())},
        "echo_server_cpu_ms_per_rpc": None if echo_cpu_ms is None else round(echo_cpu_ms, 3),
        "bank_call_floor_cpu_ms_per_pvp": (
            None if echo_cpu_ms is None else round(echo_cpu_ms * rpcs_per_pvp, 3)
        ),
        **stages.figures(cpu, pvps),
        "goals_met": {
            "server_cpu_le_1_ms": bool(pvps) and cpu.total <= 0.001 * pvps,
            "efficiency_ge_0_5": efficiency >= 0.5,
            "p99_le_50ms_at_half_rate": 0 < latency["settlement_p99_ms"] <= 50,
        },
        "settings": {
            "users": locust.users,
            "spawn_rate": locust.spawn_rate,
            "seconds": locust.seconds,
            "processes": locust.processes,
            "half_rate_users": settings.half_users,
            "central_banks": settings.central_banks,
            "banks_per_central_bank": settings.banks_per_central_bank,
            "replica_check": settings.replica_check,
            "mix": PVP_ONLY,
        },
        "checks": {
            "echo": {"failures": echo_run.unexpected_failures, "report": str(echo_run.html)},
            "pvp_max": _check(max_run),
            "pvp_half": _check(half_run),
        },
        "ok": all(r.ok and (r.check is None or r.check.ok) for r in (echo_run, max_run, half_run)),
    }


def describe(figures: dict[str, Any]) -> str:
    goals = figures["goals_met"]
    return "\n".join(
        [
            f"echo (load generator ceiling): {figures['echo_rpc_per_s']:.0f} RPC/s",
            f"PvP settled:                   {figures['pvp_settled_per_s']:.0f} /s "
            f"({figures['rpcs_per_pvp']:.2f} RPCs each)",
            f"efficiency:                    {figures['efficiency']:.3f} "
            f"(goal >= 0.5: {'met' if goals['efficiency_ge_0_5'] else 'missed'})",
            f"settlement at half rate:       p50 {figures['settlement_p50_ms']:.0f} ms, "
            f"p95 {figures['settlement_p95_ms']:.0f} ms, p99 {figures['settlement_p99_ms']:.0f} ms "
            f"(goal p99 <= 50 ms: {'met' if goals['p99_le_50ms_at_half_rate'] else 'missed'})",
            f"echo server CPU per call:      {figures['echo_server_cpu_ms_per_rpc']} ms "
            f"(a lower bound of the banks' calls to their nodes alone: "
            f"{figures['bank_call_floor_cpu_ms_per_pvp']} ms per PvP)",
            f"server CPU per PvP:            {figures['server_cpu_ms_per_pvp']} ms "
            f"(goal <= 1.0: {'met' if goals['server_cpu_le_1_ms'] else 'missed'}), by node "
            "and stage (ms):",
            *describe_budget(figures["cpu_ms_per_pvp_by_stage"]),
            f"with a core per node:          {describe_core_per_node(figures)}",
            f"entries per block:             {figures['entries_per_block']}",
            f"cross-checks and failures:     {'OK' if figures['ok'] else 'PROBLEM'}",
        ]
    )
