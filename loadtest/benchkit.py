"""What the end-to-end benchmarks share: a funded network, an echo server, CPU accounting.

Every benchmark starts its own network in a fresh directory (so runs never see each other's
ledger), measures its baseline in the same run, and stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from loadtest.funding import fund_banks
from participants.launcher import Network, prepare_network

BENCH_FUNDING = 10**15  # minor units per bank: far more than any benchmark moves

__all__ = [
    "CpuMeter",
    "EchoServer",
    "Profiler",
    "StageMeter",
    "bench_network",
    "crypto_floor",
    "describe_budget",
    "echo_server",
    "metrics_ports",
    "p256_verifications_per_s",
]

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def bench_network(
    directory: Path | None,
    *,
    central_banks: int = 4,
    banks_per_central_bank: int = 2,
    replica_check: str = "none",
) -> Iterator[Network]:
    """A fresh, running and funded network (in a temporary directory unless one is given)."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        network = prepare_network(
            directory,
            central_banks=central_banks,
            banks_per_central_bank=banks_per_central_bank,
            replica_check=replica_check,
            metrics=True,
        )
        stack.enter_context(network)
        # benchmarks measure speed, not a market: no run may stop for lack of funds
        fund_banks(network.config, BENCH_FUNDING)
        yield network


@dataclass
class EchoServer:
    process: subprocess.Popen[str]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def echo_server() -> Iterator[EchoServer]:
    """`python -m loadtest.echo` on a free port, stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loadtest.echo", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the echo server exited with {process.wait()}")
        port = int(json.loads(line)["port"])
        yield EchoServer(process, f"127.0.0.1:{port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def node_pids(network: Network) -> dict[str, int]:
    nodes = {"bridge": network.bridge, **network.central_banks}
    return {name: node.process.pid for name, node in nodes.items() if node.process is not None}


class CpuMeter:
    """CPU seconds (user + system) that a set of processes spend between start and stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                out[name] = times.user + times.system
        return out

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.seconds = {n: end[n] - self._start.get(n, 0.0) for n in end}

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class Profiler:
    """`py-spy record` of some processes for a while (flame graphs written as SVG)."""

    def __init__(self, directory: Path | None, pids: dict[str, int], seconds: float) -> None:
        self.directory = directory
        self.pids = pids
        self.seconds = seconds
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiler:
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).parent / "py-spy"
        for name, pid in self.pids.items():
            self._children.append(
                subprocess.Popen(
                    [str(py_spy), "record", "--nonblocking", "-d", str(int(self.seconds)),
                     "-r", "100", "-o", str(self.directory / f"{name}.svg"), "--pid", str(pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + self.seconds + 30
        for child in self._children:
            try:
                child.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def metrics_ports(network: Network) -> dict[str, int]:
    """Each node's Prometheus endpoint (started with `metrics=True`)."""
    nodes = {"bridge": network.bridge, **network.central_banks}
    return {name: node.metrics_port for name, node in nodes.items() if node.metrics_port}


def _stage_seconds(port: int) -> dict[str, float]:
    """Thread CPU seconds per stage, as the node's metrics endpoint reports them now."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    seconds: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "cbdc_stage_cpu_seconds":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    seconds[sample.labels["stage"]] = sample.value
        elif family.name == "cbdc_replay_known_bodies":
            seconds[KNOWN] = family.samples[0].value
        elif family.name == "cbdc_block_entries":
            for sample in family.samples:
                if sample.name == "cbdc_block_entries_count":
                    seconds[BLOCKS] = sample.value
                elif sample.name == "cbdc_block_entries_sum":
                    seconds[ENTRIES] = sample.value
    return seconds


BLOCKS = "(blocks)"  # not stages: the blocks (and their entries) sealed or replayed meanwhile
ENTRIES = "(entries)"
KNOWN = "(known bodies)"  # entries a replica replayed with a body its node decoded at the edge


class StageMeter:
    """Per node and stage, the CPU seconds the nodes' own timers count between start and stop."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self._start: dict[str, dict[str, float]] = {}
        self.seconds: dict[str, dict[str, float]] = {}

    def _now(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, port in self.ports.items():
            with contextlib.suppress(OSError):
                out[name] = _stage_seconds(port)
        return out

    def __enter__(self) -> StageMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        for name, stages in self._now().items():
            before = self._start.get(name, {})
            self.seconds[name] = {s: v - before.get(s, 0.0) for s, v in stages.items()}

    def budget(self, cpu: CpuMeter, settled: int) -> dict[str, dict[str, float]]:
        """Milliseconds of CPU per settled PvP, per node and stage; `other` is the node's CPU
        (from the operating system) that no stage timer counted: gRPC, asyncio, protobuf."""
        if not settled:
            return {}
        out: dict[str, dict[str, float]] = {}
        for name, all_stages in sorted(self.seconds.items()):
            stages = {s: v for s, v in all_stages.items() if s not in (BLOCKS, ENTRIES, KNOWN)}
            row = {s: round(1000 * v / settled, 4) for s, v in sorted(stages.items()) if v > 0}
            total = cpu.seconds.get(name, 0.0)
            row["other"] = round(1000 * (total - sum(stages.values())) / settled, 4)
            row["total"] = round(1000 * total / settled, 4)
            out[name] = row
        return out

    def known_shares(self) -> dict[str, float]:
        """Per central bank node, the share of the entries it replayed meanwhile whose body it
        had decoded at its edge (taken from its known bodies, not decoded again)."""
        return {
            name: round(seen[KNOWN] / seen[ENTRIES], 3)
            for name, seen in sorted(self.seconds.items())
            if seen.get(ENTRIES) and KNOWN in seen
        }

    def entries_per_block(self, node: str = "bridge") -> float:
        """Mean entries per block the node sealed (or replayed) while measured."""
        seen = self.seconds.get(node, {})
        blocks = seen.get(BLOCKS, 0.0)
        return round(seen.get(ENTRIES, 0.0) / blocks, 2) if blocks else 0.0

    def figures(self, cpu: CpuMeter, settled: int) -> dict[str, Any]:
        """What `bench stream` and `bench e2e` print of the nodes' work while measured: the
        budget by node and stage, the projection with a core per node, the entries per block
        and the replicas' share of bodies known from their edge."""
        return {
            "cpu_ms_per_pvp_by_stage": self.budget(cpu, settled),
            **core_per_node(cpu, settled),
            "entries_per_block": self.entries_per_block(),
            "replay_known_share": self.known_shares(),
        }


def core_per_node(cpu: CpuMeter, settled: int) -> dict[str, Any]:
    """The rate each node would sustain on a core of its own, from its CPU in this run (PvPs
    settled per CPU second it spent: `node_core_pvp_per_s`), and the network's with a core for
    every node: its busiest node's rate (`core_per_node_pvp_per_s`, `core_per_node_bound_by`).
    A projection from CPU measured while the nodes shared the run's cores (which cost each of
    them some cache misses and switches), that counts a node's threads outside the GIL (the
    bridge's commit) as if they ran on the same core."""
    rates = {n: settled / s for n, s in sorted(cpu.seconds.items()) if s > 0 and settled}
    if not rates:
        return {
            "node_core_pvp_per_s": {},
            "core_per_node_pvp_per_s": 0.0,
            "core_per_node_bound_by": "",
        }
    busiest = min(rates, key=rates.__getitem__)
    return {
        "node_core_pvp_per_s": {n: round(r, 1) for n, r in rates.items()},
        "core_per_node_pvp_per_s": round(rates[busiest], 1),
        "core_per_node_bound_by": busiest,
    }


def describe_core_per_node(figures: dict[str, Any]) -> str:
    """The network's projected rate with a core per node, and each node's, as text."""
    each = ", ".join(f"{n} {r:.0f}" for n, r in figures["node_core_pvp_per_s"].items())
    return (
        f"{figures['core_per_node_pvp_per_s']:.0f} PvP/s "
        f"(bound by {figures['core_per_node_bound_by'] or '-'}; each node: {each})"
    )


def describe_budget(budget: dict[str, dict[str, float]]) -> list[str]:
    """The budget as text lines: one per node, its stages biggest first."""
    lines = []
    for name, row in budget.items():
        stages = sorted(((v, s) for s, v in row.items() if s != "total"), reverse=True)
        parts = ", ".join(f"{s} {v:.3f}" for v, s in stages if abs(v) >= 0.0005)
        lines.append(f"  {name:<8} {row['total']:.3f} ms: {parts}")
    return lines


def p256_verifications_per_s(seconds: float = 1.0) -> float:
    """P-256 ECDSA verifications per second on one core (OpenSSL), measured now."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = b"x" * 200
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    algorithm = ec.ECDSA(hashes.SHA256())
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            public.verify(signature, message, algorithm)
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def crypto_floor(
    pvp_rate: float, bank_signatures_per_pvp: int, seconds: float = 1.0
) -> dict[str, float]:
    """`crypto_floor_pvp_per_s`: the rate if the machine's cores did nothing but check the
    banks' signatures; `floor_ratio`: the share of it the network reached."""
    cores = os.cpu_count() or 1
    verifies = p256_verifications_per_s(seconds)
    floor = cores * verifies / bank_signatures_per_pvp
    return {
        "p256_verify_per_s_per_core": round(verifies, 1),
        "crypto_floor_pvp_per_s": round(floor, 1),
        "floor_ratio": round(pvp_rate / floor, 3) if floor else 0.0,
    }
